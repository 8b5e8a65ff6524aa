"""NIfTI reading, validation, geometry-exact writing and input discovery."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from synthetic import FLIPPED_AFFINE, save_nifti, tube_phantom

from vesselfm.inference.io import (
    case_id,
    check_case_outputs,
    ensure_writable_dir,
    find_inputs,
    find_labels,
    like_reference,
    load_scan,
    match_label,
    renamed_cases,
    save_prediction,
    save_probabilities,
    unique_case_ids,
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


def _gzip_named_nii(path: Path) -> Path:
    image, _ = tube_phantom((16, 16, 8))
    gz = save_nifti(path.with_name(path.name + ".gz"), image)
    gz.rename(path)  # a valid .nii.gz, named .nii
    return path


BAD_INPUTS = {
    "not_nifti": (_not_nifti, "bad.nii.gz", "not a readable NIfTI"),
    "gzip_of_garbage": (_gzip_of_garbage, "garbage.nii.gz", "not a readable NIfTI"),
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


def _nii(root: Path, *names: str) -> list[Path]:
    """Empty files at ``root/<name>`` (ids and discovery look at names only)."""
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        # per-patient folders with one fixed file name (the usual export layout)
        (
            ["pat/a/ct.nii.gz", "pat/b/ct.nii.gz", "pat/c/ct.nii.gz"],
            ["a_ct", "b_ct", "c_ct"],
        ),
        # the parent does not tell two apart: the next folder up is prefixed too, only for them
        (
            ["x/a/ct.nii.gz", "y/a/ct.nii.gz", "y/b/ct.nii.gz"],
            ["x_a_ct", "y_a_ct", "b_ct"],
        ),
        # a prefixed id that meets a file really named so: both go one folder further up
        (
            ["p/a/ct.nii.gz", "p/b/ct.nii.gz", "q/a_ct.nii.gz"],
            ["p_a_ct", "b_ct", "q_a_ct"],
        ),
        # no clash: the ids stay as they are
        (["d/1.img.nii.gz", "e/2.img.nii.gz", "e/scan.nii"], ["1", "2", "scan"]),
    ],
)
def test_unique_case_ids_prefix_parent_folders_until_unique(
    tmp_path: Path, names: list[str], expected: list[str]
) -> None:
    paths = _nii(tmp_path, *names)
    ids = unique_case_ids(paths)
    assert [ids[p] for p in paths] == expected
    renamed = renamed_cases(ids)
    assert len(renamed) == sum(e != case_id(p) for p, e in zip(paths, expected, strict=True))
    assert all(" -> " in line for line in renamed)


def test_ids_the_folders_cannot_tell_apart_are_refused_listing_the_files(tmp_path: Path) -> None:
    paths = _nii(tmp_path, "d/1.img.nii.gz", "d/1.nii.gz", "d/2.nii.gz")
    with pytest.raises(UserError, match=r"^input: files map to the same case id") as info:
        unique_case_ids(paths)
    message = str(info.value)
    assert "\n" not in message
    assert str(paths[0]) in message and str(paths[1]) in message and "2.nii.gz" not in message


def test_find_inputs_never_takes_our_outputs(tmp_path: Path) -> None:
    # output= the input folder: predictions and probability maps sit beside the scans
    _nii(tmp_path, "scans/a.nii.gz", "scans/a_pred.nii.gz", "scans/a_prob.nii", "scans/b.nii")
    assert find_inputs(tmp_path / "scans") == [
        tmp_path / "scans/a.nii.gz",
        tmp_path / "scans/b.nii",
    ]
    # the output folder inside a glob's folder: nothing in it is an input, whatever its name
    _nii(tmp_path, "root/p1/ct.nii.gz", "root/vesselfm_pred/p1_ct.nii.gz")
    spec = str(tmp_path / "root" / "*" / "*.nii.gz")
    assert find_inputs(spec, output_dir=tmp_path / "root" / "vesselfm_pred") == [
        tmp_path / "root/p1/ct.nii.gz"
    ]
    assert len(find_inputs(spec)) == 2  # a folder that is not the output folder is read


def test_an_output_named_as_input_is_refused(tmp_path: Path) -> None:
    (path,) = _nii(tmp_path, "1_pred.nii.gz")
    with pytest.raises(UserError, match=r"input=.*vesselfm's outputs, not scans") as info:
        find_inputs(path)
    assert "\n" not in str(info.value)


def test_labels_pair_by_the_same_id_rule(tmp_path: Path) -> None:
    _nii(
        tmp_path,
        "pat/a/ct.nii.gz",  # the image: the .label file of the case wins
        "pat/a/ct.label.nii.gz",
        "pat/b/ct.label.nii.gz",
        "pat/b/ct_pred.nii.gz",  # ours: never a label
        "flat/7_label.nii.gz",
        "flat/8.nii.gz",
        "flat/9.img.nii.gz",
        "pat/c/ct.img.nii.gz",
        "pat/c/ct_prob.nii.gz",
    )
    labels = find_labels(str(tmp_path / "pat" / "*" / "*.nii.gz"), key="gt")
    assert labels == {
        "a_ct": tmp_path / "pat/a/ct.label.nii.gz",
        "b_ct": tmp_path / "pat/b/ct.label.nii.gz",
    }
    assert find_labels(tmp_path / "flat") == {
        "7": tmp_path / "flat/7_label.nii.gz",
        "8": tmp_path / "flat/8.nii.gz",
    }
    # the labels of one patient only do not clash, yet still pair with infer's prefixed id
    only_a = find_labels(str(tmp_path / "pat" / "a" / "*.label.nii.gz"))
    assert only_a == {"ct": tmp_path / "pat/a/ct.label.nii.gz"}
    assert match_label("a_ct", only_a) == tmp_path / "pat/a/ct.label.nii.gz"
    assert match_label("b_ct", only_a) is None
    # a label another case paired with by its own id is not offered again
    assert match_label("a_ct", only_a, taken={only_a["ct"]}) is None
    # an unprefixed prediction id would fit either patient's label: no guess
    assert match_label("ct", labels) is None
    # an image and a probability map are no labels
    with pytest.raises(UserError, match=r"^gt=.*no NIfTI labels found"):
        find_labels(tmp_path / "pat" / "c", key="gt")


def test_case_output_checks_run_before_any_work(tmp_path: Path) -> None:
    long_name = tmp_path / ("x" * 248 + "_pred.nii.gz")
    with pytest.raises(UserError, match=r"bytes, more than the 255"):
        check_case_outputs([tmp_path / "ok_pred.nii.gz", long_name], overwrite=True)
    foreign = tmp_path / "1_pred.nii.gz"
    foreign.write_bytes(b"the user's own file")
    with pytest.raises(UserError, match=r"1_pred\.nii\.gz exists and was not written by vesselfm"):
        check_case_outputs([foreign], overwrite=False)
    assert check_case_outputs([foreign], overwrite=True) is False  # redone when told so
    assert check_case_outputs([tmp_path / "2_pred.nii.gz"], overwrite=False) is False
