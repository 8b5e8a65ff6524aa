"""``read_checkpoint_metadata``: the preprocessing and threshold our .ckpt files record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vesselfm.data.preprocessing import PreprocessConfig
from vesselfm.inference import read_checkpoint_metadata
from vesselfm.models import CheckpointError


def _ckpt(path: Path, meta: object | None) -> Path:
    ckpt = {"state_dict": {"model.w": torch.zeros(2)}, "epoch": 3}
    if meta is not None:
        ckpt["vesselfm"] = meta
    torch.save(ckpt, path)
    return path


def test_reads_preprocess_and_threshold(tmp_path: Path) -> None:
    pre = PreprocessConfig(in_plane_size=None, target_spacing=(0.5, 0.5, 0.6), lower=0.5)
    path = _ckpt(
        tmp_path / "best.ckpt",
        {"preprocess": pre.to_dict(), "threshold": 0.62, "model_name": "vesselfm_base"},
    )
    meta = read_checkpoint_metadata(path)
    assert meta["preprocess"] == pre
    assert meta["threshold"] == pytest.approx(0.62)
    assert meta["model_name"] == "vesselfm_base"


def test_no_metadata(tmp_path: Path) -> None:
    assert read_checkpoint_metadata(None) == {}
    assert read_checkpoint_metadata(_ckpt(tmp_path / "old.ckpt", None)) == {}
    torch.save({"w": torch.zeros(2)}, tmp_path / "raw.pt")
    assert read_checkpoint_metadata(tmp_path / "raw.pt") == {}


def test_malformed_metadata_fails_loudly(tmp_path: Path) -> None:
    path = _ckpt(tmp_path / "bad.ckpt", {"preprocess": {"in_plane": 3}})
    with pytest.raises(CheckpointError, match="malformed"):
        read_checkpoint_metadata(path)
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint_metadata(tmp_path / "missing.ckpt")
