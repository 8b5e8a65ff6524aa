"""Losses on vessel logits ``(B, 1, D, H, W)`` and binary targets of the same shape."""

from __future__ import annotations

import torch
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
