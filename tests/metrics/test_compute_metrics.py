"""compute_metrics as a whole: the contract other code relies on, input checks, and equality with
the whole-volume reference evaluator (scikit-learn and scikit-image, as vesselFM evaluates)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vesselfm.metrics import METRIC_NAMES, compute_metrics
from vesselfm.metrics.reference import reference_metrics

pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")


def test_metric_names_are_the_published_table():
    assert METRIC_NAMES == (
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


@pytest.mark.parametrize("damage", ["cut", "no_branch", "extra_blob"])
def test_equals_whole_volume_reference(tree, damage):
    spacing = (0.4, 0.4, 0.5)
    rng = np.random.default_rng(0)
    prob = tree.prob(getattr(tree, damage))
    # a few scattered false positives and a loop-making bridge
    prob[rng.random(prob.shape) < 0.0005] = 0.9
    prob[30:33, 24:27, 30:33] = 0.8
    ours = compute_metrics(prob, tree.label, spacing=spacing, threshold=0.5)
    ref = reference_metrics(prob, tree.label, spacing, threshold=0.5)
    assert list(ours) == list(METRIC_NAMES)
    for name in METRIC_NAMES:
        if name.startswith("betti"):
            assert ours[name] == ref[name], name
        elif name.endswith("_mm"):
            assert ours[name] == pytest.approx(ref[name], rel=1e-5), name  # MONAI uses float32
        else:
            assert ours[name] == pytest.approx(ref[name], abs=1e-9), name


def test_subset_computes_only_what_is_asked(tree):
    got = compute_metrics(tree.cut, tree.label, metrics=("cldice", "dice"))
    assert list(got) == ["dice", "cldice"]  # table order
    assert got["dice"] < 1.0 and got["cldice"] < 1.0


def test_unknown_metric_lists_the_allowed_names(tree):
    with pytest.raises(ValueError, match="unknown name.*'dcie'.*'dice'"):
        compute_metrics(tree.label, tree.label, metrics=("dcie",))


def test_threshold_is_inclusive():
    prob = np.array([0.49, 0.5, 0.62, 0.7], np.float32).reshape(4, 1, 1)
    label = np.array([0, 1, 1, 1], np.uint8).reshape(4, 1, 1)
    assert compute_metrics(prob, label, threshold=0.5, metrics=("recall_tpr_sensitivity",)) == {
        "recall_tpr_sensitivity": 1.0
    }
    assert compute_metrics(prob, label, threshold=0.62, metrics=("recall_tpr_sensitivity",)) == {
        "recall_tpr_sensitivity": pytest.approx(2 / 3)
    }


def test_accepts_torch_tensors_and_float_labels(tree):
    prob = torch.from_numpy(tree.prob(tree.cut))
    label = torch.from_numpy(tree.label.astype(np.float32))
    got = compute_metrics(prob, label, metrics=("dice", "betti_0_error"))
    ref = compute_metrics(tree.cut, tree.label, metrics=("dice", "betti_0_error"))
    assert got == ref


@pytest.mark.parametrize(
    ("pred", "label", "match"),
    [
        (np.zeros((4, 4, 4), np.float32), np.zeros((4, 4, 5), np.uint8), "same shape"),
        (np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), "3D"),
        (np.full((4, 4, 4), 3.0, np.float32), np.zeros((4, 4, 4), np.uint8), "sigmoid"),
        (
            np.zeros((4, 4, 4), np.float32),
            np.full((4, 4, 4), 2, np.uint8),
            "label: expected a binary",
        ),
        (np.full((4, 4, 4), 2, np.uint8), np.zeros((4, 4, 4), np.uint8), "pred: expected a binary"),
        (
            np.zeros((4, 4, 4), np.float32),
            np.full((4, 4, 4), 0.5, np.float32),
            "label: expected a binary",
        ),
    ],
)
def test_bad_input_raises_one_clear_error(pred, label, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(pred, label)


def test_bad_threshold_raises(tree):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        compute_metrics(tree.label, tree.label, threshold=1.5)


def test_empty_label_and_prediction_give_defined_values():
    empty = np.zeros((8, 8, 8), np.float32)
    got = compute_metrics(empty, empty.astype(np.uint8))
    assert got["dice"] == 1.0 and got["cldice"] == 1.0 and got["accuracy"] == 1.0
    assert got["betti_0_error"] == 0
    for name in (
        "precision",
        "recall_tpr_sensitivity",
        "roc_auc",
        "pr_auc_ap",
        "hd95_mm",
        "assd_mm",
    ):
        assert got[name] is None, name
