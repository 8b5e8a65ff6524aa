"""``python -m vesselfm.infer``: end to end, many files, faults, skipping, scoring, checkpoints."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from inference_helpers import FLIPPED_AFFINE
from omegaconf import DictConfig

from vesselfm.infer import default_output_dir, infer
from vesselfm.utils.cli import UserError

# tiny random network, small windows, a 32 x 32 x N prepared grid: seconds on a CPU
FAST = [
    "model=tiny",
    "model.checkpoint=null",
    "inference.roi_size=[32,32,32]",
    "inference.overlap=0.25",
    "preprocess={in_plane_size: 32}",
    "progress=false",
]


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "VESSELFM_DEBUG": ""}
    return subprocess.run(
        [sys.executable, "-m", "vesselfm.infer", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_help(tmp_path: Path) -> None:
    proc = _run_cli("--help", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "python -m vesselfm.infer input=PATH" in proc.stdout
    assert "save_prob" in proc.stdout


def test_end_to_end_subprocess_keeps_shape_and_affine(scan_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "preds"
    proc = _run_cli(f"input={scan_file}", f"output={out}", "save_prob=true", *FAST, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    src = nib.load(scan_file)
    pred = nib.load(out / "1_pred.nii.gz")
    prob = nib.load(out / "1_prob.nii.gz")
    for img in (pred, prob):
        assert img.shape == src.shape
        np.testing.assert_array_equal(img.affine, src.affine)
        assert (int(img.header["qform_code"]), int(img.header["sform_code"])) == (1, 2)
        assert nib.aff2axcodes(img.affine) == nib.aff2axcodes(src.affine)
    assert pred.get_data_dtype() == np.uint8 and prob.get_data_dtype() == np.float32
    assert set(np.unique(np.asarray(pred.dataobj))) <= {0, 1}
    assert "1 segmented, 0 skipped" in proc.stderr
    assert not list(tmp_path.glob("**/.*.tmp*"))  # no temporary files left
    # the hardware-dependent choices are logged with their reasons
    assert re.search(r"inference\.cpu\.precision auto -> (fp32|bf16): this CPU ", proc.stderr)
    assert re.search(r"threads=auto -> \d+ torch threads", proc.stderr)


def test_bad_input_exits_2_with_one_line_and_no_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.nii.gz"
    bad.write_text("not an image")
    out = tmp_path / "preds"
    proc = _run_cli(f"input={bad}", f"output={out}", *FAST, cwd=tmp_path)
    assert proc.returncode == 2
    error_lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(bad) in error_lines[0] and "Traceback" not in proc.stderr
    assert not list(out.iterdir())


def test_default_output_dir(tmp_path: Path) -> None:
    (tmp_path / "scans").mkdir()
    (tmp_path / "scans" / "a.nii.gz").write_bytes(b"")
    assert default_output_dir(str(tmp_path / "scans")) == tmp_path / "scans" / "vesselfm_pred"
    assert (
        default_output_dir(str(tmp_path / "scans" / "a.nii.gz"))
        == tmp_path / "scans" / "vesselfm_pred"
    )
    assert (
        default_output_dir(str(tmp_path / "scans" / "*.nii.gz"))
        == tmp_path / "scans" / "vesselfm_pred"
    )


def test_folder_with_a_bad_file_goes_on_and_fails_at_the_end(
    compose_cfg: Callable[..., DictConfig], make_scan: Callable[..., Path], tmp_path: Path
) -> None:
    make_scan("a.nii.gz")
    make_scan("c.nii.gz", shape=(40, 36, 20), seed=1)
    (tmp_path / "scans" / "b.nii.gz").write_text("broken")
    cfg = compose_cfg("infer", [f"input={tmp_path / 'scans'}", *FAST])
    with pytest.raises(UserError, match=r"1 of 3 scans failed \(first: .*b\.nii\.gz") as info:
        infer(cfg)
    assert "\n" not in str(info.value)
    out = tmp_path / "scans" / "vesselfm_pred"  # the default output folder
    assert sorted(p.name for p in out.iterdir()) == [
        ".vesselfm-outputs.json",
        "a_pred.nii.gz",
        "c_pred.nii.gz",
    ]
    assert nib.load(out / "c_pred.nii.gz").shape == (40, 36, 20)


@pytest.mark.parametrize("what", ["empty_folder", "unwritable_output", "missing_label_dir"])
def test_run_level_errors(
    compose_cfg: Callable[..., DictConfig], scan_file: Path, tmp_path: Path, what: str
) -> None:
    overrides = {
        "empty_folder": [f"input={tmp_path / 'empty'}"],
        "unwritable_output": [f"input={scan_file}", f"output={tmp_path / 'afile' / 'out'}"],
        "missing_label_dir": [f"input={scan_file}", f"label={tmp_path / 'nolabels'}"],
    }[what]
    (tmp_path / "empty").mkdir()
    (tmp_path / "afile").write_text("x")
    cfg = compose_cfg("infer", [*overrides, *FAST])
    with pytest.raises(UserError) as info:
        infer(cfg)
    assert "\n" not in str(info.value)
    assert (
        "input="
        if what == "empty_folder"
        else "output="
        if what == "unwritable_output"
        else "label="
    ) in str(info.value)


def test_skip_existing_overwrite_and_label_scoring(
    compose_cfg: Callable[..., DictConfig], scan_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "preds"
    labels = scan_file.parent
    cfg = compose_cfg(
        "infer", [f"input={scan_file}", f"output={out}", f"label={labels}", "save_prob=true", *FAST]
    )
    first = infer(cfg)
    assert [r["skipped"] for r in first["results"]] == [False]
    assert set(first["reports"]) == {"csv", "json", "md"}
    row = first["metrics"][0]
    assert row["case"] == "1" and 0.0 <= row["dice"] <= 1.0 and row["roc_auc"] is not None
    mtime = (out / "1_pred.nii.gz").stat().st_mtime_ns

    second = infer(cfg)
    assert [r["skipped"] for r in second["results"]] == [True]
    assert (out / "1_pred.nii.gz").stat().st_mtime_ns == mtime
    assert second["metrics"][0]["dice"] == pytest.approx(row["dice"])  # scored from the files left

    cfg.overwrite = True
    third = infer(cfg)
    assert [r["skipped"] for r in third["results"]] == [False]


def test_checkpoint_metadata_sets_preprocess_and_threshold(
    compose_cfg: Callable[..., DictConfig],
    scan_file: Path,
    tmp_path: Path,
    tiny_net: torch.nn.Module,
) -> None:
    ckpt = tmp_path / "best.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in tiny_net.state_dict().items()},
            "vesselfm": {
                "preprocess": {"in_plane_size": 24},
                "threshold": 0.3,
                "model_name": "tiny",
            },
        },
        ckpt,
    )
    base = [
        f"input={scan_file}",
        f"output={tmp_path / 'o'}",
        "model=tiny",
        f"model.checkpoint={ckpt}",
        "inference.roi_size=[32,32,32]",
        "progress=false",
    ]
    result = infer(compose_cfg("infer", base))
    assert result["threshold"] == pytest.approx(0.3)
    assert result["preprocess"].in_plane_size == 24
    explicit = infer(
        compose_cfg(
            "infer", [*base, "threshold=0.7", "preprocess={in_plane_size: 32}", "overwrite=true"]
        )
    )
    assert explicit["threshold"] == pytest.approx(0.7)
    assert explicit["preprocess"].in_plane_size == 32


def test_mesh_and_postprocessing(
    compose_cfg: Callable[..., DictConfig], scan_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "o"
    cfg = compose_cfg(
        "infer",
        [
            f"input={scan_file}",
            f"output={out}",
            "save_mesh=true",
            "threshold=0.0",
            "inference.postprocess.keep_largest=1",
            *FAST,
        ],
    )
    infer(cfg)
    mask = np.asarray(nib.load(out / "1_pred.nii.gz").dataobj)
    assert mask.all()  # threshold 0: everything is vessel, one component
    from vesselfm.viz import load_stl

    vertices, faces = load_stl(out / "1_pred.stl")
    assert len(faces) > 0
    # the mesh is in scanner mm, through the flipped affine
    corners = nib.affines.apply_affine(
        FLIPPED_AFFINE, np.array([[0, 0, 0], np.array(mask.shape) - 1])
    )
    lo, hi = corners.min(0), corners.max(0)
    assert (vertices.min(0) >= lo - 1).all() and (vertices.max(0) <= hi + 1).all()


def test_find_label_never_returns_the_scan_itself(tmp_path: Path) -> None:
    from vesselfm.infer import find_label

    scan = tmp_path / "scan.nii.gz"
    scan.write_bytes(b"")
    assert find_label(tmp_path, "scan", scan) is None
    (tmp_path / "scan.label.nii.gz").write_bytes(b"")
    assert find_label(tmp_path, "scan", scan) == tmp_path / "scan.label.nii.gz"
