"""Confusion-matrix metrics: accuracy, Dice, Jaccard, precision, recall, specificity, FPR.

Counts are exact integers: ``tp`` is counted at the predicted voxels only (a lookup in the label
per foreground voxel), the rest follows from the two foreground sizes and the volume size
(``tn = n_voxels - tp - fp - fn``).

Undefined ratios (a zero denominator) follow the reference evaluator of vesselFM:

==========================  ==========================================================
metric                      value when its denominator is zero
==========================  ==========================================================
``accuracy``                never zero (at least one voxel)
``dice``, ``jaccard_iou``   ``1.0`` when label and prediction are both empty (perfect
                            agreement on "no vessel"); one empty side gives ``0.0``
``precision``               ``None`` when the prediction is empty (nothing predicted)
``recall_tpr_sensitivity``  ``None`` when the label is empty (nothing to find)
``specificity``, ``fpr``    ``None`` when the label covers the whole volume
==========================  ==========================================================

``None`` values are left out of means; the reports say over how many cases each mean was taken.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

OVERLAP_METRICS: tuple[str, ...] = (
    "accuracy",
    "dice",
    "jaccard_iou",
    "precision",
    "recall_tpr_sensitivity",
    "specificity",
    "fpr",
)


@dataclass(frozen=True)
class ConfusionCounts:
    """Voxel counts of a binary prediction against a binary label."""

    tp: int
    fp: int
    fn: int
    tn: int

    @property
    def total(self) -> int:
        return self.tp + self.fp + self.fn + self.tn


def confusion_counts(pred: np.ndarray, label: np.ndarray) -> ConfusionCounts:
    """Exact TP/FP/FN/TN voxel counts.

    Args:
        pred: boolean prediction, shape ``(X, Y, Z)`` (any shape works).
        label: boolean label, same shape.

    Returns:
        The four counts.
    """
    if pred.shape != label.shape:
        raise ValueError(
            f"pred and label must have the same shape, got {pred.shape} and {label.shape}"
        )
    where = np.nonzero(pred)
    n_pred = int(where[0].size)
    tp = int(np.count_nonzero(label[where]))
    return counts_from_sizes(tp, n_pred, int(np.count_nonzero(label)), int(pred.size))


def counts_from_sizes(tp: int, n_pred: int, n_label: int, n_voxels: int) -> ConfusionCounts:
    """Counts from the overlap and the sizes of the prediction, the label and the volume."""
    fp, fn = n_pred - tp, n_label - tp
    return ConfusionCounts(tp=tp, fp=fp, fn=fn, tn=n_voxels - tp - fp - fn)


def _ratio(num: int, den: int) -> float | None:
    return None if den == 0 else num / den


def overlap_metrics(counts: ConfusionCounts) -> dict[str, float | None]:
    """The confusion-based metrics of :data:`OVERLAP_METRICS` from counts.

    Args:
        counts: voxel counts from :func:`confusion_counts`.

    Returns:
        ``{name: value}`` in [0, 1], ``None`` where undefined (see the module docstring).
    """
    tp, fp, fn, tn = counts.tp, counts.fp, counts.fn, counts.tn
    both_empty = tp + fp + fn == 0
    return {
        "accuracy": _ratio(tp + tn, counts.total),
        "dice": 1.0 if both_empty else 2 * tp / (2 * tp + fp + fn),
        "jaccard_iou": 1.0 if both_empty else tp / (tp + fp + fn),
        "precision": _ratio(tp, tp + fp),
        "recall_tpr_sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "fpr": _ratio(fp, tn + fp),
    }
