"""``infer`` on NRRD and MetaImage scans: the same mask as from NIfTI, ``output_format=``, resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from cli import TINY_INFER
from omegaconf import DictConfig
from synthetic import save_nifti, tube_phantom

from vesselfm.infer import infer
from vesselfm.io import read_volume
from vesselfm.utils.cli import UserError

FAST = TINY_INFER


def _same_scan_three_ways(folder: Path) -> dict[str, Path]:
    """The tube phantom as ``a.nii.gz``, and converted by SimpleITK to ``b.nrrd`` and ``c.mha``."""
    image, _ = tube_phantom()
    files = {"nifti": save_nifti(folder / "a.nii.gz", image)}
    itk = sitk.ReadImage(str(files["nifti"]))  # ITK's own NIfTI reader: RAS -> LPS
    for fmt, name in (("nrrd", "b.nrrd"), ("mha", "c.mha")):
        files[fmt] = folder / name
        sitk.WriteImage(itk, str(files[fmt]))
    return files


def test_nifti_nrrd_and_mha_give_voxel_identical_masks(
    compose_cfg: Callable[..., DictConfig],
    tmp_path: Path,
    weights: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    files = _same_scan_three_ways(tmp_path / "scans")
    out = tmp_path / "preds"
    args = [
        f"input={tmp_path / 'scans'}",
        f"output={out}",
        f"model.checkpoint={weights}",
        "save_prob=true",
        *FAST,
    ]
    with caplog.at_level("INFO", logger="vesselfm"):
        infer(compose_cfg("infer", args))  # in this process: CLI start-ups were most of the time
    assert "3 segmented, 0 skipped" in caplog.text
    names = {"nifti": "a_{}.nii.gz", "nrrd": "b_{}.nrrd", "mha": "c_{}.mha"}
    preds = {fmt: read_volume(out / n.format("pred")) for fmt, n in names.items()}
    probs = {fmt: read_volume(out / n.format("prob")) for fmt, n in names.items()}
    assert {v.format for v in preds.values()} == {"nifti", "nrrd", "mha"}
    reference = preds["nifti"]
    assert reference.array.dtype == np.uint8 and reference.shape == (48, 40, 32)
    assert probs["nifti"].array.dtype == np.float32 and np.ptp(probs["nifti"].array) > 0
    for fmt in ("nrrd", "mha"):
        np.testing.assert_array_equal(preds[fmt].array, reference.array)
        np.testing.assert_array_equal(probs[fmt].array, probs["nifti"].array)
        np.testing.assert_allclose(preds[fmt].affine, reference.affine, atol=1e-4, rtol=0)
        # in its own format, the output keeps the input's ITK geometry exactly
        src, back = sitk.ReadImage(str(files[fmt])), sitk.ReadImage(str(preds[fmt].path))
        assert (back.GetOrigin(), back.GetSpacing(), back.GetDirection()) == (
            src.GetOrigin(),
            src.GetSpacing(),
            src.GetDirection(),
        )
    # a rerun finds its outputs by their names in each format: nothing redone
    caplog.clear()
    with caplog.at_level("INFO", logger="vesselfm"):
        infer(compose_cfg("infer", args))
    assert "0 segmented, 3 skipped" in caplog.text


def test_output_format_nifti_from_nrrd_lies_on_the_input_voxels(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, weights: Path
) -> None:
    files = _same_scan_three_ways(tmp_path / "scans")
    out = tmp_path / "o"
    base = [f"input={files['nrrd']}", f"output={out}", f"model.checkpoint={weights}", *FAST]
    result = infer(compose_cfg("infer", [*base, "output_format=nifti", "save_prob=true"]))
    (case,) = result["results"]
    assert case["pred"] == out / "b_pred.nii.gz" and case["prob"] == out / "b_prob.nii.gz"
    assert not list(out.glob("*.nrrd"))
    image = sitk.ReadImage(str(files["nrrd"]))
    pred = nib.load(case["pred"])
    assert pred.shape == image.GetSize()
    mask = np.asarray(pred.dataobj)
    for index in [(0, 0, 0), (47, 39, 31), (5, 30, 17), *map(tuple, np.argwhere(mask)[:20])]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(tuple(int(i) for i in index)))
        ras = pred.affine @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], np.diag([-1.0, -1.0, 1.0]) @ lps, atol=1e-4, rtol=0)
    # the skip on a rerun looks for the NIfTI names of this output_format, and finds them
    again = infer(compose_cfg("infer", [*base, "output_format=nifti", "save_prob=true"]))
    assert again["results"][0]["skipped"] is True
    # the input's own format is a new output, not a skip
    own = infer(compose_cfg("infer", base))
    assert own["results"][0]["skipped"] is False and (out / "b_pred.nrrd").is_file()


@pytest.mark.parametrize("value", ["dicom", "png", "[nifti,png]", "[]"])
def test_an_unknown_output_format_lists_the_allowed(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, value: str
) -> None:
    files = _same_scan_three_ways(tmp_path / "scans")
    cfg = compose_cfg(
        "infer", [f"input={files['nifti']}", f"output={tmp_path / 'o'}", f"output_format={value}"]
    )
    with pytest.raises(UserError, match=r"^output_format must be one of nifti\|nrrd\|mha") as info:
        infer(cfg)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "o").exists()


SEGMENT_FIELDS = {
    "Segment0_ID": "Segment_1",
    "Segment0_Name": "coronary artery lumen",
    "Segment0_NameAutoGenerated": "0",
    "Segment0_ColorAutoGenerated": "0",
    "Segment0_LabelValue": "1",
    "Segment0_Layer": "0",
    "Segment0_Tags": "TerminologyEntry:Segmentation category and type - 3D Slicer General "
    "Anatomy list~SCT^85756007^Tissue~SCT^41801008^Coronary artery~^^~Anatomic codes - DICOM "
    "master list~^^~^^|",
    "Segmentation_MasterRepresentation": "Binary labelmap",
    "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
    "Segmentation_ReferenceImageExtentOffset": "0 0 0",
}


def _check_segmentation(seg: Path, mask: np.ndarray) -> dict:
    """The Slicer fields of ``seg`` and its labelmap (== ``mask``); returns pynrrd's header."""
    import nrrd

    data, header = nrrd.read(str(seg), index_order="F")
    assert data.dtype == np.uint8
    np.testing.assert_array_equal(data, mask)
    assert mask.any() and mask.max() == 1
    for key, value in SEGMENT_FIELDS.items():
        assert header[key] == value, key
    color = [float(c) for c in header["Segment0_Color"].split()]
    assert len(color) == 3 and all(0.0 <= c <= 1.0 for c in color)
    hit = np.argwhere(mask)
    bounds = np.stack([hit.min(0), hit.max(0)], axis=1).ravel().tolist()
    assert [int(v) for v in header["Segment0_Extent"].split()] == bounds
    assert header["space"] == "left-posterior-superior"
    # read back through vesselfm: the labelmap, as evaluate/visualise pred= see it
    back = read_volume(seg)
    assert back.format == "seg.nrrd"
    np.testing.assert_array_equal(back.array, mask)
    return header


def test_seg_nrrd_and_nifti_from_nrrd_input_keep_its_geometry_and_resume(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, weights: Path
) -> None:
    import nrrd

    files = _same_scan_three_ways(tmp_path / "scans")
    out = tmp_path / "o"
    args = [
        f"input={files['nrrd']}",
        f"output={out}",
        f"model.checkpoint={weights}",
        "output_format=[nifti,seg.nrrd]",
        "save_prob=true",
        *FAST,
    ]
    (case,) = infer(compose_cfg("infer", args))["results"]
    assert case["preds"] == [out / "b_pred.nii.gz", out / "b_pred.seg.nrrd"]
    written = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    # the seg.nrrd's probabilities are the scan's NRRD, the NIfTI's its own
    assert written == {"b_pred.nii.gz", "b_pred.seg.nrrd", "b_prob.nii.gz", "b_prob.nrrd"}
    mask = np.asarray(nib.load(out / "b_pred.nii.gz").dataobj)
    header = _check_segmentation(out / "b_pred.seg.nrrd", mask)
    source = nrrd.read_header(str(files["nrrd"]))
    assert header["space"] == source["space"]
    np.testing.assert_array_equal(header["space directions"], source["space directions"])
    np.testing.assert_array_equal(header["space origin"], source["space origin"])
    assert read_volume(out / "b_prob.nrrd").array.dtype == np.float32
    # the output record covers every file
    record = (out / ".vesselfm-outputs.json").read_text()
    for name in written:
        assert f'"{name}"' in record, name
    # a rerun finds all four and skips; one missing is redone
    again = infer(compose_cfg("infer", args))
    assert again["results"][0]["skipped"] is True
    (out / "b_pred.seg.nrrd").unlink()
    redo = infer(compose_cfg("infer", args))
    assert redo["results"][0]["skipped"] is False and (out / "b_pred.seg.nrrd").is_file()


def test_seg_nrrd_from_nifti_input_is_its_lps_affine_and_scores_like_the_nifti(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, weights: Path
) -> None:
    from vesselfm.evaluate import evaluate

    files = _same_scan_three_ways(tmp_path / "scans")
    _, label = tube_phantom()
    gt = tmp_path / "gt"
    save_nifti(gt / "a.label.nii.gz", label)
    base = [f"input={files['nifti']}", f"model.checkpoint={weights}", *FAST]
    infer(compose_cfg("infer", [*base, f"output={tmp_path / 'nii'}"]))
    seg_out = tmp_path / "seg"
    (case,) = infer(
        compose_cfg(
            "infer", [*base, f"output={seg_out}", "output_format=seg.nrrd", "save_prob=true"]
        )
    )["results"]
    assert case["pred"] == seg_out / "a_pred.seg.nrrd"
    # probabilities have no seg.nrrd form: NIfTI, as the scan
    assert case["prob"] == seg_out / "a_prob.nii.gz" and case["prob"].is_file()
    nifti_pred = nib.load(tmp_path / "nii" / "a_pred.nii.gz")
    header = _check_segmentation(case["pred"], np.asarray(nifti_pred.dataobj))
    affine = nib.load(files["nifti"]).affine
    lps = np.diag([-1.0, -1.0, 1.0]) @ affine[:3]
    np.testing.assert_allclose(header["space directions"], lps[:, :3].T, atol=1e-6, rtol=0)
    np.testing.assert_allclose(header["space origin"], lps[:, 3], atol=1e-6, rtol=0)
    # evaluate scores the seg.nrrd as it scores the NIfTI mask
    seg_pred = tmp_path / "seg_pred"
    seg_pred.mkdir()
    (seg_pred / "a_pred.seg.nrrd").write_bytes(case["pred"].read_bytes())
    rows = {}
    for name, folder in (("nifti", tmp_path / "nii"), ("seg", seg_pred)):
        result = evaluate(
            compose_cfg(
                "evaluate", [f"pred={folder}", f"gt={gt}", f"output={tmp_path / f'ev_{name}'}"]
            )
        )
        rows[name] = result["rows"]
    assert len(rows["seg"]) == 1 and rows["seg"][0]["case"] == "a"
    assert rows["seg"] == rows["nifti"]
