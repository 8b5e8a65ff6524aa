"""Which files ``input=``, ``label=`` and ``gt=`` name, and the label of a case."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from synthetic import empty_files, save_nifti, tube_phantom

from vesselfm.io import (
    check_case_outputs,
    ensure_writable_dir,
    find_inputs,
    find_labels,
    match_label,
)
from vesselfm.utils.errors import UserError


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
        "wrong_suffix": tmp_path / "scan.raw",
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


def test_find_inputs_never_takes_our_outputs(tmp_path: Path) -> None:
    # output= the input folder: predictions and probability maps sit beside the scans
    empty_files(
        tmp_path, "scans/a.nii.gz", "scans/a_pred.nii.gz", "scans/a_prob.nii", "scans/b.nii"
    )
    assert find_inputs(tmp_path / "scans") == [
        tmp_path / "scans/a.nii.gz",
        tmp_path / "scans/b.nii",
    ]
    # the output folder inside a glob's folder: nothing in it is an input, whatever its name
    empty_files(tmp_path, "root/p1/ct.nii.gz", "root/vesselfm_pred/p1_ct.nii.gz")
    spec = str(tmp_path / "root" / "*" / "*.nii.gz")
    assert find_inputs(spec, output_dir=tmp_path / "root" / "vesselfm_pred") == [
        tmp_path / "root/p1/ct.nii.gz"
    ]
    assert len(find_inputs(spec)) == 2  # a folder that is not the output folder is read


def test_an_output_named_as_input_is_refused(tmp_path: Path) -> None:
    (path,) = empty_files(tmp_path, "1_pred.nii.gz")
    with pytest.raises(UserError, match=r"input=.*vesselfm's outputs, not scans") as info:
        find_inputs(path)
    assert "\n" not in str(info.value)


def test_labels_pair_by_the_same_id_rule(tmp_path: Path) -> None:
    empty_files(
        tmp_path,
        "pat/a/ct.nii.gz",  # the image: the .label file of the case wins
        "pat/a/ct.label.nii.gz",
        "pat/b/ct.label.nii.gz",
        "pat/b/ct_pred.nii.gz",  # ours: never a label
        "flat/7.coronary.nii.gz",
        "flat/8.nii.gz",
        "flat/9.img.nii.gz",
        "flat/10_0000.nii.gz",  # an image (nnU-Net's channel suffix), never a label
        "pat/c/ct.img.nii.gz",
        "pat/c/ct_prob.nii.gz",
    )
    labels = find_labels(str(tmp_path / "pat" / "*" / "*.nii.gz"), key="gt")
    assert labels == {
        "a_ct": tmp_path / "pat/a/ct.label.nii.gz",
        "b_ct": tmp_path / "pat/b/ct.label.nii.gz",
    }
    assert find_labels(tmp_path / "flat") == {
        "7": tmp_path / "flat/7.coronary.nii.gz",
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
    with pytest.raises(UserError, match=r"^gt=.*no labels found"):
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


def test_labels_prefer_the_tagged_file_of_a_case(tmp_path: Path) -> None:
    empty_files(
        tmp_path, "gt/1.nii.gz", "gt/1.coronary.nii.gz", "gt/2.coronary.nii", "gt/2.label.nii"
    )
    empty_files(tmp_path, "gt/3.nii.gz", "gt/3.coronary.nii.gz", "gt/S.NII.GZ")
    assert find_labels(tmp_path / "gt") == {
        "1": tmp_path / "gt/1.coronary.nii.gz",
        "2": tmp_path / "gt/2.label.nii",
        "3": tmp_path / "gt/3.coronary.nii.gz",
        "S": tmp_path / "gt/S.NII.GZ",
    }


def test_find_inputs_leaves_out_labels_of_every_tag(tmp_path: Path) -> None:
    empty_files(tmp_path, "in/1.img.nii.gz", "in/1.label.nii.gz", "in/2_0000.nii.gz")
    empty_files(tmp_path, "in/2.coronary.nii.gz", "in/S.NII.GZ", "in/notes.txt")
    assert find_inputs(tmp_path / "in") == [
        tmp_path / "in/1.img.nii.gz",
        tmp_path / "in/2_0000.nii.gz",
        tmp_path / "in/S.NII.GZ",
    ]


def test_pair_labels_by_id_first_then_the_one_prefixed_label_left(tmp_path: Path) -> None:
    from vesselfm.io import pair_labels

    a, b = tmp_path / "p" / "a" / "ct.label.nii.gz", tmp_path / "p" / "b" / "ct.label.nii.gz"
    plain = tmp_path / "x.label.nii.gz"
    labels = {"a_ct": a, "b_ct": b, "x": plain}
    pairs, unpaired = pair_labels(["x", "ct", "a_ct"], labels)
    assert pairs == {"x": plain, "ct": None, "a_ct": a}
    assert unpaired == ["b_ct"]
    # a label taken by id is not a second case's prefixed match
    pairs, unpaired = pair_labels(["ct", "a_ct"], {"ct": a})
    assert pairs == {"ct": a, "a_ct": None} and unpaired == []


def test_a_slicer_segmentation_in_the_input_folder_is_not_a_scan(tmp_path: Path) -> None:
    from synthetic import save_nifti, tube_phantom

    from vesselfm.io import find_inputs

    image, _ = tube_phantom((24, 20, 16))
    scan = save_nifti(tmp_path / "x.nii.gz", image)
    (tmp_path / "x_pred.seg.nrrd").write_bytes(b"")
    (tmp_path / "y.seg.nrrd").write_bytes(b"")
    assert find_inputs(tmp_path) == [scan]
