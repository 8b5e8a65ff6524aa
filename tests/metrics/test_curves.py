"""ROC AUC and average precision from grouped counts, against scikit-learn on every voxel."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from vesselfm.metrics import (
    average_precision_from_counts,
    compute_metrics,
    pr_auc_ap,
    ranked_counts,
    roc_auc,
    roc_auc_from_counts,
)

SHAPE = (48, 48, 40)  # 92 160 voxels: enough for a background bin above the counting threshold


def _case(kind: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    label = np.zeros(SHAPE, bool)
    label[10:30, 12:20, 5:30] = rng.random((20, 8, 25)) < 0.5
    if kind == "continuous":
        logit = rng.normal(-4.0, 2.0, SHAPE) + 5.0 * label
        prob = 1 / (1 + np.exp(-logit))
    elif kind == "ties":  # coarse values: many ties between vessel and background
        prob = np.round(np.clip(rng.normal(0.3, 0.2, SHAPE) + 0.3 * label, 0, 1), 2)
    elif kind == "zeros":  # background of exact zeros, some vessel voxels at zero too
        prob = np.where(label, rng.uniform(0, 1, SHAPE), 0.0)
        prob[label & (rng.random(SHAPE) < 0.2)] = 0.0
    elif kind == "near_ties":  # values that differ only in the last float32 bits
        base = np.float32(0.3)
        steps = rng.integers(0, 200, SHAPE)
        prob = (base + steps * np.float32(np.spacing(base))).astype(np.float32)
        prob[label] = (base + (steps[label] + 3) * np.spacing(base)).astype(np.float32)
    elif kind == "saturated":  # sigmoid outputs stuck at 0 and 1 for most voxels
        prob = np.where(label, 1.0, 0.0)
        flip = rng.random(SHAPE) < 0.01
        prob[flip] = rng.uniform(0, 1, flip.sum())
    else:
        raise AssertionError(kind)
    return prob.astype(np.float32), label


@pytest.mark.parametrize("kind", ["continuous", "ties", "zeros", "near_ties", "saturated"])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_sklearn(kind, seed):
    prob, label = _case(kind, seed)
    got = compute_metrics(prob, label, metrics=("roc_auc", "pr_auc_ap"))
    # Exact for float32 scores; the requirement is 1e-4.
    assert got["roc_auc"] == pytest.approx(roc_auc_score(label.ravel(), prob.ravel()), abs=1e-9)
    assert got["pr_auc_ap"] == pytest.approx(
        average_precision_score(label.ravel(), prob.ravel()), abs=1e-9
    )


def test_non_contiguous_and_float64_input():
    prob, label = _case("continuous", 3)
    prob64 = prob.astype(np.float64).transpose(2, 0, 1)  # a strided float64 view
    lab = label.transpose(2, 0, 1)
    assert not prob64.flags.c_contiguous
    assert roc_auc(prob64, lab) == pytest.approx(
        roc_auc_score(lab.ravel(), prob64.ravel()), abs=1e-6
    )
    assert pr_auc_ap(prob64, lab) == pytest.approx(
        average_precision_score(lab.ravel(), prob64.ravel()), abs=1e-6
    )


def test_hand_computed():
    # scores 0.1 (bg), 0.35 (vessel), 0.4 (bg), 0.8 (vessel): 3 of 4 pairs ranked right.
    # AP: thresholds 0.8 -> P=1, R=1/2; 0.4 -> (no recall step); 0.35 -> P=2/3, R=1.
    prob = np.array([0.1, 0.35, 0.4, 0.8], np.float32).reshape(4, 1, 1)
    label = np.array([0, 1, 0, 1], bool).reshape(4, 1, 1)
    assert roc_auc(prob, label) == pytest.approx(0.75)
    assert pr_auc_ap(prob, label) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)


def test_ties_count_one_half():
    prob = np.full((4, 1, 1), 0.5, np.float32)
    label = np.array([0, 1, 0, 1], bool).reshape(4, 1, 1)
    assert roc_auc(prob, label) == pytest.approx(0.5)
    assert pr_auc_ap(prob, label) == pytest.approx(0.5)


def test_grouped_counts_keep_totals():
    prob, label = _case("continuous", 4)
    n_pos, n_neg = ranked_counts(prob, label)
    assert n_pos.sum() == label.sum()
    assert n_neg.sum() == label.size - label.sum()
    assert roc_auc_from_counts(n_pos, n_neg) == pytest.approx(
        roc_auc_score(label.ravel(), prob.ravel()), abs=1e-9
    )


@pytest.mark.parametrize("label_value", [0, 1])
def test_one_class_is_undefined(label_value):
    prob = np.random.default_rng(0).random((6, 6, 6)).astype(np.float32)
    label = np.full(prob.shape, label_value, np.uint8)
    got = compute_metrics(prob, label, metrics=("roc_auc", "pr_auc_ap"))
    assert got == {"roc_auc": None, "pr_auc_ap": None}
    assert average_precision_from_counts(np.array([0, 0]), np.array([3, 4])) is None


def test_binary_prediction_has_no_auc_unless_prob_given():
    prob, label = _case("continuous", 5)
    mask = (prob >= 0.5).astype(np.uint8)
    got = compute_metrics(mask, label, metrics=("dice", "roc_auc", "pr_auc_ap"))
    assert got["roc_auc"] is None and got["pr_auc_ap"] is None
    hits = np.logical_and(mask, label).sum()
    assert got["dice"] == pytest.approx(2 * hits / (mask.sum() + label.sum()))
    with_prob = compute_metrics(mask, label, metrics=("roc_auc",), prob=prob)
    assert with_prob["roc_auc"] == pytest.approx(
        roc_auc_score(label.ravel(), prob.ravel()), abs=1e-9
    )


def test_negative_zero_is_zero():
    prob = np.array([-0.0, 0.0, 0.7, 0.2], np.float32).reshape(4, 1, 1)
    label = np.array([0, 1, 1, 0], bool).reshape(4, 1, 1)
    # vessel 0.0 ties the background -0.0 (one half) and loses to 0.2; vessel 0.7 wins twice
    assert roc_auc(prob, label) == pytest.approx((0.5 + 0 + 1 + 1) / 4)


@pytest.mark.parametrize("bad", [np.nan, 1.5, -0.2])
def test_invalid_probabilities_raise(bad):
    prob = np.full((4, 4, 4), 0.3, np.float32)
    prob[1, 1, 1] = bad
    label = np.zeros(prob.shape, bool)
    label[2, 2, 2] = True
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        compute_metrics(prob, label)
    with pytest.raises(ValueError, match=r"probabilities in \[0, 1\]"):
        ranked_counts(prob, label)
