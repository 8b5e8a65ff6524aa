"""Confusion counts and the metrics derived from them: hand-computed cases and empty masks."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix

from vesselfm.metrics import compute_metrics, confusion_counts, overlap_metrics
from vesselfm.metrics.overlap import OVERLAP_METRICS, ConfusionCounts


def _vol(values: list[int]) -> np.ndarray:
    return np.asarray(values, dtype=bool).reshape(-1, 1, 1)


@pytest.mark.parametrize(
    ("pred", "label", "counts", "expected"),
    [
        # tp=1 fp=2 fn=1 tn=1
        (
            [1, 1, 0, 0, 1],
            [1, 0, 1, 0, 0],
            (1, 2, 1, 1),
            {
                "accuracy": 2 / 5,
                "dice": 2 / 5,
                "jaccard_iou": 1 / 4,
                "precision": 1 / 3,
                "recall_tpr_sensitivity": 1 / 2,
                "specificity": 1 / 3,
                "fpr": 2 / 3,
            },
        ),
        # perfect: tp=2 tn=2
        (
            [1, 1, 0, 0],
            [1, 1, 0, 0],
            (2, 0, 0, 2),
            {
                "accuracy": 1.0,
                "dice": 1.0,
                "jaccard_iou": 1.0,
                "precision": 1.0,
                "recall_tpr_sensitivity": 1.0,
                "specificity": 1.0,
                "fpr": 0.0,
            },
        ),
        # disjoint: tp=0 fp=1 fn=2 tn=3
        (
            [1, 0, 0, 0, 0, 0],
            [0, 1, 1, 0, 0, 0],
            (0, 1, 2, 3),
            {
                "accuracy": 3 / 6,
                "dice": 0.0,
                "jaccard_iou": 0.0,
                "precision": 0.0,
                "recall_tpr_sensitivity": 0.0,
                "specificity": 3 / 4,
                "fpr": 1 / 4,
            },
        ),
    ],
)
def test_hand_computed(pred, label, counts, expected):
    c = confusion_counts(_vol(pred), _vol(label))
    assert (c.tp, c.fp, c.fn, c.tn) == counts
    got = overlap_metrics(c)
    assert got == pytest.approx(expected, abs=1e-12)
    # The same values through the public entrypoint, with a binary prediction.
    full = compute_metrics(_vol(pred), _vol(label), metrics=OVERLAP_METRICS)
    assert full == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_counts_match_sklearn_and_ignore_outside_box(seed):
    rng = np.random.default_rng(seed)
    pred = np.zeros((30, 31, 32), bool)
    label = np.zeros_like(pred)
    # Foreground confined to a small region: the counts come from its box, TN from the rest.
    pred[5:12, 10:20, 3:9] = rng.random((7, 10, 6)) < 0.4
    label[7:15, 12:22, 4:11] = rng.random((8, 10, 7)) < 0.4
    c = confusion_counts(pred, label)
    tn, fp, fn, tp = confusion_matrix(label.ravel(), pred.ravel(), labels=[0, 1]).ravel()
    assert (c.tp, c.fp, c.fn, c.tn) == (tp, fp, fn, tn)
    assert c.total == pred.size


@pytest.mark.parametrize(
    ("pred_on", "label_on", "expected"),
    [
        # both empty: perfect agreement on "no vessel"; precision and recall undefined
        (
            False,
            False,
            {
                "accuracy": 1.0,
                "dice": 1.0,
                "jaccard_iou": 1.0,
                "precision": None,
                "recall_tpr_sensitivity": None,
                "specificity": 1.0,
                "fpr": 0.0,
            },
        ),
        # empty prediction, vessel in the label
        (
            False,
            True,
            {
                "dice": 0.0,
                "jaccard_iou": 0.0,
                "precision": None,
                "recall_tpr_sensitivity": 0.0,
                "specificity": 1.0,
                "fpr": 0.0,
            },
        ),
        # empty label, vessel predicted
        (
            True,
            False,
            {
                "dice": 0.0,
                "jaccard_iou": 0.0,
                "precision": 0.0,
                "recall_tpr_sensitivity": None,
            },
        ),
    ],
)
def test_empty_policy(pred_on, label_on, expected):
    pred = np.zeros((8, 8, 8), bool)
    label = np.zeros_like(pred)
    pred[2:4, 2:4, 2:4] = pred_on
    label[3:6, 3:6, 3:6] = label_on
    got = compute_metrics(pred, label, metrics=OVERLAP_METRICS)
    for name, value in expected.items():
        if value is None:
            assert got[name] is None, name
        else:
            assert got[name] == pytest.approx(value), name


def test_label_covering_everything_leaves_specificity_undefined():
    got = overlap_metrics(ConfusionCounts(tp=5, fp=0, fn=3, tn=0))
    assert got["specificity"] is None
    assert got["fpr"] is None
    assert got["recall_tpr_sensitivity"] == pytest.approx(5 / 8)
