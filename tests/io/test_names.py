"""The case-id rule per role, refused ids, and ids made unique within a run."""

from __future__ import annotations

from pathlib import Path

import pytest
from synthetic import empty_files

from vesselfm.io import (
    case_id,
    case_id_problem,
    is_volume_file,
    output_name,
    output_paths,
    renamed_cases,
    role_of,
    unique_case_ids,
)
from vesselfm.utils.errors import UserError


@pytest.mark.parametrize(
    ("name", "role", "expected"),
    [
        # images: <id>.img<ext>, <id>_0000<ext> (only the first channel) or <id><ext>
        ("1.img.nii.gz", "image", "1"),
        ("x_0000.nii.gz", "image", "x"),
        ("ct_0001.nii.gz", "image", "ct_0001"),
        ("x_0000_0000.nii.gz", "image", "x_0000"),
        ("scan.nii", "image", "scan"),
        ("S.NII.GZ", "image", "S"),
        ("a.IMG.Nii.Gz", "image", "a"),
        ("a.b.nii.gz", "image", "a.b"),
        ("a.label.nii.gz", "image", "a.label"),  # not an image tag
        # labels: <id>.label<ext>, <id>.coronary<ext> or <id><ext>
        ("a.label.nii.gz", "label", "a"),
        ("a.coronary.nii.gz", "label", "a"),
        ("a.nii", "label", "a"),
        ("x_0000.nii.gz", "label", "x_0000"),  # the channel suffix is an image's
        ("7_label.nii.gz", "label", "7_label"),  # only the dotted tags
        # outputs
        ("1_pred.nii.gz", "prediction", "1"),
        ("a.b_pred.nii", "prediction", "a.b"),
        ("1_prob.nii.gz", "probability", "1"),
        ("1_PRED.NII.GZ", "prediction", "1"),
        # the role a name is tagged with
        ("1.img.nii.gz", None, "1"),
        ("1.label.nii.gz", None, "1"),
        ("1.coronary.nii.gz", None, "1"),
        ("1_pred.nii.gz", None, "1"),
        ("x_0000_pred.nii.gz", None, "x_0000"),
        ("scan.nii.gz", None, "scan"),
        # names without a volume extension keep everything but the tag
        ("1.img", None, "1"),
        ("notes.txt", None, "notes.txt"),
        # refused ids come back as they are, for case_id_problem
        (".img.nii.gz", "image", ""),
        ("..nii.gz", "image", "."),
    ],
)
def test_case_id_per_role(name: str, role: str | None, expected: str) -> None:
    assert case_id(Path("/data/pat") / name, role) == expected


@pytest.mark.parametrize(
    ("name", "role"),
    [
        ("1.img.nii.gz", "image"),
        ("x_0000.nii", "image"),
        ("1.label.nii.gz", "label"),
        ("1.Coronary.nii.gz", "label"),
        ("1_pred.nii.gz", "prediction"),
        ("1_prob.nii", "probability"),
        ("ct_0001.nii.gz", None),
        ("1.nii.gz", None),
    ],
)
def test_role_of(name: str, role: str | None) -> None:
    assert role_of(name) == role


def test_unknown_role_lists_the_roles() -> None:
    with pytest.raises(ValueError, match=r"role must be one of \['image', 'label', 'prediction'"):
        case_id("1.nii.gz", "mask")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "volume"),
    [
        ("a.nii.gz", True),
        ("a.NII", True),
        ("a.nii.gz.bak", False),
        ("a.mha", True),
        ("a.MHD", True),
        ("a.nrrd", True),
        ("a.raw", False),  # a .mhd's data file
        ("a.zraw", False),
        ("a", False),
    ],
)
def test_is_volume_file(name: str, volume: bool) -> None:
    assert is_volume_file(name) is volume


@pytest.mark.parametrize(
    ("case", "fragment"),
    [
        ("", "empty case id"),
        (".", "would name the split folder itself"),
        ("..", "would name the folder above it"),
        ("a/b", "path separator"),
        ("x" * 256, "more than the 255"),
        ("ct_001", None),
        (".hidden", None),
    ],
)
def test_case_id_problem(case: str, fragment: str | None) -> None:
    problem = case_id_problem(case)
    if fragment is None:
        assert problem is None
    else:
        assert problem is not None and fragment in problem


def test_output_names() -> None:
    assert output_name("1", "prediction") == "1_pred.nii.gz"
    assert output_name("1", "probability") == "1_prob.nii.gz"
    assert output_paths("/o", "a_ct") == {
        "pred": Path("/o/a_ct_pred.nii.gz"),
        "prob": Path("/o/a_ct_prob.nii.gz"),
        "mesh": Path("/o/a_ct_pred.stl"),
    }
    assert output_paths("/o", "a", "nrrd")["pred"] == Path("/o/a_pred.nrrd")
    assert output_paths("/o", "a", "mha")["prob"] == Path("/o/a_prob.mha")
    assert case_id("a_pred.nrrd", "prediction") == "a"
    with pytest.raises(ValueError, match=r"output_format must be one of nifti\|nrrd\|mha"):
        output_paths("/o", "a", "png")
    # an output's name gives back its case id
    for role in ("prediction", "probability"):
        assert case_id(output_name("x_0000", role), role) == "x_0000"  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="role must be one of"):
        output_name("1", "image")


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
        # the channel suffix is part of the rule: x_0000 and x.img are one case x
        (["f/x_0000.nii.gz", "g/x.img.nii.gz"], ["f_x", "g_x"]),
    ],
)
def test_unique_case_ids_prefix_parent_folders_until_unique(
    tmp_path: Path, names: list[str], expected: list[str]
) -> None:
    paths = empty_files(tmp_path, *names)
    ids = unique_case_ids(paths)
    assert [ids[p] for p in paths] == expected
    renamed = renamed_cases(ids)
    assert len(renamed) == sum(
        e != case_id(p, "image") for p, e in zip(paths, expected, strict=True)
    )
    assert all(" -> " in line for line in renamed)


def test_ids_the_folders_cannot_tell_apart_are_refused_listing_the_files(tmp_path: Path) -> None:
    paths = empty_files(tmp_path, "d/1.img.nii.gz", "d/1.nii.gz", "d/2.nii.gz")
    with pytest.raises(UserError, match=r"^input: files map to the same case id") as info:
        unique_case_ids(paths)
    message = str(info.value)
    assert "\n" not in message
    assert str(paths[0]) in message and str(paths[1]) in message and "2.nii.gz" not in message


@pytest.mark.parametrize("name", [".img.nii.gz", "_0000.nii.gz", "..nii.gz"])
def test_refused_ids_stop_the_run_naming_the_file(tmp_path: Path, name: str) -> None:
    paths = empty_files(tmp_path, "ok.nii.gz", name)
    with pytest.raises(UserError, match=r"^input: .* case id.*; rename the file$") as info:
        unique_case_ids(paths)
    assert str(paths[1]) in str(info.value)
