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

Nearest distances come from a KD-tree over surface voxel centres (exact Euclidean, as MONAI's CPU
path), inside the padded box of both masks. A distance between surfaces needs two surfaces: when
either mask is empty both metrics are ``None``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from vesselfm.metrics._crop import Box
from vesselfm.metrics.overlap import padded_union_box

SURFACE_METRICS: tuple[str, ...] = ("hd95_mm", "assd_mm")


def _check_spacing(spacing: Sequence[float], ndim: int) -> np.ndarray:
    sp = np.asarray(spacing, dtype=np.float64).reshape(-1)
    if sp.size != ndim or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise ValueError(
            f"spacing: expected {ndim} positive voxel sizes in mm, got {tuple(np.asarray(spacing).tolist())}"
        )
    return sp


def surface_points(mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    """Coordinates in mm of the surface voxels (foreground with a background 6-neighbour).

    Args:
        mask: boolean mask, shape ``(X, Y, Z)`` (or a crop of one with a background margin).
        spacing: voxel size in mm per axis.

    Returns:
        float64 array ``(n_surface_voxels, ndim)``, coordinates relative to ``mask[0, 0, 0]``.
    """
    sp = _check_spacing(spacing, mask.ndim)
    mask = np.asarray(mask, dtype=bool)
    edges = mask ^ ndi.binary_erosion(mask, border_value=0)
    return np.argwhere(edges).astype(np.float64) * sp


def surface_distances(
    pred: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    box: Box | None = None,
) -> tuple[np.ndarray, np.ndarray] | None:
    """Distances in mm from each pred surface voxel to the label surface, and back.

    Args:
        pred: boolean prediction, shape ``(X, Y, Z)``.
        label: boolean label, same shape.
        spacing: voxel size in mm per axis.
        box: the padded bounding box of both masks (computed when ``None``).

    Returns:
        ``(pred_to_label, label_to_pred)`` float64 arrays, or ``None`` if either mask is empty.
    """
    if pred.shape != label.shape:
        raise ValueError(
            f"pred and label must have the same shape, got {pred.shape} and {label.shape}"
        )
    sp = _check_spacing(spacing, pred.ndim)
    if box is None:
        box = padded_union_box(pred, label)
        if box is None:
            return None
    pts_p = surface_points(pred[box], sp)
    pts_l = surface_points(label[box], sp)
    if pts_p.shape[0] == 0 or pts_l.shape[0] == 0:
        return None
    d_pl = cKDTree(pts_l, leafsize=32).query(pts_p, k=1)[0]
    d_lp = cKDTree(pts_p, leafsize=32).query(pts_l, k=1)[0]
    return d_pl, d_lp


def hd95_assd(
    pred: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    box: Box | None = None,
) -> tuple[float | None, float | None]:
    """Symmetric 95th-percentile Hausdorff distance and average symmetric surface distance.

    Args:
        pred: boolean prediction, shape ``(X, Y, Z)``.
        label: boolean label, same shape.
        spacing: voxel size in mm per axis.
        box: the padded bounding box of both masks (computed when ``None``).

    Returns:
        ``(hd95_mm, assd_mm)``; ``(None, None)`` when either mask is empty.
    """
    d = surface_distances(pred, label, spacing, box)
    if d is None:
        return None, None
    d_pl, d_lp = d
    hd95 = max(float(np.percentile(d_pl, 95)), float(np.percentile(d_lp, 95)))
    assd = float((d_pl.sum() + d_lp.sum()) / (d_pl.size + d_lp.size))
    return hd95, assd
