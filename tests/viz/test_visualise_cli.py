"""``visualise_case`` and ``python -m vesselfm.visualise``: all outputs, --help, one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import trimesh

from vesselfm.viz import case_id_from_path, visualise_case

EXPECTED = [
    "7_3d.html",
    "7_axial.png",
    "7_coronal.png",
    "7_gt.stl",
    "7_mip.png",
    "7_pred.stl",
    "7_sagittal.png",
]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    env.pop("VESSELFM_DEBUG", None)
    return subprocess.run(
        [sys.executable, "-m", "vesselfm.visualise", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    ("name", "case"),
    [
        ("7.img.nii.gz", "7"),
        ("7.label.nii.gz", "7"),
        ("7_pred.nii.gz", "7"),
        ("scan.nii", "scan"),
        ("a.b_pred.nii.gz", "a.b"),
    ],
)
def test_case_id_from_path(name: str, case: str) -> None:
    assert case_id_from_path(Path("/x") / name) == case


def test_visualise_case_writes_every_output_in_scanner_mm(nifti_case, case, tmp_path: Path) -> None:
    out = tmp_path / "viz"
    written = visualise_case(
        nifti_case["pred"], out, gt_path=nifti_case["gt"], image_path=nifti_case["image"]
    )
    assert set(written) == {"pred_stl", "gt_stl", "html", "axial", "coronal", "sagittal", "mip"}
    assert sorted(p.name for p in out.iterdir()) == EXPECTED
    gt_mesh = trimesh.load(written["gt_stl"], file_type="stl")
    assert gt_mesh.is_watertight
    voxel_mm3 = abs(np.linalg.det(case.affine[:3, :3]))
    assert gt_mesh.volume == pytest.approx(case.label.sum() * voxel_mm3, rel=0.05)
    corners = case.affine @ np.array([[0, 0, 0, 1], [*case.label.shape, 1]]).T
    lo, hi = np.minimum(*corners[:3].T), np.maximum(*corners[:3].T)
    assert np.all(gt_mesh.bounds[0] >= lo) and np.all(gt_mesh.bounds[1] <= hi)


def test_probability_map_is_thresholded(case, tmp_path: Path) -> None:
    prob = np.where(case.label > 0, 0.9, 0.2).astype(np.float32)
    prob[0:3, 0:3, 0:3] = 0.4  # below the threshold: no surface
    nib.save(nib.Nifti1Image(prob, case.affine), tmp_path / "3_prob.nii.gz")
    written = visualise_case(
        tmp_path / "3_prob.nii.gz", tmp_path / "out", html=False, png=False, threshold=0.5
    )
    mesh = trimesh.load(written["pred_stl"], file_type="stl")
    assert mesh.volume == pytest.approx(
        case.label.sum() * abs(np.linalg.det(case.affine[:3, :3])), rel=0.05
    )


def test_cli_writes_all_three_kinds_of_output(nifti_case, tmp_path: Path) -> None:
    out = tmp_path / "cli-out"
    result = _cli(
        f"pred={nifti_case['pred']}",
        f"gt={nifti_case['gt']}",
        f"image={nifti_case['image']}",
        f"output={out}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == EXPECTED
    # nothing else lands in the working directory (no hydra run dir, no log file)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cli-out", "data", "pred"]


def test_cli_default_output_is_beside_the_prediction(nifti_case, tmp_path: Path) -> None:
    result = _cli(f"pred={nifti_case['pred']}", "html=false", "png=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (nifti_case["pred"].parent / "viz").iterdir()) == ["7_pred.stl"]


def test_cli_help(tmp_path: Path) -> None:
    result = _cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "python -m vesselfm.visualise pred=" in result.stdout
    assert "html_max_faces" in result.stdout


@pytest.mark.parametrize("which", ["pred", "gt"])
def test_cli_missing_file_is_one_line_error(nifti_case, tmp_path: Path, which: str) -> None:
    args = {"pred": str(nifti_case["pred"]), "output": str(tmp_path / "o")}
    args[which] = str(tmp_path / "nope.nii.gz")
    result = _cli(*(f"{k}={v}" for k, v in args.items()), cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert (
        len(lines) == 1 and lines[0].startswith(f"error: {which}=") and "nope.nii.gz" in lines[0]
    ), result.stderr
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())


def test_cli_shape_mismatch_is_one_line_error(nifti_case, case, tmp_path: Path) -> None:
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(case.label[:-2], case.affine), small)
    result = _cli(
        f"pred={nifti_case['pred']}", f"gt={small}", f"output={tmp_path / 'o'}", cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "shape" in lines[0] and "small.nii.gz" in lines[0], result.stderr
