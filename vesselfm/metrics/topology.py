"""Topology metrics: clDice and Betti numbers of 3D binary masks.

**clDice** (Shit et al., CVPR 2021): with skeletons ``S`` from scikit-image's 3D ``skeletonize``
(Lee's thinning), topology precision ``Tprec = |S(pred) & label| / |S(pred)|``, topology
sensitivity ``Tsens = |S(label) & pred| / |S(label)|`` and
``clDice = 2 Tprec Tsens / (Tprec + Tsens)`` (``0`` when both are 0). Empty masks:
both empty gives ``1.0``, one empty ``0.0`` (a nonempty mask always has a nonempty skeleton).

**Betti numbers**, TopCoW convention: the foreground is 26-connected and the background
6-connected, i.e. the foreground is the union of closed unit cubes. ``betti_0`` is the number of
26-connected components, ``betti_2`` the number of cavities (6-connected background components
that do not reach the outside of the volume), and ``betti_1 = betti_0 + betti_2 - chi`` (tunnels,
loops), with ``chi`` the Euler characteristic of the union of closed cubes. An empty mask has
``(0, 0, 0)``.

Everything is computed inside the mask's bounding box with a one-voxel background margin, which
changes none of these values: skeletonisation, labelling and the Euler characteristic only look at
a voxel's 3x3x3 neighbourhood, and Lee's thinning visits voxels in raster order, which a shift
preserves.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import ndimage as ndi

from vesselfm.metrics._crop import Box, bounding_box, padded_crop

TOPOLOGY_METRICS: tuple[str, ...] = (
    "cldice",
    "betti_0",
    "betti_1",
    "betti_2",
    "betti_0_error",
    "betti_1_error",
)

_STRUCT_26 = np.ones((3, 3, 3), dtype=bool)
_STRUCT_6 = ndi.generate_binary_structure(3, 1)


def _check_3d(mask: np.ndarray, what: str) -> None:
    if mask.ndim != 3:
        raise ValueError(f"{what}: expected a 3D mask (X, Y, Z), got shape {mask.shape}")


def skeleton(mask: np.ndarray) -> tuple[np.ndarray, Box] | None:
    """The 3D skeleton (scikit-image ``skeletonize``, Lee's method) of a mask, in its own box.

    Args:
        mask: boolean mask, shape ``(X, Y, Z)``.

    Returns:
        ``(skel, box)``: the skeleton restricted to the mask's bounding box ``box`` (boolean,
        shape of ``mask[box]``), identical to ``skeletonize(mask)[box]``; ``None`` for an empty
        mask.
    """
    from skimage.morphology import skeletonize

    _check_3d(mask, "skeleton")
    box = bounding_box(mask)
    if box is None:
        return None
    skel = skeletonize(padded_crop(mask, box))
    return np.ascontiguousarray(skel[1:-1, 1:-1, 1:-1], dtype=bool), box


def cldice(pred: np.ndarray, label: np.ndarray) -> float:
    """Centerline Dice of a binary prediction against a binary label.

    Args:
        pred: boolean prediction, shape ``(X, Y, Z)``.
        label: boolean label, same shape.

    Returns:
        clDice in [0, 1]: ``1.0`` when both masks are empty, ``0.0`` when exactly one is.
    """
    if pred.shape != label.shape:
        raise ValueError(
            f"pred and label must have the same shape, got {pred.shape} and {label.shape}"
        )
    sp, sl = skeleton(pred), skeleton(label)
    if sp is None and sl is None:
        return 1.0
    if sp is None or sl is None:
        return 0.0
    skel_p, box_p = sp
    skel_l, box_l = sl
    tprec = np.count_nonzero(skel_p & label[box_p]) / np.count_nonzero(skel_p)
    tsens = np.count_nonzero(skel_l & pred[box_l]) / np.count_nonzero(skel_l)
    if tprec + tsens == 0:
        return 0.0
    return float(2 * tprec * tsens / (tprec + tsens))


def _euler_lut() -> np.ndarray:
    """8 x (Euler characteristic contribution) of the lattice vertex at the centre of each of the
    256 configurations of a 2x2x2 block of voxels, for the union of closed cubes.

    Each cell touching the vertex is counted with the share it gives each of its corners:
    ``V - E/2 + F/4 - C/8`` (an edge has 2 corners, a face 4, a cube 8); summed over all lattice
    vertices this is ``V - E + F - C``. Voxel ``(dx, dy, dz)`` of the block is bit
    ``4 dx + 2 dy + dz``.
    """
    corners = list(itertools.product((0, 1), repeat=3))
    lut = np.zeros(256, dtype=np.int64)
    for config in range(256):
        fg = {c for i, c in enumerate(corners) if config >> (4 * c[0] + 2 * c[1] + c[2]) & 1}
        if not fg:
            continue
        cubes = len(fg)
        # the edge from the vertex along axis a towards side d touches the 4 voxels with c[a] == d
        edges = sum(any(c[a] == d for c in fg) for a in range(3) for d in (0, 1))
        # the face in the plane of axes (a1, a2) on sides (d1, d2) touches 2 voxels
        faces = sum(
            any(c[a1] == d1 and c[a2] == d2 for c in fg)
            for a1, a2 in ((0, 1), (0, 2), (1, 2))
            for d1 in (0, 1)
            for d2 in (0, 1)
        )
        lut[config] = 8 - 4 * edges + 2 * faces - cubes
    return lut


_EULER_LUT = _euler_lut()


def euler_characteristic(mask: np.ndarray) -> int:
    """Euler characteristic of the union of the closed voxels of a 3D mask (26-connected
    foreground, 6-connected background).

    Args:
        mask: boolean mask, shape ``(X, Y, Z)``.

    Returns:
        ``V - E + F - C`` of the cubical complex; 0 for an empty mask.
    """
    _check_3d(mask, "euler_characteristic")
    p = padded_crop(mask).view(np.uint8)
    n0, n1, n2 = (s - 1 for s in p.shape)
    config = np.zeros((n0, n1, n2), dtype=np.uint8)
    for dx, dy, dz in itertools.product((0, 1), repeat=3):
        config |= p[dx : dx + n0, dy : dy + n1, dz : dz + n2] << (4 * dx + 2 * dy + dz)
    hist = np.bincount(config.ravel(), minlength=256)
    total = int(np.dot(hist, _EULER_LUT))
    assert total % 8 == 0, "Euler characteristic contributions must sum to a multiple of 8"
    return total // 8


def betti_numbers(mask: np.ndarray) -> tuple[int, int, int]:
    """Betti numbers ``(b0, b1, b2)`` of a 3D mask, TopCoW convention (see the module docstring).

    Args:
        mask: boolean mask, shape ``(X, Y, Z)``.

    Returns:
        ``(components, tunnels, cavities)``; ``(0, 0, 0)`` for an empty mask.
    """
    _check_3d(mask, "betti_numbers")
    crop = padded_crop(mask)
    _, b0 = ndi.label(crop, structure=_STRUCT_26)
    if b0 == 0:
        return 0, 0, 0
    # The margin joins all background that reaches the outside into one component.
    _, n_background = ndi.label(~crop, structure=_STRUCT_6)
    b2 = n_background - 1
    b1 = b0 + b2 - euler_characteristic(crop)
    return int(b0), int(b1), int(b2)
