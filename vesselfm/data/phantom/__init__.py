"""Synthetic coronary CT angiography phantoms with exact ground truth, in the ImageCAS layout.

A phantom is a contrast-enhanced cardiac CT volume (int16 Hounsfield units) and the label of its
coronary lumen (uint8 0/1), on a scanner-like grid: anisotropic spacing (0.30-0.45 mm in-plane,
0.50-0.625 mm between slices) and an affine whose in-plane axes are flipped as scanners write them
(voxel ``i`` runs towards the patient's left, ``j`` towards posterior, ``k`` towards superior).

What is inside (everything randomised per case from the seed):

- a thorax: air outside the body, subcutaneous fat, chest-wall muscle, sternum and spine,
  lungs (about -850 HU) with contrast-filled pulmonary vessels (bright tubes that are not
  coronaries), mediastinal fat and, at the bottom, the liver under the diaphragm;
- a heart: myocardium (about 100 HU) around contrast-filled chambers, the aortic root, the
  ascending and descending aorta (300-500 HU), all wrapped in epicardial fat;
- two coronary trees leaving the aortic root and running over the heart surface in the fat:
  the left (main stem, LAD with diagonals, LCx with obtuse marginals) and the right (RCA with
  marginals, posterior descending and posterolateral branches). Radii taper from 2-2.5 mm to
  below 1 mm; paths are curved and tortuous; optional stenoses and calcified plaques
  (over 600 HU, never labelled). The lumen is 250-450 HU, close to the blood pool, so the
  vessels are told apart by shape and context, not by a threshold;
- CT realism: partial-volume edges, a Gaussian point-spread function, correlated noise of
  20-40 HU and, optionally, streaks.

The label is exactly the coronary lumen: two 26-connected components, no loops, no cavities
(Betti numbers 2, 0, 0). Branches are kept apart from each other, from the aortic root and from
the volume's faces while they are built, and the finished label is checked; a case that fails
the check is rebuilt from the next sub-seed, so every returned phantom satisfies it.

At shapes smaller than ImageCAS (e.g. 64 voxels per side) the voxel spacing stays scanner-like
and the anatomy is scaled down to fit the field of view; vessel radii are floored at about one
voxel so that the thinnest branch stays connected.

The package is split by what it draws: :mod:`.anatomy` (thorax, heart, tissue HU),
:mod:`.trees` (coronary centrelines, radii, stenoses, plaques, the label and its topology),
:mod:`.realism` (blur, noise, streaks), :mod:`.generate` (one case from its seed) and
:mod:`.writing` (the ImageCAS-layout NIfTI files); :mod:`.geometry` holds the voxel geometry
they share. :mod:`.imagecasx` writes the ImageCAS-X layout (``layout=imagecasx``: 14 named
segments, centrelines, planted stenoses, split lists, descriptors).

Example:
    >>> from vesselfm.data.phantom import generate_phantom
    >>> ph = generate_phantom(shape=(64, 64, 48), seed=3)
    >>> ph.image.dtype, ph.label.dtype, ph.image.shape
    (dtype('int16'), dtype('uint8'), (64, 64, 48))
"""

from __future__ import annotations

from vesselfm.data.phantom.anatomy import Tissue
from vesselfm.data.phantom.generate import MIN_SIDE, Phantom, generate_phantom
from vesselfm.data.phantom.trees import label_topology
from vesselfm.data.phantom.writing import (
    IMAGECAS_FOLDER_SIZE,
    case_paths,
    case_seed,
    save_phantom,
    write_phantom_dataset,
)

__all__ = [
    "IMAGECAS_FOLDER_SIZE",
    "MIN_SIDE",
    "Phantom",
    "Tissue",
    "case_paths",
    "case_seed",
    "generate_phantom",
    "label_topology",
    "save_phantom",
    "write_phantom_dataset",
]
