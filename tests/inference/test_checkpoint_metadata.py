"""``read_checkpoint_metadata``: the preprocessing and threshold our .ckpt files record."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cli import run_cli

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


def test_ckpt_needing_unpickling_is_refused_unless_trusted(
    tmp_path: Path, hostile_payload, caplog: pytest.LogCaptureFixture
) -> None:
    marker = tmp_path / "code_ran"
    path = _ckpt(tmp_path / "downloaded.ckpt", {"threshold": 0.7, "note": hostile_payload(marker)})

    with pytest.raises(CheckpointError) as info:
        read_checkpoint_metadata(path)
    assert not marker.exists(), "unpickling ran code from the checkpoint"
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "arbitrary code" in message and "model.trust_checkpoint=true" in message

    with caplog.at_level("WARNING"):
        meta = read_checkpoint_metadata(path, trust_checkpoint=True)
    assert meta["threshold"] == pytest.approx(0.7)
    assert marker.is_dir()
    assert "weights_only=False" in caplog.text


@pytest.mark.slow
def test_infer_cli_refuses_an_untrusted_checkpoint_with_one_line(
    tmp_path: Path, scan_file: Path, hostile_payload
) -> None:
    marker = tmp_path / "code_ran"
    evil = _ckpt(tmp_path / "evil.ckpt", {"threshold": 0.5, "note": hostile_payload(marker)})
    out = tmp_path / "preds"
    proc = run_cli(
        "vesselfm.infer",
        f"input={scan_file}",
        f"output={out}",
        "model=tiny",
        f"model.checkpoint={evil}",
        "progress=false",
        cwd=tmp_path,
    )

    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert str(evil) in errors[0] and "model.trust_checkpoint=true" in errors[0]
    assert "Traceback" not in proc.stderr
    assert not marker.exists(), "unpickling ran code from the checkpoint"
    assert not list(tmp_path.glob("**/*_pred.nii.gz"))
