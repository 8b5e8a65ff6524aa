"""Phantoms in the ImageCAS-X layout: named segments, centrelines and planted stenoses.

``python -m vesselfm.phantom output=<dir> n=<cases> layout=imagecasx`` writes::

    <dir>/volumes/<id>.img.nii.gz                         int16 HU
    <dir>/segmentations/<id>.coronary.nii.gz              uint8, 0 background, codes 1..14
    <dir>/centerlines/<id>.coronary_{left,right}_centerline.vtk   legacy VTK, LPS mm
    <dir>/stenoses/<id>.json                              the planted stenoses as rendered
    <dir>/filelist/{train,val,test,exclude}.txt           one id per line
    <dir>/Descriptors.csv                                 Scan ID, Image Quality, Dominance, Disease

The cases are drawn with ``coronary_variants=True`` (:func:`~.generate.generate_phantom`):
right-, left- and co-dominant trees (1 : 0.5 : 0.5) and a ramus intermedius in half of them, so
every segment code occurs. Codes follow ImageCAS-X: 1 LM, 2 LAD, 3 LCx, 4 D1, 5 D2, 6 OM1,
7 OM2, 8 IM, 9 RCA, 10 R-PDA, 11 R-PLA, 12 L-PDA, 13 L-PLA, 14 Other. Diagonals and obtuse
marginals are numbered by where they leave their parent (the third and later are ``Other``);
acute marginals and the conus branch are ``Other``; the PDA is the RCA beyond the crux (the
LCx's, when left-dominant). Every voxel of the lumen takes the code of the tube reaching deepest
into it, so the segments' union is exactly the ImageCAS-layout label of the same case.

Centrelines are the drawn tubes' axes (points every <= 0.5 mm): one shared point per junction,
line cells between branch points, point arrays ``segment_label``, ``segment_name``,
``start_points`` (the ostium), ``end_points`` and ``branch_points`` and no radius array, as
ImageCAS-X writes them (:mod:`vesselfm.io.centerlines`).

Stenosis records use the analysis' fields (coordinates in the NIfTI world frame, RAS mm):
``branch`` (segment name at the narrowest point), ``tree``, ``position_mm`` (the narrowest
point), ``arc_mm`` (along the centreline from the ostium), ``degree_percent`` (diameter
reduction against the healthy tube, as drawn), ``length_mm`` (narrowed by at least half the
degree) and ``grade`` (CAD-RADS band). Degrees are drawn in 20-90 % and placed where the vessel
is wide enough to show them without breaking up on the grid (capped where it is nowhere), so on
small grids they stay low and thin branches get none.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vesselfm.data.imagecasx import (
    CENTERLINE_SIDES,
    DESCRIPTOR_COLUMNS,
    SEGMENT_CODES,
    SEGMENTS,
    centerline_name,
)
from vesselfm.data.phantom.generate import Phantom
from vesselfm.data.phantom.geometry import _Grid, _offset_box, _segment_depth
from vesselfm.data.phantom.trees import _Branch

log = logging.getLogger(__name__)

IMAGECASX_SPLITS = ("train", "val", "test")
_FIXED = {"LM": 1, "LAD": 2, "LCx": 3, "IM": 8, "RCA": 9, "PL": 11, "LPL": 13, "AM": 14, "CB": 14}
_DISTAL = {"R-PDA": 10, "L-PDA": 12, "LPL": 13}
_NUMBERED = {"D": (4, 5), "OM": (6, 7)}


@dataclass
class _Piece:
    """A run of one branch's centreline points that carries one segment code."""

    code: int
    branch: int
    start: int  # first point index in the branch (shared with the previous piece)
    stop: int  # one past the last


def stenosis_grade(degree_percent: float) -> str:
    """CAD-RADS 2.0 band of a diameter reduction in %: ``0``, ``1-24``, ``25-49``, ``50-69``,
    ``70-99`` or ``100``."""
    if degree_percent <= 0:
        return "0"
    if degree_percent >= 100:
        return "100"
    for top, band in ((25, "1-24"), (50, "25-49"), (70, "50-69")):
        if degree_percent < top:
            return band
    return "70-99"


def _pieces(branches: Sequence[_Branch]) -> list[_Piece]:
    """Split the branches into segment-coded runs (see the module docstring for the names)."""
    rank: dict[int, int] = {}
    for kind in _NUMBERED:
        by_parent: dict[int, list[tuple[int, int]]] = {}
        for i, b in enumerate(branches):
            if b.name == kind and b.parent is not None:
                parent = branches[b.parent]
                kj = int(np.argmin(np.linalg.norm(parent.points - b.points[0], axis=1)))
                by_parent.setdefault(b.parent, []).append((kj, i))
        for children in by_parent.values():
            for order, (_, i) in enumerate(sorted(children)):
                rank[i] = order
    out = []
    for i, b in enumerate(branches):
        if b.name in _NUMBERED:
            codes = _NUMBERED[b.name]
            code = codes[rank[i]] if rank[i] < len(codes) else SEGMENT_CODES["Other"]
        else:
            code = _FIXED.get(b.name, SEGMENT_CODES["Other"])
        n = len(b.points)
        if b.distal is not None and 0 < b.distal[0] < n - 1:
            k = b.distal[0]
            out += [_Piece(code, i, 0, k + 1), _Piece(_DISTAL[b.distal[1]], i, k, n)]
        else:
            out.append(_Piece(code, i, 0, n))
    return out


def segment_map(phantom: Phantom) -> np.ndarray:
    """The ImageCAS-X label map of ``phantom``: uint8 ``(X, Y, Z)``, 0 outside the lumen.

    Every lumen voxel gets the code of the tube piece whose signed depth is largest there (the
    same depths the label was drawn from), so ``segment_map(p) > 0`` equals ``p.label``.

    Raises:
        ValueError: the phantom carries no branches (made by an older generator).
    """
    if phantom.branches is None:
        raise ValueError("this phantom carries no branches: generate it with generate_phantom")
    branches = phantom.branches
    shape = phantom.image.shape
    grid = _Grid.make(shape, np.asarray(phantom.spacing))
    pts = np.concatenate([b.points for b in branches])
    rad = np.concatenate([b.radii for b in branches])
    pad = 2.0 * grid.spacing
    outer = grid.box((pts - rad[:, None]).min(0) - 2 * pad, (pts + rad[:, None]).max(0) + 2 * pad)
    assert outer is not None
    size = tuple(s.stop - s.start for s in outer)
    depth = np.full(size, -1e3, dtype=np.float32)
    code = np.zeros(size, dtype=np.uint8)
    for piece in _pieces(branches):
        b = branches[piece.branch]
        for k in range(piece.start, piece.stop - 1):
            box, seg = _segment_depth(
                grid, b.points[k], b.points[k + 1], float(b.radii[k]), float(b.radii[k + 1]), pad
            )
            if box is None:
                continue
            view = _offset_box(box, outer)
            deeper = seg > depth[view]
            depth[view][deeper] = seg[deeper]
            code[view][deeper] = piece.code
    out = np.zeros(shape, dtype=np.uint8)
    out[outer] = np.where(phantom.label[outer] > 0, code, 0)
    missing = int(np.count_nonzero((phantom.label > 0) & (out == 0)))
    assert missing == 0, f"{missing} lumen voxels without a segment"
    return out


def _world(phantom: Phantom, points_mm: np.ndarray) -> np.ndarray:
    """Grid mm (from the field of view's centre, voxel axes) to RAS mm."""
    shape = np.asarray(phantom.image.shape, dtype=float)
    index = np.asarray(points_mm, dtype=float) / np.asarray(phantom.spacing) + (shape - 1) / 2
    return index @ phantom.affine[:3, :3].T + phantom.affine[:3, 3]


def _arc_offsets(branches: Sequence[_Branch]) -> list[float]:
    """Arc length (mm) from the ostium to each branch's first point."""
    offsets: list[float] = []
    for b in branches:  # parents come before their children
        if b.parent is None:
            offsets.append(0.0)
            continue
        parent = branches[b.parent]
        kj = int(np.argmin(np.linalg.norm(parent.points - b.points[0], axis=1)))
        offsets.append(offsets[b.parent] + float(parent.arclength[kj]))
    return offsets


def centerline_trees(phantom: Phantom) -> dict[str, Any]:
    """The left and right centreline trees of ``phantom`` as ImageCAS-X stores them.

    Returns:
        ``{"left": Centerlines, "right": Centerlines}`` (:class:`vesselfm.io.centerlines.Centerlines`):
        points in LPS mm, line cells between branch points, the five point arrays.
    """
    from vesselfm.io.centerlines import Centerlines, ras_to_lps

    assert phantom.branches is not None
    branches = phantom.branches
    code_of = {}
    for piece in _pieces(branches):
        for k in range(piece.start, piece.stop):
            code_of.setdefault((piece.branch, k), piece.code)
    result = {}
    for tree, side in enumerate(CENTERLINE_SIDES):
        ids: dict[int, np.ndarray] = {}
        points: list[np.ndarray] = []
        labels: list[int] = []
        start: list[int] = []
        end: list[int] = []
        branch_at: set[int] = set()
        cuts: dict[int, set[int]] = {}
        n = 0
        for i, b in enumerate(branches):
            if b.tree != tree:
                continue
            own = np.arange(len(b.points), dtype=np.int64)
            if b.parent is None:
                own += n
                fresh = b.points
                start += [1] + [0] * (len(b.points) - 1)
                labels += [code_of[(i, k)] for k in range(len(b.points))]
            else:
                parent = branches[b.parent]
                kj = int(np.argmin(np.linalg.norm(parent.points - b.points[0], axis=1)))
                shared = int(ids[b.parent][kj])
                own = np.concatenate([[shared], n + np.arange(len(b.points) - 1)])
                fresh = b.points[1:]
                start += [0] * (len(b.points) - 1)
                labels += [code_of[(i, k)] for k in range(1, len(b.points))]
                branch_at.add(shared)
                cuts.setdefault(b.parent, set()).add(kj)
            ids[i] = own
            points.append(fresh)
            n += len(fresh)
            end.append(int(own[-1]))
        if not points:
            continue
        lines = []
        for i, own in ids.items():
            bounds = sorted({0, len(own) - 1, *cuts.get(i, set())})
            lines += [own[a : c + 1] for a, c in zip(bounds[:-1], bounds[1:], strict=True)]
        xyz = ras_to_lps(_world(phantom, np.concatenate(points)))
        label = np.asarray(labels, dtype=np.int32)
        flags = {
            "start_points": np.asarray(start, dtype=np.int32),
            "end_points": (
                np.isin(np.arange(n), end) & ~np.isin(np.arange(n), sorted(branch_at))
            ).astype(np.int32),
            "branch_points": np.isin(np.arange(n), sorted(branch_at)).astype(np.int32),
        }
        result[side] = Centerlines(
            points_lps=xyz,
            lines=lines,
            point_data={
                "segment_label": label,
                "segment_name": np.asarray([SEGMENTS[c] for c in label], dtype=object),
                **flags,
            },
        )
    return result


def stenosis_records(phantom: Phantom) -> list[dict[str, Any]]:
    """The planted stenoses of ``phantom`` with the analysis' fields (RAS mm), by tree and arc."""
    assert phantom.branches is not None
    branches = phantom.branches
    pieces = _pieces(branches)
    offsets = _arc_offsets(branches)
    records = []
    for i, b in enumerate(branches):
        for lesion in b.lesions:
            k = int(lesion["index"])
            code = next(p.code for p in pieces if p.branch == i and p.start <= k < p.stop)
            degree = round(100.0 * float(lesion["degree"]), 1)
            records.append(
                {
                    "branch": SEGMENTS[code],
                    "tree": CENTERLINE_SIDES[b.tree],
                    "position_mm": [round(float(v), 3) for v in _world(phantom, b.points[k])],
                    "arc_mm": round(offsets[i] + float(b.arclength[k]), 2),
                    "degree_percent": degree,
                    "length_mm": round(float(lesion["length_mm"]), 2),
                    "grade": stenosis_grade(degree),
                }
            )
    return sorted(records, key=lambda r: (r["tree"], r["arc_mm"]))


def _dominance(branches: Sequence[_Branch]) -> str:
    distal = {b.distal[1] for b in branches if b.distal is not None}
    if "L-PDA" in distal:
        return "Left"
    if "LPL" in distal or any(b.name == "LPL" for b in branches):
        return "Co-dominant"
    return "Right"


def _disease(records: Sequence[dict[str, Any]]) -> str:
    worst = max((r["degree_percent"] for r in records), default=0.0)
    if worst == 0:
        return "None"
    return "Mild" if worst < 50 else "Moderate" if worst < 70 else "Severe"


def _quality(phantom: Phantom) -> str:
    """From the noise: the HU spread of the blood pool away from its edges."""
    from scipy import ndimage

    from vesselfm.data.phantom.anatomy import Tissue

    assert phantom.tissue is not None
    # every other voxel per axis: plenty of samples, an eighth of the erosion's work
    every = tuple(slice(None, None, 2) for _ in range(3))
    pool = ndimage.binary_erosion(phantom.tissue[every] == Tissue.BLOOD, iterations=1)
    if pool.sum() < 50:
        return "Good"
    std = float(phantom.image[every][pool].std())
    return "Good" if std < 27 else "Moderate" if std < 34 else "Poor"


def _write_text(path: Path, text: str) -> None:
    from vesselfm.utils.io import atomic_path

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def case_split(index: int) -> str:
    """The split of case ``index`` (3 of every 5 train, 1 val, 1 test; whatever ``n`` is)."""
    return ("test", "train", "train", "train", "val")[index % 5]


def save_imagecasx_case(phantom: Phantom, output: str | Path) -> dict[str, Any]:
    """Write one case's volume, segment map, centrelines and stenosis record under ``output``.

    Returns:
        The case's ``Descriptors.csv`` row (``Scan ID``, ``Image Quality``, ``Dominance``,
        ``Disease``) plus ``image`` and ``segmentation`` paths.
    """
    from vesselfm.io import write_volume
    from vesselfm.io.centerlines import write_centerlines
    from vesselfm.utils.outputs import file_entry, record_entries

    output = Path(output)
    cid = phantom.case_id
    image = output / "volumes" / f"{cid}.img.nii.gz"
    segmentation = output / "segmentations" / f"{cid}.coronary.nii.gz"
    segments = segment_map(phantom)
    write_volume(phantom.image, phantom.affine, image, f"vesselfm phantom {cid} image HU")
    write_volume(segments, phantom.affine, segmentation, f"vesselfm phantom {cid} segments")
    written = {}
    for side, lines in centerline_trees(phantom).items():
        path = output / "centerlines" / centerline_name(cid, side)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_centerlines(path, lines)
        written[path.name] = file_entry(path)
    # write_centerlines leaves its files unrecorded; recorded here, a rerun may replace them
    record_entries(output / "centerlines", written)
    records = stenosis_records(phantom)
    _write_text(
        output / "stenoses" / f"{cid}.json",
        json.dumps({"case": cid, "frame": "RAS", "stenoses": records}, indent=1) + "\n",
    )
    assert phantom.branches is not None
    return {
        "Scan ID": cid,
        "Image Quality": _quality(phantom),
        "Dominance": _dominance(phantom.branches),
        "Disease": _disease(records),
        "image": image,
        "segmentation": segmentation,
    }


def write_imagecasx_index(output: str | Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write ``filelist/{train,val,test,exclude}.txt`` and ``Descriptors.csv`` for ``rows``,
    keeping the ids listed there before (a dataset written in parts); ``exclude.txt`` is left
    as it is (created empty)."""
    from vesselfm.data.imagecas import case_sort_key
    from vesselfm.data.imagecasx import read_descriptors, read_filelists

    output = Path(output)
    lists, excluded = read_filelists(output) if (output / "filelist").is_dir() else ({}, set())
    for row in rows:
        cid = str(row["Scan ID"])
        for ids in lists.values():
            ids.discard(cid)
        lists.setdefault(case_split(int(cid)), set()).add(cid)
    for split in IMAGECASX_SPLITS:
        ids = sorted(lists.get(split, set()), key=case_sort_key)
        _write_text(output / "filelist" / f"{split}.txt", "".join(f"{i}\n" for i in ids))
    if not (output / "filelist" / "exclude.txt").exists():
        _write_text(output / "filelist" / "exclude.txt", "")
    path = output / "Descriptors.csv"
    table = read_descriptors(path) if path.exists() else {}
    for row in rows:
        table[str(row["Scan ID"])] = {c: str(row[c]) for c in DESCRIPTOR_COLUMNS}
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(DESCRIPTOR_COLUMNS), lineterminator="\n")
    writer.writeheader()
    for cid in sorted(table, key=case_sort_key):
        writer.writerow({**table[cid], "Scan ID": cid})
    _write_text(path, buffer.getvalue())
    del excluded
