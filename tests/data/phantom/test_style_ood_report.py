"""Scoring the out-of-distribution families: rows per case and TTA variant, the CSV and the
summary.md section."""

from __future__ import annotations

import csv

import pytest
import torch
from torch import nn

from vesselfm.data.phantom import label_topology
from vesselfm.data.phantom.ood import generate_ood_case
from vesselfm.inference.ood_report import evaluate_ood, summarize_ood, write_ood_reports


class _Nothing(nn.Module):
    """Logits of -10 everywhere: an empty prediction whatever the input."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full_like(x, -10.0) + 0 * self.anchor


def test_ood_rows_score_each_case_and_variant_and_land_in_the_reports(tmp_path):
    shape = (36, 36, 32)
    inference = {"roi_size": [32, 32, 32], "sw_batch_size": 1, "overlap": 0.0}
    rows = evaluate_ood(
        _Nothing(), shape=shape, seed=0, cases=1, families=["pool_trees"],
        tta=["none", "equalize"], inference=inference,
    )  # fmt: skip
    assert [(r["family"], r["tta"]) for r in rows] == [
        ("pool_trees", "none"), ("pool_trees", "equalize"),
    ]  # fmt: skip
    case = generate_ood_case("pool_trees", shape, seed=0, index=0)
    for r in rows:
        # an empty prediction: Dice 0, and the β0 error is the label's component count
        assert r["dice"] == 0.0
        assert r["betti_0_error"] == label_topology(case.label)[0]
        assert r["held_out_value"] == pytest.approx(case.held_out_value, abs=1e-4)
    summary = summarize_ood(rows)
    assert [(s["family"], s["tta"], s["n"], s["target_met"]) for s in summary] == [
        ("pool_trees", "none", 1, False), ("pool_trees", "equalize", 1, False),
    ]  # fmt: skip
    (tmp_path / "summary.md").write_text("# Evaluation summary\n\ntest table\n")
    paths = write_ood_reports(rows, tmp_path)
    with open(paths["csv"]) as f:
        table = list(csv.DictReader(f))
    assert len(table) == 2 and table[1]["tta"] == "equalize" and float(table[0]["dice"]) == 0.0
    text = paths["md"].read_text()
    assert text.startswith("# Evaluation summary\n\ntest table\n")
    assert "## Out-of-distribution families" in text
    assert (
        "| pool_trees | trunk_radius_mm (2.6, 3.4) (train (0.4, 2.5)) | none | 1 | 0.000 |" in text
    )


def test_unknown_families_or_variants_are_refused():
    with pytest.raises(ValueError, match="unknown ood entries"):
        evaluate_ood(_Nothing(), shape=(36, 36, 32), seed=0, cases=1, tta=["flip"])
