"""The prepared set's manifest: reading, writing, locating it, and the completeness check."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from vesselfm.data.manifest import (
    MANIFEST,
    case_is_complete,
    load_manifest,
    manifest_path,
    read_manifest,
    write_manifest,
)
from vesselfm.utils.outputs import RECORD_NAME


def _case(root: Path, case_id: str = "1", shape=(4, 5, 6), label_copy: bool = False) -> dict:
    """A case written as ``prepare`` lays it out, and its manifest entry (the fields the check reads)."""
    folder = root / "train" / case_id
    folder.mkdir(parents=True)
    np.save(folder / "img.npy", np.zeros(shape, dtype=np.int16))
    np.save(folder / "mask.npy", np.zeros(shape, dtype=np.uint8))
    np.save(folder / "fg.npy", np.zeros((0, 3), dtype=np.uint16))
    if label_copy:
        (folder / "label.nii.gz").write_bytes(b"x")
    rel = f"train/{case_id}"
    return {
        "split": "train",
        "prepared_shape": list(shape),
        "image": f"{rel}/img.npy",
        "mask": f"{rel}/mask.npy",
        "fg": f"{rel}/fg.npy",
        "image_dtype": "int16",
        "original_label": f"{rel}/label.nii.gz" if label_copy else str(root / "raw.nii.gz"),
    }


def test_written_manifest_reads_back_and_missing_is_none(tmp_path):
    assert load_manifest(tmp_path) is None
    assert load_manifest(tmp_path / "not-yet") is None
    manifest = {"format": 1, "cases": {"1": {"split": "test"}}, "failed": {}}
    write_manifest(tmp_path, manifest)
    assert load_manifest(tmp_path) == manifest == read_manifest(tmp_path / MANIFEST)
    # the bytes the golden prepared sets were recorded with
    assert (tmp_path / MANIFEST).read_text() == json.dumps(manifest, indent=1)
    # no temporary left; the output record names the manifest as ours
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([MANIFEST, RECORD_NAME])


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", r"not valid JSON .*delete it to prepare the set again"),
        ('{"cases": []}', r"not a prepared set's manifest \(no 'cases' table\)"),
        ("[1, 2]", r"not a prepared set's manifest"),
    ],
)
def test_a_file_that_is_no_manifest_is_refused(tmp_path, text, message):
    (tmp_path / MANIFEST).write_text(text)
    with pytest.raises(ValueError, match=message):
        load_manifest(tmp_path)
    with pytest.raises(ValueError, match=message):
        read_manifest(tmp_path / MANIFEST)


def test_read_manifest_of_a_missing_file_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_manifest(tmp_path / MANIFEST)


def test_manifest_path_takes_the_folder_or_the_file(tmp_path):
    assert manifest_path(tmp_path) == tmp_path / MANIFEST
    assert manifest_path(tmp_path / MANIFEST) == tmp_path / MANIFEST
    assert manifest_path(tmp_path / "other.json") == tmp_path / "other.json"
    assert manifest_path("~") == Path.home() / MANIFEST


@pytest.mark.parametrize("label_copy", [False, True])
def test_a_case_with_all_its_files_is_complete(tmp_path, label_copy):
    assert case_is_complete(tmp_path, _case(tmp_path, label_copy=label_copy))


@pytest.mark.parametrize(
    "damage",
    [
        "image missing",
        "mask missing",
        "fg missing",
        "label copy missing",
        "image dtype",
        "mask dtype",
        "shape",
        "fg 1d",
        "truncated image",
        "entry without fg",
    ],
)
def test_a_case_with_a_missing_or_wrong_file_is_incomplete(tmp_path, damage):
    entry = _case(tmp_path, label_copy=True)
    folder = tmp_path / "train" / "1"
    if damage.endswith("missing"):
        name = {"image": "img.npy", "mask": "mask.npy", "fg": "fg.npy", "label": "label.nii.gz"}
        (folder / name[damage.split()[0]]).unlink()
    elif damage == "image dtype":
        entry["image_dtype"] = "float32"
    elif damage == "mask dtype":
        np.save(folder / "mask.npy", np.zeros((4, 5, 6), dtype=np.float32))
    elif damage == "shape":
        entry["prepared_shape"] = [4, 5, 7]
    elif damage == "fg 1d":
        np.save(folder / "fg.npy", np.zeros(3, dtype=np.uint16))
    elif damage == "truncated image":
        data = (folder / "img.npy").read_bytes()
        (folder / "img.npy").write_bytes(data[: len(data) // 2])
    else:
        del entry["fg"]
    assert not case_is_complete(tmp_path, entry)
