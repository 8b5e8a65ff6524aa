"""The learning-rate schedule of configs/optim: the same sequence as before it became a partial."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from hydra.utils import instantiate

from vesselfm.models.lit_module import VesselSegLitModule
from vesselfm.models.schedulers import warmup_cosine

# Recorded from the code before configs/optim existed (VesselSegLitModule built its LambdaLR
# from the dict {warmup, eta_min, interval}), one value per epoch or step, from the first.
RECORDED = {
    # experiment=imagecas_finetune: lr 1e-3, no warm-up, cosine to 1e-7 over 10 epochs
    "imagecas_finetune": [
        0.001, 0.0009755307053217621, 0.000904518046337755, 0.0007939132368836219,
        0.000654543046337755, 0.00050005, 0.0003455569536622451, 0.0002061867631163781,
        9.558195366224507e-05, 2.4569294678237992e-05, 1e-07, 1e-07,
    ],
    # experiment=phantom_demo: lr 3e-3, 1 epoch warm-up, cosine to 1e-5 over 12 epochs
    "phantom_demo": [
        0.003, 0.003, 0.0029394419955536735, 0.002762674031582616, 0.0024840167972482014,
        0.0021260454444378208, 0.0017177606832185614, 0.001292239316781439,
        0.0008839545555621801, 0.0005259832027517989, 0.00024732596841738394,
        7.05580044463266e-05, 1e-05,
    ],
}  # fmt: skip


def _lrs(module: VesselSegLitModule, trainer: SimpleNamespace, n: int) -> tuple[str, list[float]]:
    """Step the module's optimizer and schedule ``n`` times, as Lightning does per interval."""
    module.trainer = trainer  # type: ignore[method-assign]
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(n):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return config["lr_scheduler"]["interval"], lrs


def _module(cfg) -> VesselSegLitModule:
    return VesselSegLitModule(
        torch.nn.Linear(2, 2),
        torch.nn.MSELoss(),
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler),
    )


@pytest.fixture()
def trainer_attr(monkeypatch):
    """Let a test give VesselSegLitModule a stand-in trainer (max_epochs, stepping batches)."""
    monkeypatch.setattr(
        VesselSegLitModule,
        "trainer",
        property(
            lambda self: self._fake_trainer, lambda self, t: setattr(self, "_fake_trainer", t)
        ),
    )


@pytest.mark.parametrize("experiment", sorted(RECORDED))
def test_each_experiment_keeps_its_learning_rate_sequence(compose_cfg, trainer_attr, experiment):
    cfg = compose_cfg("train", [f"experiment={experiment}"])
    trainer = SimpleNamespace(max_epochs=cfg.trainer.max_epochs, estimated_stepping_batches=None)
    interval, lrs = _lrs(_module(cfg), trainer, len(RECORDED[experiment]))
    assert interval == "epoch"
    assert lrs == pytest.approx(RECORDED[experiment], rel=1e-12, abs=0)


def test_the_step_interval_by_hand(compose_cfg, trainer_attr):
    """Warm-up over 2 steps, then cosine over the 6 remaining of 8 steps to eta_min, then flat."""
    cfg = compose_cfg(
        "train",
        [
            "experiment=imagecas_finetune",
            "scheduler.warmup=2",
            "scheduler.interval=step",
            "scheduler.eta_min=1e-7",
        ],
    )
    lr, eta = cfg.optimizer.lr, 1e-7
    trainer = SimpleNamespace(max_epochs=None, estimated_stepping_batches=8)
    interval, lrs = _lrs(_module(cfg), trainer, 10)
    cosine = [eta + (lr - eta) * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(7)]
    assert interval == "step"
    assert lrs == pytest.approx([lr / 2, lr, *cosine, eta], rel=1e-12)
    # recorded from the code before configs/optim, as above
    assert lrs == pytest.approx(
        [0.0005, 0.001, 0.001, 0.0009330194006220301, 0.000750025, 0.00050005,
         0.0002500750000000001, 6.708059937796987e-05, 1e-07, 1e-07], rel=1e-12
    )  # fmt: skip


def test_scheduler_null_keeps_the_learning_rate(compose_cfg):
    cfg = compose_cfg("train", ["scheduler=null"])
    module = VesselSegLitModule(
        torch.nn.Linear(2, 2), torch.nn.MSELoss(), optimizer=instantiate(cfg.optimizer)
    )
    assert set(module.configure_optimizers()) == {"optimizer"}


@pytest.mark.parametrize(
    ("kwargs", "trainer", "message"),
    [
        ({"interval": "batch"}, SimpleNamespace(max_epochs=3), r"scheduler.interval must be one of \('epoch', 'step'\), got 'batch'"),
        ({"interval": "epoch"}, SimpleNamespace(max_epochs=None), "needs trainer.max_epochs"),
        ({"interval": "step"}, SimpleNamespace(estimated_stepping_batches=math.inf), "needs trainer.max_epochs"),
    ],
)  # fmt: skip
def test_bad_intervals_and_lengths_name_the_key(kwargs, trainer, message):
    optimizer = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=1e-3)
    with pytest.raises(ValueError, match=message):
        warmup_cosine(optimizer, trainer, **kwargs)


def test_a_bad_interval_fails_when_the_module_is_built(compose_cfg):
    cfg = compose_cfg("train", ["scheduler.interval=batch"])
    with pytest.raises(ValueError, match="scheduler.interval must be one of"):
        _module(cfg)
