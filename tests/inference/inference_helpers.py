"""Toy networks for the inference tests (synthetic volumes are in ``tests/synthetic.py``)."""

from __future__ import annotations

import torch
from torch import nn


class IdentityNet(nn.Module):
    """Returns its input as logits: sliding window and TTA must give back exactly the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clone()
