"""Fixtures for the inference tests (helpers in ``inference_helpers.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from inference_helpers import save_nifti, tube_phantom
from torch import nn


@pytest.fixture()
def scan_file(tmp_path: Path) -> Path:
    """``<tmp>/scans/1.img.nii.gz`` (48×40×32, flipped affine, qform 1 / sform 2) and its label."""
    folder = tmp_path / "scans"
    folder.mkdir()
    image, label = tube_phantom()
    save_nifti(folder / "1.label.nii.gz", label)
    return save_nifti(folder / "1.img.nii.gz", image)


@pytest.fixture()
def make_scan(tmp_path: Path) -> Callable[..., Path]:
    """``make_scan(name, shape=..., seed=...)`` writes a tube phantom into ``<tmp>/scans``."""

    def _make(name: str, shape: tuple[int, int, int] = (48, 40, 32), seed: int = 0) -> Path:
        folder = tmp_path / "scans"
        folder.mkdir(exist_ok=True)
        image, _ = tube_phantom(shape, seed)
        return save_nifti(folder / name, image)

    return _make


@pytest.fixture()
def tiny_net() -> nn.Module:
    """``model=tiny`` with fixed random weights, in eval mode."""
    from omegaconf import OmegaConf
    from vesselfm.configs import __file__ as configs_init

    from vesselfm.models import build_network

    cfg = OmegaConf.load(Path(configs_init).parent / "model" / "vesselfm_base.yaml")
    tiny = OmegaConf.load(Path(configs_init).parent / "model" / "tiny.yaml")
    net_cfg = OmegaConf.merge(cfg.net, tiny.net)
    torch.manual_seed(0)
    return build_network(OmegaConf.to_container(net_cfg, resolve=True)).eval()
