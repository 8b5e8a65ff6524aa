"""``infer`` on a DICOM series: a DICOM-SEG by default, on the slices of the series and holding
the mask the same phantom gives as NIfTI; ``[dicom_seg,seg.nrrd]`` writes both."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import nrrd
import numpy as np
import pydicom
import pytest
from cli import TINY_INFER
from omegaconf import DictConfig
from synthetic import LPS_TO_RAS, OBLIQUE, lps_affine, save_nifti, tube_phantom, write_series

from vesselfm.infer import infer
from vesselfm.io import read_volume
from vesselfm.utils.errors import UserError

FAST = TINY_INFER


def _frames_by_position(seg: Path) -> dict[tuple[float, ...], np.ndarray]:
    """``{ImagePositionPatient: frame (rows, columns)}`` of a SEG, decoded by pydicom."""
    ds = pydicom.dcmread(seg)
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns))
    return {
        tuple(float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient): frame
        for item, frame in zip(ds.PerFrameFunctionalGroupsSequence, frames, strict=True)
    }


def test_dicom_folder_gives_a_seg_of_the_mask_of_the_same_phantom_as_nifti(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, weights: Path
) -> None:
    image, _ = tube_phantom(shape=(40, 36, 32))
    write_series(tmp_path / "study1", image, number=1)
    # a series with more slices: series=1 must pass down to the reader to get the phantom
    write_series(tmp_path / "study1", np.zeros((40, 36, 34), np.int16) - 900, number=2)
    save_nifti(tmp_path / "nii" / "study1.nii.gz", image, LPS_TO_RAS @ lps_affine())
    outs = {}
    for name, spec, extra in (
        ("dicom", tmp_path / "study1", ["series=1"]),
        ("nifti", tmp_path / "nii", []),
    ):
        outs[name] = tmp_path / f"out_{name}"
        args = [f"input={spec}", f"output={outs[name]}", f"model.checkpoint={weights}"]
        (case,) = infer(compose_cfg("infer", [*args, *extra, *FAST]))["results"]
        assert case["case"] == "study1" and case["skipped"] is False
    # DICOM in: a DICOM-SEG out, by default
    written = {p.name for p in outs["dicom"].iterdir() if not p.name.startswith(".")}
    assert written == {"study1_pred.dcm"}
    nifti = read_volume(outs["nifti"] / "study1_pred.nii.gz")
    assert nifti.shape == (40, 36, 32) and nifti.array.any()
    # each frame lies on a slice of series 1 and holds the NIfTI mask's slice there
    frames = _frames_by_position(outs["dicom"] / "study1_pred.dcm")
    affine_lps = LPS_TO_RAS @ nifti.affine
    series = [pydicom.dcmread(p) for p in sorted((tmp_path / "study1").glob("1_*.dcm"))]
    positions = {tuple(float(v) for v in ds.ImagePositionPatient) for ds in series}
    assert set(frames) <= positions
    holding = [k for k in range(32) if nifti.array[:, :, k].any()]
    assert len(frames) == len(holding)
    for position, frame in frames.items():
        k = np.linalg.inv(affine_lps) @ [*position, 1.0]
        np.testing.assert_allclose(k[:2], 0, atol=1e-4)
        np.testing.assert_array_equal(frame, nifti.array[:, :, int(round(k[2]))].T)
    back = read_volume(outs["dicom"] / "study1_pred.dcm")
    np.testing.assert_array_equal(back.array, nifti.array)
    np.testing.assert_allclose(back.affine, nifti.affine, atol=1e-4, rtol=0)


def test_dicom_seg_and_seg_nrrd_of_an_oblique_series_are_geometry_exact(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, weights: Path
) -> None:
    image, _ = tube_phantom(shape=(40, 36, 24))
    write_series(tmp_path / "study", image, orientation=OBLIQUE)
    out = tmp_path / "o"
    args = [
        f"input={tmp_path / 'study'}",
        f"output={out}",
        f"model.checkpoint={weights}",
        "output_format=[dicom_seg,seg.nrrd]",
        "save_prob=true",
        *FAST,
    ]
    (case,) = infer(compose_cfg("infer", args))["results"]
    assert case["preds"] == [out / "study_pred.dcm", out / "study_pred.seg.nrrd"]
    written = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    # probabilities: NIfTI, the SEG and the seg.nrrd holding the mask only
    assert written == {"study_pred.dcm", "study_pred.seg.nrrd", "study_prob.nii.gz"}
    mask, header = nrrd.read(str(out / "study_pred.seg.nrrd"), index_order="F")
    assert mask.any() and header["Segment0_Name"] == "coronary artery lumen"
    seg = read_volume(out / "study_pred.dcm")
    np.testing.assert_array_equal(seg.array, mask)
    prob = read_volume(out / "study_prob.nii.gz")
    assert prob.array.dtype == np.float32 and prob.shape == mask.shape
    # both lie on the series' voxels: slice 0's position, the in-plane axes of the slices
    first = min(
        (pydicom.dcmread(p, stop_before_pixels=True) for p in (tmp_path / "study").iterdir()),
        key=lambda ds: int(ds.InstanceNumber),
    )
    origin = [float(v) for v in first.ImagePositionPatient]
    np.testing.assert_allclose(header["space origin"], origin, atol=1e-9)
    np.testing.assert_allclose((LPS_TO_RAS @ seg.affine)[:3, 3], origin, atol=1e-4)
    np.testing.assert_allclose(seg.affine, prob.affine, atol=1e-4, rtol=0)
    row, column = np.asarray([float(v) for v in first.ImageOrientationPatient]).reshape(2, 3)
    np.testing.assert_allclose(header["space directions"][0], row * 0.7, atol=1e-5)
    np.testing.assert_allclose(header["space directions"][1], column * 0.6, atol=1e-5)
    # a rerun finds all three and skips
    assert infer(compose_cfg("infer", args))["results"][0]["skipped"] is True


def test_dicom_seg_of_a_nifti_scan_stops_naming_it_and_writes_nothing(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, weights: Path
) -> None:
    image, _ = tube_phantom(shape=(40, 36, 24))
    scan = save_nifti(tmp_path / "scans" / "a.nii.gz", image)
    out = tmp_path / "o"
    cfg = compose_cfg(
        "infer",
        [f"input={scan}", f"output={out}", f"model.checkpoint={weights}", "output_format=dicom_seg"]
        + list(FAST),
    )
    with pytest.raises(UserError, match="needs a DICOM series input") as info:
        infer(cfg)
    assert str(scan) in str(info.value) and "\n" not in str(info.value)
    assert not out.exists() or not [p for p in out.iterdir() if not p.name.startswith(".")]
