"""Analytic vessel masks for the analysis tests: tubes with a known radius profile, on any grid."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

#: an anisotropic grid with flipped in-plane axes, as scanners write them (voxel -> RAS mm)
FLIPPED = np.array(
    [
        [-0.4, 0.0, 0.0, 20.0],
        [0.0, -0.45, 0.0, 30.0],
        [0.0, 0.0, 0.6, -10.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def world_grid(shape: Sequence[int], affine: np.ndarray) -> np.ndarray:
    """World (RAS mm) coordinates of every voxel centre, ``(X, Y, Z, 3)``."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), axis=-1)
    return idx.astype(float) @ affine[:3, :3].T + affine[:3, 3]


def tube(
    world: np.ndarray,
    p0: Sequence[float],
    p1: Sequence[float],
    radius: Callable[[np.ndarray], np.ndarray] | float,
) -> np.ndarray:
    """Voxels within ``radius(s)`` mm of the segment ``p0``-``p1`` (world mm), ``s`` the distance
    from ``p0`` along it; the ends are flat."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    axis = p1 - p0
    length = float(np.linalg.norm(axis))
    axis /= length
    rel = world - p0
    s = rel @ axis
    dist = np.linalg.norm(rel - s[..., None] * axis, axis=-1)
    r = radius(s) if callable(radius) else np.full(s.shape, float(radius))
    return (s >= 0) & (s <= length) & (dist <= r)


def narrowed(r0: float, r1: float, length: float, lesions: Sequence[tuple[float, float, float]]):
    """Radius profile tapering linearly from ``r0`` to ``r1`` over ``length`` mm, with smooth
    (cosine) narrowings ``(centre mm, diameter reduction 0-1, length mm)``."""

    def radius(s: np.ndarray) -> np.ndarray:
        base = r0 + (r1 - r0) * np.clip(s / length, 0, 1)
        factor = np.ones_like(s)
        for centre, reduction, width in lesions:
            inside = np.abs(s - centre) < width / 2
            bump = 0.5 * (1 + np.cos(2 * np.pi * (s - centre) / width))
            factor = np.where(inside, np.minimum(factor, 1 - reduction * bump), factor)
        return base * factor

    return radius
