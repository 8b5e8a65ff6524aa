"""Topology metrics: clDice and Betti numbers of 3D binary masks.

**clDice** (Shit et al., CVPR 2021): with skeletons ``S`` from scikit-image's 3D ``skeletonize``
(Lee's thinning), topology precision ``Tprec = |S(pred) & label| / |S(pred)|``, topology
sensitivity ``Tsens = |S(label) & pred| / |S(label)|`` and
``clDice = 2 Tprec Tsens / (Tprec + Tsens)`` (``0`` when both are 0). Empty masks:
both empty gives ``1.0``, one empty ``0.0``. scikit-image's thinning removes objects at most two
voxels thick in two directions (a 2x2xN bar vanishes; one or two voxels stay): when a nonempty
mask is made only of such objects its skeleton is empty, ``Tprec`` or ``Tsens`` is 0/0 and clDice
is ``None``.

**Betti numbers**, TopCoW convention: the foreground is 26-connected and the background
6-connected, i.e. the foreground is the union of closed unit cubes. ``betti_0`` is the number of
26-connected components, ``betti_2`` the number of cavities (6-connected background components
that do not reach the outside of the volume), and ``betti_1 = betti_0 + betti_2 - chi`` (tunnels,
loops), with ``chi`` the Euler characteristic of the union of closed cubes. An empty mask has
``(0, 0, 0)``.

Everything is computed per 26-connected component, inside the component's bounding box with a
one-voxel background margin, which changes none of these values: homology is additive over
disjoint closed pieces (``b_k``, ``chi`` sum over components; a cavity belongs to the component
around it), and skeletonisation only looks at a voxel's 3x3x3 neighbourhood, which holds no voxel
of another component, visiting voxels in raster order, which a shift preserves. Scattered false
positives therefore cost per voxel, not per bounding box of the whole scan.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from vesselfm.metrics._crop import Box, padded_crop
from vesselfm.metrics._voxels import VoxelSet, padded_crop_of

TOPOLOGY_METRICS: tuple[str, ...] = (
    "cldice",
    "betti_0",
    "betti_1",
    "betti_2",
    "betti_0_error",
    "betti_1_error",
)

_STRUCT_6 = ndi.generate_binary_structure(3, 1)


def _check_3d(mask: np.ndarray, what: str) -> None:
    if mask.ndim != 3:
        raise ValueError(f"{what}: expected a 3D mask (X, Y, Z), got shape {mask.shape}")


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
        fg = {c for c in corners if config >> (4 * c[0] + 2 * c[1] + c[2]) & 1}
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


def _euler_of_padded(p: np.ndarray) -> int:
    """Euler characteristic of a boolean volume whose outer layer is background."""
    p = p.view(np.uint8)
    n0, n1, n2 = (s - 1 for s in p.shape)
    config = np.zeros((n0, n1, n2), dtype=np.uint8)
    for dx, dy, dz in itertools.product((0, 1), repeat=3):
        config |= p[dx : dx + n0, dy : dy + n1, dz : dz + n2] << (4 * dx + 2 * dy + dz)
    total = int(np.dot(np.bincount(config.ravel(), minlength=256), _EULER_LUT))
    assert total % 8 == 0, "Euler characteristic contributions must sum to a multiple of 8"
    return total // 8


def euler_characteristic(mask: np.ndarray) -> int:
    """Euler characteristic of the union of the closed voxels of a 3D mask (26-connected
    foreground, 6-connected background).

    Args:
        mask: boolean mask, shape ``(X, Y, Z)``.

    Returns:
        ``V - E + F - C`` of the cubical complex; 0 for an empty mask.
    """
    _check_3d(mask, "euler_characteristic")
    return _euler_of_padded(padded_crop(np.asarray(mask, dtype=bool)))


@dataclass(frozen=True)
class MaskTopology:
    """Skeleton and Betti numbers of one mask (either may be skipped)."""

    skeleton: np.ndarray | None  # (n, 3) voxel indices of the skeleton
    betti: tuple[int, int, int] | None


def mask_topology(voxels: VoxelSet, skeleton: bool = True, betti: bool = True) -> MaskTopology:
    """Skeleton and/or Betti numbers of a mask, one 26-connected component at a time.

    Args:
        voxels: the mask's foreground voxels.
        skeleton: compute the skeleton (scikit-image ``skeletonize``, Lee's method).
        betti: compute ``(b0, b1, b2)``.

    Returns:
        The requested parts; the others are ``None``.
    """
    from skimage.morphology import skeletonize

    parts: list[np.ndarray] = []
    b0 = b2 = chi = 0
    for comp in voxels.components():
        b0 += 1
        if comp.shape[0] <= 2:
            # one voxel, or two adjacent ones: contractible, and thinning keeps end points
            if skeleton:
                parts.append(comp)
            chi += 1
            continue
        crop, origin = padded_crop_of(comp)
        if skeleton:
            parts.append(np.argwhere(skeletonize(crop)) + origin)
        if betti:
            chi += _euler_of_padded(crop)
            if min(crop.shape) >= 5:  # a cavity needs a box of at least 3 voxels per axis
                b2 += ndi.label(~crop, structure=_STRUCT_6)[1] - 1
    skel = None
    if skeleton:
        skel = np.concatenate(parts) if parts else np.empty((0, 3), dtype=np.int64)
    return MaskTopology(skeleton=skel, betti=(b0, b0 + b2 - chi, b2) if betti else None)


def skeleton(mask: np.ndarray) -> tuple[np.ndarray, Box] | None:
    """The 3D skeleton (scikit-image ``skeletonize``, Lee's method) of a mask, in its own box.

    Args:
        mask: boolean mask, shape ``(X, Y, Z)``.

    Returns:
        ``(skel, box)``: the skeleton restricted to the mask's bounding box ``box`` (boolean,
        shape of ``mask[box]``), identical to ``skeletonize(mask)[box]``; ``None`` for an empty
        mask.
    """
    _check_3d(mask, "skeleton")
    voxels = VoxelSet(np.asarray(mask, dtype=bool))
    bb = voxels.bounding_box()
    if bb is None:
        return None
    lo, hi = bb
    pts = mask_topology(voxels, skeleton=True, betti=False).skeleton - lo  # type: ignore[operator]
    skel = np.zeros(tuple(int(v) for v in hi - lo + 1), dtype=bool)
    skel[pts[:, 0], pts[:, 1], pts[:, 2]] = True
    return skel, tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))


def cldice_from_skeletons(
    skel_pred: np.ndarray, skel_label: np.ndarray, pred: VoxelSet, label: VoxelSet
) -> float | None:
    """clDice from skeleton voxel indices ``(n, 3)`` and the two masks (see the module doc)."""
    if pred.size == 0 or label.size == 0:
        return 1.0 if pred.size == label.size else 0.0
    if skel_pred.shape[0] == 0 or skel_label.shape[0] == 0:
        return None  # a nonempty mask without skeleton: Tprec or Tsens is 0/0
    tprec = np.count_nonzero(label.contains(skel_pred)) / skel_pred.shape[0]
    tsens = np.count_nonzero(pred.contains(skel_label)) / skel_label.shape[0]
    if tprec + tsens == 0:
        return 0.0
    return float(2 * tprec * tsens / (tprec + tsens))


def cldice(pred: np.ndarray, label: np.ndarray) -> float | None:
    """Centerline Dice of a binary prediction against a binary label.

    Args:
        pred: boolean prediction, shape ``(X, Y, Z)``.
        label: boolean label, same shape.

    Returns:
        clDice in [0, 1]: ``1.0`` when both masks are empty, ``0.0`` when exactly one is,
        ``None`` when a nonempty mask has an empty skeleton.
    """
    if pred.shape != label.shape:
        raise ValueError(
            f"pred and label must have the same shape, got {pred.shape} and {label.shape}"
        )
    _check_3d(pred, "cldice")
    vp, vl = VoxelSet(np.asarray(pred, dtype=bool)), VoxelSet(np.asarray(label, dtype=bool))
    sp = mask_topology(vp, betti=False).skeleton
    sl = mask_topology(vl, betti=False).skeleton
    return cldice_from_skeletons(sp, sl, vp, vl)  # type: ignore[arg-type]


def betti_numbers(mask: np.ndarray) -> tuple[int, int, int]:
    """Betti numbers ``(b0, b1, b2)`` of a 3D mask, TopCoW convention (see the module docstring).

    Args:
        mask: boolean mask, shape ``(X, Y, Z)``.

    Returns:
        ``(components, tunnels, cavities)``; ``(0, 0, 0)`` for an empty mask.
    """
    _check_3d(mask, "betti_numbers")
    result = mask_topology(VoxelSet(np.asarray(mask, dtype=bool)), skeleton=False).betti
    assert result is not None
    return result
