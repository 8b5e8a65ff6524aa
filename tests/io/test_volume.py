"""Reading volumes (validation, scaling, errors), writing outputs like the input, and grid checks."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from synthetic import FLIPPED_AFFINE, save_nifti, tube_phantom

from vesselfm.io import (
    GridError,
    VolumeError,
    check_same_grid,
    read_volume,
    read_volume_bytes,
    write_like,
)
from vesselfm.utils.errors import UserError


def _save_prediction(mask: np.ndarray, like, target: Path) -> Path:
    return write_like((np.asarray(mask) > 0).astype(np.uint8), like, target)


def _save_probabilities(prob: np.ndarray, like, target: Path) -> Path:
    return write_like(np.clip(np.asarray(prob, np.float32), 0.0, 1.0), like, target)


def test_geometry_round_trip_on_flipped_affine(scan_file: Path, tmp_path: Path) -> None:
    scan = read_volume(scan_file, dtype=np.float32)
    mask = (scan.array > 100).astype(np.uint8)
    prob = np.clip((scan.array + 50) / 400, 0, 1).astype(np.float32)
    pred_path = _save_prediction(mask, scan, tmp_path / "out" / "1_pred.nii.gz")
    prob_path = _save_probabilities(prob, scan, tmp_path / "out" / "1_prob.nii.gz")

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
    scan = read_volume(path)
    out = nib.load(_save_prediction(np.ones(scan.array.shape), scan, tmp_path / "c_pred.nii.gz"))
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
    scan = read_volume(tmp_path / "s.nii.gz", dtype=np.float32)
    np.testing.assert_allclose(scan.array, raw * 2.0 - 1024.0)
    out = nib.load(_save_prediction(scan.array > 0, scan, tmp_path / "s_pred.nii.gz"))
    assert set(np.unique(np.asarray(out.dataobj))) <= {0, 1}
    np.testing.assert_array_equal(np.asarray(out.dataobj), (scan.array > 0).astype(np.uint8))


def test_trailing_singleton_4th_dim_is_squeezed(tmp_path: Path) -> None:
    image, _ = tube_phantom((16, 12, 8))
    path = save_nifti(tmp_path / "four.nii.gz", image[..., None])
    scan = read_volume(path)
    assert scan.array.shape == (16, 12, 8)
    out = nib.load(write_like(np.zeros((16, 12, 8), np.uint8), scan, tmp_path / "f_pred.nii.gz"))
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


def _empty(path: Path) -> Path:
    return save_nifti(path, np.zeros((16, 0, 8), np.int16))


def _singular(path: Path) -> Path:
    affine = FLIPPED_AFFINE.copy()
    affine[2, 2] = 0.0
    image = nib.Nifti1Image(np.zeros((8, 8, 4), np.int16), np.eye(4))
    image.set_qform(None, code=0)
    image.set_sform(affine, code=1)
    nib.save(image, str(path))
    return path


def _gzip_of_garbage(path: Path) -> Path:
    with gzip.open(path, "wb") as fh:
        fh.write(b"\x00" * 100)
    return path


def _gzip_named_nii(path: Path) -> Path:
    image, _ = tube_phantom((16, 16, 8))
    gz = save_nifti(path.with_name(path.name + ".gz"), image)
    gz.rename(path)  # a valid .nii.gz, named .nii
    return path


BAD_INPUTS = {
    "not_nifti": (_not_nifti, "bad.nii.gz", "unreadable, not a NIfTI file"),
    "gzip_of_garbage": (_gzip_of_garbage, "garbage.nii.gz", "unreadable, not a NIfTI file"),
    "gzip_named_nii": (
        _gzip_named_nii,
        "zipped.nii",
        "gzip-compressed but named .nii; rename it to zipped.nii.gz",
    ),
    "truncated_gzip": (_truncated_gzip, "cut.nii.gz", "truncated"),
    "truncated_plain": (_truncated_plain, "cut.nii", "truncated"),
    "2d": (_two_d, "flat.nii.gz", "3D"),
    "4d": (_four_d, "series.nii.gz", "3D"),
    "nan_filled": (_nan_filled, "nan.nii.gz", "NaN"),
    "some_inf": (_some_inf, "inf.nii.gz", "NaN or infinite"),
    "empty": (_empty, "empty.nii.gz", "empty volume"),
    "not_a_volume_name": (_not_nifti, "notes.txt", "not a volume file of a known format"),
    "singular_affine": (_singular, "flat_affine.nii.gz", "affine is not finite or singular"),
    "missing": (lambda path: path, "missing.nii.gz", "no such file"),
}


@pytest.mark.parametrize("kind", sorted(BAD_INPUTS))
def test_bad_inputs_give_one_line_naming_the_file(tmp_path: Path, kind: str) -> None:
    make, name, fragment = BAD_INPUTS[kind]
    path = make(tmp_path / name)
    with pytest.raises(VolumeError) as info:
        read_volume(path)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    assert fragment in message


def test_writer_rejects_a_wrong_shape(scan_file: Path, tmp_path: Path) -> None:
    scan = read_volume(scan_file, dtype=np.float32)
    with pytest.raises(ValueError, match="differs from the input"):
        _save_prediction(np.zeros((2, 2, 2)), scan, tmp_path / "x_pred.nii.gz")
    assert not list(tmp_path.glob("x_pred*"))


def test_stored_dtype_is_kept_and_scaling_applied_exactly(tmp_path: Path) -> None:
    raw = np.arange(8 * 8 * 4, dtype=np.int16).reshape(8, 8, 4) - 100
    plain = save_nifti(tmp_path / "plain.nii.gz", raw)
    assert read_volume(plain).array.dtype == np.int16
    image = nib.Nifti1Image(raw, FLIPPED_AFFINE)
    image.header.set_slope_inter(2.0, -1024.0)
    nib.save(image, str(tmp_path / "int.nii"))
    scaled = read_volume(tmp_path / "int.nii").array
    assert scaled.dtype == np.int32  # integer scaling stays exact and small
    np.testing.assert_array_equal(scaled, raw.astype(np.int32) * 2 - 1024)
    image.header.set_slope_inter(0.5, 0.25)
    nib.save(image, str(tmp_path / "float.nii.gz"))
    halves = read_volume(tmp_path / "float.nii.gz").array
    assert halves.dtype == np.float32
    np.testing.assert_allclose(halves, raw * 0.5 + 0.25)


@pytest.mark.parametrize("name", ["S.NII.GZ", "s.Nii"])
def test_extensions_are_matched_case_insensitively(tmp_path: Path, name: str) -> None:
    image, _ = tube_phantom((8, 8, 4))
    gz = name.lower().endswith(".gz")
    path = save_nifti(tmp_path / ("x.nii.gz" if gz else "x.nii"), image).rename(tmp_path / name)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.array, image)
    assert volume.where == str(path) and volume.name == name


def test_volume_geometry(scan_file: Path) -> None:
    volume = read_volume(scan_file)
    assert volume.shape == (48, 40, 32) and volume.format == "nifti"
    np.testing.assert_array_equal(volume.affine, FLIPPED_AFFINE)
    assert volume.spacing == (0.75, 0.625, 1.25)  # the affine's column norms, in mm
    assert nib.aff2axcodes(volume.affine) == ("L", "P", "S")  # RAS frame, as nibabel reports


def test_bytes_of_an_archive_member_read_as_the_file(scan_file: Path, tmp_path: Path) -> None:
    archive = tmp_path / "cases.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(scan_file, "1-200/1.img.nii.gz")
        zf.writestr("1-200/cut.img.nii.gz", scan_file.read_bytes()[:500])
    with zipfile.ZipFile(archive) as zf:
        member = read_volume_bytes(zf.read("1-200/1.img.nii.gz"), f"{archive}::1-200/1.img.nii.gz")
        cut = zf.read("1-200/cut.img.nii.gz")
    on_disk = read_volume(scan_file)
    np.testing.assert_array_equal(member.array, on_disk.array)
    np.testing.assert_array_equal(member.affine, on_disk.affine)
    assert member.path is None and member.name == "1.img.nii.gz"
    with pytest.raises(VolumeError, match=r"::1-200/cut\.img\.nii\.gz: .*unreadable or truncated"):
        read_volume_bytes(cut, f"{archive}::1-200/cut.img.nii.gz")


def test_write_like_round_trip_keeps_shape_affine_and_header(
    scan_file: Path, tmp_path: Path
) -> None:
    scan = read_volume(scan_file)
    mask = (scan.array > 100).astype(np.uint8)
    out_path = write_like(mask, scan, tmp_path / "1_pred.nii.gz")
    back = read_volume(out_path)
    assert back.shape == scan.shape and back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_array_equal(back.affine, scan.affine)
    src, out = nib.load(scan_file).header, nib.load(out_path).header
    for key in ("qform_code", "sform_code", "pixdim", "quatern_b", "srow_x", "xyzt_units"):
        np.testing.assert_array_equal(out[key], src[key])
    assert out.get_slope_inter() == (None, None)  # our values are the stored values
    # a volume written like another is checked to be on its grid
    check_same_grid(back, scan)


@pytest.mark.parametrize("name", ["x_pred.mhd", "x_pred.raw", "x_pred.png"])
def test_write_like_refuses_a_format_not_written(
    scan_file: Path, tmp_path: Path, name: str
) -> None:
    scan = read_volume(scan_file)
    with pytest.raises(ValueError, match=r"x_pred\.\w+: volumes are written as .*\.nrrd, \.mha"):
        write_like(np.zeros(scan.shape, np.uint8), scan, tmp_path / name)
    assert not list(tmp_path.glob("x_pred*"))


def test_with_array_keeps_the_grid(scan_file: Path, tmp_path: Path) -> None:
    scan = read_volume(scan_file)
    mask = scan.with_array(np.zeros(scan.shape, np.uint8), tmp_path / "1_pred.nii.gz")
    assert mask.where == str(tmp_path / "1_pred.nii.gz") and mask.array.dtype == np.uint8
    np.testing.assert_array_equal(mask.affine, scan.affine)
    with pytest.raises(ValueError, match="differs from the grid's"):
        scan.with_array(np.zeros((2, 2, 2)))


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ("none", None),
        ("shape", r"shape \(48, 40, 31\) differs from ref\.nii\.gz's \(48, 40, 32\)"),
        ("shift_1mm", r"affine differs from ref\.nii\.gz's by up to 1 mm \(tolerance 0\.001 mm\)"),
        ("shift_tiny", None),  # within the tolerance
        ("flip", r"affine differs from ref\.nii\.gz's"),  # same shape, mirrored grid
    ],
)
def test_check_same_grid(tmp_path: Path, change: str, fragment: str | None) -> None:
    data = np.zeros((48, 40, 32), np.uint8)
    reference = read_volume(save_nifti(tmp_path / "ref.nii.gz", data))
    affine = FLIPPED_AFFINE.copy()
    if change == "shape":
        data = data[..., :31]
    elif change == "shift_1mm":
        affine[0, 3] += 1.0
    elif change == "shift_tiny":
        affine[0, 3] += 1e-4
    elif change == "flip":
        affine[0, 0] = -affine[0, 0]
    other = read_volume(save_nifti(tmp_path / "other.nii.gz", data, affine=affine))
    if fragment is None:
        check_same_grid(other, reference)
        return
    with pytest.raises(GridError, match=fragment) as info:
        check_same_grid(other, reference, hint="the fix")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'other.nii.gz'}: ") and message.endswith("; the fix")
    assert "\n" not in message


def test_check_same_grid_tolerance_is_a_parameter(tmp_path: Path) -> None:
    data = np.zeros((8, 8, 4), np.uint8)
    shifted = FLIPPED_AFFINE.copy()
    shifted[1, 3] += 0.01
    a = read_volume(save_nifti(tmp_path / "a.nii.gz", data))
    b = read_volume(save_nifti(tmp_path / "b.nii.gz", data, affine=shifted))
    check_same_grid(b, a, atol=0.02)
    with pytest.raises(GridError):
        check_same_grid(b, a)


@pytest.mark.parametrize("gzip_module", ["gzip", "isal.igzip"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_arrays_are_read_as_nibabel_reads_them(tmp_path, monkeypatch, gzip_module, suffix):
    import importlib

    from vesselfm.io import nifti

    module = importlib.import_module(gzip_module)
    monkeypatch.setattr(nifti, "_gzip_module", lambda: module)
    affine = np.diag([0.4, 0.4, 0.6, 1.0])
    data = np.random.default_rng(0).integers(-1024, 3000, size=(9, 8, 7)).astype(np.int16)
    plain, scaled = tmp_path / f"plain{suffix}", tmp_path / f"scaled{suffix}"
    nib.save(nib.Nifti1Image(data, affine), plain)
    img = nib.Nifti1Image(data, affine)
    img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, scaled)
    for path in (plain, scaled):
        volume = read_volume(path)
        np.testing.assert_array_equal(volume.array, nib.load(path).get_fdata())
        np.testing.assert_array_equal(volume.affine, nib.load(path).affine)
    assert read_volume(plain).array.dtype == np.int16
