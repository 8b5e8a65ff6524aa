"""Every config file of every group composes to the values it should; what can be built
without data is built."""

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
    "optim": "train",
    "inference": "train",
    "trainer": "train",
    "logger": "train",
    "callbacks": "train",
    "paths": "train",
    "hydra": "train",
    "debug": "train",
    "experiment": "train",
    "preprocess": "prepare",
}
# a value of each primary config that only it sets, and the required keys to compose it
PRIMARY_VALUES = {
    "train": ([], "task_name", "phantom_demo"),
    "infer": (["input=x"], "preprocess", None),
    "evaluate": (["pred=p", "gt=g", "output=o"], "threshold", 0.5),
    "prepare": (["source=s", "output=o"], "label_threshold", 0.5),
    "phantom": (["output=o"], "shape", [512, 512, 256]),
    "visualise": (["pred=p"], "html_max_faces", 400000),
    "analyse": (["mask=m", "output=o"], "plots", True),
    "export": (["output=o"], "check_tolerance", 0.05),
}
VESSELFM_PREPROCESS = {
    "in_plane_size": 256,
    "target_spacing": None,
    "lower": 1.0,
    "upper": 99.0,
    "b_min": 0.0,
    "b_max": 1.0,
    "clip": True,
    "ignore_below": None,
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_configs_ship_inside_the_package():
    assert "train" in PRIMARY
    for group in GROUPS:
        assert (CONFIGS / group).is_dir(), group


@pytest.mark.parametrize("name", PRIMARY)
def test_primary_config_composes(compose_cfg, name):
    assert set(PRIMARY_VALUES) == set(PRIMARY)
    overrides, key, value = PRIMARY_VALUES[name]
    cfg = compose_cfg(name, overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert resolved[key] == value
    for override in overrides:
        k, _, v = override.partition("=")
        assert resolved[k] == v


@pytest.mark.parametrize(
    ("group", "option"), [(g, o) for g in GROUPS for o in _options(g)], ids=lambda x: str(x)
)
def test_every_group_option_composes(compose_cfg, group, option):
    cfg = compose_cfg(GROUPS[group], [f"{group}={option}"])
    resolved = OmegaConf.to_container(cfg, resolve=True)
    assert cfg.hydra.runtime.choices[group] == option
    if group == "model":
        assert resolved["model"]["name"] == option
    elif group == "experiment":
        assert resolved["task_name"] == option


@pytest.mark.parametrize("option", _options("model"))
def test_models_instantiate(compose_cfg, option):
    from vesselfm.models import build_network

    cfg = compose_cfg("train", [f"model={option}"])
    net = build_network(cfg.model.net)
    assert sum(p.numel() for p in net.parameters()) > 0


@pytest.mark.parametrize("option", [o for o in _options("logger")])
def test_loggers_instantiate(compose_cfg, option, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    from lightning.pytorch.loggers import Logger

    cfg = compose_cfg("train", [f"logger={option}"])
    loggers = [instantiate(lg_cfg) for lg_cfg in cfg.logger.values()]
    assert [type(lg).__name__.lower() for lg in loggers] == [f"{option}logger"]
    assert all(isinstance(lg, Logger) for lg in loggers)


@pytest.mark.parametrize("option", [o for o in _options("callbacks")])
def test_callbacks_instantiate(compose_cfg, option):
    from lightning.pytorch.callbacks import Callback

    expected = {
        "none": [],
        "default": ["ModelCheckpoint", "LearningRateMonitor", "TQDMProgressBar"],
        "early_stopping": [
            "ModelCheckpoint",
            "LearningRateMonitor",
            "TQDMProgressBar",
            "EarlyStopping",
        ],
    }
    cfg = compose_cfg("train", [f"callbacks={option}"])
    callbacks = [instantiate(cb_cfg) for cb_cfg in (cfg.callbacks or {}).values()]
    assert [type(cb).__name__ for cb in callbacks] == expected[option]
    assert all(isinstance(cb, Callback) for cb in callbacks)
    # best checkpoint and early stopping watch the metric the module logs
    for cb in callbacks:
        if hasattr(cb, "monitor") and type(cb).__name__ != "LearningRateMonitor":
            assert cb.monitor == "val/dice"


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
    assert "sync_batchnorm" not in cfg.trainer  # an instance-norm network: nothing to sync


@pytest.mark.parametrize("option", _options("loss"))
def test_losses_instantiate(compose_cfg, option):
    import torch

    cfg = compose_cfg("train", [f"loss={option}"])
    loss = instantiate(cfg.loss)
    # segment losses take 15 class logits and codes 0..14; the others one vessel channel
    classes = 15 if option in {"dice_ce_softmax", "segments_hierarchical"} else 1
    logits = torch.randn(2, classes, 16, 16, 16)
    target = (torch.rand(2, 1, 16, 16, 16) > 0.8).float()
    if classes > 1:
        target = target * torch.randint(1, classes, (2, 1, 16, 16, 16))
    value = loss(logits, target)
    assert value.ndim == 0 and torch.isfinite(value)


def test_optimizer_is_partial(compose_cfg):
    import torch

    cfg = compose_cfg("train", ["~experiment"])  # optim/adamw_warmup_cosine's own values
    opt = instantiate(cfg.optimizer)(torch.nn.Linear(2, 2).parameters())
    assert opt.defaults["lr"] == pytest.approx(1e-3) and opt.defaults[
        "weight_decay"
    ] == pytest.approx(0.1)


def test_scheduler_is_a_partial_with_the_settled_override_paths(compose_cfg):
    from functools import partial

    from vesselfm.models.schedulers import warmup_cosine

    cfg = compose_cfg(
        "train",
        [
            "scheduler.warmup=2",
            "scheduler.interval=step",
            "scheduler.eta_min=0.0",
            "optimizer.lr=0.01",
        ],
    )
    scheduler = instantiate(cfg.scheduler)
    assert isinstance(scheduler, partial) and scheduler.func is warmup_cosine
    assert scheduler.keywords == {"warmup": 2, "eta_min": 0.0, "interval": "step"}
    assert instantiate(cfg.optimizer).keywords["lr"] == pytest.approx(0.01)
    assert compose_cfg("train", ["scheduler=null"]).scheduler is None


def test_a_bare_train_is_the_phantom_demo(compose_cfg):
    """The settled default: python -m vesselfm.train == python -m vesselfm.train experiment=phantom_demo."""
    bare, demo = compose_cfg("train"), compose_cfg("train", ["experiment=phantom_demo"])
    assert bare.hydra.runtime.choices.experiment == "phantom_demo"
    job = [OmegaConf.to_container(c, resolve=True) for c in (bare, demo)]
    for c in job:
        del c["hydra"]  # it records the command-line overrides
    assert job[0] == job[1]
    assert bare.task_name == "phantom_demo" and bare.model.name == "tiny"
    assert bare.data._target_ == "vesselfm.data.PhantomDataModule" and bare.data.augment is False
    assert bare.trainer.accelerator == "cpu" and bare.trainer.max_epochs == 12
    assert bare.demo.cases == 1
    # ~experiment: train.yaml's own defaults
    base = compose_cfg("train", ["~experiment"])
    assert base.task_name == "train" and base.model.name == "vesselfm_base" and base.demo is None


def test_imagecas_finetune_has_the_published_settings(compose_cfg):
    """experiment=imagecas_finetune replaces the demo; DESIGN.md's published fine-tune."""
    cfg = compose_cfg("train", ["experiment=imagecas_finetune"])
    assert cfg.task_name == "imagecas_finetune" and cfg.demo is None
    assert cfg.model.name == "vesselfm_base"
    assert cfg.model.checkpoint == "hf://bwittmann/vesselFM/vesselFM_base.pt"
    assert cfg.data._target_ == "vesselfm.data.ImageCASDataModule"
    assert list(cfg.data.patch_size) == [128, 128, 128] and cfg.data.batch_size == 6
    assert cfg.data.fast_transforms is True and len(cfg.data.augment) == 7
    assert cfg.optimizer._target_ == "torch.optim.AdamW"
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay) == (1e-3, 0.1)
    assert (cfg.scheduler.warmup, cfg.scheduler.eta_min, cfg.scheduler.interval) == (
        0,
        1e-7,
        "epoch",
    )
    assert cfg.trainer.max_epochs == 10 and cfg.trainer.precision == "16-mixed"
    assert cfg.trainer.accelerator == "gpu" and cfg.trainer.check_val_every_n_epoch == 1
    assert cfg.loss._target_ == "monai.losses.DiceCELoss"
    assert (cfg.loss.lambda_dice, cfg.loss.lambda_ce) == (0.9, 0.1)
    assert cfg.inference.threshold == 0.62
    assert cfg.callbacks.model_checkpoint.monitor == "val/dice"


def test_imagecas_zeroshot_tests_the_published_weights_with_vesselfms_settings(compose_cfg):
    cfg = compose_cfg("train", ["experiment=imagecas_zeroshot"])
    assert cfg.task_name == "imagecas_zeroshot" and cfg.train is False and cfg.test is True
    assert cfg.model.checkpoint == "hf://bwittmann/vesselFM/vesselFM_base.pt"
    assert cfg.data._target_ == "vesselfm.data.ImageCASDataModule"
    assert list(cfg.inference.roi_size) == [128, 128, 128]
    assert (cfg.inference.overlap, cfg.inference.threshold) == (0.5, 0.5)


def test_one_preprocess_group_for_prepare_data_and_infer(compose_cfg):
    assert OmegaConf.to_container(compose_cfg("prepare", ["source=s", "output=o"]).preprocess) == (
        VESSELFM_PREPROCESS
    )
    phantom = OmegaConf.to_container(compose_cfg("train").data.preprocess)
    # the demo (train's default experiment) takes its percentiles over the body, not the air
    assert phantom == {**VESSELFM_PREPROCESS, "in_plane_size": None, "ignore_below": -500}
    # infer: null (the checkpoint's record, else vesselFM's) unless asked for
    assert compose_cfg("infer", ["input=x"]).preprocess is None
    chosen = compose_cfg("infer", ["input=x", "preprocess=vesselfm"]).preprocess
    assert OmegaConf.to_container(chosen) == VESSELFM_PREPROCESS
    partial = compose_cfg("infer", ["input=x", "preprocess={in_plane_size: 32}"]).preprocess
    assert OmegaConf.to_container(partial) == {"in_plane_size": 32}


def test_no_dead_keys(compose_cfg):
    debug = compose_cfg("train", ["debug=default"])
    assert "extras" not in debug
