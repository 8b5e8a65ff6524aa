"""Fixtures for the inference tests (volumes from ``tests/synthetic.py``, toy networks in
``inference_helpers.py``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from synthetic import save_nifti, tube_phantom
from torch import nn


@pytest.fixture()
def make_scan(tmp_path: Path) -> Callable[..., Path]:
    """``make_scan(name, shape=..., seed=...)`` writes a tube phantom into ``<tmp>/scans``."""

    def _make(name: str, shape: tuple[int, int, int] = (48, 40, 32), seed: int = 0) -> Path:
        image, _ = tube_phantom(shape, seed)
        return save_nifti(tmp_path / "scans" / name, image)

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


@pytest.fixture()
def weights(tmp_path: Path, tiny_net: nn.Module) -> Path:
    """``tiny_net``'s state dict saved as ``<tmp>/tiny.pt`` (``model=tiny model.checkpoint=``)."""
    path = tmp_path / "tiny.pt"
    torch.save(tiny_net.state_dict(), path)
    return path
