"""Learning-rate schedules, built from ``configs/optim/`` as ``_partial_`` objects.

A scheduler factory is called by :meth:`VesselSegLitModule.configure_optimizers
<vesselfm.models.lit_module.VesselSegLitModule.configure_optimizers>` as
``factory(optimizer=optimizer, trainer=trainer)`` and returns Lightning's lr-scheduler config
(``{"scheduler": ..., "interval": ..., "frequency": ...}``): the schedule's length is known only
once the trainer is, so the factory reads it there. No Hydra here.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

SCHEDULER_INTERVALS = ("epoch", "step")


def warmup_cosine_lambda(
    warmup: int, total: int, base_lr: float, eta_min: float
) -> Callable[[int], float]:
    """LR factor for linear warm-up over ``warmup`` units, then cosine decay to ``eta_min`` at ``total``.

    Unit ``i`` (0-based) of the warm-up has factor ``(i + 1) / warmup``; after it the learning
    rate is ``eta_min + (base_lr - eta_min) * (1 + cos(pi * p)) / 2`` with
    ``p = min(1, (i - warmup) / (total - warmup))``, so it stays at ``eta_min`` past ``total``.
    """

    def factor(i: int) -> float:
        if warmup > 0 and i < warmup:
            return (i + 1) / warmup
        progress = min(1.0, (i - warmup) / max(1, total - warmup))
        floor = eta_min / base_lr if base_lr > 0 else 0.0
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    return factor


def warmup_cosine(
    optimizer: torch.optim.Optimizer,
    trainer: Any,
    warmup: int = 0,
    eta_min: float = 0.0,
    interval: str = "epoch",
) -> dict[str, Any]:
    """Linear warm-up, then cosine decay to ``eta_min`` over the whole run (vesselFM's schedule).

    Args:
        optimizer: the optimizer whose (first group's) learning rate is the peak.
        trainer: the Lightning trainer: its ``max_epochs`` (``interval="epoch"``) or
            ``estimated_stepping_batches`` (``interval="step"``) is the schedule's length.
        warmup: warm-up length in ``interval`` units (0: none).
        eta_min: the learning rate at the end.
        interval: ``"epoch"`` (vesselFM: one update per epoch) or ``"step"`` (per optimizer step).

    Returns:
        Lightning's lr-scheduler config: ``{"scheduler": LambdaLR, "interval": interval,
        "frequency": 1}``.

    Raises:
        ValueError: ``interval`` is not one of ``("epoch", "step")``, or the trainer has no
            length in that unit (neither ``max_epochs`` nor ``max_steps`` set).
    """
    if interval not in SCHEDULER_INTERVALS:
        raise ValueError(
            f"scheduler.interval must be one of {SCHEDULER_INTERVALS}, got {interval!r}"
        )
    # only the unit in use is asked for: estimated_stepping_batches sets up the train loader
    total = trainer.max_epochs if interval == "epoch" else trainer.estimated_stepping_batches
    if total is None or total < 0 or (isinstance(total, float) and math.isinf(total)):
        raise ValueError(
            f"scheduler.interval={interval} needs trainer.max_epochs (or max_steps) to be set, got {total}"
        )
    base_lr = optimizer.param_groups[0]["lr"]
    factor = warmup_cosine_lambda(int(warmup), int(total), base_lr, float(eta_min))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
    return {"scheduler": scheduler, "interval": interval, "frequency": 1}


__all__ = ["SCHEDULER_INTERVALS", "warmup_cosine", "warmup_cosine_lambda"]
