"""The metrics ImageCAS-X reports, as its own evaluation code defines them.

Pure functions on arrays (NumPy, SciPy); :mod:`vesselfm.metrics.folders` calls
:func:`imagecasx_columns` per case and writes the tables. No Lightning, no Hydra.

- **Volumes** (always): ``volume_pred_ml``, ``volume_gt_ml`` (voxel count × voxel volume / 1000),
  ``volume_bias_ml`` (pred − gt, positive: over-segmentation), ``volume_abs_diff_ml``.
- **Centreline distance** (with ground-truth centrelines): the prediction's skeleton (Lee's 3D
  thinning, voxel centres in world mm) against the ground-truth centreline points (left and right
  files together). ``centerline_md_mm`` is the mean of the two directed mean nearest-point
  distances; ``centerline_hd95_mm`` the larger of the two directed 95th percentiles.
- **Segment Dice** (labels holding the 14 ImageCAS-X segment codes): ``dice_<name>`` per
  segment, empty where the segment is absent from the ground truth. A segment prediction is
  scored code by code. A binary (lumen) prediction is scored by giving each predicted voxel the
  code of the nearest ground-truth vessel voxel (in mm): its voxels inside the ground truth take
  that voxel's code, its false positives count against the nearest segment.
- **Local Dice**: Dice of the binary masks in an 8 mm cube around ground-truth centreline
  vertices: every 5th vertex counted in hops from the ostia (``start_points``), plus every end
  point; empty where the cube holds no ground truth. Each vertex carries its arc distance from
  the ostium, its segment, the lumen diameter (twice the ground truth's distance transform at
  the nearest lumen voxel) and, with the scans, the lumen HU (mean over the lumen voxels within
  0.7 × the local radius); vertices more than 3 mm from the lumen are dropped. They are binned
  by :data:`BINS` (cut points; lower-inclusive bins, ``<first`` and ``>last`` at the ends).

Frames: ImageCAS-X centrelines are in LPS mm; volumes' affines (:class:`vesselfm.io.Volume`) map
voxels to RAS mm. Every comparison converts the centreline points with
:func:`vesselfm.io.centerlines.lps_to_ras` first.
"""

from __future__ import annotations

import csv
import logging
import math
from collections import deque
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vesselfm.io.centerlines import Centerlines, lps_to_ras
from vesselfm.io.terminology import SEGMENTS
from vesselfm.utils.errors import UserError

log = logging.getLogger(__name__)

#: the segment Dice columns, by code (``R-PDA`` → ``dice_R_PDA``)
SEGMENT_COLUMNS: dict[int, str] = {k: "dice_" + v.replace("-", "_") for k, v in SEGMENTS.items()}
VOLUME_COLUMNS = ("volume_pred_ml", "volume_gt_ml", "volume_bias_ml", "volume_abs_diff_ml")
CENTERLINE_COLUMNS = ("centerline_md_mm", "centerline_hd95_mm")
#: side of each centreline file, ``<case>.coronary_<side>_centerline.vtk``
SIDES = ("left", "right")
ROI_SIZE_MM = 8.0
STEP_VERTICES = 5
#: vertices farther than this from the ground-truth lumen are dropped from local Dice
MAX_SNAP_MM = 3.0
#: cut points of the local-Dice bins (ImageCAS-X's ``point_metrics.bins``)
BINS: dict[str, tuple[float, ...]] = {
    "dist_mm": (25.0, 50.0, 75.0, 100.0, 125.0, 150.0),
    "hu": (150.0, 250.0, 350.0, 450.0),
    "diameter_mm": (1.0, 1.5, 2.0, 2.5, 3.0),
}
#: the columns of ``local_dice.csv``
POINT_COLUMNS = (
    "case",
    "side",
    "vertex",
    "x_lps_mm",
    "y_lps_mm",
    "z_lps_mm",
    "segment_label",
    "segment_name",
    "dist_mm",
    "depth",
    "is_end_point",
    "diameter_mm",
    "hu",
    "snap_mm",
    "local_dice",
)
#: descriptor columns ImageCAS-X stratifies by, and its id column
DESCRIPTOR_GROUPS = ("Image Quality", "Dominance", "Disease")
DESCRIPTOR_ID = "Scan ID"


# ------------------------------------------------------------------------------------ volumes --


def volumes_ml(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Predicted and true lumen volume and their difference, in ml.

    Args:
        pred: binary prediction ``(X, Y, Z)``.
        label: binary label, same shape.
        spacing: voxel size in mm.
    """
    voxel_ml = float(np.prod(np.asarray(spacing, dtype=np.float64))) / 1000.0
    v_pred = int(np.count_nonzero(pred)) * voxel_ml
    v_gt = int(np.count_nonzero(label)) * voxel_ml
    return {
        "volume_pred_ml": v_pred,
        "volume_gt_ml": v_gt,
        "volume_bias_ml": v_pred - v_gt,
        "volume_abs_diff_ml": abs(v_pred - v_gt),
    }


# ------------------------------------------------------------------------------- segment Dice --


def is_segment_label(label: np.ndarray) -> bool:
    """Whether a label holds segment codes (an integer array with a value above 1)."""
    return label.dtype.kind in "iu" and label.size > 0 and int(label.max()) > 1


def segment_codes(values: np.ndarray, min_codes: int = 1) -> np.ndarray | None:
    """``values`` as integer segment codes when they are codes, else ``None``.

    Codes: whole numbers (a float file of codes included), some above 1, at least
    ``min_codes`` distinct non-zero values. A label needs two (``min_codes=2``): a mask of 0 and
    one other value (0/255, 0/2) is a mask saved with another foreground value, refused as not
    binary, not a tree of one segment; a prediction scored against segments needs one.
    ``None``: a binary mask or probabilities.
    """
    if values.dtype.kind == "f":
        if not values.size or float(values.max()) <= 1 or not np.all(np.mod(values, 1) == 0):
            return None
        values = values.astype(np.int64)
    if not is_segment_label(values):
        return None
    if min_codes > 1 and len(np.unique(values[values != 0])[:min_codes]) < min_codes:
        return None
    return values


def check_segments(values: np.ndarray, where: str) -> None:
    """Refuse values that are not ImageCAS-X codes (integers 0..14)."""
    if values.dtype.kind not in "iub":
        raise ValueError(
            f"{where}: expected integer segment codes 0..{max(SEGMENTS)}, got dtype {values.dtype}"
        )
    if values.size and (int(values.min()) < 0 or int(values.max()) > max(SEGMENTS)):
        raise ValueError(
            f"{where}: expected a binary mask (0/1) or ImageCAS-X segment codes "
            f"0..{max(SEGMENTS)}, got values in [{int(values.min())}, {int(values.max())}]; "
            "binarise it first (e.g. label > 0)"
        )


def propagate_codes(pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """A binary prediction given segment codes: each predicted voxel takes the code of the
    nearest labelled voxel (Euclidean, in mm); voxels inside the label keep its own code.

    Works on the foreground only (a KD-tree of the label's voxels), not the whole grid.
    """
    from scipy.spatial import cKDTree

    out = np.zeros(pred.shape, dtype=np.uint8)
    pred_idx = np.argwhere(pred)
    label_idx = np.argwhere(label > 0)
    if not len(pred_idx) or not len(label_idx):
        return out
    sp = np.asarray(spacing, dtype=np.float64)
    _, nearest = cKDTree(label_idx * sp).query(pred_idx * sp)
    codes = label[tuple(label_idx[nearest].T)]
    out[tuple(pred_idx.T)] = codes
    return out


def segment_dice(
    pred: np.ndarray, label: np.ndarray, spacing: Sequence[float]
) -> dict[str, float | None]:
    """Dice per ImageCAS-X segment.

    Args:
        pred: segment codes (0..14) or a binary mask, ``(X, Y, Z)``; a binary mask is given
            codes by :func:`propagate_codes`.
        label: segment codes 0..14, same shape.
        spacing: voxel size in mm (for the nearest-voxel rule of a binary prediction).

    Returns:
        ``{dice_<name>: value}`` for all 14 segments; ``None`` where the segment is absent from
        ``label``; ``0.0`` where it is in ``label`` but not predicted.
    """
    if not is_segment_label(pred):
        pred = propagate_codes(pred != 0, label, spacing)
    gt_counts = np.bincount(label.ravel(), minlength=max(SEGMENTS) + 1)
    pred_counts = np.bincount(pred.ravel(), minlength=max(SEGMENTS) + 1)
    both = label == pred
    both &= label > 0
    tp = np.bincount(label[both], minlength=max(SEGMENTS) + 1)
    out: dict[str, float | None] = {}
    for code, column in SEGMENT_COLUMNS.items():
        if gt_counts[code] == 0:
            out[column] = None
        else:
            out[column] = float(2.0 * tp[code] / (gt_counts[code] + pred_counts[code]))
    return out


# -------------------------------------------------------------------------- centreline distance --


def voxels_to_lps(idx: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Voxel indices (or continuous voxel coordinates) to LPS mm through a RAS affine."""
    idx = np.asarray(idx, dtype=np.float64).reshape(-1, 3)
    ras = idx @ np.asarray(affine)[:3, :3].T + np.asarray(affine)[:3, 3]
    return lps_to_ras(ras)  # the same flip of x and y maps RAS back to LPS


def lps_to_voxels(points_lps: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """LPS mm to continuous voxel coordinates through a RAS affine."""
    ras = lps_to_ras(np.asarray(points_lps, dtype=np.float64).reshape(-1, 3))
    return (ras - np.asarray(affine)[:3, 3]) @ np.linalg.inv(np.asarray(affine)[:3, :3]).T


def skeleton_points_lps(pred: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The prediction's skeleton (scikit-image's Lee thinning) as voxel centres, LPS mm."""
    from vesselfm.metrics.topology import skeleton

    found = skeleton(np.asarray(pred, dtype=bool))
    if found is None:
        return np.empty((0, 3))
    skel, box = found
    idx = np.argwhere(skel) + np.array([s.start for s in box])
    return voxels_to_lps(idx, affine)


def centerline_distances(pred_points: np.ndarray, gt_points: np.ndarray) -> dict[str, float | None]:
    """Symmetric distances between two point sets in one frame (mm).

    Returns:
        ``centerline_md_mm``: mean of the two directed mean nearest-point distances;
        ``centerline_hd95_mm``: the larger of the two directed 95th percentiles. ``None`` when
        either set is empty.
    """
    from scipy.spatial import cKDTree

    if not len(pred_points) or not len(gt_points):
        return dict.fromkeys(CENTERLINE_COLUMNS)
    d_gt_to_pred, _ = cKDTree(pred_points).query(gt_points)
    d_pred_to_gt, _ = cKDTree(gt_points).query(pred_points)
    return {
        "centerline_md_mm": float((d_gt_to_pred.mean() + d_pred_to_gt.mean()) / 2.0),
        "centerline_hd95_mm": float(
            max(np.percentile(d_gt_to_pred, 95), np.percentile(d_pred_to_gt, 95))
        ),
    }


# --------------------------------------------------------------------------------- local Dice --


def traverse(c: Centerlines) -> tuple[np.ndarray, np.ndarray]:
    """Hop count and arc length (mm) of every vertex from the nearest marked ostium.

    Breadth-first from every vertex flagged in ``start_points`` at once, over the undirected
    graph of the line cells (their orientation carries no meaning). Unreached vertices get
    ``-1`` and ``inf``.
    """
    n = c.n_points
    adjacency: list[set[int]] = [set() for _ in range(n)]
    for cell in c.lines:
        for a, b in zip(cell[:-1], cell[1:], strict=True):
            if a != b:
                adjacency[int(a)].add(int(b))
                adjacency[int(b)].add(int(a))
    depth = np.full(n, -1, dtype=np.int64)
    dist = np.full(n, np.inf)
    starts = c.point_data.get("start_points")
    roots = np.flatnonzero(starts) if starts is not None else np.empty(0, dtype=np.int64)
    queue = deque(int(r) for r in roots)
    depth[roots] = 0
    dist[roots] = 0.0
    points = c.points_lps
    while queue:
        v = queue.popleft()
        for w in adjacency[v]:
            if depth[w] < 0:
                depth[w] = depth[v] + 1
                dist[w] = dist[v] + float(np.linalg.norm(points[w] - points[v]))
                queue.append(w)
    return depth, dist


def sample_vertices(c: Centerlines, step: int = STEP_VERTICES) -> dict[str, np.ndarray]:
    """The local-Dice vertices: every ``step``-th hop from the ostia, plus every end point.

    Returns:
        ``vertex``, ``depth``, ``dist_mm``, ``is_end_point``, ``segment_label``,
        ``segment_name`` per sampled vertex (empty arrays where no ostium is marked).
    """
    depth, dist = traverse(c)
    ends = c.point_data.get("end_points")
    reached = depth >= 0
    chosen = reached & (depth % step == 0)
    is_end = np.zeros(c.n_points, dtype=bool) if ends is None else np.asarray(ends) != 0
    chosen |= reached & is_end
    vertex = np.flatnonzero(chosen)
    labels = c.point_data.get("segment_label")
    names = c.point_data.get("segment_name")
    seg = np.zeros(c.n_points, dtype=np.int64) if labels is None else np.asarray(labels)
    if names is None:
        names = np.array([SEGMENTS.get(int(v), "") for v in seg])
    return {
        "vertex": vertex,
        "depth": depth[vertex],
        "dist_mm": dist[vertex],
        "is_end_point": is_end[vertex].astype(np.int64),
        "segment_label": seg[vertex].astype(np.int64),
        "segment_name": np.asarray(names)[vertex],
    }


def local_dice(
    pred: np.ndarray,
    label: np.ndarray,
    centres: np.ndarray,
    spacing: Sequence[float],
    roi_size_mm: float = ROI_SIZE_MM,
) -> np.ndarray:
    """Dice of ``pred`` and ``label`` in a cube of ``roi_size_mm`` around each centre voxel.

    The half-width is ``max(round(roi_size_mm / 2 / spacing), 1)`` voxels per axis (a fixed
    physical size, whatever the spacing); the cube is clipped at the volume's border. NaN where
    the cube holds no label voxel or lies outside the volume.
    """
    shape = np.array(label.shape)
    half = np.maximum(np.round(roi_size_mm / 2.0 / np.asarray(spacing, float)).astype(int), 1)
    out = np.full(len(centres), np.nan)
    for i, centre in enumerate(np.asarray(centres, dtype=np.int64).reshape(-1, 3)):
        lo = np.maximum(centre - half, 0)
        hi = np.minimum(centre + half + 1, shape)
        if np.any(lo >= hi):
            continue
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        g, p = label[box], pred[box]
        n_g = int(np.count_nonzero(g))
        if n_g:
            out[i] = 2.0 * np.count_nonzero(g & p) / (n_g + np.count_nonzero(p))
    return out


def lumen_radius(
    label: np.ndarray,
    voxels: np.ndarray,
    spacing: Sequence[float],
    lumen: np.ndarray | None = None,
) -> np.ndarray:
    """The lumen's Euclidean distance transform (mm) at the given lumen voxels.

    Equal to ``scipy.ndimage.distance_transform_edt(label, sampling=spacing)`` there (outside
    the volume counting as background), but sparse: the nearest background voxel of a lumen
    voxel always touches the lumen (one step towards the lumen voxel along an axis where they
    differ is closer, so it is lumen), so a KD-tree of the background voxels 6-adjacent to the
    lumen gives the same distances without a transform of the tree's whole bounding box.
    ``lumen``: ``np.argwhere(label)``, when the caller has it.
    """
    from scipy.spatial import cKDTree

    lumen = np.argwhere(label) if lumen is None else lumen
    lo = lumen.min(axis=0) - 1
    shape = tuple(int(v) for v in lumen.max(axis=0) - lo + 2)
    box = np.zeros(shape, dtype=bool)
    flat = np.ravel_multi_index(tuple((lumen - lo).T), shape)
    box.flat[flat] = True
    strides = np.array([shape[1] * shape[2], shape[2], 1], dtype=np.int64)
    around = np.unique((flat[:, None] + np.concatenate([strides, -strides])[None]).ravel())
    border = np.stack(np.unravel_index(around[~box.flat[around]], shape), axis=1)
    sp = np.asarray(spacing, dtype=np.float64)
    radius, _ = cKDTree(border * sp).query((np.asarray(voxels) - lo) * sp)
    return radius


def lumen_covariates(
    label: np.ndarray,
    affine: np.ndarray,
    spacing: Sequence[float],
    points_lps: np.ndarray,
    image: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Diameter (mm), lumen HU and snap distance (mm) at each point, from the ground truth.

    Each point is moved to the nearest lumen voxel (``snap_mm`` is how far); the diameter is
    twice the lumen's Euclidean distance transform there (:func:`lumen_radius`); HU is the mean
    over the lumen voxels within ``max(0.7 × radius, smallest spacing)`` of the point (NaN
    without ``image``).
    """
    from scipy.spatial import cKDTree

    n = len(points_lps)
    lumen_idx = np.argwhere(label)
    if not len(lumen_idx) or not n:
        return {k: np.full(n, np.nan) for k in ("diameter_mm", "hu", "snap_mm")}
    tree = cKDTree(voxels_to_lps(lumen_idx, affine))
    snap, nearest = tree.query(points_lps)
    radius = lumen_radius(label, lumen_idx[nearest], spacing, lumen_idx)
    hu = np.full(n, np.nan)
    if image is not None:
        lumen_hu = image[tuple(lumen_idx.T)].astype(np.float64)
        min_r = float(np.min(spacing))
        for i, p in enumerate(points_lps):
            ball = tree.query_ball_point(p, max(0.7 * float(radius[i]), min_r))
            hu[i] = lumen_hu[ball].mean() if ball else lumen_hu[nearest[i]]
    return {"diameter_mm": 2.0 * radius, "hu": hu, "snap_mm": snap}


def local_dice_points(
    case: str,
    pred: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    spacing: Sequence[float],
    centerlines: Mapping[str, Centerlines],
    image: np.ndarray | None = None,
    roi_size_mm: float = ROI_SIZE_MM,
    step: int = STEP_VERTICES,
) -> list[dict[str, Any]]:
    """The rows of ``local_dice.csv`` for one case (:data:`POINT_COLUMNS`).

    Args:
        case: the case id.
        pred: binary prediction ``(X, Y, Z)``.
        label: binary label, same shape.
        affine: the volumes' voxel-to-RAS affine.
        spacing: voxel size in mm.
        centerlines: ``{side: Centerlines}`` (LPS mm).
        image: the scan's voxels (HU) on the same grid, or ``None``.
        roi_size_mm: edge of the cube.
        step: sample every ``step``-th vertex from the ostium.
    """
    rows: list[dict[str, Any]] = []
    for side, c in centerlines.items():
        s = sample_vertices(c, step)
        if not len(s["vertex"]):
            log.warning(
                "case %s: the %s centreline marks no ostium (start_points) or has no line cells: "
                "no local Dice on that side",
                case,
                side,
            )
            continue
        pts = c.points_lps[s["vertex"]]
        cov = lumen_covariates(label, affine, spacing, pts, image)
        keep = cov["snap_mm"] <= MAX_SNAP_MM
        centres = np.round(lps_to_voxels(pts, affine)).astype(np.int64)
        dice = local_dice(pred, label, centres[keep], spacing, roi_size_mm)
        for j, i in enumerate(np.flatnonzero(keep)):
            rows.append(
                {
                    "case": case,
                    "side": side,
                    "vertex": int(s["vertex"][i]),
                    "x_lps_mm": float(pts[i, 0]),
                    "y_lps_mm": float(pts[i, 1]),
                    "z_lps_mm": float(pts[i, 2]),
                    "segment_label": int(s["segment_label"][i]),
                    "segment_name": str(s["segment_name"][i]),
                    "dist_mm": float(s["dist_mm"][i]),
                    "depth": int(s["depth"][i]),
                    "is_end_point": int(s["is_end_point"][i]),
                    "diameter_mm": float(cov["diameter_mm"][i]),
                    "hu": float(cov["hu"][i]),
                    "snap_mm": float(cov["snap_mm"][i]),
                    "local_dice": float(dice[j]),
                }
            )
    return rows


# --------------------------------------------------------------------------------- per case --


def centerline_files(folder: str | Path, case: str) -> dict[str, Path]:
    """``{side: path}`` of a case's ``<case>.coronary_{left,right}_centerline.vtk`` that exist."""
    folder = Path(folder)
    found = {}
    for side in SIDES:
        path = folder / f"{case}.coronary_{side}_centerline.vtk"
        if path.is_file():
            found[side] = path
    return found


def imagecasx_columns(
    case: str,
    pred: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    spacing: Sequence[float],
    centerlines: Mapping[str, Centerlines] | None = None,
    image: np.ndarray | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ImageCAS-X columns of one case, and its local-Dice points.

    Args:
        case: the case id.
        pred: the prediction: binary, or segment codes.
        label: the label: binary, or segment codes 0..14.
        affine: voxel-to-RAS affine of both.
        spacing: voxel size in mm.
        centerlines: ``{side: Centerlines}``, or ``None`` (no centreline columns, no points).
        image: the scan's voxels on the same grid (HU of the local-Dice points), or ``None``.

    Returns:
        ``(columns, points)``: volumes always; ``dice_<segment>`` when ``label`` holds
        segments; centreline distances and ``local_dice`` (the case's mean) with
        ``centerlines``; the rows of ``local_dice.csv``.
    """
    pred_bin, label_bin = pred != 0, label != 0
    columns: dict[str, Any] = volumes_ml(pred_bin, label_bin, spacing)
    if is_segment_label(label):
        columns.update(segment_dice(pred, label, spacing))
    points: list[dict[str, Any]] = []
    if centerlines is not None:
        gt = [c.points_lps for c in centerlines.values() if c.n_points]
        gt_points = np.concatenate(gt) if gt else np.empty((0, 3))
        columns.update(centerline_distances(skeleton_points_lps(pred_bin, affine), gt_points))
        points = local_dice_points(case, pred_bin, label_bin, affine, spacing, centerlines, image)
        values = [p["local_dice"] for p in points if not math.isnan(p["local_dice"])]
        columns["local_dice"] = float(np.mean(values)) if values else None
    return columns, points


# ---------------------------------------------------------------------------------- tables --


def bin_labels(edges: Sequence[float]) -> list[str]:
    """``["<25", "25-50", …, ">150"]`` for cut points ``[25, 50, …, 150]``."""
    inner = [f"{a:g}-{b:g}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    return [f"<{edges[0]:g}", *inner, f">{edges[-1]:g}"]


def write_csv(path: str | Path, columns: Sequence[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write ``rows`` as CSV (empty cells for ``None``/NaN), atomically."""
    from vesselfm.metrics.report import _csv_value
    from vesselfm.utils.io import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_value(row.get(c)) for c in columns])
    return path


def bin_of(value: float, edges: Sequence[float]) -> str | None:
    """The bin label of ``value`` for cut points ``edges``: ``<25``, ``25-50``, …, ``>150``
    (lower-inclusive); ``None`` for NaN."""
    if value is None or not math.isfinite(value):
        return None
    i = int(np.searchsorted(np.asarray(edges, float), value, side="right"))
    if i == 0:
        return f"<{edges[0]:g}"
    if i == len(edges):
        return f">{edges[-1]:g}"
    return f"{edges[i - 1]:g}-{edges[i]:g}"


def _stats(values: Sequence[float]) -> tuple[float | None, float | None, int]:
    arr = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    mean = float(arr.mean()) if arr.size else None
    std = float(arr.std(ddof=1)) if arr.size > 1 else None
    return mean, std, int(arr.size)


def summarise_local_dice(
    points: Sequence[Mapping[str, Any]], groups: Mapping[str, str] | None = None
) -> list[dict[str, Any]]:
    """Local Dice by segment and by each :data:`BINS` covariate, overall and per group.

    Macro average, as ImageCAS-X: one mean per case and bin, then mean and sample std over the
    cases. Each row also holds the bin's point count and its mean diameter, HU and distance.

    Args:
        points: rows of ``local_dice.csv``.
        groups: ``{case: group}`` for a breakdown by one descriptor column; ``None``: all cases.

    Returns:
        rows ``covariate, bin, n_points, n_cases, local_dice_mean, local_dice_std,
        diameter_mm_mean, hu_mean, dist_mm_mean`` (``group`` first when ``groups`` is given).
    """
    keyed: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for p in points:
        group = "all" if groups is None else groups.get(str(p["case"]))
        if not group:
            continue
        keys = [("segment_name", str(p["segment_name"]))]
        keys += [(name, bin_of(p[name], edges)) for name, edges in BINS.items()]
        for covariate, label in keys:
            if label is not None:
                keyed.setdefault((group, covariate, label), []).append(p)

    order = {name: i for i, name in enumerate(("segment_name", *BINS))}

    def sort_key(key: tuple[str, str, str]) -> tuple[Any, ...]:
        group, covariate, label = key
        if covariate == "segment_name":
            codes = {v: k for k, v in SEGMENTS.items()}
            rank = codes.get(label, 99)
        else:
            rank = bin_labels(BINS[covariate]).index(label)
        return (group, order[covariate], rank, label)

    rows = []
    for key in sorted(keyed, key=sort_key):
        group, covariate, label = key
        members = keyed[key]
        per_case: dict[str, list[float]] = {}
        for p in members:
            if math.isfinite(p["local_dice"]):
                per_case.setdefault(str(p["case"]), []).append(p["local_dice"])
        mean, std, n_cases = _stats([float(np.mean(v)) for v in per_case.values()])
        row: dict[str, Any] = {} if groups is None else {"group": group}
        row.update(
            {
                "covariate": covariate,
                "bin": label,
                "n_points": len(members),
                "n_cases": n_cases,
                "local_dice_mean": mean,
                "local_dice_std": std,
            }
        )
        for name in ("diameter_mm", "hu", "dist_mm"):
            row[f"{name}_mean"] = _stats([p[name] for p in members])[0]
        rows.append(row)
    return rows


def read_descriptors(path: str | Path, id_column: str = DESCRIPTOR_ID) -> dict[str, dict[str, str]]:
    """ImageCAS-X's descriptor table (``.xlsx`` or ``.csv``) as ``{scan id: {column: value}}``.

    Ids and values are stripped strings; a whole number stored as a float (Excel) reads as an
    integer (``1.0`` → ``"1"``); blank cells are ``""``.

    Raises:
        UserError: a missing or unreadable file, another extension, no ``Scan ID`` column.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"descriptors={path}: no such file; give ImageCAS-X's Descriptors.xlsx")
    ext = path.suffix.lower()
    if ext in (".xlsx", ".xlsm"):
        import openpyxl

        try:
            book = openpyxl.load_workbook(path, read_only=True, data_only=True)
        except Exception as err:  # openpyxl raises several unrelated types for a bad file
            raise UserError(f"descriptors={path}: not a readable .xlsx file ({err})") from err
        rows = [list(r) for r in book[book.sheetnames[0]].iter_rows(values_only=True)]
        book.close()
    elif ext == ".csv":
        with open(path, newline="", encoding="utf-8-sig") as fh:
            rows = list(csv.reader(fh))
    else:
        raise UserError(f"descriptors={path}: expected a .xlsx or .csv file, got {ext!r}")

    def cell(v: Any) -> str:
        if v is None:
            return ""
        if isinstance(v, float) and v.is_integer():
            return str(int(v))
        return str(v).strip()

    rows = [r for r in rows if any(cell(v) for v in r)]
    header = [cell(v) for v in rows[0]] if rows else []
    if id_column not in header:
        raise UserError(
            f"descriptors={path}: no {id_column!r} column (found {header}); ImageCAS-X's table "
            f"has {id_column!r}, {', '.join(repr(g) for g in DESCRIPTOR_GROUPS)}"
        )
    at = header.index(id_column)
    table: dict[str, dict[str, str]] = {}
    for r in rows[1:]:
        r = list(r) + [None] * (len(header) - len(r))
        scan = cell(r[at])
        if scan:
            table[scan] = {
                h: cell(v) for h, v in zip(header, r, strict=False) if h and h != id_column
            }
    return table


def group_columns(table: Mapping[str, Mapping[str, str]]) -> list[str]:
    """The descriptor columns to break down by: ImageCAS-X's groups present in the table."""
    present = {k for row in table.values() for k in row}
    return [g for g in DESCRIPTOR_GROUPS if g in present]


def summarise_by_group(
    rows: Sequence[Mapping[str, Any]], table: Mapping[str, Mapping[str, str]]
) -> list[dict[str, Any]]:
    """Mean, sample std and n of every metric column per descriptor group.

    Returns:
        rows ``group_by, group, metric, mean, std, n`` (cases absent from the table, or with a
        blank cell, are left out of that column's groups).
    """
    from vesselfm.metrics.report import defined_number

    out = []
    metrics = [k for row in rows for k in row if k != "case"]
    metrics = list(dict.fromkeys(metrics))
    for column in group_columns(table):
        values = sorted(
            {table.get(str(r["case"]), {}).get(column, "") for r in rows} - {""},
            key=lambda v: (0, float(v), v) if _is_number(v) else (1, 0.0, v),
        )
        for value in values:
            members = [r for r in rows if table.get(str(r["case"]), {}).get(column) == value]
            for metric in metrics:
                numbers = [defined_number(r.get(metric)) for r in members]
                mean, std, n = _stats([v for v in numbers if v is not None])
                out.append(
                    {
                        "group_by": column,
                        "group": value,
                        "metric": metric,
                        "mean": mean,
                        "std": std,
                        "n": n,
                    }
                )
    return out


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


# --------------------------------------------------------------------------------- reports --

#: the files :func:`write_imagecasx_reports` may write (beside ``metrics.csv``)
IMAGECASX_FILES: tuple[str, ...] = (
    "local_dice.csv",
    "local_dice_summary.csv",
    "summary_by_group.csv",
)
_LOCAL_SUMMARY_COLUMNS = (
    "group_by",
    "group",
    "covariate",
    "bin",
    "n_points",
    "n_cases",
    "local_dice_mean",
    "local_dice_std",
    "diameter_mm_mean",
    "hu_mean",
    "dist_mm_mean",
)


def write_imagecasx_reports(
    rows: Sequence[Mapping[str, Any]],
    points: Sequence[Mapping[str, Any]],
    output_dir: str | Path,
    centerlines: bool = False,
    descriptors: Mapping[str, Mapping[str, str]] | None = None,
) -> dict[str, Path]:
    """Write the ImageCAS-X tables that ``metrics.csv``/``summary.*`` do not hold.

    Args:
        rows: the case rows (``metrics.csv``).
        points: the local-Dice points of all cases (:func:`local_dice_points`).
        output_dir: the report folder.
        centerlines: whether centrelines were given: then ``local_dice.csv`` (a row per point)
            and ``local_dice_summary.csv`` (by segment and bin; ``group_by`` ``all`` and, with
            ``descriptors``, per descriptor group) are written.
        descriptors: the descriptor table (:func:`read_descriptors`): then
            ``summary_by_group.csv`` (every metric per group) is written.

    Returns:
        ``{"local_dice": path, "local_dice_summary": path, "by_group": path}``, those written.
    """
    out = Path(output_dir)
    paths: dict[str, Path] = {}
    if centerlines:
        paths["local_dice"] = write_csv(out / "local_dice.csv", POINT_COLUMNS, points)
        summary = [{"group_by": "all", "group": "all", **r} for r in summarise_local_dice(points)]
        for column in group_columns(descriptors or {}):
            groups = {case: v.get(column, "") for case, v in (descriptors or {}).items()}
            summary += [{"group_by": column, **r} for r in summarise_local_dice(points, groups)]
        paths["local_dice_summary"] = write_csv(
            out / "local_dice_summary.csv", _LOCAL_SUMMARY_COLUMNS, summary
        )
    if descriptors is not None:
        by_group = summarise_by_group(rows, descriptors)
        paths["by_group"] = write_csv(
            out / "summary_by_group.csv",
            ("group_by", "group", "metric", "mean", "std", "n"),
            by_group,
        )
    return paths
