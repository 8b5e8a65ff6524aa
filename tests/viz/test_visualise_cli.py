"""``visualise_case`` and ``python -m vesselfm.visualise``: all outputs, --help, one-line errors."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import trimesh
from cli import run_cli
from synthetic import save_nifti

from vesselfm.io import case_id
from vesselfm.utils.errors import UserError
from vesselfm.utils.outputs import RECORD_NAME, read_record, written_by_us
from vesselfm.viz import visualise_case

EXPECTED = [
    RECORD_NAME,  # the output record naming every file below
    "7_3d.html",
    "7_axial.png",
    "7_coronal.png",
    "7_gt.stl",
    "7_mip.png",
    "7_pred.stl",
    "7_sagittal.png",
]


_cli = partial(run_cli, "vesselfm.visualise")


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
def test_case_id_of_any_role(name: str, case: str) -> None:
    assert case_id(Path("/x") / name) == case


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


def test_a_probability_equal_to_the_threshold_is_vessel(case, tmp_path: Path) -> None:
    """value >= threshold, as infer's predictor and evaluate's metrics threshold: a map holding
    exactly the threshold on the label gives the label's surface, and no voxel a bit above it."""
    from vesselfm.metrics import compute_metrics

    threshold = 0.62
    prob = np.where(case.label > 0, np.float32(threshold), np.float32(0.1)).astype(np.float32)
    nib.save(nib.Nifti1Image(prob, case.affine), tmp_path / "4_prob.nii.gz")
    written = visualise_case(
        tmp_path / "4_prob.nii.gz", tmp_path / "out", html=False, png=False, threshold=threshold
    )
    mesh = trimesh.load(written["pred_stl"], file_type="stl")
    assert mesh.volume == pytest.approx(
        case.label.sum() * abs(np.linalg.det(case.affine[:3, :3])), rel=0.05
    )
    # the same voxels are vessel for the metrics (dice 1), and none just above the threshold
    stored = np.asanyarray(nib.load(tmp_path / "4_prob.nii.gz").dataobj)
    assert compute_metrics(stored, case.label > 0, threshold=threshold, metrics=["dice"])[
        "dice"
    ] == pytest.approx(1.0)
    above = float(np.nextafter(np.float32(threshold), np.float32(1)))
    empty = visualise_case(
        tmp_path / "4_prob.nii.gz", tmp_path / "above", html=False, png=False, threshold=above
    )
    assert trimesh.load(empty["pred_stl"], file_type="stl").volume == pytest.approx(0.0)


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_default_output_is_beside_the_prediction(nifti_case, tmp_path: Path) -> None:
    result = _cli(f"pred={nifti_case['pred']}", "html=false", "png=false", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (nifti_case["pred"].parent / "viz").iterdir()) == [
        RECORD_NAME,
        "7_pred.stl",
    ]


@pytest.mark.slow
def test_cli_help(tmp_path: Path) -> None:
    result = _cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "python -m vesselfm.visualise pred=" in result.stdout
    assert "html_max_faces" in result.stdout


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_shape_mismatch_is_one_line_error(nifti_case, case, tmp_path: Path) -> None:
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(case.label[:-2], case.affine), small)
    result = _cli(
        f"pred={nifti_case['pred']}", f"gt={small}", f"output={tmp_path / 'o'}", cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "shape" in lines[0] and "small.nii.gz" in lines[0], result.stderr


# ------------------------------------------------------------------ checked before the first file


@pytest.mark.slow
def test_a_thin_mask_fails_before_any_output(case, tmp_path: Path) -> None:
    # finding 9: a 64x64x1 mask failed after the STL, the HTML and one PNG were written
    thin = save_nifti(tmp_path / "5_pred.nii.gz", np.ones((64, 64, 1), np.uint8), case.affine)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"shorter than 2 voxels"):
        visualise_case(thin, out)
    assert not out.exists()
    result = _cli(f"pred={thin}", f"output={out}", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "5_pred.nii.gz" in lines[0]
    assert not out.exists()


def test_a_nan_affine_is_refused_not_meshed(case, tmp_path: Path) -> None:
    affine = case.affine.copy()
    affine[0, 3] = np.nan
    pred = tmp_path / "5_pred.nii.gz"
    img = nib.Nifti1Image(case.pred, affine)
    img.set_qform(None, code=0)  # the NaN lives in the sform only
    nib.save(img, pred)
    assert not np.isfinite(nib.load(pred).affine).all()
    with pytest.raises(ValueError, match=r"affine is not finite"):
        visualise_case(pred, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("threshold", [2.0, 1.001, -0.1])
def test_a_threshold_outside_the_unit_interval_is_refused(nifti_case, tmp_path, threshold):
    with pytest.raises(ValueError, match=r"threshold must be in \[0, 1\]"):
        visualise_case(nifti_case["pred"], tmp_path / "out", threshold=threshold)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_output_that_is_a_file_is_named(nifti_case, tmp_path: Path) -> None:
    target = tmp_path / "taken"
    target.write_text("a file")
    result = _cli(f"pred={nifti_case['pred']}", f"output={target}", cwd=tmp_path)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: output={target} is a file"), result.stderr


def test_views_never_replace_files_vesselfm_did_not_write(nifti_case, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    theirs = out / "7_3d.html"
    theirs.write_text("<html>a report someone wrote</html>")
    with pytest.raises(UserError, match=r"7_3d\.html exists and was not written by vesselfm"):
        visualise_case(nifti_case["pred"], out)
    assert sorted(p.name for p in out.iterdir()) == ["7_3d.html"]  # nothing written
    assert "someone" in theirs.read_text()
    # the user says so: replaced, and now ours; a rerun then replaces its own views silently
    visualise_case(nifti_case["pred"], out, png=False, overwrite=True)
    assert written_by_us(theirs) and "someone" not in theirs.read_text()
    visualise_case(nifti_case["pred"], out, png=False)


def test_a_failure_part_way_leaves_no_partial_set_of_views(nifti_case, tmp_path, monkeypatch):
    import vesselfm.viz.case as viz_case
    from vesselfm.utils.io import atomic_path

    def one_png_then_fail(*args, **kwargs):
        out, prefix = args[2], kwargs["prefix"]
        with atomic_path(Path(out) / f"{prefix}axial.png") as tmp:
            tmp.write_bytes(b"png")
        raise MemoryError("out of memory drawing the coronal view")

    monkeypatch.setattr(viz_case, "save_overlays", one_png_then_fail)
    out = tmp_path / "out"
    with pytest.raises(MemoryError):
        visualise_case(nifti_case["pred"], out, gt_path=nifti_case["gt"])
    assert [p.name for p in out.iterdir() if p.name != RECORD_NAME] == []
    assert read_record(out)["files"] == {}  # and the record forgot them
