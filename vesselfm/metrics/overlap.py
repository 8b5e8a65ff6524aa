"""Confusion-matrix metrics: accuracy, Dice, Jaccard, precision, recall, specificity, FPR.

Counts are exact integers. Only the padded bounding box of both masks is counted voxel by voxel;
every voxel outside it is a true negative, so ``tn = n_voxels - tp - fp - fn``.

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

from vesselfm.metrics._crop import Box, bounding_box, pad_box, union_box

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


def confusion_counts(
    pred: np.ndarray, label: np.ndarray, box: Box | None = None
) -> ConfusionCounts:
    """Exact TP/FP/FN/TN voxel counts.

    Args:
        pred: boolean prediction, shape ``(X, Y, Z)`` (any shape works).
        label: boolean label, same shape.
        box: a region known to hold every foreground voxel of both masks (e.g. their padded
            bounding box); computed when ``None``.

    Returns:
        The four counts; voxels outside ``box`` are true negatives.
    """
    if pred.shape != label.shape:
        raise ValueError(
            f"pred and label must have the same shape, got {pred.shape} and {label.shape}"
        )
    if box is None:
        box = union_box(bounding_box(pred), bounding_box(label))
    if box is None:
        return ConfusionCounts(0, 0, 0, int(pred.size))
    p = np.asarray(pred[box], dtype=bool).view(np.uint8)
    g = np.asarray(label[box], dtype=bool).view(np.uint8)
    # code = 2 * label + pred: 0 TN, 1 FP, 2 FN, 3 TP
    code = np.bincount((g << 1 | p).ravel(), minlength=4)
    tp, fp, fn = int(code[3]), int(code[1]), int(code[2])
    return ConfusionCounts(tp=tp, fp=fp, fn=fn, tn=int(pred.size) - tp - fp - fn)


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


def padded_union_box(pred: np.ndarray, label: np.ndarray) -> Box | None:
    """The bounding box of ``pred | label`` grown by one voxel (clipped), or ``None`` if both
    are empty."""
    box = union_box(bounding_box(pred), bounding_box(label))
    return None if box is None else pad_box(box, pred.shape)
