"""Sparse view of a 3D mask: its foreground voxels, their surface and 26-connected components.

Vessel masks fill about 0.1-1 % of a CTA volume, and a prediction's false positives may be
scattered all over it, so that even a bounding box can be the whole scan. Everything here costs
O(number of foreground voxels) after one ``flatnonzero`` pass, except connected components of
dense masks, which fall back to ``scipy.ndimage.label`` over the bounding box.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from functools import cached_property

import numpy as np
from scipy import ndimage as ndi
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# The 13 "forward" neighbours of the 26-neighbourhood: each adjacent pair is visited once.
_FORWARD_26 = np.array(
    [o for o in itertools.product((-1, 0, 1), repeat=3) if o > (0, 0, 0)], dtype=np.int64
)
_FACES_6 = np.array(
    [(-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1)], dtype=np.int64
)
# Above this fill of the bounding box, labelling the box beats the sparse neighbour graph.
_DENSE_FILL = 1 / 16


class VoxelSet:
    """The foreground voxels of a 3D boolean mask.

    Args:
        mask: boolean array ``(X, Y, Z)``; kept by reference (not copied) for neighbour lookups.
    """

    def __init__(self, mask: np.ndarray) -> None:
        if mask.dtype != bool:
            raise TypeError(f"VoxelSet needs a boolean mask, got {mask.dtype}")
        if mask.ndim != 3:
            raise ValueError(f"expected a 3D mask (X, Y, Z), got shape {mask.shape}")
        self.mask = mask
        self.shape: tuple[int, int, int] = mask.shape  # type: ignore[assignment]
        self.flat = np.flatnonzero(mask)

    @property
    def size(self) -> int:
        return int(self.flat.size)

    @cached_property
    def coords(self) -> np.ndarray:
        """``(n, 3)`` int64 voxel indices, in C (raster) order."""
        if self.flat.size == 0:
            return np.empty((0, 3), dtype=np.int64)
        return np.stack(np.unravel_index(self.flat, self.shape), axis=1).astype(np.int64)

    @cached_property
    def _mask_flat(self) -> np.ndarray:
        return self.mask.reshape(-1) if self.mask.flags.c_contiguous else self.mask.ravel()

    @cached_property
    def _strides(self) -> np.ndarray:
        return np.array([self.shape[1] * self.shape[2], self.shape[2], 1], dtype=np.int64)

    def _inside_after(self, off: np.ndarray) -> np.ndarray:
        """Whether each voxel shifted by ``off`` (one step per axis at most) stays in the volume."""
        ok = np.ones(self.size, dtype=bool)
        c = self.coords
        for axis, step in enumerate(off):
            if step < 0:
                ok &= c[:, axis] > 0
            elif step > 0:
                ok &= c[:, axis] < self.shape[axis] - 1
        return ok

    def _neighbour(self, off: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For the shift ``off``: which voxels have that neighbour in the mask, and its flat index."""
        src = np.flatnonzero(self._inside_after(off))
        target = self.flat[src] + int(off @ self._strides)
        hit = self._mask_flat[target]
        present = np.zeros(self.size, dtype=bool)
        present[src[hit]] = True
        return present, target[hit]

    def contains(self, coords: np.ndarray) -> np.ndarray:
        """Whether each ``(n, 3)`` voxel index lies in the mask (outside the volume: ``False``)."""
        inside = np.ones(coords.shape[0], dtype=bool)
        for axis in range(3):
            inside &= (coords[:, axis] >= 0) & (coords[:, axis] < self.shape[axis])
        out = np.zeros(coords.shape[0], dtype=bool)
        c = coords[inside]
        out[inside] = self._mask_flat[c @ self._strides]
        return out

    def surface(self) -> np.ndarray:
        """Voxels with a 6-neighbour outside the mask (or outside the volume): ``(m, 3)``.

        The same set as ``mask ^ binary_erosion(mask, border_value=0)``.
        """
        interior = np.ones(self.size, dtype=bool)
        for off in _FACES_6:
            interior &= self._neighbour(off)[0]
        return self.coords[~interior]

    def bounding_box(self) -> tuple[np.ndarray, np.ndarray] | None:
        """``(lo, hi)`` inclusive voxel corners, or ``None`` when empty."""
        if self.size == 0:
            return None
        c = self.coords
        return c.min(axis=0), c.max(axis=0)

    def component_labels(self) -> tuple[np.ndarray, int]:
        """26-connected components: a label in ``[0, n)`` per voxel (in ``coords`` order), ``n``."""
        n = self.size
        if n == 0:
            return np.empty(0, dtype=np.int64), 0
        lo, hi = self.bounding_box()  # type: ignore[misc]
        if n > _DENSE_FILL * float(np.prod(hi - lo + 1)):
            box = tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi, strict=True))
            img, count = ndi.label(self.mask[box], structure=np.ones((3, 3, 3), dtype=bool))
            c = self.coords - lo
            return img[c[:, 0], c[:, 1], c[:, 2]].astype(np.int64) - 1, int(count)
        rows, cols = [], []
        for off in _FORWARD_26:
            present, target = self._neighbour(off)
            rows.append(np.flatnonzero(present))
            cols.append(np.searchsorted(self.flat, target))
        r, k = np.concatenate(rows), np.concatenate(cols)
        graph = coo_matrix((np.ones(r.size, dtype=np.int8), (r, k)), shape=(n, n)).tocsr()
        count, labels = connected_components(graph, directed=False)
        return labels.astype(np.int64), int(count)

    def components(self) -> Iterator[np.ndarray]:
        """Each 26-connected component's voxel indices ``(m, 3)`` (raster order within each)."""
        labels, count = self.component_labels()
        order = np.argsort(labels, kind="stable")
        ends = np.cumsum(np.bincount(labels, minlength=count))
        starts = ends - np.bincount(labels, minlength=count)
        c = self.coords[order]
        for s, e in zip(starts, ends, strict=True):
            yield c[s:e]


def padded_crop_of(coords: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A boolean crop holding ``coords`` with one background voxel on every side.

    Returns:
        ``(crop, origin)``: ``crop[i, j, k]`` is voxel ``origin + (i, j, k)`` of the volume
        (``origin`` may be -1 on an axis: the margin may lie outside the volume).
    """
    lo = coords.min(axis=0) - 1
    hi = coords.max(axis=0) + 1
    crop = np.zeros(tuple(int(v) for v in hi - lo + 1), dtype=bool)
    local = coords - lo
    crop[local[:, 0], local[:, 1], local[:, 2]] = True
    return crop, lo
