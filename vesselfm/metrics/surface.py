"""Surface distances in mm: HD95 and ASSD, symmetric, as MONAI defines them.

The surface of a mask is its foreground voxels that have a 6-neighbour in the background
(``mask ^ binary_erosion(mask)``, the outside of the volume counting as background), as in
MONAI's ``get_mask_edges``. For every surface voxel of one mask we take the Euclidean distance
in mm (voxel spacing applied per axis) to the nearest surface voxel of the other, both ways:

- ``hd95_mm`` = max(95th percentile of pred->label distances, 95th percentile of label->pred),
  the percentile linearly interpolated (``np.percentile``; MONAI's ``torch.quantile``), i.e.
  MONAI's ``compute_hausdorff_distance(percentile=95)``;
- ``assd_mm`` = mean of all distances of both directions together, i.e. MONAI's
  ``compute_average_surface_distance(symmetric=True)``.

Surface voxels are found from the foreground voxels alone (no erosion of the volume) and nearest
distances come from a KD-tree over surface voxel centres (exact Euclidean, as MONAI's CPU path). A distance between surfaces needs two surfaces: when
either mask is empty both metrics are ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.spatial import cKDTree

from vesselfm.metrics._voxels import VoxelSet

SURFACE_METRICS: tuple[str, ...] = ("hd95_mm", "assd_mm")


def check_spacing(spacing: Sequence[float], ndim: int = 3) -> np.ndarray:
    """Voxel spacing as a float64 array of ``ndim`` positive finite values, else ``ValueError``."""
    try:
        sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"spacing: expected {ndim} voxel sizes in mm, got {spacing!r}") from err
    if sp.size != ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(
            f"spacing: expected {ndim} positive voxel sizes in mm, got {tuple(sp.tolist())}"
        )
    return sp


def surface_distances_from_points(
    surface_pred: np.ndarray, surface_label: np.ndarray, spacing: Sequence[float]
) -> tuple[np.ndarray, np.ndarray] | None:
    """Nearest-surface distances in mm between two sets of surface voxel indices ``(n, 3)``.

    Returns:
        ``(pred_to_label, label_to_pred)``, or ``None`` if either set is empty.
    """
    if surface_pred.shape[0] == 0 or surface_label.shape[0] == 0:
        return None
    sp = check_spacing(spacing, 3)
    pts_p = surface_pred * sp
    pts_l = surface_label * sp
    d_pl = cKDTree(pts_l, leafsize=32).query(pts_p, k=1)[0]
    d_lp = cKDTree(pts_p, leafsize=32).query(pts_l, k=1)[0]
    return d_pl, d_lp


def hd95_assd_from_distances(
    distances: tuple[np.ndarray, np.ndarray] | None,
) -> tuple[float | None, float | None]:
    """``(hd95_mm, assd_mm)`` from both directions' distances; ``(None, None)`` for ``None``."""
    if distances is None:
        return None, None
    d_pl, d_lp = distances
    hd95 = max(float(np.percentile(d_pl, 95)), float(np.percentile(d_lp, 95)))
    assd = float((d_pl.sum() + d_lp.sum()) / (d_pl.size + d_lp.size))
    return hd95, assd


def surface_distances(
    pred: np.ndarray, label: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances in mm from each pred surface voxel to the label surface, and back.

    Args:
        pred: boolean prediction, shape ``(X, Y, Z)``.
        label: boolean label, same shape.
        spacing: voxel size in mm per axis.

    Returns:
        ``(pred_to_label, label_to_pred)`` float64 arrays, or ``None`` if either mask is empty.
    """
    if pred.shape != label.shape:
        raise ValueError(
            f"pred and label must have the same shape, got {pred.shape} and {label.shape}"
        )
    check_spacing(spacing, 3)
    vp = VoxelSet(np.asarray(pred, dtype=bool))
    vl = VoxelSet(np.asarray(label, dtype=bool))
    return surface_distances_from_points(vp.surface(), vl.surface(), spacing)


def hd95_assd(
    pred: np.ndarray, label: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[float | None, float | None]:
    """Symmetric 95th-percentile Hausdorff distance and average symmetric surface distance.

    Args:
        pred: boolean prediction, shape ``(X, Y, Z)``.
        label: boolean label, same shape.
        spacing: voxel size in mm per axis.

    Returns:
        ``(hd95_mm, assd_mm)``; ``(None, None)`` when either mask is empty.
    """
    return hd95_assd_from_distances(surface_distances(pred, label, spacing))
