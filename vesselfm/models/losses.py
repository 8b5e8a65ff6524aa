"""Losses on network logits: ``SigmoidLoss`` for vessel logits ``(B, 1, D, H, W)`` and binary
targets, ``HierarchicalSegmentLoss`` for segment logits ``(B, C, D, H, W)`` and class indices."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SigmoidLoss(nn.Module):
    """Apply a sigmoid to the logits, then a loss that expects probabilities.

    MONAI's ``SoftDiceclDiceLoss`` works on probabilities while the network emits logits; this
    wrapper lets every loss in ``configs/loss/`` take logits.

    Example:
        >>> from monai.losses import SoftDiceclDiceLoss
        >>> loss = SigmoidLoss(SoftDiceclDiceLoss())
        >>> value = loss(torch.randn(1, 1, 8, 8, 8), torch.ones(1, 1, 8, 8, 8))
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.loss(torch.sigmoid(logits), target)


class HierarchicalSegmentLoss(nn.Module):
    """Segment loss in two levels: *is it a vessel*, then *which segment is it*.

    Class 0 is the background, classes ``1..C-1`` the segments. With ``p = softmax(logits)``:

    - **vessel**: the vessel probability ``1 - p_0 = sigmoid(v)``, ``v = logsumexp(logits[1:])
      - logits[0]``, scored against ``target > 0`` like a lumen model: soft Dice over the whole
      batch at once (``lambda_vessel_dice``) plus binary cross-entropy (``lambda_vessel_bce``).
    - **segment**: cross-entropy of the softmax over the segment classes alone,
      ``log_softmax(logits[1:])``, averaged over the true vessel voxels only
      (``lambda_segment_ce``; 0 when the batch holds no vessel voxel).
    - **full**: the ordinary 15-class cross-entropy over every voxel (``lambda_ce``, optional
      per-class ``weight``), which keeps the argmax over all classes consistent with the two
      levels.

    Why: segments are ~0.2 % of the voxels. A 15-class softmax Dice + CE has to find the
    vessels and name them at once, and its gradient towards the rare classes is small once the
    background dominates; the lumen alone (one binary question) learns fast on the same data.
    Here the vessel term sees all 14 segments as one class, and the naming term sees only vessel
    voxels, where every class is common enough to learn.

    Args:
        lambda_vessel_dice: weight of the vessel soft Dice.
        lambda_vessel_bce: weight of the vessel binary cross-entropy.
        lambda_segment_ce: weight of the segment cross-entropy on vessel voxels.
        lambda_ce: weight of the full cross-entropy over all classes and voxels.
        weight: per-class weights ``(C,)`` of the full cross-entropy, background first; ``None``:
            equal.
        smooth: added to the Dice's numerator and denominator.

    Shapes: ``logits`` ``(B, C, D, H, W)`` (``C >= 2``), ``target`` ``(B, 1, D, H, W)`` or
    ``(B, D, H, W)`` class indices ``0..C-1`` (float codes are rounded).

    Example:
        >>> loss = HierarchicalSegmentLoss()
        >>> value = loss(torch.randn(1, 15, 8, 8, 8), torch.randint(0, 15, (1, 1, 8, 8, 8)))
    """

    def __init__(
        self,
        lambda_vessel_dice: float = 1.0,
        lambda_vessel_bce: float = 0.1,
        lambda_segment_ce: float = 1.0,
        lambda_ce: float = 0.1,
        weight: torch.Tensor | list[float] | None = None,
        smooth: float = 1e-5,
    ) -> None:
        super().__init__()
        lambdas = {
            "lambda_vessel_dice": lambda_vessel_dice,
            "lambda_vessel_bce": lambda_vessel_bce,
            "lambda_segment_ce": lambda_segment_ce,
            "lambda_ce": lambda_ce,
        }
        for key, value in lambdas.items():
            if float(value) < 0:
                raise ValueError(f"loss.{key} must be >= 0, got {value}")
        self.lambda_vessel_dice = float(lambda_vessel_dice)
        self.lambda_vessel_bce = float(lambda_vessel_bce)
        self.lambda_segment_ce = float(lambda_segment_ce)
        self.lambda_ce = float(lambda_ce)
        self.smooth = float(smooth)
        self.register_buffer(
            "weight",
            None if weight is None else torch.as_tensor(weight, dtype=torch.float32),
            persistent=False,
        )

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim < 3 or logits.shape[1] < 2:
            raise ValueError(
                f"HierarchicalSegmentLoss needs logits (B, C, ...) with C >= 2 classes, got "
                f"shape {tuple(logits.shape)}"
            )
        if target.ndim == logits.ndim:
            target = target[:, 0]
        classes = target.round().long() if target.is_floating_point() else target.long()
        logits = logits.float()
        vessel = classes > 0
        vessel_f = vessel.float()

        v = torch.logsumexp(logits[:, 1:], dim=1) - logits[:, 0]
        p_vessel = torch.sigmoid(v)
        intersection = (p_vessel * vessel_f).sum()
        dice = 1.0 - (2.0 * intersection + self.smooth) / (
            p_vessel.sum() + vessel_f.sum() + self.smooth
        )
        loss = self.lambda_vessel_dice * dice
        loss = loss + self.lambda_vessel_bce * F.binary_cross_entropy_with_logits(v, vessel_f)

        if self.lambda_segment_ce:
            if vessel.any():
                log_p = torch.log_softmax(logits[:, 1:], dim=1)
                nll = -log_p.gather(1, (classes.clamp(min=1) - 1)[:, None])[:, 0]
                loss = loss + self.lambda_segment_ce * nll[vessel].mean()
        if self.lambda_ce:
            weight = None if self.weight is None else self.weight.to(logits.device)
            loss = loss + self.lambda_ce * F.cross_entropy(logits, classes, weight=weight)
        return loss
