"""summarize and write_reports: means over defined values, counts, and the three files."""

from __future__ import annotations

import csv
import json
import math

import pytest

from vesselfm.metrics import summarize, write_reports
from vesselfm.utils.outputs import RECORD_NAME

ROWS = [
    {
        "case": "1",
        "dice": 0.8,
        "cldice": 0.9,
        "precision": None,
        "betti_0_error": 2,
        "hd95_mm": 1.5,
    },
    {
        "case": "2",
        "dice": 0.6,
        "cldice": 0.7,
        "precision": 0.5,
        "betti_0_error": 0,
        "hd95_mm": None,
    },
    {
        "case": "10",
        "dice": 0.7,
        "cldice": math.nan,
        "precision": 0.7,
        "betti_0_error": 1,
        "hd95_mm": None,
    },
]


def test_summarize_counts_only_defined_values():
    s = summarize(ROWS)
    assert list(s) == ["dice", "precision", "cldice", "betti_0_error", "hd95_mm"]  # table order
    assert s["dice"] == {"mean": pytest.approx(0.7), "std": pytest.approx(0.1), "n": 3}
    assert s["precision"] == {
        "mean": pytest.approx(0.6),
        "std": pytest.approx(0.1414213562),
        "n": 2,
    }
    assert s["cldice"]["n"] == 2  # NaN is skipped like None
    assert s["betti_0_error"]["mean"] == pytest.approx(1.0)
    assert s["hd95_mm"] == {"mean": 1.5, "std": None, "n": 1}  # one value: no spread


def test_summarize_of_nothing_defined():
    assert summarize([{"case": "a", "dice": None}]) == {"dice": {"mean": None, "std": None, "n": 0}}


def test_write_reports(tmp_path):
    paths = write_reports(ROWS, tmp_path / "out")
    assert set(paths) == {"csv", "json", "md"}
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".vesselfm-outputs.json",
        "metrics.csv",
        "summary.json",
        "summary.md",
    ]

    with open(paths["csv"], newline="") as fh:
        table = list(csv.reader(fh))
    assert table[0] == ["case", "dice", "precision", "cldice", "betti_0_error", "hd95_mm"]
    assert [r[0] for r in table[1:]] == ["1", "2", "10"]
    assert table[1] == ["1", "0.8", "", "0.9", "2", "1.5"]  # None -> empty cell, ints stay ints
    assert table[3][3] == ""  # NaN -> empty cell

    assert json.loads(paths["json"].read_text()) == json.loads(json.dumps(summarize(ROWS)))

    md = paths["md"].read_text(encoding="utf-8")
    assert "| Dice | clDice | β0 error |" in md
    assert "| 0.7000 ± 0.1000 | 0.8000 ± 0.1414 | 1.00 ± 1.00 |" in md
    assert "| precision | 0.6000 ± 0.1414 | 2 |" in md
    assert "| hd95_mm | 1.50 | 1 |" in md


def test_write_reports_replaces_files_whole(tmp_path):
    write_reports(ROWS, tmp_path)
    write_reports(ROWS[:1], tmp_path)
    with open(tmp_path / "metrics.csv", newline="") as fh:
        assert len(list(csv.reader(fh))) == 2
    # no temp files left (the output record is the only hidden file)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == [RECORD_NAME]


def test_reports_say_scored_n_of_m_and_list_what_was_not_scored(tmp_path):
    paths = write_reports(
        ROWS,
        tmp_path,
        expected=6,
        missing={"missing_predictions": ["4", "7"]},
        failed={"5": "5_pred.nii.gz: affine differs"},
    )
    summary = json.loads(paths["json"].read_text())
    assert (summary["scored"], summary["expected"]) == (3, 6)
    assert summary["missing_predictions"] == ["4", "7"]
    assert summary["failed"] == {"5": "5_pred.nii.gz: affine differs"}
    assert summary["dice"] == summarize(ROWS)["dice"]
    md = paths["md"].read_text(encoding="utf-8")
    assert "Scored 3 of 6 case(s)" in md
    assert "Missing predictions (2, not scored): 4, 7" in md
    assert "- 5: 5_pred.nii.gz: affine differs" in md
