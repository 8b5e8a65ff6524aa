"""Case discovery in the ImageCAS layout (folders, zips, duplicates) and the official/random splits."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from vesselfm.data.imagecas import (
    discover_cases,
    random_split,
    read_official_split,
)
from vesselfm.io import case_id


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_imagecas_layout_recursive_with_duplicates_skipped(tmp_path, caplog):
    for i in (1, 2, 10):
        _touch(tmp_path / "1-200" / f"{i}.img.nii.gz")
        _touch(tmp_path / "1-200" / f"{i}.label.nii.gz")
    _touch(tmp_path / "201-400" / "201.img.nii.gz")
    _touch(tmp_path / "201-400" / "201.label.nii.gz")
    # browser/file-manager copies: a whole folder and single files
    _touch(tmp_path / "1-200 (1)" / "1.img.nii.gz")
    _touch(tmp_path / "1-200 (1)" / "1.label.nii.gz")
    _touch(tmp_path / "201-400" / "202.img (1).nii.gz")
    _touch(tmp_path / "201-400" / "202.label.nii.gz")
    with caplog.at_level("WARNING"):
        found = discover_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["1", "2", "10", "201"]
    assert found.cases[0].image.path.endswith("1-200/1.img.nii.gz")
    reasons = dict(found.skipped)
    assert reasons[str(tmp_path / "1-200 (1)")] == "duplicate-marked folder"
    assert (
        reasons[str((tmp_path / "201-400" / "202.img (1).nii.gz").resolve())]
        == "duplicate-marked copy"
    )
    assert "no image file" in reasons[str((tmp_path / "201-400" / "202.label.nii.gz").resolve())]
    assert "duplicate-marked" in caplog.text


def test_images_labels_folders_and_case_ids(tmp_path):
    _touch(tmp_path / "imagesTr" / "ct_001_0000.nii.gz")
    _touch(tmp_path / "labelsTr" / "ct_001.nii.gz")
    _touch(tmp_path / "images" / "7.img.nii.gz")
    _touch(tmp_path / "masks" / "7.label.nii.gz")
    found = discover_cases(tmp_path)
    assert sorted(c.case_id for c in found.cases) == ["7", "ct_001"]
    assert case_id("12.img.nii.gz", "image") == "12"
    assert case_id("12.label.nii", "label") == "12"


def test_zip_archive_and_zip_inside_a_folder(tmp_path):
    archive = tmp_path / "imagecas.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for i in (3, 4):
            zf.writestr(f"1-200/{i}.img.nii.gz", b"x")
            zf.writestr(f"1-200/{i}.label.nii.gz", b"x")
    found = discover_cases(archive)
    assert [c.case_id for c in found.cases] == ["3", "4"]
    assert found.cases[0].image.member == "1-200/3.img.nii.gz"
    assert str(found.cases[0].image) == f"{archive}::1-200/3.img.nii.gz"
    # a folder holding the archive and an extracted copy of case 3: the file on disk wins
    _touch(tmp_path / "1-200" / "3.img.nii.gz")
    _touch(tmp_path / "1-200" / "3.label.nii.gz")
    found = discover_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["3", "4"]
    assert found.cases[0].image.member is None and found.cases[1].image.member is not None


def test_one_case_id_twice_on_disk_is_refused_listing_both(tmp_path):
    # a download copied twice: its halves would land in train and test
    for copy in ("download", "backup/download"):
        _touch(tmp_path / copy / "1-200" / "5.img.nii.gz")
        _touch(tmp_path / copy / "1-200" / "5.label.nii.gz")
    _touch(tmp_path / "download" / "1-200" / "6.img.nii.gz")
    _touch(tmp_path / "download" / "1-200" / "6.label.nii.gz")
    with pytest.raises(ValueError, match=r"case id 5 is found 2 times") as info:
        discover_cases(tmp_path)
    message = str(info.value)
    assert "backup/download/1-200/5.img.nii.gz" in message and "\n" not in message


def test_one_case_id_in_two_archives_is_refused(tmp_path):
    for name in ("a.zip", "b.zip"):
        with zipfile.ZipFile(tmp_path / name, "w") as zf:
            zf.writestr("1-200/3.img.nii.gz", b"x")
            zf.writestr("1-200/3.label.nii.gz", b"x")
    with pytest.raises(ValueError, match=r"case id 3 is found 2 times"):
        discover_cases(tmp_path)


@pytest.mark.skipif(
    shutil.which("zip") is None, reason="needs Info-ZIP's zip to build a split archive"
)
def test_multipart_download_is_refused_with_the_fix(tmp_path):
    src = tmp_path / "src" / "1-200"
    src.mkdir(parents=True)
    import os

    for i in (1, 2):
        (src / f"{i}.img.nii.gz").write_bytes(os.urandom(150_000))
        (src / f"{i}.label.nii.gz").write_bytes(os.urandom(50_000))
    dl = tmp_path / "download"
    dl.mkdir()
    subprocess.run(
        ["zip", "-q", "-r", "-s", "100k", str(dl / "1-200.zip"), "1-200"],
        cwd=src.parent,
        check=True,
    )
    (dl / "1-200.zip").rename(dl / "1-200.change2zip")  # as Kaggle ships it
    with pytest.raises(ValueError, match="multi-part zip.*ImageCASDataSetPrep.md"):
        discover_cases(dl)
    # parts joined with cat keep per-part offsets: refused, with the command that joins them right
    joined = tmp_path / "cat.zip"
    parts = sorted(dl.glob("1-200.z[0-9][0-9]")) + [dl / "1-200.change2zip"]
    joined.write_bytes(b"".join(p.read_bytes() for p in parts))
    with pytest.raises(ValueError, match="zip -s 0"):
        discover_cases(joined)
    # the documented way: rename the last part to .zip, then zip -s 0 joins them into one archive
    (dl / "1-200.change2zip").rename(dl / "1-200.zip")
    subprocess.run(
        ["zip", "-q", "-s", "0", "1-200.zip", "--out", str(tmp_path / "joined.zip")],
        cwd=dl,
        check=True,
    )
    assert [c.case_id for c in discover_cases(tmp_path / "joined.zip").cases] == ["1", "2"]


def test_no_pairs_is_a_clear_error(tmp_path):
    _touch(tmp_path / "notes.txt")
    with pytest.raises(ValueError, match="no image/label pairs"):
        discover_cases(tmp_path)
    with pytest.raises(ValueError, match="no such file"):
        discover_cases(tmp_path / "missing")


def _official_rows(n: int = 1000) -> list[list[object]]:
    """A table shaped like ImageCAS's v2 sheet: a title row, then FileName + Split-1..Split-4."""
    rows: list[list[object]] = [
        ["ImageCAS data split"],
        ["FileName", "Split-1", "Split-2", "Split-3", "Split-4"],
    ]
    for i in range(1, n + 1):
        s1 = "Training" if i <= 700 else "Val" if i <= 750 else "Testing"
        s2 = "Testing" if i <= 250 else "Val" if i <= 300 else "Training"
        rows.append([i, s1, s2, s1, s2])
    return rows


def test_official_split_from_xlsx_picks_the_matching_sheet(tmp_path):
    import openpyxl

    wb = openpyxl.Workbook()
    old = wb.active
    old.title = "v1"
    old.append(["FileName", "Split-1"])
    for i in range(100):
        old.append([10016975 + i, "Training"])
    new = wb.create_sheet("v2-latest")
    for row in _official_rows():
        new.append(row)
    path = tmp_path / "imageCAS_data_split.xlsx"
    wb.save(path)

    table, sheet = read_official_split(path, fold=1, case_ids=[str(i) for i in range(1, 1001)])
    assert sheet == "v2-latest"
    counts = {s: sum(v == s for v in table.values()) for s in ("train", "val", "test")}
    assert counts == {"train": 700, "val": 50, "test": 250}
    table2, _ = read_official_split(path, fold=2, sheet="v2-latest")
    assert table2["1"] == "test" and table2["300"] == "val" and table2["301"] == "train"
    with pytest.raises(ValueError, match="fold"):
        read_official_split(path, fold=5)


def test_official_split_from_csv_export(tmp_path):
    path = tmp_path / "split.csv"
    path.write_text(
        "id,fold_1,fold_2\n1,train,test\n2,validation,train\n3,test,train\n4.img.nii.gz,train,val\n"
    )
    table, _ = read_official_split(path, fold=1)
    assert table == {"1": "train", "2": "val", "3": "test", "4": "train"}
    bad = tmp_path / "bad.csv"
    bad.write_text("id,fold_1\n1,holdout\n")
    with pytest.raises(ValueError, match="unknown split value 'holdout'"):
        read_official_split(bad, fold=1)
    with pytest.raises(ValueError, match="no column for fold=3"):
        read_official_split(path, fold=3)


def test_random_split_is_80_10_10_reproducible_and_order_free():
    ids = [str(i) for i in range(1, 101)]
    a = random_split(ids, seed=3)
    assert {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")} == {
        "train": 80,
        "val": 10,
        "test": 10,
    }
    assert random_split(list(reversed(ids)), seed=3) == a
    assert random_split(ids, seed=4) != a
    small = random_split(["1", "2", "3", "4", "5"], seed=0)
    assert sorted(small.values()) == ["test", "train", "train", "train", "val"]


def test_new_cases_are_drawn_beside_placed_ones_to_fill_each_share():
    from vesselfm.data.imagecas import draw_splits, split_sizes

    ids = [str(i) for i in range(1, 21)]
    assert draw_splits(ids, seed=2) == random_split(ids, seed=2)
    # 10 cases already placed, all in train: the 10 new ones fill val and test to their share
    new = draw_splits(ids[10:], seed=2, existing={"train": 10})
    assert set(new) == set(ids[10:])
    counts = {s: sum(v == s for v in new.values()) for s in ("train", "val", "test")}
    assert (
        counts
        == {"train": 6, "val": 2, "test": 2}
        == {s: split_sizes(20)[s] - (10 if s == "train" else 0) for s in counts}
    )
    # val already over its share: no new case goes there
    assert "val" not in draw_splits(ids[:5], seed=0, existing={"val": 4}).values()
    assert split_sizes(2) == {"train": 2, "val": 0, "test": 0}


def test_case_ids_that_cannot_name_a_folder_are_not_cases(tmp_path):
    from vesselfm.io import case_id_problem

    for i in ("1", ""):
        _touch(tmp_path / "1-200" / f"{i}.img.nii.gz")
        _touch(tmp_path / "1-200" / f"{i}.label.nii.gz")
    _touch(tmp_path / "images" / "..nii.gz")
    _touch(tmp_path / "labels" / "..nii.gz")
    found = discover_cases(tmp_path)
    assert [c.case_id for c in found.cases] == ["1"]
    assert sorted(c.case_id for c, _ in found.invalid) == ["", "."]
    assert all(str(c.image) in reason for c, reason in found.invalid)
    assert case_id_problem("..") and case_id_problem("a/b") and case_id_problem("x" * 256)
    assert case_id_problem("ct_001") is None and case_id_problem(".hidden") is None
