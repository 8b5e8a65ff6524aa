"""``python -m vesselfm.evaluate`` on small synthetic trees with deliberately damaged predictions."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from vesselfm.evaluate import evaluate, find_cases
from vesselfm.utils.cli import UserError

DAMAGES = {"1": "label", "2": "cut", "3": "no_branch", "4": "extra_blob"}


@pytest.fixture()
def folders(tmp_path, tree, write_nifti):
    """gt/<case>.label.nii.gz, pred/<case>_pred.nii.gz (uint8) and prob/<case>_prob.nii.gz."""
    gt, pred, prob = tmp_path / "gt", tmp_path / "pred", tmp_path / "prob"
    for case, damage in DAMAGES.items():
        mask = getattr(tree, damage)
        write_nifti(gt / f"{case}.label.nii.gz", tree.label.astype(np.uint8))
        write_nifti(pred / f"{case}_pred.nii.gz", mask.astype(np.uint8))
        write_nifti(prob / f"{case}_prob.nii.gz", tree.prob(mask))
    return {"gt": gt, "pred": pred, "prob": prob, "out": tmp_path / "eval"}


def _rows(csv_path: Path) -> dict[str, dict[str, str]]:
    with open(csv_path, newline="") as fh:
        return {row["case"]: row for row in csv.DictReader(fh)}


def test_damaged_predictions(compose_cfg, folders):
    cfg = compose_cfg(
        "evaluate",
        [
            f"pred={folders['pred']}",
            f"gt={folders['gt']}",
            f"output={folders['out']}",
            f"prob={folders['prob']}",
        ],
    )
    result = evaluate(cfg)
    assert result["errors"] == {}
    rows = {r["case"]: r for r in result["rows"]}
    assert [r["case"] for r in result["rows"]] == ["1", "2", "3", "4"]

    intact, cut, no_branch, blob = rows["1"], rows["2"], rows["3"], rows["4"]
    assert intact["dice"] == 1.0 and intact["cldice"] == 1.0 and intact["betti_0_error"] == 0
    assert intact["hd95_mm"] == 0.0 and intact["roc_auc"] == 1.0
    # a cut vessel: one more component
    assert cut["betti_0_error"] == 1 and cut["betti_0"] == 2
    # a removed branch: lower recall, topology intact, precision untouched
    assert no_branch["recall_tpr_sensitivity"] < 0.95
    assert no_branch["precision"] == 1.0 and no_branch["betti_0_error"] == 0
    # an extra blob: one more component and lower precision
    assert blob["betti_0_error"] == 1 and blob["precision"] < 0.95
    assert blob["recall_tpr_sensitivity"] == 1.0

    table = _rows(folders["out"] / "metrics.csv")
    assert list(table) == ["1", "2", "3", "4"]
    assert float(table["3"]["recall_tpr_sensitivity"]) == pytest.approx(
        no_branch["recall_tpr_sensitivity"]
    )
    summary = json.loads((folders["out"] / "summary.json").read_text())
    assert summary["betti_0_error"] == {
        "mean": 0.5,
        "std": pytest.approx(np.std([0, 1, 0, 1], ddof=1)),
        "n": 4,
    }
    assert summary["roc_auc"]["n"] == 4
    assert "| dice |" in (folders["out"] / "summary.md").read_text(encoding="utf-8")


def test_without_prob_the_aucs_are_empty(compose_cfg, folders):
    cfg = compose_cfg(
        "evaluate", [f"pred={folders['pred']}", f"gt={folders['gt']}", f"output={folders['out']}"]
    )
    evaluate(cfg)
    summary = json.loads((folders["out"] / "summary.json").read_text())
    assert summary["roc_auc"] == {"mean": None, "std": None, "n": 0}
    assert summary["dice"]["n"] == 4


def test_mismatched_affine_fails_that_case_only(compose_cfg, folders, tree, write_nifti, affine):
    shifted = affine.copy()
    shifted[0, 3] += 5.0
    write_nifti(folders["gt"] / "5.label.nii.gz", tree.label.astype(np.uint8))
    write_nifti(folders["pred"] / "5_pred.nii.gz", tree.label.astype(np.uint8), affine=shifted)
    write_nifti(
        folders["gt"] / "6.nii.gz", tree.label.astype(np.uint8)
    )  # plain <case>.nii.gz label
    write_nifti(folders["pred"] / "6_pred.nii.gz", tree.label[:, :, :40].astype(np.uint8))
    cfg = compose_cfg(
        "evaluate", [f"pred={folders['pred']}", f"gt={folders['gt']}", f"output={folders['out']}"]
    )
    with pytest.raises(
        UserError,
        match=r"2 of 6 case\(s\) could not be scored \(case 5: .*5_pred.nii.gz: affine differs",
    ):
        evaluate(cfg)
    # the other four were scored and written
    assert list(_rows(folders["out"] / "metrics.csv")) == ["1", "2", "3", "4"]


def test_pairing_prefers_label_files_and_sorts_numerically(tmp_path, write_nifti, caplog):
    m = np.zeros((4, 4, 4), np.uint8)
    for name in ("10.label.nii.gz", "10.img.nii.gz", "2.nii.gz", "other.nii", "11.img.nii.gz"):
        write_nifti(tmp_path / "gt" / name, m)
    for name in ("10_pred.nii.gz", "2_pred.nii.gz", "3_pred.nii.gz", "10_prob.nii.gz"):
        write_nifti(tmp_path / "pred" / name, m)
    with caplog.at_level(logging.WARNING):
        cases = find_cases(tmp_path / "pred", tmp_path / "gt")
    assert [c.case for c in cases] == ["2", "3", "10"]
    # images are not labels; a label without prediction is named
    assert "have no prediction and are not scored: other" in caplog.text
    assert "11" not in caplog.text
    assert cases[0].gt.name == "2.nii.gz" and cases[2].gt.name == "10.label.nii.gz"
    assert cases[1].gt is None  # reported as that case's error


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        [sys.executable, "-m", "vesselfm.evaluate", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_empty_gt_folder_is_one_line_error(tmp_path, folders):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli(f"pred={folders['pred']}", f"gt={empty}", f"output={folders['out']}", cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: gt={empty}: no NIfTI labels found; expected <case>.label.nii.gz or <case>.nii.gz files"
    ]
    assert not folders["out"].exists()


def test_cli_with_workers_matches_in_process(compose_cfg, tmp_path, folders):
    proc = _cli(
        f"pred={folders['pred']}",
        f"gt={folders['gt']}",
        f"output={folders['out']}",
        "workers=2",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| Dice | clDice | β0 error | β1 error |" in proc.stdout
    in_process = tmp_path / "in_process"
    evaluate(
        compose_cfg(
            "evaluate", [f"pred={folders['pred']}", f"gt={folders['gt']}", f"output={in_process}"]
        )
    )
    assert _rows(folders["out"] / "metrics.csv") == _rows(in_process / "metrics.csv")


def test_cli_help(tmp_path):
    proc = _cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "python -m vesselfm.evaluate pred=DIR gt=DIR output=DIR" in proc.stdout
