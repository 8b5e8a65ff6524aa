"""NIfTI reading, validation, geometry-exact writing and input discovery."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference_helpers import FLIPPED_AFFINE, save_nifti, tube_phantom

from vesselfm.inference.io import (
    case_id,
    ensure_writable_dir,
    find_inputs,
    like_reference,
    load_scan,
    save_prediction,
    save_probabilities,
)
from vesselfm.utils.cli import UserError


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("1.img.nii.gz", "1"),
        ("1.label.nii.gz", "1"),
        ("scan.nii.gz", "scan"),
        ("scan.nii", "scan"),
        ("CT_0007.nii.gz", "CT_0007"),
        ("a.b.nii.gz", "a.b"),
        (".img.nii.gz", ".img"),
    ],
)
def test_case_id(name: str, expected: str) -> None:
    assert case_id(Path("/x") / name) == expected


def test_geometry_round_trip_on_flipped_affine(scan_file: Path, tmp_path: Path) -> None:
    scan = load_scan(scan_file)
    mask = (scan.data > 100).astype(np.uint8)
    prob = np.clip((scan.data + 50) / 400, 0, 1).astype(np.float32)
    pred_path = save_prediction(mask, scan.image, tmp_path / "out" / "1_pred.nii.gz")
    prob_path = save_probabilities(prob, scan.image, tmp_path / "out" / "1_prob.nii.gz")

    src = nib.load(scan_file)
    for path, dtype in ((pred_path, np.uint8), (prob_path, np.float32)):
        out = nib.load(path)
        assert out.shape == src.shape
        np.testing.assert_array_equal(out.affine, src.affine)
        np.testing.assert_array_equal(out.affine, FLIPPED_AFFINE)
        assert int(out.header["qform_code"]) == 1
        assert int(out.header["sform_code"]) == 2
        np.testing.assert_allclose(out.header.get_qform(), src.header.get_qform())
        assert nib.aff2axcodes(out.affine) == nib.aff2axcodes(src.affine) == ("L", "P", "S")
        assert out.get_data_dtype() == dtype
        assert out.header.get_zooms() == src.header.get_zooms()
    np.testing.assert_array_equal(np.asarray(nib.load(pred_path).dataobj), mask)
    assert set(np.unique(np.asarray(nib.load(pred_path).dataobj))) <= {0, 1}
    np.testing.assert_array_equal(np.asarray(nib.load(prob_path).dataobj), prob)
    # no temporary files left beside the outputs (and the output record lists both)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".vesselfm-outputs.json",
        "1_pred.nii.gz",
        "1_prob.nii.gz",
    ]


@pytest.mark.parametrize(("qform_code", "sform_code"), [(0, 1), (1, 0), (2, 4)])
def test_orientation_codes_are_kept(tmp_path: Path, qform_code: int, sform_code: int) -> None:
    image, _ = tube_phantom((16, 16, 8))
    path = save_nifti(tmp_path / "c.nii.gz", image, qform_code=qform_code, sform_code=sform_code)
    scan = load_scan(path)
    out = nib.load(
        save_prediction(np.ones(scan.data.shape), scan.image, tmp_path / "c_pred.nii.gz")
    )
    assert (int(out.header["qform_code"]), int(out.header["sform_code"])) == (
        qform_code,
        sform_code,
    )
    np.testing.assert_array_equal(out.affine, nib.load(path).affine)


def test_scaled_input_is_read_in_hu_and_output_is_unscaled(tmp_path: Path) -> None:
    raw = np.arange(8 * 8 * 4, dtype=np.int16).reshape(8, 8, 4)
    image = nib.Nifti1Image(raw, FLIPPED_AFFINE)
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, str(tmp_path / "s.nii.gz"))
    scan = load_scan(tmp_path / "s.nii.gz")
    np.testing.assert_allclose(scan.data, raw * 2.0 - 1024.0)
    out = nib.load(save_prediction(scan.data > 0, scan.image, tmp_path / "s_pred.nii.gz"))
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}
    np.testing.assert_array_equal(np.asarray(out.dataobj), (scan.data > 0).astype(np.uint8))


def test_trailing_singleton_4th_dim_is_squeezed(tmp_path: Path) -> None:
    image, _ = tube_phantom((16, 12, 8))
    path = save_nifti(tmp_path / "four.nii.gz", image[..., None])
    scan = load_scan(path)
    assert scan.data.shape == (16, 12, 8)
    out = like_reference(np.zeros((16, 12, 8), np.uint8), scan.image)
    assert out.shape == (16, 12, 8)


def _not_nifti(path: Path) -> Path:
    path.write_text("this is not an image\n")
    return path


def _truncated_gzip(path: Path) -> Path:
    image, _ = tube_phantom((32, 32, 16))
    save_nifti(path, image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _truncated_plain(path: Path) -> Path:
    image, _ = tube_phantom((32, 32, 16))
    save_nifti(path, image)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 1000])
    return path


def _two_d(path: Path) -> Path:
    return save_nifti(path, np.zeros((32, 32), np.int16))


def _four_d(path: Path) -> Path:
    return save_nifti(path, np.zeros((16, 16, 8, 3), np.int16))


def _nan_filled(path: Path) -> Path:
    return save_nifti(path, np.full((16, 16, 8), np.nan, np.float32))


def _some_inf(path: Path) -> Path:
    data = np.zeros((16, 16, 8), np.float32)
    data[3, 4, 5] = np.inf
    return save_nifti(path, data)


def _gzip_of_garbage(path: Path) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(b"\x00" * 100)
    return path


BAD_INPUTS = {
    "not_nifti": (_not_nifti, "bad.nii.gz", "not a readable NIfTI"),
    "gzip_of_garbage": (_gzip_of_garbage, "garbage.nii.gz", "not a readable NIfTI"),
    "truncated_gzip": (_truncated_gzip, "cut.nii.gz", "truncated"),
    "truncated_plain": (_truncated_plain, "cut.nii", "truncated"),
    "2d": (_two_d, "flat.nii.gz", "3D"),
    "4d": (_four_d, "series.nii.gz", "3D"),
    "nan_filled": (_nan_filled, "nan.nii.gz", "NaN"),
    "some_inf": (_some_inf, "inf.nii.gz", "NaN or infinite"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_inputs_give_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    make, name, fragment = BAD_INPUTS[kind]
    path = make(tmp_path / name)
    with pytest.raises(UserError) as info:
        load_scan(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert fragment in message


def test_find_inputs_file_folder_glob(tmp_path: Path) -> None:
    image, label = tube_phantom((16, 16, 8))
    for name in ("2.img.nii.gz", "10.img.nii.gz", "b.nii"):
        save_nifti(tmp_path / name, image)
    save_nifti(tmp_path / "2.label.nii.gz", label)
    (tmp_path / "notes.txt").write_text("x")

    assert find_inputs(tmp_path / "b.nii") == [tmp_path / "b.nii"]
    assert find_inputs(tmp_path) == sorted(
        tmp_path / n for n in ("10.img.nii.gz", "2.img.nii.gz", "b.nii")
    )
    assert find_inputs(str(tmp_path / "*.img.nii.gz")) == [
        tmp_path / "10.img.nii.gz",
        tmp_path / "2.img.nii.gz",
    ]


@pytest.mark.parametrize("what", ["empty_folder", "no_match", "missing", "wrong_suffix"])
def test_find_inputs_errors(tmp_path: Path, what: str) -> None:
    spec = {
        "empty_folder": tmp_path,
        "no_match": tmp_path / "*.nii.gz",
        "missing": tmp_path / "nope.nii.gz",
        "wrong_suffix": tmp_path / "scan.mha",
    }[what]
    if what == "wrong_suffix":
        spec.write_bytes(b"x")
    with pytest.raises(UserError, match="input=") as info:
        find_inputs(spec)
    assert "\n" not in str(info.value)


def test_unwritable_output_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserError, match=r"output=.*not a writable folder"):
        ensure_writable_dir(blocker / "out")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UserError, match="not a writable folder"):
            ensure_writable_dir(locked)


def test_writer_rejects_a_wrong_shape(scan_file: Path, tmp_path: Path) -> None:
    scan = load_scan(scan_file)
    with pytest.raises(ValueError, match="differs from the input"):
        save_prediction(np.zeros((2, 2, 2)), scan.image, tmp_path / "x_pred.nii.gz")
    assert not list(tmp_path.glob("x_pred*"))
