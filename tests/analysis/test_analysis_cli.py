"""``python -m vesselfm.analyse``: the files it writes, the JSON contract, segment maps, errors."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from analysis_phantoms import narrowed, tube, world_grid
from cli import run_cli
from synthetic import save_nifti

from vesselfm.analyse import analyse
from vesselfm.analysis import CAD_RADS, GRADES, NOTICE
from vesselfm.analysis.naming import NAMES
from vesselfm.utils.cli import UserError

SHAPE = (48, 48, 80)
# flipped in-plane axes, anisotropic voxels, an offset
AFFINE = np.array(
    [[-0.4, 0.0, 0.0, 12.0], [0.0, -0.4, 0.0, 25.0], [0.0, 0.0, 0.5, -30.0], [0.0, 0.0, 0.0, 1.0]]
)


def _y(world):
    ostium, junction = world[24, 24, 3], world[24, 24, 34]
    lateral, anterior = world[6, 24, 76], world[42, 12, 76]
    parts = [
        tube(world, ostium, junction, 2.0),
        tube(world, junction, lateral, 1.6),
        tube(world, junction, anterior, 1.5),
    ]
    return parts, anterior, lateral


@pytest.fixture()
def masks(tmp_path):
    """masks/y_pred.nii.gz (a Y), masks/s.label.nii.gz (a tube with a 75 % stenosis), and a scan
    masks/y.img.nii.gz that must be left out."""
    world = world_grid(SHAPE, AFFINE)
    parts, _, _ = _y(world)
    folder = tmp_path / "masks"
    save_nifti(folder / "y_pred.nii.gz", np.any(parts, axis=0).astype(np.uint8), AFFINE)
    a, b = world[24, 24, 2], world[24, 24, 77]
    length = float(np.linalg.norm(b - a))
    stenosed = tube(world, a, b, narrowed(2.0, 1.7, length, [(18.0, 0.75, 5.0)]))
    save_nifti(folder / "s.label.nii.gz", stenosed.astype(np.uint8), AFFINE)
    save_nifti(folder / "y.img.nii.gz", np.full(SHAPE, 100, np.int16), AFFINE)
    return folder


def _floats(values, n=None):
    assert isinstance(values, list) and all(isinstance(v, float | int) for v in values)
    if n is not None:
        assert len(values) == n


def test_outputs_and_json_contract(compose_cfg, tmp_path, masks):
    out = tmp_path / "out"
    analyse(compose_cfg("analyse", [f"mask={masks}", f"output={out}"]))
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == sorted(
        [
            f"{c}_{k}"
            for c in ("s", "y")
            for k in (
                "analysis.json",
                "branches.csv",
                "report.md",
                "profiles.png",
                "centreline.html",
            )
        ]
        + ["summary.csv", "summary.md"]
    )
    for case in ("s", "y"):
        data = json.loads((out / f"{case}_analysis.json").read_text())
        assert data["case"] == case
        assert data["spacing_mm"] == pytest.approx([0.4, 0.4, 0.5])
        assert data["cad_rads"] in CAD_RADS and NOTICE in data["cad_rads_note"]
        ids = [b["id"] for b in data["branches"]]
        assert ids == list(range(len(ids)))
        for b in data["branches"]:
            assert isinstance(b["name"], str) and b["name"] in NAMES
            assert b["tree"] in ("left", "right")
            assert b["parent_id"] is None or b["parent_id"] in ids[: b["id"]]
            parent = None if b["parent_id"] is None else data["branches"][b["parent_id"]]["name"]
            assert b["parent"] == parent
            assert isinstance(b["length_mm"], float) and b["length_mm"] > 0
            n = len(b["points_mm"])
            for p in b["points_mm"]:
                _floats(p, 3)
            _floats(b["radius_mm"], n)
            _floats(b["diameter_mm"], n)
            assert 0.0 <= b["confidence"] <= 1.0
        for s in data["stenoses"]:
            assert isinstance(s["branch"], str) and s["branch"] in NAMES
            _floats(s["position_mm"], 3)
            for key in ("arc_mm", "degree_percent", "length_mm"):
                assert isinstance(s[key], float)
            assert s["grade"] in {band for _, band in GRADES}
        rows = list(csv.DictReader((out / f"{case}_branches.csv").open()))
        assert list(rows[0]) == [
            "branch_id", "branch", "arc_mm", "x_mm", "y_mm", "z_mm", "radius_mm", "diameter_mm"
        ]  # fmt: skip
        assert len(rows) == sum(len(b["points_mm"]) for b in data["branches"])
        first = data["branches"][0]
        assert [float(rows[0][k]) for k in ("x_mm", "y_mm", "z_mm")] == pytest.approx(
            first["points_mm"][0], abs=1e-3
        )
        assert "not a diagnosis" in (out / f"{case}_report.md").read_text()
    s = json.loads((out / "s_analysis.json").read_text())
    assert [x["grade"] for x in s["stenoses"]] == ["70-99"]
    assert s["cad_rads"] == "4A"
    summary = {r["case"]: r for r in csv.DictReader((out / "summary.csv").open())}
    assert summary["s"]["cad_rads"] == "4A" and summary["s"]["stenoses"] == "1"
    assert summary["y"]["branches"] == "3"
    assert (out / "s_profiles.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "s_centreline.html").read_text()
    # the centreline trace and the stenosis marker, labelled with its degree
    degree = s["stenoses"][0]["degree_percent"]
    assert f"{s['stenoses'][0]['branch']} {degree:.0f}%" in page and '"stenoses"' in page


def test_segment_map_names_the_branches(compose_cfg, tmp_path):
    """Names come from the map where one is given, even against the anatomical rule: here the
    anterior daughter is labelled LCx (3) and the lateral one LAD (2). The map is the mask too,
    read from one folder for both keys, as an ImageCAS-X segmentation is."""
    world = world_grid(SHAPE, AFFINE)
    (trunk, lateral, anterior), anterior_end, lateral_end = _y(world)
    codes = np.zeros(SHAPE, np.uint8)
    codes[lateral] = 2
    codes[anterior] = 3
    codes[trunk] = 1
    # an ImageCAS-X segmentation is its own mask (non-zero is lumen) and segment map
    save_nifti(tmp_path / "seg" / "7.coronary.nii.gz", codes, AFFINE)
    out = tmp_path / "out"
    folder = tmp_path / "seg"
    result = analyse(
        compose_cfg(
            "analyse", [f"mask={folder}", f"segments={folder}", f"output={out}", "html=false"]
        )
    )
    data = result["results"]["7"]
    assert data["naming"] == "segments"
    ends = {b["name"]: np.asarray(b["points_mm"][-1]) for b in data["branches"]}
    assert sorted(ends) == ["LAD", "LCx", "LM"]
    assert np.linalg.norm(ends["LCx"] - anterior_end) < 2.5
    assert np.linalg.norm(ends["LAD"] - lateral_end) < 2.5
    assert all(b["confidence"] >= 0.8 for b in data["branches"])
    assert {b["tree"] for b in data["branches"]} == {"left"}


def test_segment_map_on_another_grid_is_refused(compose_cfg, tmp_path, masks):
    other = AFFINE.copy()
    other[0, 3] += 5.0
    seg = save_nifti(tmp_path / "seg.nii.gz", np.zeros(SHAPE, np.uint8), other)
    cfg = compose_cfg(
        "analyse",
        [f"mask={masks / 'y_pred.nii.gz'}", f"segments={seg}", f"output={tmp_path / 'o'}"],
    )
    with pytest.raises(UserError, match=r"1 of 1 mask\(s\) could not be analysed .*seg\.nii\.gz"):
        analyse(cfg)
    assert not (tmp_path / "o" / "y_analysis.json").exists()


def test_missing_mask_names_the_key(compose_cfg, tmp_path):
    cfg = compose_cfg("analyse", [f"mask={tmp_path / 'nope'}", f"output={tmp_path / 'o'}"])
    with pytest.raises(UserError, match="mask="):
        analyse(cfg)


@pytest.mark.slow
def test_cli_writes_the_good_cases_and_fails_on_a_broken_one(tmp_path, masks):
    folder = tmp_path / "two"
    folder.mkdir()
    (folder / "y_pred.nii.gz").write_bytes((masks / "y_pred.nii.gz").read_bytes())
    (folder / "broken.label.nii.gz").write_bytes(b"not a volume")
    out = tmp_path / "out"
    proc = run_cli(
        "vesselfm.analyse", f"mask={folder}", f"output={out}", "plots=false", "html=false"
    )
    assert proc.returncode == 2, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "broken" in errors[0] and "1 of 2" in errors[0]
    assert (out / "y_analysis.json").is_file() and not (out / "y_profiles.png").exists()
    assert [r["case"] for r in csv.DictReader((out / "summary.csv").open())] == ["y"]
