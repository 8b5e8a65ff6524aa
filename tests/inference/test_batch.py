"""``segment_files``: the batch loop of ``infer`` through its Python API (no Hydra)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import pytest
from synthetic import save_nifti, tube_phantom
from torch import nn

from vesselfm.data.preprocessing import PreprocessConfig
from vesselfm.inference import BatchResult, SlidingWindowPredictor, segment_files
from vesselfm.io import find_labels
from vesselfm.metrics.folders import evaluate_folders
from vesselfm.utils.errors import UserError


@pytest.fixture()
def predictor(tiny_net: nn.Module) -> SlidingWindowPredictor:
    """``model=tiny`` on a 32 x 32 x N grid, 32³ windows: seconds on a CPU."""
    return SlidingWindowPredictor(
        tiny_net, roi_size=32, overlap=0.25, preprocess=PreprocessConfig(in_plane_size=32)
    )


def _scans_and_labels(root: Path) -> tuple[list[Path], Path]:
    """``scans/{a,b}.img.nii.gz`` of two shapes, a broken ``scans/a2.nii.gz`` between them in
    sorted order, and ``labels/{a,b}.label.nii.gz``."""
    (root / "scans").mkdir()
    (root / "labels").mkdir()
    for seed, (case, shape) in enumerate({"a": (48, 40, 32), "b": (40, 36, 24)}.items()):
        image, mask = tube_phantom(shape, seed)
        save_nifti(root / "scans" / f"{case}.img.nii.gz", image)
        save_nifti(root / "labels" / f"{case}.label.nii.gz", mask)
    (root / "scans" / "a2.nii.gz").write_text("not an image")
    return sorted((root / "scans").iterdir()), root / "labels"


def test_scans_are_scored_as_evaluate_scores_them_and_a_bad_scan_does_not_stop_the_others(
    predictor: SlidingWindowPredictor, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    scans, labels = _scans_and_labels(tmp_path)
    out = tmp_path / "preds"
    with caplog.at_level("INFO", logger="vesselfm"):
        result = segment_files(
            scans, predictor, out, labels=find_labels(labels), save_prob=True, progress=False
        )

    assert isinstance(result, BatchResult) and result.output_dir == out
    assert [r["case"] for r in result.cases] == ["a", "b"]
    assert (result.expected, result.segmented, result.skipped) == (3, 2, 0)
    broken = tmp_path / "scans" / "a2.nii.gz"
    [(file, reason)] = result.failed
    assert file == str(broken) and reason.startswith(str(broken)) and "\n" not in reason
    assert result.failed_cases == {"a2": reason}
    assert result.missing_labels == []
    for case, shape in (("a", (48, 40, 32)), ("b", (40, 36, 24))):  # each on its own grid
        assert nib.load(out / f"{case}_pred.nii.gz").shape == shape
        assert (out / f"{case}_prob.nii.gz").is_file()
    # the rows are what evaluate computes from the files written, probabilities included
    evaluated = evaluate_folders(pred=out, gt=labels, output=tmp_path / "eval", prob=out)
    assert [row["case"] for row in result.metrics] == ["a", "b"]
    assert result.metrics == evaluated.rows
    assert all(row["roc_auc"] is not None for row in result.metrics)
    summary = json.loads(result.reports["json"].read_text())
    assert (summary["scored"], summary["expected"], summary["failed"]) == (2, 3, {"a2": reason})
    assert "3 scan(s) -> " in caplog.text and "| threshold 0.500 | TTA off |" in caplog.text
    assert "summary: 2 segmented, 0 skipped (outputs exist), 1 failed; scored 2 of 3" in caplog.text
    with pytest.raises(UserError, match=r"^1 of 3 scans failed \(first: .*a2\.nii\.gz"):
        result.raise_for_errors()

    # a rerun resumes: nothing predicted again, the same rows scored from the files left
    again = segment_files(
        scans[:1] + scans[2:], predictor, out, labels=find_labels(labels), progress=False
    )
    assert (again.segmented, again.skipped, again.failed) == (0, 2, [])
    assert again.metrics == result.metrics
    again.raise_for_errors()  # nothing to raise


def test_chosen_case_ids_and_a_case_without_a_label(
    predictor: SlidingWindowPredictor, tmp_path: Path
) -> None:
    scans, labels = _scans_and_labels(tmp_path)
    a, b = scans[0], scans[2]
    out = tmp_path / "preds"
    result = segment_files(
        {a: "p1", b: "p2"},
        predictor,
        out,
        labels={"p1": labels / "a.label.nii.gz"},
        labels_from="label=mine",
        progress=False,
    )
    assert [r["case"] for r in result.cases] == ["p1", "p2"]
    assert sorted(p.name for p in out.glob("*_pred.nii.gz")) == ["p1_pred.nii.gz", "p2_pred.nii.gz"]
    assert [row["case"] for row in result.metrics] == ["p1"]
    assert result.missing_labels == ["p2"] and result.failed == []
    assert json.loads(result.reports["json"].read_text())["missing_labels"] == ["p2"]
    with pytest.raises(UserError, match=r"^label=mine: 1 of 2 case\(s\) have no label.*\(p2\)"):
        result.raise_for_errors()


def test_without_labels_nothing_is_scored_and_stop_on_error_raises_the_scans_error(
    predictor: SlidingWindowPredictor, tmp_path: Path
) -> None:
    scans, _ = _scans_and_labels(tmp_path)
    out = tmp_path / "preds"
    result = segment_files(scans[:1], predictor, out, progress=False)
    assert (result.segmented, result.metrics, result.reports) == (1, [], None)
    assert not (out / "metrics.csv").exists()
    with pytest.raises(UserError, match=r"a2\.nii\.gz") as info:
        segment_files(scans[1:], predictor, out, progress=False, stop_on_error=True)
    assert "scans failed" not in str(info.value)  # the scan's own error, not the run's summary
    assert not (out / "b_pred.nii.gz").exists()  # stopped at the broken scan, before b


def test_without_saved_probabilities_the_rows_are_evaluates_without_prob_fresh_or_resumed(
    predictor: SlidingWindowPredictor, tmp_path: Path
) -> None:
    """Only what is on disk is scored: no probability file, no ranking metrics, so a fresh run,
    a resumed run and evaluate (without prob=) give the same rows."""
    scans, labels = _scans_and_labels(tmp_path)
    scans = [s for s in scans if s.name != "a2.nii.gz"]
    out = tmp_path / "preds"
    fresh = segment_files(scans, predictor, out, labels=find_labels(labels), progress=False)
    assert not list(out.glob("*_prob.nii.gz"))
    assert [row["roc_auc"] for row in fresh.metrics] == [None, None]
    resumed = segment_files(scans, predictor, out, labels=find_labels(labels), progress=False)
    assert resumed.skipped == 2 and resumed.metrics == fresh.metrics
    evaluated = evaluate_folders(pred=out, gt=labels, output=tmp_path / "eval")
    assert fresh.metrics == evaluated.rows


def test_labels_pair_as_evaluate_pairs_them(predictor: SlidingWindowPredictor, tmp_path: Path):
    """Scans ct and x/ct (ids ct, x_ct) with only x's label, given as a glob whose one file has
    the id ct: the label pairs with ct by id and is not used a second time for x_ct."""
    image, mask = tube_phantom((40, 36, 24), 0)
    ct = save_nifti(tmp_path / "scans" / "ct.nii.gz", image)
    x_ct = save_nifti(tmp_path / "scans" / "x" / "ct.nii.gz", image)
    save_nifti(tmp_path / "labels" / "x" / "ct.label.nii.gz", mask)
    labels = find_labels(str(tmp_path / "labels" / "*" / "ct.label.nii.gz"))
    result = segment_files(
        {ct: "ct", x_ct: "x_ct"}, predictor, tmp_path / "out", labels=labels, progress=False
    )
    assert [row["case"] for row in result.metrics] == ["ct"]
    assert result.missing_labels == ["x_ct"]
