"""``compute_metrics``: the full metric table of one case, or any subset of it.

The same function serves validation (``metrics=("dice", "cldice")``), test and the ``evaluate``
CLI. It imports neither Lightning nor Hydra.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from vesselfm.metrics._voxels import VoxelSet
from vesselfm.metrics.curves import (
    CURVE_METRICS,
    average_precision_from_counts,
    ranked_counts,
    roc_auc_from_counts,
)
from vesselfm.metrics.overlap import OVERLAP_METRICS, counts_from_sizes, overlap_metrics
from vesselfm.metrics.surface import (
    SURFACE_METRICS,
    check_spacing,
    hd95_assd_from_distances,
    surface_distances_from_points,
)
from vesselfm.metrics.topology import TOPOLOGY_METRICS, cldice_from_skeletons, mask_topology

log = logging.getLogger(__name__)

#: Every metric :func:`compute_metrics` knows, in the order of the reports.
METRIC_NAMES: tuple[str, ...] = (
    "accuracy",
    "dice",
    "jaccard_iou",
    "precision",
    "recall_tpr_sensitivity",
    "specificity",
    "fpr",
    "cldice",
    "roc_auc",
    "pr_auc_ap",
    "betti_0",
    "betti_1",
    "betti_2",
    "betti_0_error",
    "betti_1_error",
    "hd95_mm",
    "assd_mm",
)
assert set(METRIC_NAMES) == {*OVERLAP_METRICS, *CURVE_METRICS, *TOPOLOGY_METRICS, *SURFACE_METRICS}


def _to_numpy(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor, on any device
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what}: expected a numeric or boolean array, got dtype {arr.dtype}")
    return arr


def _as_binary(x: np.ndarray, what: str) -> np.ndarray:
    """A boolean view/copy of a 0/1 array; anything else raises ``ValueError``."""
    if x.dtype == bool:
        return x
    if x.size:
        lo, hi = x.min(), x.max()
        if lo < 0 or hi > 1 or (x.dtype.kind == "f" and not np.all((x == 0) | (x == 1))):
            raise ValueError(
                f"{what}: expected a binary mask with values 0 and 1, got {x.dtype} values in "
                f"[{lo}, {hi}]; binarise it first (e.g. label > 0)"
            )
    if x.dtype == np.uint8 or x.dtype == np.int8:
        return x.view(bool)
    return x != 0


def _check_probabilities(x: np.ndarray, what: str) -> None:
    if x.size:
        lo, hi = float(x.min()), float(x.max())
        if not (0.0 <= lo and hi <= 1.0):  # also catches NaN
            raise ValueError(
                f"{what}: expected probabilities in [0, 1], got {x.dtype} values in [{lo:.4g}, "
                f"{hi:.4g}]; apply a sigmoid/softmax first, or pass a 0/1 mask as bool/uint8"
            )


def _select(metrics: Sequence[str] | None) -> tuple[str, ...]:
    if metrics is None:
        return METRIC_NAMES
    if isinstance(metrics, str):
        metrics = (metrics,)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown:
        raise ValueError(f"metrics: unknown name(s) {unknown}; choose from {list(METRIC_NAMES)}")
    return tuple(m for m in METRIC_NAMES if m in set(metrics))


def compute_metrics(
    pred: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    threshold: float = 0.5,
    metrics: Sequence[str] | None = None,
    prob: np.ndarray | None = None,
) -> dict[str, float | None]:
    """Score one case: a prediction against its binary label, at native resolution.

    Args:
        pred: shape ``(X, Y, Z)``. Either probabilities in [0, 1] (a float array; the mask is
            ``pred >= threshold`` and ``pred`` also gives ROC AUC and AP), or a binary mask
            (bool or integer 0/1; ROC AUC and AP are then ``None``, there being no scores to
            rank, unless ``prob`` is given). A torch tensor is moved to the CPU.
        label: binary label (bool, integer or float 0/1), same shape.
        spacing: voxel size in mm along the three axes (for ``hd95_mm``, ``assd_mm``).
        threshold: probability at or above which a voxel is vessel; in [0, 1].
        metrics: the names to compute (a subset of :data:`METRIC_NAMES`); ``None`` for all.
            Only the work those names need is done: ``("dice", "cldice")`` skips the AUCs,
            Betti numbers and surfaces.
        prob: optional probabilities in [0, 1] for ROC AUC / AP when ``pred`` is a binary mask
            (for example a post-processed mask with its raw probability map).

    Returns:
        ``{name: value}`` for the requested names, in :data:`METRIC_NAMES` order. Values in
        [0, 1] except Betti numbers and their errors (counts, ``int``) and surface distances
        (mm). Undefined values are ``None`` (documented per metric in ``overlap``, ``curves``,
        ``topology`` and ``surface``; e.g. precision of an empty prediction).

    Raises:
        ValueError: shape mismatch, a label that is not 0/1, probabilities outside [0, 1] or NaN,
            bad spacing or threshold, unknown metric names.
        TypeError: a non-numeric array.

    Example:
        >>> scores = compute_metrics(prob, label, spacing=(0.4, 0.4, 0.5))  # doctest: +SKIP
        >>> scores["dice"], scores["betti_0_error"]  # doctest: +SKIP
    """
    names = _select(metrics)
    wanted = set(names)
    pred = _to_numpy(pred, "pred")
    label = _to_numpy(label, "label")
    if pred.shape != label.shape:
        raise ValueError(
            f"pred and label must have the same shape, got {pred.shape} and {label.shape}"
        )
    if pred.ndim != 3:
        raise ValueError(f"pred: expected a 3D volume (X, Y, Z), got shape {pred.shape}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold}")
    sp = check_spacing(spacing, 3)
    label_bin = _as_binary(label, "label")

    scores: np.ndarray | None
    if pred.dtype.kind == "f":
        _check_probabilities(pred, "pred")
        pred_bin = pred >= threshold
        scores = pred
    else:
        pred_bin = _as_binary(pred, "pred")
        scores = None
    if prob is not None:
        prob = _to_numpy(prob, "prob")
        if prob.shape != pred.shape:
            raise ValueError(f"prob must have the shape of pred {pred.shape}, got {prob.shape}")
        _check_probabilities(prob, "prob")
        scores = prob

    # Sparse from here on: the work scales with the foreground, not the volume.
    vp, vl = VoxelSet(pred_bin), VoxelSet(label_bin)
    out: dict[str, float | None] = {}

    if wanted & set(OVERLAP_METRICS):
        tp = int(np.count_nonzero(vl.contains(vp.coords)))
        out.update(overlap_metrics(counts_from_sizes(tp, vp.size, vl.size, int(pred.size))))

    if wanted & set(CURVE_METRICS):
        if scores is None:
            log.debug("pred is a binary mask and no prob given: roc_auc and pr_auc_ap are None")
            out["roc_auc"] = out["pr_auc_ap"] = None
        else:
            c = vl.coords
            n_pos, n_neg = ranked_counts(
                scores, label_bin, pos_scores=scores[c[:, 0], c[:, 1], c[:, 2]]
            )
            out["roc_auc"] = roc_auc_from_counts(n_pos, n_neg)
            out["pr_auc_ap"] = average_precision_from_counts(n_pos, n_neg)

    need_skeleton = "cldice" in wanted
    need_betti = bool(wanted & {"betti_0", "betti_1", "betti_2", "betti_0_error", "betti_1_error"})
    need_label_betti = bool(wanted & {"betti_0_error", "betti_1_error"})
    if need_skeleton or need_betti:
        topo_p = mask_topology(vp, skeleton=need_skeleton, betti=need_betti)
        topo_l = mask_topology(vl, skeleton=need_skeleton, betti=need_label_betti)
        if need_skeleton:
            out["cldice"] = cldice_from_skeletons(topo_p.skeleton, topo_l.skeleton, vp, vl)  # type: ignore[arg-type]
        if need_betti:
            b_pred = topo_p.betti
            assert b_pred is not None
            out["betti_0"], out["betti_1"], out["betti_2"] = b_pred
            if need_label_betti:
                b_label = topo_l.betti
                assert b_label is not None
                out["betti_0_error"] = abs(b_pred[0] - b_label[0])
                out["betti_1_error"] = abs(b_pred[1] - b_label[1])

    if wanted & set(SURFACE_METRICS):
        distances = surface_distances_from_points(vp.surface(), vl.surface(), sp)
        out["hd95_mm"], out["assd_mm"] = hd95_assd_from_distances(distances)

    return {name: out[name] for name in names}
