"""ImageCAS-X metrics on shapes with known answers, and through ``python -m vesselfm.evaluate``.

Geometry is scanner-like: ``FLIPPED_AFFINE`` (x and y flipped, 0.75 × 0.625 × 1.25 mm voxels, an
offset). ImageCAS-X centrelines are LPS mm, the affine RAS, so every centreline here is built
by hand as ``affine @ voxel`` with x and y negated: a missing or doubled conversion in the code
would move the points by tens of mm and fail the distance tests.
"""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from synthetic import FLIPPED_AFFINE, save_nifti, tube

from vesselfm.evaluate import evaluate
from vesselfm.io.centerlines import Centerlines, write_centerlines
from vesselfm.metrics.imagecasx import (
    SEGMENT_COLUMNS,
    bin_of,
    centerline_distances,
    local_dice_points,
    lumen_radius,
    read_descriptors,
    sample_vertices,
    segment_codes,
    segment_dice,
    skeleton_points_lps,
    summarise_by_group,
    summarise_local_dice,
    volumes_ml,
)
from vesselfm.utils.cli import UserError

SHAPE = (24, 20, 12)
SPACING = (0.75, 0.625, 1.25)
AXIS_Y, AXIS_Z, X0, X1, RADIUS = 10, 6, 2, 21, 3.0


def _lps(voxels: np.ndarray, affine: np.ndarray = FLIPPED_AFFINE) -> np.ndarray:
    """Voxel indices to LPS mm, written out independently of the code under test."""
    ras = np.asarray(voxels, float) @ affine[:3, :3].T + affine[:3, 3]
    return ras * np.array([-1.0, -1.0, 1.0])


def _tube() -> np.ndarray:
    return tube(SHAPE, (X0, AXIS_Y, AXIS_Z), (X1, AXIS_Y, AXIS_Z), RADIUS)


def _axis_centerline(segment: int = 2) -> Centerlines:
    """The tube's axis, one vertex per voxel along x, ostium at x=X0; two cells meeting at the
    10th vertex, the second one running distal to proximal."""
    xs = np.arange(X0, X1 + 1)
    n = len(xs)
    voxels = np.stack([xs, np.full(n, AXIS_Y), np.full(n, AXIS_Z)], axis=1)
    flag = np.zeros(n, dtype=np.int32)
    return Centerlines(
        points_lps=_lps(voxels),
        lines=[np.arange(0, 10), np.arange(n - 1, 8, -1)],
        point_data={
            "segment_label": np.full(n, segment, dtype=np.int32),
            "start_points": np.where(np.arange(n) == 0, 1, flag).astype(np.int32),
            "end_points": np.where(np.arange(n) == n - 1, 1, flag).astype(np.int32),
            "branch_points": np.where(np.arange(n) == 9, 1, flag).astype(np.int32),
        },
    )


def test_volume_of_a_ball_matches_its_analytic_volume():
    radius_mm = 5.0
    # a ball of 5 mm on anisotropic voxels: radius in voxel units differs per axis
    centre = np.array([12.0, 10.0, 6.0])
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in SHAPE), indexing="ij"), axis=-1)
    gt = np.linalg.norm((grid - centre) * SPACING, axis=-1) <= radius_mm
    pred = np.linalg.norm((grid - centre) * SPACING, axis=-1) <= 4.0
    v = volumes_ml(pred, gt, SPACING)
    analytic = 4.0 / 3.0 * math.pi * radius_mm**3 / 1000.0  # 0.5236 ml
    # voxel counting: ~1800 voxels, so the staircase surface costs a few per cent at most
    assert v["volume_gt_ml"] == pytest.approx(analytic, rel=0.03)
    assert v["volume_gt_ml"] == gt.sum() * 0.75 * 0.625 * 1.25 / 1000.0
    assert v["volume_pred_ml"] == pytest.approx(4.0 / 3.0 * math.pi * 4.0**3 / 1000.0, rel=0.04)
    assert v["volume_bias_ml"] == pytest.approx(v["volume_pred_ml"] - v["volume_gt_ml"])
    assert v["volume_bias_ml"] < 0 and v["volume_abs_diff_ml"] == -v["volume_bias_ml"]


def test_centerline_distances_match_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 3)) * 5, rng.normal(size=(25, 3)) * 5 + 1
    d = cdist(a, b)
    a_to_b, b_to_a = d.min(axis=1), d.min(axis=0)
    got = centerline_distances(a, b)
    assert got["centerline_md_mm"] == pytest.approx((a_to_b.mean() + b_to_a.mean()) / 2)
    assert got["centerline_hd95_mm"] == pytest.approx(
        max(np.percentile(a_to_b, 95), np.percentile(b_to_a, 95))
    )
    assert centerline_distances(np.empty((0, 3)), b) == {
        "centerline_md_mm": None,
        "centerline_hd95_mm": None,
    }


def test_straight_tube_centerline_distance_is_zero():
    gt = _axis_centerline().points_lps
    got = centerline_distances(skeleton_points_lps(_tube(), FLIPPED_AFFINE), gt)
    # The axis runs through voxel centres, so a skeleton of voxel centres can lie on it exactly;
    # thinning may still leave a voxel off the axis at a cap, which half the smallest voxel
    # (0.31 mm) bounds on average. (It is exactly 0 here.)
    assert got["centerline_md_mm"] <= 0.31
    assert got["centerline_hd95_mm"] <= 0.625
    # the same points read as RAS (the conversion forgotten) are tens of mm away
    wrong = centerline_distances(skeleton_points_lps(_tube(), FLIPPED_AFFINE), gt * [-1, -1, 1])
    assert wrong["centerline_md_mm"] > 20


@pytest.mark.parametrize("shift", [1, 3])
def test_shifted_tube_distance_is_the_shift(shift):
    """A prediction shifted by ``shift`` voxels along y (0.625 mm each): every skeleton point is
    that far from the axis and back."""
    pred = np.roll(_tube(), shift, axis=1)
    got = centerline_distances(
        skeleton_points_lps(pred, FLIPPED_AFFINE), _axis_centerline().points_lps
    )
    s_mm = shift * 0.625
    assert got["centerline_md_mm"] == pytest.approx(s_mm, abs=0.31)
    assert got["centerline_hd95_mm"] == pytest.approx(s_mm, abs=0.31)


def _brute_radius(label: np.ndarray, voxel: np.ndarray) -> float:
    """Distance (mm) from a voxel to the nearest background voxel, by brute force."""
    background = np.argwhere(~label) * SPACING
    return float(np.min(np.linalg.norm(background - np.asarray(voxel) * SPACING, axis=1)))


def test_local_dice_of_a_perfect_prediction_is_one():
    label = _tube()
    image = np.where(label, 300.0, -50.0)
    c = _axis_centerline()
    rows = local_dice_points("1", label, label, FLIPPED_AFFINE, SPACING, {"left": c}, image)
    # 20 vertices, ostium at 0: every 5th hop (0, 5, 10, 15) plus the end point (19)
    assert [r["vertex"] for r in rows] == [0, 5, 10, 15, 19]
    assert [r["is_end_point"] for r in rows] == [0, 0, 0, 0, 1]
    assert all(r["local_dice"] == 1.0 for r in rows)
    # one vertex per voxel along x: 0.75 mm of arc per hop
    assert [r["dist_mm"] for r in rows] == pytest.approx([0.0, 3.75, 7.5, 11.25, 14.25])
    assert all(r["hu"] == 300.0 and r["snap_mm"] == 0.0 for r in rows)
    assert all(r["segment_name"] == "LAD" and r["segment_label"] == 2 for r in rows)
    for r in rows:
        voxel = (X0 + r["vertex"], AXIS_Y, AXIS_Z)
        assert r["diameter_mm"] == pytest.approx(2 * _brute_radius(label, voxel))
    # an empty prediction: Dice 0 wherever the cube holds ground truth
    empty = local_dice_points("1", np.zeros_like(label), label, FLIPPED_AFFINE, SPACING, {"l": c})
    assert [r["local_dice"] for r in empty] == [0.0] * 5
    assert all(math.isnan(r["hu"]) for r in empty)  # no image


def test_sampling_walks_a_branching_tree_from_every_ostium():
    """A trunk (0-6) splitting into two branches of 6 vertices (7-12 along +y, 13-18 along -y),
    cells in either orientation, plus a second tree with its own ostium (19-21), 1 mm apart."""
    trunk = [(x, 0, 0) for x in range(7)]
    up = [(6, y, 0) for y in range(1, 7)]
    down = [(6, -y, 0) for y in range(1, 7)]
    other = [(20, 0, z) for z in range(3)]
    points = np.array(trunk + up + down + other, dtype=float)
    n = len(points)
    flags = {name: np.zeros(n, dtype=np.int32) for name in ("start_points", "end_points")}
    flags["start_points"][[0, 19]] = 1
    flags["end_points"][[12, 18, 21]] = 1
    c = Centerlines(
        points,
        [np.arange(7), np.array([12, 11, 10, 9, 8, 7, 6]), np.r_[6, 13:19], np.array([21, 20, 19])],
        flags,
    )
    s = sample_vertices(c)
    # hops 0, 5, 10 from an ostium, plus the end points
    assert s["vertex"].tolist() == [0, 5, 10, 12, 16, 18, 19, 21]
    assert s["depth"].tolist() == [0, 5, 10, 12, 10, 12, 0, 2]
    assert s["dist_mm"].tolist() == [0.0, 5.0, 10.0, 12.0, 10.0, 12.0, 0.0, 2.0]
    assert s["is_end_point"].tolist() == [0, 0, 0, 1, 0, 1, 0, 1]


def test_lumen_radius_equals_the_distance_transform():
    from scipy.ndimage import binary_dilation, distance_transform_edt

    rng = np.random.default_rng(1)
    label = binary_dilation(rng.random(SHAPE) > 0.97, iterations=2)
    label[0, 5:9, 3:6] = True  # touching the border: outside counts as background
    edt = distance_transform_edt(np.pad(label, 1), sampling=SPACING)[1:-1, 1:-1, 1:-1]
    voxels = np.argwhere(label)
    np.testing.assert_allclose(lumen_radius(label, voxels, SPACING), edt[label], rtol=1e-12)


def test_local_dice_of_a_half_prediction_matches_a_hand_count():
    label = _tube()
    pred = label.copy()
    pred[:, :AXIS_Y, :] = False  # keep the y >= 10 half
    rows = local_dice_points(
        "1", pred, label, FLIPPED_AFFINE, SPACING, {"left": _axis_centerline()}
    )
    # the 8 mm cube: half-widths round(4 / spacing) = (5, 6, 3) voxels
    x = X0 + 10
    box = np.s_[x - 5 : x + 6, AXIS_Y - 6 : AXIS_Y + 7, AXIS_Z - 3 : AXIS_Z + 4]
    g, p = label[box], pred[box]
    expected = 2 * (g & p).sum() / (g.sum() + p.sum())
    assert rows[2]["vertex"] == 10 and rows[2]["local_dice"] == pytest.approx(expected)
    assert 0.5 < expected < 0.8


def test_vertices_far_from_the_lumen_are_dropped():
    c = _axis_centerline()
    c.points_lps = c.points_lps + np.array([0.0, 0.0, 8.0])  # 8 mm above the tube: > 3 mm
    rows = local_dice_points("1", _tube(), _tube(), FLIPPED_AFFINE, SPACING, {"left": c})
    assert rows == []


def _segments() -> np.ndarray:
    """LM (1) a 4-voxel-long bar, LAD (2) 6 voxels, RCA (9) 3 voxels, apart from each other."""
    label = np.zeros((12, 6, 4), dtype=np.uint8)
    label[0:4, 1, 1] = 1
    label[4:10, 1, 1] = 2
    label[2:5, 4, 2] = 9
    return label


def test_segment_dice_on_a_hand_built_label_map():
    label = _segments()
    pred = np.zeros_like(label)
    pred[0:4, 1, 1] = 1  # LM exact
    pred[4:7, 1, 1] = 2  # half the LAD
    pred[7:10, 1, 1] = 3  # the other half called LCx (absent from the label)
    # RCA missed entirely
    got = segment_dice(pred, label, (1.0, 1.0, 1.0))
    assert set(got) == set(SEGMENT_COLUMNS.values())
    assert got["dice_LM"] == 1.0
    assert got["dice_LAD"] == pytest.approx(2 * 3 / (3 + 6))
    assert got["dice_RCA"] == 0.0
    # absent from the ground truth: empty, even where predicted
    assert got["dice_LCx"] is None and got["dice_R_PDA"] is None and got["dice_Other"] is None


def test_segment_codes_tell_codes_from_masks_and_probabilities():
    assert segment_codes(np.array([0.0, 2.0, 9.0])).tolist() == [0, 2, 9]  # codes in a float file
    assert segment_codes(np.array([0, 14], dtype=np.uint8)).tolist() == [0, 14]
    assert segment_codes(np.array([0.0, 0.4, 1.0])) is None  # probabilities
    assert segment_codes(np.array([0.0, 2.5])) is None
    assert segment_codes(np.array([0, 1], dtype=np.uint8)) is None  # a binary mask
    # a label needs two codes: 0/255 or 0/2 is a mask saved with another foreground value
    assert segment_codes(np.array([0, 2], dtype=np.uint8), min_codes=2) is None
    assert segment_codes(np.array([0, 1, 2], dtype=np.uint8), min_codes=2).tolist() == [0, 1, 2]


def test_segment_dice_of_a_binary_prediction_uses_the_nearest_segment():
    label = _segments()
    pred = label > 0
    pred[10, 1, 1] = True  # one voxel past the LAD's tip: a false positive of the LAD
    pred[2:5, 4, 2] = False
    pred[2, 4, 2] = True  # a third of the RCA
    got = segment_dice(pred, label, (1.0, 2.0, 1.0))
    assert got["dice_LM"] == 1.0
    assert got["dice_LAD"] == pytest.approx(2 * 6 / (7 + 6))
    assert got["dice_RCA"] == pytest.approx(2 * 1 / (1 + 3))
    assert got["dice_LCx"] is None


def test_bins_and_the_macro_average():
    assert [bin_of(v, (25, 50)) for v in (0, 25, 49.9, 50, 80)] == [
        "<25",
        "25-50",
        "25-50",
        ">50",
        ">50",
    ]
    assert bin_of(float("nan"), (25, 50)) is None

    def point(case, dice, dist):
        return {
            "case": case,
            "segment_name": "LAD",
            "dist_mm": dist,
            "hu": 300.0,
            "diameter_mm": 2.2,
            "local_dice": dice,
        }

    # case a: three points in <25 (mean 0.5), case b: one (1.0) -> macro mean 0.75, not 0.625
    points = [point("a", 0.0, 1), point("a", 0.5, 2), point("a", 1.0, 3), point("b", 1.0, 4)]
    rows = {(r["covariate"], r["bin"]): r for r in summarise_local_dice(points)}
    near = rows[("dist_mm", "<25")]
    assert (near["n_points"], near["n_cases"]) == (4, 2)
    assert near["local_dice_mean"] == pytest.approx(0.75)
    assert near["local_dice_std"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert rows[("hu", "250-350")]["n_points"] == 4
    assert rows[("diameter_mm", "2-2.5")]["local_dice_mean"] == pytest.approx(0.75)
    assert rows[("segment_name", "LAD")]["n_cases"] == 2
    by_group = summarise_local_dice(points, {"a": "Good", "b": "Poor"})
    good = [r for r in by_group if r["group"] == "Good" and r["bin"] == "<25"]
    assert good[0]["local_dice_mean"] == pytest.approx(0.5)


@pytest.mark.parametrize("ext", ["csv", "xlsx"])
def test_descriptors_and_the_breakdown_by_group(tmp_path, ext):
    header = ["Scan ID", "Image Quality", "Dominance", "Disease", "Notes"]
    body = [[1, "Good", "Right", "Mild", "x"], [2, "Poor", "Left", "", ""], [3, "Good", "Right"]]
    path = tmp_path / f"Descriptors.{ext}"
    if ext == "csv":
        with open(path, "w", newline="") as fh:
            csv.writer(fh).writerows([header, *body])
    else:
        import openpyxl

        book = openpyxl.Workbook()
        book.active.append(header)
        for row in body:
            book.active.append([float(row[0]), *row[1:]])  # Excel stores ids as floats
        book.save(path)
    table = read_descriptors(path)
    assert table["1"]["Image Quality"] == "Good" and table["2"]["Disease"] == ""
    rows = [{"case": "1", "dice": 0.8}, {"case": "2", "dice": 0.4}, {"case": "3", "dice": 0.6}]
    got = {(r["group_by"], r["group"], r["metric"]): r for r in summarise_by_group(rows, table)}
    assert got[("Image Quality", "Good", "dice")]["mean"] == pytest.approx(0.7)
    assert got[("Image Quality", "Good", "dice")]["n"] == 2
    assert got[("Dominance", "Left", "dice")]["mean"] == pytest.approx(0.4)
    assert ("Disease", "", "dice") not in got  # a blank cell is in no group
    assert {k[0] for k in got} == {"Image Quality", "Dominance", "Disease"}


def test_evaluate_reports_the_imagecasx_columns(tmp_path, compose_cfg):
    """Segment labels, a lumen prediction, centrelines, scans and descriptors through evaluate."""
    label = _tube().astype(np.uint8) * 2  # the tube is the LAD
    label[X0 : X0 + 4][_tube()[X0 : X0 + 4]] = 1  # its first 4 slices the LM
    pred = np.roll(_tube(), 1, axis=1).astype(np.uint8)  # a lumen prediction, 0.625 mm off
    gt_dir, pred_dir, scans, lines = (tmp_path / d for d in ("gt", "pred", "scans", "cl"))
    for case in ("1", "2"):
        save_nifti(gt_dir / f"{case}.coronary.nii.gz", label)
        save_nifti(
            pred_dir / f"{case}_pred.nii.gz", pred if case == "1" else (label > 0).astype(np.uint8)
        )
        save_nifti(scans / f"{case}.img.nii.gz", np.where(label > 0, 400, 0).astype(np.int16))
        write_centerlines(lines / f"{case}.coronary_left_centerline.vtk", _axis_centerline())
    descriptors = tmp_path / "Descriptors.csv"
    descriptors.write_text(
        "Scan ID,Image Quality,Dominance,Disease\n1,Good,Right,Mild\n2,Poor,Right,None\n"
    )
    out = tmp_path / "eval"
    cfg = compose_cfg(
        "evaluate",
        [
            f"pred={pred_dir}",
            f"gt={gt_dir}",
            f"output={out}",
            f"centerlines={lines}",
            f"image={scans}",
            f"descriptors={descriptors}",
            "metrics=[dice]",
        ],
    )
    result = evaluate(cfg)
    assert result["errors"] == {}
    shifted, perfect = (r for r in result["rows"])
    assert perfect["dice"] == 1.0 and perfect["dice_LAD"] == 1.0 and perfect["dice_LM"] == 1.0
    assert perfect["centerline_md_mm"] == 0.0 and perfect["local_dice"] == 1.0
    assert shifted["centerline_md_mm"] == pytest.approx(0.625, abs=0.31)
    assert perfect["dice_RCA"] is None
    assert perfect["volume_bias_ml"] == 0.0
    assert perfect["volume_gt_ml"] == pytest.approx(_tube().sum() * 0.75 * 0.625 * 1.25 / 1000)

    with open(out / "metrics.csv", newline="") as fh:
        table = {r["case"]: r for r in csv.DictReader(fh)}
    assert table["2"]["dice_RCA"] == "" and float(table["2"]["dice_LAD"]) == 1.0
    assert float(table["1"]["centerline_hd95_mm"]) == pytest.approx(0.625, abs=0.31)
    with open(out / "local_dice.csv", newline="") as fh:
        points = list(csv.DictReader(fh))
    assert [(p["case"], p["vertex"]) for p in points] == [
        (c, v) for c in ("1", "2") for v in ("0", "5", "10", "15", "19")
    ]
    assert {float(p["hu"]) for p in points} == {400.0}
    assert [p["segment_name"] for p in points[:2]] == ["LAD", "LAD"]
    with open(out / "local_dice_summary.csv", newline="") as fh:
        summary = list(csv.DictReader(fh))
    by = {(r["group_by"], r["group"], r["covariate"], r["bin"]) for r in summary}
    assert ("all", "all", "hu", "350-450") in by and (
        "Image Quality",
        "Poor",
        "dist_mm",
        "<25",
    ) in by
    with open(out / "summary_by_group.csv", newline="") as fh:
        groups = {(r["group_by"], r["group"], r["metric"]): r for r in csv.DictReader(fh)}
    assert float(groups[("Image Quality", "Poor", "centerline_md_mm")]["mean"]) == 0.0
    assert groups[("Dominance", "Right", "dice_LAD")]["n"] == "2"
    doc = json.loads((out / "summary.json").read_text())
    assert doc["volume_abs_diff_ml"]["n"] == 2 and doc["dice_RCA"]["n"] == 0


def test_a_case_without_centrelines_is_reported_and_the_others_scored(tmp_path, compose_cfg):
    gt_dir, pred_dir, lines = tmp_path / "gt", tmp_path / "pred", tmp_path / "cl"
    for case in ("1", "2"):
        save_nifti(gt_dir / f"{case}.label.nii.gz", _tube().astype(np.uint8))
        save_nifti(pred_dir / f"{case}_pred.nii.gz", _tube().astype(np.uint8))
    write_centerlines(lines / "1.coronary_right_centerline.vtk", _axis_centerline(9))
    (lines / "3.coronary_left_centerline.vtk").write_text("not vtk")  # no such case: unread
    out = tmp_path / "eval"
    args = [f"pred={pred_dir}", f"gt={gt_dir}", f"output={out}", "metrics=[dice]"]
    with pytest.raises(UserError, match=r"1 of 2 case\(s\) could not be scored \(case 2: .*cl: "):
        evaluate(compose_cfg("evaluate", [*args, f"centerlines={lines}"]))
    with open(out / "metrics.csv", newline="") as fh:
        (row,) = list(csv.DictReader(fh))
    assert row["case"] == "1" and float(row["centerline_md_mm"]) == 0.0
    assert "dice_RCA" not in row  # a binary label: no segment columns
    with pytest.raises(UserError, match="centerlines=.*no such folder"):
        evaluate(compose_cfg("evaluate", [*args, f"centerlines={tmp_path / 'none'}"]))
