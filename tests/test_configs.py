"""Every config file of every group composes; what can be built without data is built."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import pytest
from hydra.utils import instantiate
from omegaconf import OmegaConf

CONFIGS = Path(str(files("vesselfm.configs")))
PRIMARY = sorted(p.stem for p in CONFIGS.glob("*.yaml"))
# group -> the primary config that uses it
GROUPS = {
    "model": "train",
    "data": "train",
    "loss": "train",
    "inference": "train",
    "trainer": "train",
    "logger": "train",
    "callbacks": "train",
    "paths": "train",
    "hydra": "train",
    "debug": "train",
    "experiment": "train",
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_configs_ship_inside_the_package():
    assert "train" in PRIMARY
    for group in GROUPS:
        assert (CONFIGS / group).is_dir(), group


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes(compose_cfg, name):
    cfg = compose_cfg(name)
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in _options(g)], ids=lambda x: str(x)
)
def test_every_group_option_composes(compose_cfg, group, option):
    cfg = compose_cfg(GROUPS[group], [f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved is not None


@pytest.mark.parametrize("option", _options("model"))
def test_models_instantiate(compose_cfg, option):
    from vesselfm.models import build_network

    cfg = compose_cfg("train", [f"model={option}"])
    net = build_network(cfg.model.net)
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("option", [o for o in _options("logger")])
def test_loggers_instantiate(compose_cfg, option, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = compose_cfg("train", [f"logger={option}"])
    for lg_cfg in cfg.logger.values():
        assert instantiate(lg_cfg) is not None


@pytest.mark.parametrize("option", [o for o in _options("callbacks")])
def test_callbacks_instantiate(compose_cfg, option):
    cfg = compose_cfg("train", [f"callbacks={option}"])
    for cb_cfg in (cfg.callbacks or {}).values():
        assert instantiate(cb_cfg) is not None


@pytest.mark.parametrize("option", [o for o in _options("trainer") if o != "ddp"] + ["ddp"])
def test_trainers_instantiate_on_cpu(compose_cfg, option, fake_cpu):
    from vesselfm.utils.hardware import resolve_trainer_precision

    fake_cpu("AVX2")
    cfg = compose_cfg(
        "train", [f"trainer={option}", "trainer.accelerator=cpu", "trainer.devices=1"]
    )
    # every trainer option picks its precision from the hardware, as train() resolves it
    assert cfg.trainer.precision == "auto"
    precision = resolve_trainer_precision(cfg.trainer.precision, cfg.trainer.accelerator)
    trainer = instantiate(
        cfg.trainer, logger=False, enable_checkpointing=False, precision=precision
    )
    assert trainer.max_epochs == cfg.trainer.max_epochs
    assert trainer.precision == "32-true"
    assert type(trainer.strategy).__name__ == (
        "DDPStrategy" if option == "ddp" else "SingleDeviceStrategy"
    )


@pytest.mark.parametrize("option", _options("loss"))
def test_losses_instantiate(compose_cfg, option):
    import torch

    cfg = compose_cfg("train", [f"loss={option}"])
    loss = instantiate(cfg.loss)
    logits = torch.randn(2, 1, 16, 16, 16)
    target = (torch.rand(2, 1, 16, 16, 16) > 0.8).float()
    value = loss(logits, target)
    assert value.ndim == 0 and torch.isfinite(value)


def test_optimizer_is_partial(compose_cfg):
    import torch

    cfg = compose_cfg("train")
    opt = instantiate(cfg.optimizer)(torch.nn.Linear(2, 2).parameters())
    assert opt.defaults["lr"] == pytest.approx(1e-3) and opt.defaults[
        "weight_decay"
    ] == pytest.approx(0.1)
