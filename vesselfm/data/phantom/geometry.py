"""Voxel geometry shared by what the phantom draws: the grid in mm, rotations, and the depth
of capsules, ellipsoids and balls evaluated on a bounding box only."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis`` by ``angle`` radians."""
    k = _unit(np.asarray(axis, dtype=float))
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


@dataclass
class _Grid:
    """Voxel-centre coordinates (mm) per axis, from the centre of the field of view.

    Axis 0 runs towards the patient's left, axis 1 towards posterior, axis 2 towards superior.
    """

    axes: tuple[np.ndarray, np.ndarray, np.ndarray]
    spacing: np.ndarray

    @classmethod
    def make(cls, shape: Sequence[int], spacing: np.ndarray) -> _Grid:
        axes = tuple(
            ((np.arange(n) - (n - 1) / 2.0) * float(h)).astype(np.float32)
            for n, h in zip(shape, spacing, strict=True)
        )
        return cls(axes, np.asarray(spacing, dtype=float))  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(a) for a in self.axes)  # type: ignore[return-value]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres may lie in ``[lo, hi]`` mm (None if empty)."""
        out = []
        for a, h, lo_k, hi_k in zip(self.axes, self.spacing, lo, hi, strict=True):
            i0 = max(int(math.floor((lo_k - a[0]) / h)), 0)
            i1 = min(int(math.ceil((hi_k - a[0]) / h)) + 1, len(a))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinate arrays ``(n,1,1), (1,n,1), (1,1,n)`` for ``box``."""
        x, y, z = (a[s] for a, s in zip(self.axes, box, strict=True))
        return x[:, None, None], y[None, :, None], z[None, None, :]


def _offset_box(box: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer, strict=True)
    )


def _segment_depth(
    grid: _Grid, a: np.ndarray, b: np.ndarray, ra: float, rb: float, pad: np.ndarray
) -> tuple[tuple[slice, ...] | None, np.ndarray | None]:
    """Signed depth (mm, positive inside) of a capsule from ``a`` to ``b`` (radius ``ra`` to
    ``rb``), on the capsule's own bounding box (``None`` if off the grid)."""
    rmax = max(ra, rb)
    box = grid.box(np.minimum(a, b) - rmax - pad, np.maximum(a, b) + rmax + pad)
    if box is None:
        return None, None
    x, y, z = grid.coords(box)
    ab = (b - a).astype(np.float32)
    dx, dy, dz = x - float(a[0]), y - float(a[1]), z - float(a[2])
    inv = 1.0 / max(float(ab @ ab), 1e-12)
    t = np.clip((dx * float(ab[0]) + dy * float(ab[1]) + dz * float(ab[2])) * inv, 0, 1)
    d = np.sqrt(
        (dx - t * float(ab[0])) ** 2 + (dy - t * float(ab[1])) ** 2 + (dz - t * float(ab[2])) ** 2
    )
    return box, ra + t * (rb - ra) - d


def _ellipsoid_value(
    grid: _Grid, box: tuple[slice, ...], center: np.ndarray, rot: np.ndarray, axes: np.ndarray
) -> np.ndarray:
    """``sum((local_i / axes_i)^2)`` (float32) on ``box``: <= 1 inside the rotated ellipsoid."""
    x, y, z = grid.coords(box)
    cx, cy, cz = (float(c) for c in center)
    out: np.ndarray | None = None
    for i in range(3):
        a, b, c = (float(v) for v in rot[:, i] / axes[i])
        term = (x - cx) * a + (y - cy) * b  # (nx, ny, 1): cheap
        term = term + (z - cz) * c
        np.square(term, out=term)
        if out is None:
            out = term
        else:
            out += term
    assert out is not None
    return out


def _ellipsoid_box(
    grid: _Grid, center: np.ndarray, rot: np.ndarray, axes: np.ndarray
) -> tuple[slice, ...] | None:
    half = np.sqrt(((rot * axes[None, :]) ** 2).sum(axis=1))
    return grid.box(center - half, center + half)


def _ball(grid: _Grid, box: tuple[slice, ...], center: np.ndarray, radius: float) -> np.ndarray:
    x, y, z = grid.coords(box)
    cx, cy, cz = (float(c) for c in center)
    return (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius * radius
