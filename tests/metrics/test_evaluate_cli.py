"""``python -m vesselfm.evaluate`` on small synthetic trees with deliberately damaged predictions."""

from __future__ import annotations

import csv
import json
import logging
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from cli import run_cli

from vesselfm.evaluate import evaluate
from vesselfm.metrics.folders import find_cases
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
    # only "other" is listed: 11.img.nii.gz is an image (tmp_path may hold "11" in its name)
    warnings = [r.getMessage() for r in caplog.records if "have no prediction" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].endswith("are not scored: other"), warnings
    assert cases[0].gt.name == "2.nii.gz" and cases[2].gt.name == "10.label.nii.gz"
    assert cases[1].gt is None  # reported as that case's error


_cli = partial(run_cli, "vesselfm.evaluate")


@pytest.mark.slow
def test_cli_empty_gt_folder_is_one_line_error(tmp_path, folders):
    empty = tmp_path / "empty"
    empty.mkdir()
    proc = _cli(f"pred={folders['pred']}", f"gt={empty}", f"output={folders['out']}", cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: gt={empty}: no labels found; expected <case>.label.nii.gz, "
        "<case>.coronary.nii.gz or <case>.nii.gz files (or .nii, .nrrd, .mha, .mhd)"
    ]
    assert not folders["out"].exists()


@pytest.mark.slow
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


@pytest.mark.slow
def test_cli_help(tmp_path):
    proc = _cli("--help", cwd=tmp_path)
    assert proc.returncode == 0
    assert "python -m vesselfm.evaluate pred=DIR gt=DIR output=DIR" in proc.stdout


def _args(folders, *extra):
    return [f"pred={folders['pred']}", f"gt={folders['gt']}", f"output={folders['out']}", *extra]


def test_a_label_without_prediction_is_listed_and_the_summary_says_scored_n_of_m(
    compose_cfg, folders
):
    (folders["pred"] / "4_pred.nii.gz").unlink()
    result = evaluate(compose_cfg("evaluate", _args(folders)))
    assert [r["case"] for r in result["rows"]] == ["1", "2", "3"]
    assert result["missing_predictions"] == ["4"]
    summary = json.loads((folders["out"] / "summary.json").read_text())
    assert summary["missing_predictions"] == ["4"]
    assert (summary["scored"], summary["expected"]) == (3, 4)
    assert summary["dice"]["n"] == 3
    md = (folders["out"] / "summary.md").read_text(encoding="utf-8")
    assert "Scored 3 of 4 case(s)" in md
    assert "Missing predictions (1, not scored): 4" in md


def test_all_predictions_present_lists_no_missing(compose_cfg, folders):
    evaluate(compose_cfg("evaluate", _args(folders)))
    summary = json.loads((folders["out"] / "summary.json").read_text())
    assert (summary["scored"], summary["expected"], summary["missing_predictions"]) == (4, 4, [])
    assert "Scored 4 of 4 case(s)" in (folders["out"] / "summary.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_cases_naming_a_case_without_prediction_exits_2_before_scoring(tmp_path, folders):
    (folders["pred"] / "3_pred.nii.gz").unlink()
    ids = tmp_path / "test_ids.txt"
    ids.write_text("# the test split\n1\n2\n3\n\n")
    proc = _cli(*_args(folders, f"cases={ids}"), cwd=tmp_path)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert errors[0].startswith("error: cases=: 1 of 3 expected case(s) have no <case>_pred")
    assert errors[0].split(": ")[-1].startswith("3;")
    assert not folders["out"].exists()  # nothing scored, nothing written


def test_cases_list_scores_only_those(compose_cfg, folders):
    result = evaluate(compose_cfg("evaluate", _args(folders, "cases=[4,2]")))
    assert [r["case"] for r in result["rows"]] == ["2", "4"]
    summary = json.loads((folders["out"] / "summary.json").read_text())
    assert (summary["scored"], summary["expected"], summary["missing_predictions"]) == (2, 2, [])


def _manifest(path, splits):
    path.mkdir(parents=True, exist_ok=True)
    cases = {case: {"split": split, "image": f"{split}/{case}/img.npy"} for case, split in splits}
    (path / "manifest.json").write_text(json.dumps({"format": 1, "cases": cases}))
    return path


def test_split_from_a_prepared_manifest(compose_cfg, tmp_path, folders):
    prepared = _manifest(
        tmp_path / "prepared", [("1", "train"), ("2", "test"), ("3", "test"), ("9", "test")]
    )
    cfg = compose_cfg("evaluate", _args(folders, "split=test", f"manifest={prepared}"))
    with pytest.raises(UserError, match=r"^split=test \(manifest=.*\): 1 of 3 expected .*: 9;"):
        evaluate(cfg)
    assert not folders["out"].exists()
    train = evaluate(
        compose_cfg(
            "evaluate", _args(folders, "split=train", f"manifest={prepared / 'manifest.json'}")
        )
    )
    assert [r["case"] for r in train["rows"]] == ["1"]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["cases=[1]", "split=test"], r"^cases= and split= both name the expected cases"),
        (["split=testing", "manifest=x"], r"^split must be one of \['train', 'val', 'test'\]"),
        (["split=test"], r"^split=test needs manifest="),
        (["cases=nofile.txt"], r"^cases=nofile\.txt: no such file"),
    ],
)
def test_expected_case_keys_are_checked(compose_cfg, folders, overrides, message):
    with pytest.raises(UserError, match=message):
        evaluate(compose_cfg("evaluate", _args(folders, *overrides)))
    assert not folders["out"].exists()


def test_a_prediction_without_label_is_an_error_for_that_case(
    compose_cfg, folders, tree, write_nifti
):
    write_nifti(folders["pred"] / "5_pred.nii.gz", tree.label.astype(np.uint8))
    with pytest.raises(
        UserError, match=r"1 of 5 case\(s\) could not be scored \(case 5: .*without a label"
    ):
        evaluate(compose_cfg("evaluate", _args(folders)))
    summary = json.loads((folders["out"] / "summary.json").read_text())
    assert (summary["scored"], summary["expected"]) == (4, 5)
    assert list(summary["failed"]) == ["5"]
    assert "- 5: " in (folders["out"] / "summary.md").read_text(encoding="utf-8")


@pytest.mark.parametrize("which", ["pred", "prob"])
def test_a_non_finite_affine_fails_the_grid_check(
    compose_cfg, folders, tree, write_nifti, affine, which
):
    # flipped and shifted, and NaN: NaN never exceeds a tolerance, so it once passed
    bad = affine.copy()
    bad[0, 0] = -bad[0, 0]
    bad[1, 3] += 7.0
    bad[2, 3] = np.nan
    case = "2"
    if which == "pred":
        target = folders["pred"] / f"{case}_pred.nii.gz"
        write_nifti(target, tree.cut.astype(np.uint8), affine=bad)
    else:
        target = folders["prob"] / f"{case}_prob.nii.gz"
        write_nifti(target, tree.prob(tree.cut), affine=bad)
    cfg = compose_cfg("evaluate", _args(folders, f"prob={folders['prob']}"))
    with pytest.raises(
        UserError, match=rf"\(case {case}: .*{target.name}: the affine is not finite"
    ):
        evaluate(cfg)
    assert list(_rows(folders["out"] / "metrics.csv")) == ["1", "3", "4"]


def test_output_that_is_a_file_is_refused_before_scoring(compose_cfg, folders, caplog):
    folders["out"].write_text("not a folder")
    with caplog.at_level(logging.INFO, logger="vesselfm.metrics.folders"):
        with pytest.raises(UserError, match=r"^output=.*eval is a file, not a folder") as info:
            evaluate(compose_cfg("evaluate", _args(folders)))
    assert "Errno" not in str(info.value)
    assert "scoring" not in caplog.text  # no case was scored first
    assert folders["out"].read_text() == "not a folder"


def test_prob_errors_name_the_prob_file(compose_cfg, folders, tree, write_nifti):
    write_nifti(folders["prob"] / "3_prob.nii.gz", tree.prob(tree.no_branch) * 2.0)
    with pytest.raises(UserError, match=r"\(case 3: \S*3_prob\.nii\.gz: expected probabilities"):
        evaluate(compose_cfg("evaluate", _args(folders, f"prob={folders['prob']}")))


def test_a_gzip_file_named_nii_says_so(compose_cfg, folders, tree, write_nifti):
    zipped = write_nifti(folders["pred"] / "5_pred.nii.gz", tree.label.astype(np.uint8))
    zipped.rename(folders["pred"] / "5_pred.nii")
    write_nifti(folders["gt"] / "5.label.nii.gz", tree.label.astype(np.uint8))
    with pytest.raises(
        UserError, match=r"\(case 5: .*5_pred\.nii: the file is gzip-compressed but named \.nii"
    ):
        evaluate(compose_cfg("evaluate", _args(folders)))


def test_per_patient_labels_pair_by_infers_id_rule(compose_cfg, tmp_path, tree, write_nifti):
    pred, out = tmp_path / "pred", tmp_path / "eval"
    for patient, mask in (("p1", tree.label), ("p2", tree.cut), ("p3", tree.no_branch)):
        write_nifti(tmp_path / "pat" / patient / "ct.label.nii.gz", tree.label.astype(np.uint8))
        # what infer input='pat/*/ct.nii.gz' writes
        write_nifti(pred / f"{patient}_ct_pred.nii.gz", mask.astype(np.uint8))
    gt = tmp_path / "pat" / "*" / "ct.label.nii.gz"
    result = evaluate(compose_cfg("evaluate", [f"pred={pred}", f"gt={gt}", f"output={out}"]))
    rows = {r["case"]: r for r in result["rows"]}
    assert list(rows) == ["p1_ct", "p2_ct", "p3_ct"]
    assert rows["p1_ct"]["dice"] == 1.0 and rows["p2_ct"]["betti_0_error"] == 1
    assert result["missing_predictions"] == []
    # the labels of one patient do not clash, and still pair with its prefixed prediction
    one = evaluate(
        compose_cfg(
            "evaluate",
            [f"pred={pred}", f"gt={tmp_path / 'pat' / 'p2'}", f"output={out}", "cases=[p2_ct]"],
        )
    )
    assert [r["case"] for r in one["rows"]] == ["p2_ct"] and one["rows"][0]["betti_0_error"] == 1


def test_reports_we_did_not_write_are_not_overwritten(compose_cfg, folders):
    folders["out"].mkdir()
    mine = folders["out"] / "metrics.csv"
    mine.write_text("case,dice\nmine,1\n")
    with pytest.raises(UserError, match=r"metrics\.csv exists and was not written by vesselfm"):
        evaluate(compose_cfg("evaluate", _args(folders)))
    assert mine.read_text() == "case,dice\nmine,1\n"
    evaluate(compose_cfg("evaluate", _args(folders, "overwrite=true")))
    assert list(_rows(mine)) == ["1", "2", "3", "4"]
    evaluate(compose_cfg("evaluate", _args(folders)))  # our own reports: replaced freely
