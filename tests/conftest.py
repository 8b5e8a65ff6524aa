"""Shared fixtures: real configs composed with Hydra's compose API, then shrunk for a CPU.

As in lightning-hydra-template: ``compose_cfg`` gives any real config with its paths in
``tmp_path``; ``train_cfg`` the train config shrunk for a CPU (1 epoch of 2 steps, tiny model and
phantoms, cpu, ``num_workers=0``, the CSV logger unless asked). Synthetic volumes come from
``synthetic.py``, subprocesses start through ``cli.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

# Two cores: keep torch from oversubscribing them when tests run subprocesses.
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session", autouse=True)
def ctrl_c_delivered() -> None:
    """Ctrl-C raises KeyboardInterrupt here and in the CLIs the tests start, even when pytest was
    started in the background (``cmd &`` or ``nohup``): such a shell starts it with SIGINT
    ignored, Python then installs no handler, and subprocesses inherit the SIG_IGN, so the
    signal tests would test the shell, not vesselfm (a fresh-clone ``.ci/run &`` failed two)."""
    import signal

    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def signal_handlers() -> Iterator[None]:
    """Every test leaves Ctrl-C and SIGTERM handled as it found them: code run in this process
    (Lightning ignores Ctrl-C while it shuts down after one, run_guarded) may install its own,
    and subprocesses inherit a SIG_IGN left behind."""
    import signal

    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in before.items():
        if signal.getsignal(sig) is not handler and handler is not None:
            signal.signal(sig, handler)


@pytest.fixture(scope="session", autouse=True)
def export_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``inference.backend=auto`` (infer's default) exports a checkpoint once per weights into
    ``$VESSELFM_EXPORT_CACHE``: one folder for the session (tests and their subprocesses), not
    the developer's ``~/.cache``."""
    cache = tmp_path_factory.mktemp("export-cache")
    before = os.environ.get("VESSELFM_EXPORT_CACHE")
    os.environ["VESSELFM_EXPORT_CACHE"] = str(cache)
    yield cache
    if before is None:
        os.environ.pop("VESSELFM_EXPORT_CACHE", None)
    else:
        os.environ["VESSELFM_EXPORT_CACHE"] = before


@pytest.fixture()
def compose_cfg(tmp_path: Path) -> Iterator[Callable[..., DictConfig]]:
    """Compose ``configs/<name>.yaml`` with overrides, resolving ``hydra:`` interpolations.

    Paths point into ``tmp_path`` so nothing is written into the checkout.
    """

    def _compose(name: str = "train", overrides: list[str] | None = None) -> DictConfig:
        GlobalHydra.instance().clear()
        with initialize_config_module(config_module="vesselfm.configs", version_base="1.3"):
            cfg = compose(
                config_name=name, return_hydra_config=True, overrides=list(overrides or [])
            )
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
            cfg.hydra.runtime.cwd = str(tmp_path)
            cfg.hydra.job.num = 0
            if "paths" in cfg:
                cfg.paths.root_dir = str(tmp_path)
                cfg.paths.data_dir = str(tmp_path / "data")
        HydraConfig().set_config(cfg)
        return cfg

    yield _compose
    GlobalHydra.instance().clear()


# The real train config shrunk for a 2-core CPU, as lightning-hydra-template's cfg_train: the
# phantom demo (tiny model, cpu trainer) on 3 phantoms of 48x48x40, 32^3 patches, the whole
# phantom as one inference window (validation and test: one forward pass a case instead of 8
# windows of 32^3, most of a shrunk run's time), 1 epoch of 2 steps (samples_per_epoch 4 / batch 2: the batch limit), num_workers=0, no demo
# segmentation, no out-of-distribution scoring; outputs in tmp_path (compose_cfg). The logger is
# the local CSV one unless the test names another: the default callbacks' LearningRateMonitor
# refuses a run without logger.
SHRUNK_TRAIN = (
    "experiment=phantom_demo",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "data.n_train=2",
    "data.n_val=1",
    "data.n_test=1",
    "data.shape=[48,48,40]",
    "data.patch_size=[32,32,32]",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.samples_per_epoch=4",
    "data.foreground_ratio=1.0",
    "inference.roi_size=[48,48,40]",
    "demo.cases=0",
    "ood.cases=0",
)


def _train_overrides(*overrides: str) -> list[str]:
    logger = any(o.lstrip("+~").startswith("logger") for o in overrides)
    return [*SHRUNK_TRAIN, *([] if logger else ["logger=csv"]), *overrides]


@pytest.fixture()
def train_overrides() -> Callable[..., list[str]]:
    """``train_overrides(*overrides)``: ``SHRUNK_TRAIN`` then ``overrides``, as command-line
    arguments for ``python -m vesselfm.train`` (later values win: ``trainer.max_epochs=4``)."""
    return _train_overrides


@pytest.fixture()
def train_cfg(compose_cfg: Callable[..., DictConfig]) -> Callable[..., DictConfig]:
    """``train_cfg(*overrides)``: ``configs/train.yaml`` composed with ``SHRUNK_TRAIN``, then
    ``overrides``; paths in ``tmp_path``. ``train(train_cfg())`` fits and tests in seconds."""

    def _cfg(*overrides: str) -> DictConfig:
        return compose_cfg("train", _train_overrides(*overrides))

    return _cfg


@pytest.fixture()
def fake_cpu(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """A function that makes torch's CPU probes report a given machine (see vesselfm.utils.hardware).

    ``fake_cpu("AVX2")``: an AVX2-only CPU; ``fake_cpu("AVX512", avx512_bf16=True)``: one with
    native bf16. ``ONEDNN_MAX_CPU_ISA`` and ``DNNL_MAX_CPU_ISA`` are cleared.
    """

    def _fake(capability: str = "AVX2", avx512_bf16: bool = False, amx: bool = False) -> None:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
        monkeypatch.delenv("DNNL_MAX_CPU_ISA", raising=False)

    return _fake


@pytest.fixture()
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Hugging Face cache directory, used offline (``HF_HUB_OFFLINE=1``)."""
    cache = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # huggingface_hub reads these at import time; keep its constants in line with the env.
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache / "hub"))
    return cache / "hub"


def _fill_hf_cache(
    cache: Path, repo_id: str, filename: str, state_dict: dict, revision: str = "main"
) -> Path:
    """Lay out a Hugging Face hub cache by hand, as ``hf_hub_download`` would have left it.

    ``<cache>/models--owner--repo/{refs/<revision>, snapshots/<commit>/<filename>}``.
    """
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs" / revision).write_text(commit)
    target = repo_dir / "snapshots" / commit / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state_dict, target)
    return target


@pytest.fixture()
def fill_hf_cache() -> Callable[..., Path]:
    """The function that lays out a Hugging Face cache by hand (see ``_fill_hf_cache``)."""
    return _fill_hf_cache


class _MkdirWhenUnpickled:
    """Stands in for a hostile checkpoint's payload: unpickling it runs ``os.mkdir(marker)``.

    Only ``os.mkdir`` (``posix.mkdir``) is recorded in the pickle, so it needs no import of this
    module to run, in this process or in a subprocess.
    """

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.mkdir, (self.marker,))


@pytest.fixture()
def hostile_payload() -> Callable[[Path], object]:
    """``hostile_payload(marker)``: an object whose unpickling creates the folder ``marker``."""
    return _MkdirWhenUnpickled


@pytest.fixture()
def scan_file(tmp_path: Path) -> Path:
    """``<tmp>/scans/1.img.nii.gz`` (48×40×32, flipped affine, qform 1 / sform 2) and its label."""
    from synthetic import tube_phantom, write_case

    return write_case(tmp_path / "scans", "1", *tube_phantom()).image
