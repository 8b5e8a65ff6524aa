"""Scoring an analysis against ground truth (Rotterdam OV/OF/OT/AI, names, radii, stenoses), on
shapes whose answers are worked out by hand, and through ``python -m vesselfm.evaluate``."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from analysis_phantoms import narrowed, tube, world_grid
from synthetic import save_nifti

from vesselfm.analysis.scoring import centreline_scores, stenosis_scores
from vesselfm.evaluate import evaluate
from vesselfm.io.centerlines import Centerlines, write_centerlines

STEP, LENGTH, RADIUS = 0.5, 20.0, 1.5


def _reference(radius_names=("LAD",)) -> dict[str, Centerlines]:
    """A straight left centreline along RAS x from (0, 0, 0) to (20, 0, 0), a point per 0.5 mm,
    stored in LPS (x and y negated), as two cells meeting at x = 5, the second one reversed."""
    x = np.arange(0.0, LENGTH + STEP / 2, STEP)
    n = len(x)
    ras = np.stack([x, np.zeros(n), np.zeros(n)], axis=1)
    lps = ras * np.array([-1.0, -1.0, 1.0])
    return {
        "left": Centerlines(
            points_lps=lps,
            lines=[np.arange(0, 11), np.arange(n - 1, 9, -1)],
            point_data={
                "segment_name": np.asarray([radius_names[0]] * n, dtype=object),
                "start_points": (np.arange(n) == 0).astype(np.int32),
            },
        )
    }


def _found(shift=(0.0, 0.0, 0.0), stop=LENGTH, name="LAD", radius=RADIUS) -> dict:
    x = np.arange(0.0, stop + STEP / 2, STEP)
    points = np.stack([x, np.zeros(len(x)), np.zeros(len(x))], axis=1) + np.asarray(shift)
    return {
        "branches": [
            {
                "name": name,
                "tree": "left",
                "points_mm": points.tolist(),
                "radius_mm": [radius] * len(x),
            }
        ]
    }


def _const(r):
    return lambda points: np.full(len(points), r)


def test_a_perfect_centreline_overlaps_fully_with_no_distance():
    s = centreline_scores(_found(), _reference(), _const(RADIUS))
    assert s["cl_ov"] == 1.0 and s["cl_of"] == 1.0 and s["cl_ot"] == 1.0
    assert s["cl_ai_mm"] == pytest.approx(0.0, abs=1e-9)
    assert s["branch_name_accuracy"] == 1.0 and s["main_names_correct"] == 1.0
    assert s["radius_mae_mm"] == pytest.approx(0.0, abs=1e-9)


def test_a_centreline_shifted_inside_the_radius_overlaps_at_the_shift():
    s = centreline_scores(_found(shift=(0, 1.0, 0), radius=1.2), _reference(), _const(RADIUS))
    assert s["cl_ov"] == 1.0 and s["cl_of"] == 1.0
    assert s["cl_ai_mm"] == pytest.approx(1.0, abs=1e-6)
    assert s["radius_mae_mm"] == pytest.approx(0.3, abs=1e-9)


def test_a_centreline_shifted_beyond_the_radius_overlaps_nowhere():
    s = centreline_scores(_found(shift=(0, 0, 2.0)), _reference(), _const(RADIUS))
    assert s["cl_ov"] == 0.0 and s["cl_of"] == 0.0 and s["cl_ot"] == 0.0
    assert math.isnan(s["cl_ai_mm"]) and math.isnan(s["branch_name_accuracy"])


def test_half_a_centreline_counts_its_lengths():
    """Found 0-10 mm of a 0-20 mm reference: reference points up to 11.5 mm lie within 1.5 mm
    of it (11.75 mm of weight: 0.25 at the ostium, 0.5 for each of 23 more points), all 10 mm
    found are inside, the first miss is at 12 mm (OF = 11.5 / 20)."""
    s = centreline_scores(_found(stop=10.0), _reference(), _const(RADIUS))
    assert s["cl_ov"] == pytest.approx((10.0 + 11.75) / (10.0 + 20.0))
    assert s["cl_of"] == pytest.approx(11.5 / 20.0)
    # the reference is under 1.5 mm wide beyond 10 mm: the clinically relevant part is 0-10 mm,
    # the found line covers it all
    thin = centreline_scores(
        _found(stop=10.0), _reference(), lambda p: np.where(p[:, 0] <= 10.0, 1.5, 0.5)
    )
    assert thin["cl_ot"] == 1.0
    assert thin["cl_ov"] == pytest.approx((10.0 + 10.75) / 30.0)  # TPR up to 10.5 mm


def test_a_wrong_name_is_counted():
    s = centreline_scores(_found(name="LCx"), _reference(), _const(RADIUS))
    assert s["branch_name_accuracy"] == 0.0 and s["main_names_correct"] == 0.0
    assert s["cl_ov"] == 1.0


def _lesion(tree="left", at=(10.0, 0.0, 0.0), degree=60.0, branch="LAD"):
    return {"tree": tree, "position_mm": list(at), "degree_percent": degree, "branch": branch}


def test_a_planted_stenosis_found_within_5_mm():
    found = {"cad_rads": "3", "stenoses": [_lesion(at=(13.0, 0, 0), degree=55.0)]}
    s = stenosis_scores(found, [_lesion()])
    assert s == {
        "stenosis_sensitivity": 1.0,
        "stenosis_ppv": 1.0,
        "stenosis_degree_mae": pytest.approx(5.0),
        "cad_rads_exact": 1.0,
    }


@pytest.mark.parametrize(
    "lesion",
    [_lesion(at=(16.0, 0, 0)), _lesion(tree="right"), _lesion(degree=40.0)],
    ids=["6 mm away", "other tree", "under 50 %"],
)
def test_a_planted_stenosis_missed(lesion):
    found = {"cad_rads": "3" if lesion["degree_percent"] >= 50 else "2", "stenoses": [lesion]}
    s = stenosis_scores(found, [_lesion(), _lesion(at=(0, 5, 0), degree=30.0, branch="LCx")])
    assert s["stenosis_sensitivity"] == 0.0
    if lesion["degree_percent"] >= 50:
        assert s["stenosis_ppv"] == 0.0 and math.isnan(s["stenosis_degree_mae"])
        assert s["cad_rads_exact"] == 1.0  # 60 % and 30 %: CAD-RADS 3 either way
    else:  # no found lesion of >= 50 %; the pair is 20 points apart
        assert math.isnan(s["stenosis_ppv"]) and s["stenosis_degree_mae"] == pytest.approx(20.0)
        assert s["cad_rads_exact"] == 0.0


SHAPE = (48, 48, 80)
AFFINE = np.array(
    [[-0.4, 0.0, 0.0, 12.0], [0.0, -0.4, 0.0, 25.0], [0.0, 0.0, 0.5, -30.0], [0.0, 0.0, 0.0, 1.0]]
)


def test_evaluate_scores_the_analysis_of_each_prediction(tmp_path, compose_cfg):
    """A tube with a planted 75 % stenosis as the label: predicted as it is (found) and as the
    healthy tube (missed). The tube lies right of the midline, so the analysis calls it RCA."""
    world = world_grid(SHAPE, AFFINE)
    a, b = world[24, 24, 2], world[24, 24, 77]
    length = float(np.linalg.norm(b - a))
    label = tube(world, a, b, narrowed(2.0, 1.7, length, [(18.0, 0.75, 5.0)]))
    healthy = tube(world, a, b, narrowed(2.0, 1.7, length, []))
    gt, pred, lines, records = (tmp_path / d for d in ("gt", "pred", "cl", "stenoses"))
    records.mkdir()
    axis = a + np.linspace(0, 1, 151)[:, None] * (b - a)
    reference = Centerlines(
        points_lps=axis * np.array([-1.0, -1.0, 1.0]),
        lines=[np.arange(len(axis))],
        point_data={
            "segment_name": np.asarray(["RCA"] * len(axis), dtype=object),
            "start_points": (np.arange(len(axis)) == 0).astype(np.int32),
        },
    )
    at = a + 18.0 * (b - a) / length
    for case, mask in (("found", label), ("missed", healthy)):
        save_nifti(gt / f"{case}.nii.gz", label.astype(np.uint8), AFFINE)
        save_nifti(pred / f"{case}_pred.nii.gz", mask.astype(np.uint8), AFFINE)
        write_centerlines(lines / f"{case}.coronary_right_centerline.vtk", reference)
        lesion = _lesion(tree="right", at=at.tolist(), degree=75.0, branch="RCA")
        (records / f"{case}.json").write_text(json.dumps({"stenoses": [lesion]}))
    out = tmp_path / "eval"
    cfg = compose_cfg(
        "evaluate",
        [
            f"pred={pred}",
            f"gt={gt}",
            f"output={out}",
            f"centerlines={lines}",
            f"stenoses={records}",
            "metrics=[dice]",
        ],
    )
    evaluate(cfg)
    with open(out / "metrics.csv", newline="") as fh:
        rows = {r["case"]: {k: v for k, v in r.items() if k != "case"} for r in csv.DictReader(fh)}
    for row in rows.values():
        assert float(row["cl_ov"]) > 0.97 and float(row["cl_ot"]) > 0.97
        assert float(row["cl_of"]) > 0.95
        assert float(row["cl_ai_mm"]) < 0.3 and float(row["radius_mae_mm"]) < 0.25
        assert float(row["branch_name_accuracy"]) == 1.0
    found, missed = rows["found"], rows["missed"]
    assert float(found["stenosis_sensitivity"]) == 1.0 and float(found["stenosis_ppv"]) == 1.0
    assert float(found["stenosis_degree_mae"]) < 8.0 and float(found["cad_rads_exact"]) == 1.0
    assert float(missed["stenosis_sensitivity"]) == 0.0
    assert float(missed["cad_rads_exact"]) == 0.0
