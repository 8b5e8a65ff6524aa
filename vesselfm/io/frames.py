"""Frame conversions: voxel orders and world frames (the only place that knows them)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def spacing_from_affine(affine: np.ndarray) -> tuple[float, float, float]:
    """Voxel size in mm along each array axis: the column norms of the affine's 3×3 part."""
    return tuple(float(v) for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def ras_voxel_order(
    affine: np.ndarray,
) -> tuple[Callable[[np.ndarray], np.ndarray], tuple[float, float, float]]:
    """How to show a volume in RAS+ voxel order (radiological display), whatever the file's.

    Args:
        affine: the volume's 4×4 voxel-to-RAS matrix (mm).

    Returns:
        ``(reorder, spacing)``: a function taking an ``(X, Y, Z)`` array of that grid to the
        closest RAS+ voxel order (axes swapped and flipped, nothing resampled), and the voxel
        size in mm along the reordered axes.
    """
    from nibabel.orientations import apply_orientation, io_orientation

    ornt = io_orientation(affine)
    spacing = np.asarray(spacing_from_affine(affine))[np.argsort(ornt[:, 0])]

    def reorder(array: np.ndarray) -> np.ndarray:
        return apply_orientation(array, ornt)

    return reorder, tuple(float(s) for s in spacing)  # type: ignore[return-value]
