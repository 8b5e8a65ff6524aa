"""Bounding boxes of masks, and crops with a one-voxel background margin.

Topology only depends on the foreground and its one-voxel neighbourhood, so a margin of one
background voxel around the foreground's box changes no skeleton, Euler characteristic or cavity.
"""

from __future__ import annotations

import numpy as np

Box = tuple[slice, ...]


def bounding_box(mask: np.ndarray) -> Box | None:
    """The tight bounding box of the nonzero voxels, or ``None`` when there are none.

    Args:
        mask: boolean array of any dimension.

    Returns:
        One ``slice`` per axis (stop exclusive), or ``None`` for an empty mask.
    """
    if mask.ndim == 0:
        raise ValueError(f"mask must have at least one axis, got shape {mask.shape}")
    # Project onto the first axis, then search the other axes only inside that range: for a
    # sparse vessel mask the second reduction touches a small slab.
    first = np.flatnonzero(mask.any(axis=tuple(range(1, mask.ndim))))
    if first.size == 0:
        return None
    lo, hi = int(first[0]), int(first[-1]) + 1
    box: list[slice] = [slice(lo, hi)]
    slab = mask[lo:hi]
    for axis in range(1, mask.ndim):
        others = tuple(a for a in range(mask.ndim) if a != axis)
        idx = np.flatnonzero(slab.any(axis=others))
        box.append(slice(int(idx[0]), int(idx[-1]) + 1))
    return tuple(box)


def padded_crop(mask: np.ndarray, box: Box | None = None) -> np.ndarray:
    """``mask`` restricted to ``box`` (default: its own bounding box), with one background voxel
    on every side, as a new C-contiguous boolean array.

    The margin is added even where the box touches the array's border: a mask touching the
    border behaves as if the outside were background, as the Euler characteristic of the union of
    closed voxels and skeletonisation assume.

    Args:
        mask: boolean array.
        box: the region to keep; ``None`` uses the mask's bounding box.

    Returns:
        Boolean array of shape ``box size + 2`` per axis; shape ``(2,) * ndim`` of ``False`` for
        an empty mask and no box.
    """
    if box is None:
        box = bounding_box(mask)
        if box is None:
            return np.zeros((2,) * mask.ndim, dtype=bool)
    return np.pad(np.asarray(mask[box], dtype=bool), 1)
