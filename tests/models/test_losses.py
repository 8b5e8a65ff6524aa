"""HierarchicalSegmentLoss (loss=segments_hierarchical) against a hand computation in NumPy."""

from __future__ import annotations

import numpy as np
import pytest
import torch


def _hand(logits: np.ndarray, classes: np.ndarray, lambdas: tuple[float, float, float, float]):
    """The loss computed independently: float64 NumPy, explicit sums."""
    dice_w, bce_w, seg_w, ce_w = lambdas
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)  # (B, C, ...)
    p_vessel = 1.0 - p[:, 0]
    vessel = (classes > 0).astype(np.float64)
    dice = 1 - (2 * (p_vessel * vessel).sum() + 1e-5) / (p_vessel.sum() + vessel.sum() + 1e-5)
    bce = -np.mean(vessel * np.log(p_vessel) + (1 - vessel) * np.log(1 - p_vessel))
    # segment softmax over classes 1..C-1, on the vessel voxels only
    q = p[:, 1:] / p[:, 1:].sum(axis=1, keepdims=True)
    mask = classes > 0
    picked = np.take_along_axis(q, np.clip(classes - 1, 0, None)[:, None], 1)[:, 0]
    seg_ce = -np.log(picked[mask]).mean()
    full_ce = -np.log(np.take_along_axis(p, classes[:, None], 1)[:, 0]).mean()
    return dice_w * dice + bce_w * bce + seg_w * seg_ce + ce_w * full_ce


@pytest.mark.parametrize("lambdas", [(1.0, 1.0, 1.0, 0.1), (0.5, 0.0, 2.0, 0.0)])
def test_hierarchical_loss_matches_hand_computation(lambdas) -> None:
    from vesselfm.models.losses import HierarchicalSegmentLoss

    classes = np.zeros((2, 4, 3, 2), dtype=np.int64)
    classes[0, 1, :, 0] = 1
    classes[0, 2, 1, :] = 3
    classes[1, 0, 0, 1] = 2
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(2, 4, 4, 3, 2)) * 2
    loss = HierarchicalSegmentLoss(*lambdas)
    target = torch.from_numpy(classes)[:, None].float()  # codes as the loader gives them
    value = float(loss(torch.from_numpy(logits).float(), target))
    assert value == pytest.approx(_hand(logits, classes, lambdas), rel=1e-5)


def test_hierarchical_loss_levels() -> None:
    from vesselfm.models.losses import HierarchicalSegmentLoss

    classes = torch.zeros(1, 1, 4, 4, 2, dtype=torch.long)
    classes[0, 0, :2] = 1
    classes[0, 0, 3] = 2
    onehot = torch.nn.functional.one_hot(classes[:, 0], 3).movedim(-1, 1).float()
    perfect = onehot * 40.0 - 20.0
    # a perfect prediction costs ~0; the same vessels with every segment named wrongly cost only
    # the naming terms: the vessel Dice and BCE are blind to which segment it is
    swapped = perfect[:, [0, 2, 1]]
    vessel_only = HierarchicalSegmentLoss(1.0, 1.0, 0.0, 0.0)
    naming_only = HierarchicalSegmentLoss(0.0, 0.0, 1.0, 0.0)
    assert float(HierarchicalSegmentLoss()(perfect, classes)) < 1e-3
    assert float(vessel_only(swapped, classes)) < 1e-3
    # wrong segment with margin 40 on each vessel voxel: -log softmax = 40 (to 1e-6)
    assert float(naming_only(swapped, classes)) == pytest.approx(40.0, rel=1e-4)
    # no vessel voxel in the batch: the naming term is 0, not nan
    empty = torch.zeros_like(classes)
    assert float(naming_only(torch.randn(1, 3, 4, 4, 2), empty)) == 0.0
    with pytest.raises(ValueError, match="C >= 2"):
        vessel_only(torch.randn(1, 1, 4, 4, 2), classes)
    with pytest.raises(ValueError, match="lambda_ce must be >= 0"):
        HierarchicalSegmentLoss(lambda_ce=-1)
