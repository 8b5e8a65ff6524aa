"""Segmentation metrics for vessel masks: overlap, ranking, topology and surface distances.

One function scores a case, :func:`compute_metrics`; :func:`summarize` and :func:`write_reports`
aggregate the rows ``{"case": id, **compute_metrics(...)}`` into ``metrics.csv``,
``summary.json`` and ``summary.md``. Nothing here imports Lightning or Hydra.

Modules: ``overlap`` (confusion counts), ``curves`` (ROC AUC, average precision), ``topology``
(clDice, Betti numbers), ``surface`` (HD95, ASSD in mm), ``report`` (aggregation and writers),
``folders`` (pairing prediction and label files and scoring them: what ``evaluate`` and
``infer label=`` share).
Each module's docstring states the value of its metrics on empty masks.
"""

from __future__ import annotations

from vesselfm.metrics.compute import METRIC_NAMES, compute_metrics
from vesselfm.metrics.curves import (
    average_precision_from_counts,
    pr_auc_ap,
    ranked_counts,
    roc_auc,
    roc_auc_from_counts,
)
from vesselfm.metrics.overlap import ConfusionCounts, confusion_counts, overlap_metrics
from vesselfm.metrics.report import summarize, summary_markdown, write_reports
from vesselfm.metrics.surface import hd95_assd, surface_distances
from vesselfm.metrics.topology import betti_numbers, cldice, euler_characteristic, skeleton

__all__ = [
    "METRIC_NAMES",
    "ConfusionCounts",
    "average_precision_from_counts",
    "betti_numbers",
    "cldice",
    "compute_metrics",
    "confusion_counts",
    "euler_characteristic",
    "hd95_assd",
    "overlap_metrics",
    "pr_auc_ap",
    "ranked_counts",
    "roc_auc",
    "roc_auc_from_counts",
    "skeleton",
    "summarize",
    "summary_markdown",
    "surface_distances",
    "write_reports",
]
