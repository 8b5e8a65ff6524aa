"""Phantoms in the ImageCAS-X layout: segments, centrelines, stenosis records, lists, and the
default layout left byte-identical."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
from pathlib import Path

import networkx as nx
import nibabel as nib
import numpy as np
import pytest
import vtk
from vtk.util.numpy_support import vtk_to_numpy

from vesselfm.data.phantom import case_seed, generate_phantom, write_phantom_dataset
from vesselfm.data.phantom.imagecasx import segment_map, stenosis_grade, stenosis_records
from vesselfm.utils.errors import UserError

SHAPE = (64, 64, 48)
CODES = {"LM": 1, "LAD": 2, "LCx": 3, "IM": 8, "RCA": 9, "R-PDA": 10, "L-PDA": 12, "L-PLA": 13}

# sha256 of the uncompressed NIfTI files the ImageCAS layout wrote before ImageCAS-X phantoms
# existed (recorded on the commit before them; gzip-independent)
DEFAULT_DIGESTS = [
    (
        {"n": 3, "seed": 0},
        "e05f6fe9ef6a63f5e7d18debca3a5dcdef1b3bccfb9064ef3263a09d647373d9",
    ),
    (
        {"n": 2, "seed": 5, "stenoses": 2, "calcifications": 1},
        "a3698d100d801afd807c8dab8206cc919fb3cc4a53b5b50f898d4bf8a171f19b",
    ),
]


@pytest.mark.parametrize(("options", "digest"), DEFAULT_DIGESTS)
def test_default_layout_is_byte_identical(tmp_path, options, digest):
    paths = write_phantom_dataset(tmp_path, shape=(48, 40, 32), progress=False, **options)
    h = hashlib.sha256()
    for image, label in paths:
        for path in (image, label):
            h.update(gzip.decompress(path.read_bytes()))
    assert h.hexdigest() == digest


def _array(path: Path) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(path)
    return np.asarray(img.dataobj), img.affine


def test_segments_are_the_lumen_with_imagecasx_codes(imagecasx_source):
    seen = set()
    for index in (2, 3, 5):  # a ramus, a left- and a co-dominant tree
        seg, affine = _array(imagecasx_source / "segmentations" / f"{index}.coronary.nii.gz")
        image, _ = _array(imagecasx_source / "volumes" / f"{index}.img.nii.gz")
        ph = generate_phantom(SHAPE, case_seed(0, index), coronary_variants=True)
        assert seg.dtype == np.uint8 and image.dtype == np.int16
        np.testing.assert_array_equal(seg > 0, ph.label > 0)  # the union is the lumen
        np.testing.assert_array_equal(image, ph.image)
        np.testing.assert_array_equal(affine, ph.affine)
        codes = set(np.unique(seg).tolist()) - {0}
        assert codes <= set(range(1, 15)) and {1, 2, 3, 9} <= codes
        seen |= codes
    assert {8, 12, 13} <= seen  # ramus, left- and co-dominant trees occur


def _vtk_read(path: Path) -> tuple[np.ndarray, list[list[int]], dict[str, np.ndarray]]:
    """The file as VTK reads it (ImageCAS-X's own way)."""
    reader = vtk.vtkPolyDataReader()
    reader.SetFileName(str(path))
    reader.ReadAllFieldsOn()
    reader.ReadAllScalarsOn()
    reader.Update()
    poly = reader.GetOutput()
    points = vtk_to_numpy(poly.GetPoints().GetData()).astype(np.float64)
    lines = []
    ids = vtk.vtkIdList()
    cells = poly.GetLines()
    cells.InitTraversal()
    while cells.GetNextCell(ids):
        lines.append([ids.GetId(k) for k in range(ids.GetNumberOfIds())])
    data = poly.GetPointData()
    arrays = {}
    for k in range(data.GetNumberOfArrays()):
        arr = data.GetAbstractArray(k)
        if isinstance(arr, vtk.vtkStringArray):
            arrays[arr.GetName()] = np.array(
                [arr.GetValue(i) for i in range(arr.GetNumberOfValues())]
            )
        else:
            arrays[arr.GetName()] = vtk_to_numpy(arr)
    return points, lines, arrays


def _voxels(points_lps: np.ndarray, affine: np.ndarray) -> np.ndarray:
    ras = points_lps * np.array([-1.0, -1.0, 1.0])
    return np.rint((ras - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T).astype(int)


@pytest.mark.parametrize(
    ("index", "side", "trunk"), [(2, "left", "LM"), (3, "left", "LM"), (5, "right", "RCA")]
)
def test_centrelines_lie_in_their_segments(imagecasx_source, index, side, trunk):
    seg, affine = _array(imagecasx_source / "segmentations" / f"{index}.coronary.nii.gz")
    path = imagecasx_source / "centerlines" / f"{index}.coronary_{side}_centerline.vtk"
    points, lines, arrays = _vtk_read(path)
    assert set(arrays) == {
        "segment_label",
        "segment_name",
        "start_points",
        "end_points",
        "branch_points",
    }
    vox = _voxels(points, affine)
    codes = seg[tuple(vox.T)]
    assert np.all(codes > 0)  # every centreline point lies in the lumen (LPS frame right)
    assert np.mean(codes == arrays["segment_label"]) > 0.9
    assert all(
        CODES.get(n, code) == code
        for n, code in zip(arrays["segment_name"], arrays["segment_label"], strict=True)
    )
    start = np.flatnonzero(arrays["start_points"])
    assert len(start) == 1 and arrays["segment_name"][start[0]] == trunk
    # a tree: every branch point joins three cells, every end point one
    degree = np.zeros(len(points), int)
    for cell in lines:
        degree[cell[0]] += 1
        degree[cell[-1]] += 1
    assert np.all(degree[arrays["branch_points"] == 1] >= 3)
    assert np.all(degree[arrays["end_points"] == 1] == 1)
    graph = nx.Graph()
    for cell in lines:
        nx.add_path(graph, cell)
    assert nx.is_tree(graph) and graph.number_of_nodes() == len(points)


def test_stenosis_records_match_the_drawn_tree(tmp_path):
    # big enough for vessels above the radius floor: lesions of 20 % and more fit
    ph = generate_phantom((192, 192, 128), 2, coronary_variants=True, stenoses=3, case_id="2")
    records = stenosis_records(ph)
    assert sorted(r["branch"] for r in records) == ["LAD", "LCx", "RCA"]
    seg = segment_map(ph)
    from vesselfm.data.phantom.imagecasx import centerline_trees

    trees = centerline_trees(ph)
    for r in records:
        assert 20.0 <= r["degree_percent"] <= 90.0
        assert r["grade"] == stenosis_grade(r["degree_percent"])
        assert 0 < r["length_mm"] < 40
        ras = np.asarray(r["position_mm"])
        vox = np.rint((ras - ph.affine[:3, 3]) @ np.linalg.inv(ph.affine[:3, :3]).T).astype(int)
        assert seg[tuple(vox)] == CODES[r["branch"]]
        # arc from the ostium, independently: shortest path along the written centreline tree
        c = trees[r["tree"]]
        graph = nx.Graph()
        for cell in c.lines:
            for a, b in zip(cell[:-1], cell[1:], strict=True):
                graph.add_edge(
                    int(a), int(b), weight=float(np.linalg.norm(c.points_lps[a] - c.points_lps[b]))
                )
        lps = ras * np.array([-1.0, -1.0, 1.0])
        near = int(np.argmin(np.linalg.norm(c.points_lps - lps, axis=1)))
        ostium = int(np.flatnonzero(c.point_data["start_points"])[0])
        arc = nx.shortest_path_length(graph, ostium, near, weight="weight")
        assert r["arc_mm"] == pytest.approx(arc, abs=0.05)


@pytest.mark.parametrize(
    ("degree", "band"),
    [
        (0.0, "0"),
        (20.0, "1-24"),
        (24.9, "1-24"),
        (25.0, "25-49"),
        (50.0, "50-69"),
        (70.0, "70-99"),
        (99.9, "70-99"),
        (100.0, "100"),
    ],
)
def test_stenosis_grade_bands(degree, band):
    assert stenosis_grade(degree) == band


def test_split_lists_descriptors_and_records(imagecasx_source):
    lists = {
        s: (imagecasx_source / "filelist" / f"{s}.txt").read_text().split()
        for s in ("train", "val", "test", "exclude")
    }
    assert lists == {"train": ["1", "2", "3"], "val": ["4"], "test": ["5"], "exclude": []}
    with open(imagecasx_source / "Descriptors.csv", newline="") as fh:
        rows = {r["Scan ID"]: r for r in csv.DictReader(fh)}
    assert sorted(rows) == ["1", "2", "3", "4", "5"]
    for cid, row in rows.items():
        seg, _ = _array(imagecasx_source / "segmentations" / f"{cid}.coronary.nii.gz")
        codes = set(np.unique(seg).tolist())
        want = "Left" if 12 in codes else "Co-dominant" if 13 in codes else "Right"
        assert row["Dominance"] == want
        assert row["Image Quality"] in {"Good", "Moderate", "Poor"}
        record = json.loads((imagecasx_source / "stenoses" / f"{cid}.json").read_text())
        worst = max((s["degree_percent"] for s in record["stenoses"]), default=0)
        assert record["case"] == cid
        assert row["Disease"] == (
            "None"
            if worst == 0
            else "Mild"
            if worst < 50
            else "Moderate"
            if worst < 70
            else "Severe"
        )


def test_rewrite_and_append_keep_the_lists(tmp_path):
    root = tmp_path / "x"
    write_phantom_dataset(root, 2, shape=(48, 40, 32), seed=1, progress=False, layout="imagecasx")
    # a rerun replaces our files
    write_phantom_dataset(root, 2, shape=(48, 40, 32), seed=1, progress=False, layout="imagecasx")
    # a user's exclusion makes the folder theirs (overwrite=true) and is kept
    (root / "filelist" / "exclude.txt").write_text("2\n")
    with pytest.raises(UserError, match="exclude.txt"):
        write_phantom_dataset(
            root, 1, shape=(48, 40, 32), seed=1, progress=False, layout="imagecasx"
        )
    write_phantom_dataset(
        root, 3, shape=(48, 40, 32), seed=1, start_index=3, progress=False, layout="imagecasx",
        overwrite=True,
    )  # fmt: skip
    listed = sorted(
        i
        for s in ("train", "val", "test")
        for i in (root / "filelist" / f"{s}.txt").read_text().split()
    )
    assert listed == ["1", "2", "3", "4", "5"]
    assert (root / "filelist" / "exclude.txt").read_text() == "2\n"
    assert (root / "Descriptors.csv").read_text().count("\n") == 6


def test_phantom_config_layout_key(compose_cfg, tmp_path):
    from vesselfm.phantom import phantom

    out = tmp_path / "x"
    cfg = compose_cfg(
        "phantom",
        [f"output={out}", "n=1", "shape=[48,40,32]", "layout=imagecasx", "progress=false"],
    )
    [(image, segmentation)] = phantom(cfg)
    assert image == out / "volumes" / "1.img.nii.gz"
    assert segmentation == out / "segmentations" / "1.coronary.nii.gz"
    assert sorted(p.name for p in (out / "centerlines").glob("1.*")) == [
        "1.coronary_left_centerline.vtk",
        "1.coronary_right_centerline.vtk",
    ]
    assert json.loads((out / "stenoses" / "1.json").read_text())["case"] == "1"
    with pytest.raises(ValueError, match=r"layout must be one of \['imagecas', 'imagecasx'\]"):
        phantom(compose_cfg("phantom", [f"output={tmp_path / 'y'}", "layout=nifti"]))
