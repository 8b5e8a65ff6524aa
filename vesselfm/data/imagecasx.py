"""The ImageCAS-X layout (expert relabelling of ImageCAS: 14 coronary segments, centrelines).

An ImageCAS-X root::

    <root>/segmentations/<id>.coronary.nii.gz      uint8, 0 background, codes 1..14 (SEGMENTS)
    <root>/centerlines/<id>.coronary_{left,right}_centerline.vtk
    <root>/filelist/{train,val,test,exclude}.txt   one id per line; exclude drops an id everywhere
    <root>/Descriptors.xlsx (or .csv)              Scan ID, Image Quality, Dominance, Disease
    <root>/volumes/<id>.img.nii.gz                 the scans, when they lie beside the labels

The ImageCAS scans usually lie elsewhere (the Kaggle folders ``1-200/<id>.img.nii.gz``, ...):
``images=<folder>`` finds them there, searched recursively. :func:`discover_imagecasx` pairs
scans with segmentations and reads the split lists and descriptors; ``prepare`` does the rest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vesselfm.data.imagecas import (
    SPLITS,
    Case,
    SourceFile,
    _read_table,
    case_sort_key,
    normalise_case_id,
)
from vesselfm.io.terminology import SEGMENTS  # the one table; re-exported here

log = logging.getLogger(__name__)

SEGMENT_CODES: dict[str, int] = {name: code for code, name in SEGMENTS.items()}
CENTERLINE_SIDES = ("left", "right")
DESCRIPTOR_COLUMNS = ("Scan ID", "Image Quality", "Dominance", "Disease")
LAYOUTS = ("imagecas", "imagecasx")
LABEL_MODES = ("lumen", "segments")
_IMAGE_SUFFIXES = (".img.nii.gz", ".img.nii")


def centerline_name(case_id: str, side: str) -> str:
    """``<id>.coronary_<side>_centerline.vtk`` (``side``: ``left`` or ``right``)."""
    return f"{case_id}.coronary_{side}_centerline.vtk"


def is_imagecasx_root(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder holding ``segmentations/`` and ``filelist/``."""
    root = Path(path)
    return (root / "segmentations").is_dir() and (root / "filelist").is_dir()


def read_filelists(root: str | os.PathLike[str]) -> tuple[dict[str, set[str]], set[str]]:
    """``({split: ids}, excluded ids)`` from ``<root>/filelist/{train,val,test,exclude}.txt``.

    Blank lines and ``#`` comments are skipped; an entry may be an id or a file name
    (``12.img.nii.gz`` -> ``12``). A missing list is empty.

    Raises:
        ValueError: an id listed in two splits (naming both files).
    """
    folder = Path(root) / "filelist"
    lists: dict[str, set[str]] = {}
    excluded: set[str] = set()
    seen: dict[str, str] = {}
    for name in (*SPLITS, "exclude"):
        path = folder / f"{name}.txt"
        ids: set[str] = set()
        if path.is_file():
            for line in path.read_text(encoding="utf-8-sig").splitlines():
                text = line.split("#", 1)[0].strip()
                cid = normalise_case_id(text) if text else None
                if cid:
                    ids.add(cid)
        if name == "exclude":
            excluded = ids
            continue
        for cid in ids:
            if cid in seen:
                raise ValueError(
                    f"{path}: case {cid} is also listed in {folder / seen[cid]}.txt; "
                    "an id belongs to one split (fix the lists)"
                )
            seen[cid] = name
        lists[name] = ids
    return lists, excluded


def find_descriptors(root: str | os.PathLike[str]) -> Path | None:
    """``<root>/Descriptors.xlsx`` or ``.csv`` (any case), or ``None``."""
    root = Path(root)
    for child in sorted(root.iterdir()) if root.is_dir() else []:
        if child.is_file() and child.name.lower() in ("descriptors.xlsx", "descriptors.csv"):
            return child
    return None


def read_descriptors(path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """``{case id: {column: value}}`` from ImageCAS-X's descriptors table (xlsx or csv).

    The header row is the first one holding ``Scan ID``; every column is kept, as text.

    Raises:
        ValueError: no ``Scan ID`` column.
    """
    path = Path(path)
    for rows in _read_table(path).values():
        for r, row in enumerate(rows):
            header = [str(c).strip() if c is not None else "" for c in row]
            if "Scan ID" not in header:
                continue
            key = header.index("Scan ID")
            table: dict[str, dict[str, str]] = {}
            for values in rows[r + 1 :]:
                cid = normalise_case_id(values[key]) if key < len(values) else None
                if cid:
                    table[cid] = {
                        h: ("" if v is None else str(v).strip())
                        for h, v in zip(header, values, strict=False)
                        if h
                    }
            return table
    raise ValueError(
        f"descriptors={path}: no 'Scan ID' column found; expected ImageCAS-X's columns "
        f"{list(DESCRIPTOR_COLUMNS)}"
    )


def _scans(folder: Path) -> dict[str, Path]:
    """``{case id: scan}`` of the ``<id>.img.nii(.gz)`` files under ``folder`` (recursive)."""
    found: dict[str, Path] = {}
    for path in sorted(folder.rglob("*")):
        name = path.name.lower()
        suffix = next((s for s in _IMAGE_SUFFIXES if name.endswith(s)), None)
        if suffix is None or not path.is_file() or path.name.startswith("."):
            continue
        cid = path.name[: -len(suffix)]
        if cid in found:
            log.warning("scan %s ignored: case %s is %s already", path, cid, found[cid])
            continue
        found[cid] = path
    return found


@dataclass
class ImagecasxSource:
    """What :func:`discover_imagecasx` found under an ImageCAS-X root.

    Attributes:
        root: the ImageCAS-X root.
        cases: scan/segmentation pairs of the ids the split lists hold, less the excluded ones.
        table: ``{case id: split}`` from the lists, less the excluded ids.
        excluded: ids ``exclude.txt`` drops.
        missing: ``(id, reason)`` of listed ids whose scan or segmentation is not there.
        centerlines: ``{case id: [left, right centreline paths that exist]}``.
        descriptors: ``{case id: {column: value}}`` (empty without a descriptors file).
        descriptors_file: the file they came from.
    """

    root: Path
    cases: list[Case] = field(default_factory=list)
    table: dict[str, str] = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    missing: list[tuple[str, str]] = field(default_factory=list)
    centerlines: dict[str, list[str]] = field(default_factory=dict)
    descriptors: dict[str, dict[str, str]] = field(default_factory=dict)
    descriptors_file: str | None = None

    def info(self) -> dict[str, Any]:
        """The manifest's ``split`` block."""
        return {
            "mode": "imagecasx",
            "fold": None,
            "seed": None,
            "split_file": str((self.root / "filelist").resolve()),
            "excluded": sorted(self.excluded, key=case_sort_key),
        }


def discover_imagecasx(
    root: str | os.PathLike[str], images: str | os.PathLike[str] | None = None
) -> ImagecasxSource:
    """Pair the scans with the segmentations of an ImageCAS-X root.

    Args:
        root: the ImageCAS-X root (``segmentations/``, ``filelist/``, ...).
        images: folder of the scans (``<id>.img.nii.gz`` anywhere below it, e.g. the Kaggle
            folders ``1-200/``, ...); default ``<root>/volumes``.

    Raises:
        ValueError: ``root`` is no ImageCAS-X root, no scan folder, or no listed case found.
    """
    root = Path(root).expanduser()
    if not is_imagecasx_root(root):
        raise ValueError(
            f"source={root} is not an ImageCAS-X root (segmentations/ and filelist/ folders); "
            "give the folder that holds them, or layout=imagecas for ImageCAS pairs"
        )
    scan_folder = Path(images).expanduser() if images is not None else root / "volumes"
    if not scan_folder.is_dir():
        key = f"images={images}" if images is not None else f"{root / 'volumes'}"
        raise ValueError(
            f"{key}: no such folder; ImageCAS-X ships labels only: give the scans' folder, "
            "e.g. images=<ImageCAS download> (1-200/<id>.img.nii.gz, ...)"
        )
    lists, excluded = read_filelists(root)
    scans = _scans(scan_folder)
    found = ImagecasxSource(root=root)
    found.excluded = sorted(excluded, key=case_sort_key)
    for split, ids in lists.items():
        for cid in ids:
            if cid not in excluded:
                found.table[cid] = split
    for cid in sorted(found.table, key=case_sort_key):
        seg = root / "segmentations" / f"{cid}.coronary.nii.gz"
        if not seg.is_file():
            found.missing.append((cid, f"{seg}: no segmentation for listed case {cid}"))
            continue
        if cid not in scans:
            found.missing.append(
                (cid, f"case {cid}: no scan {cid}.img.nii.gz under {scan_folder} (images=)")
            )
            continue
        found.cases.append(Case(cid, SourceFile(str(scans[cid])), SourceFile(str(seg))))
        paths = [root / "centerlines" / centerline_name(cid, s) for s in CENTERLINE_SIDES]
        found.centerlines[cid] = [str(p.resolve()) for p in paths if p.is_file()]
    desc = find_descriptors(root)
    if desc is not None:
        found.descriptors = read_descriptors(desc)
        found.descriptors_file = str(desc.resolve())
    if not found.cases:
        first = found.missing[0][1] if found.missing else "the split lists are empty"
        raise ValueError(f"source={root}: no ImageCAS-X case to prepare ({first})")
    return found


# ------------------------------------------------------------------ segment maps on other grids


def check_segment_codes(label: np.ndarray, where: str) -> np.ndarray:
    """``label`` as uint8 ImageCAS-X codes (0..14).

    Raises:
        ValueError: values that are not whole numbers in 0..14 (naming ``where``).
    """
    label = np.asarray(label)
    if label.dtype.kind in "iub":
        lo, hi = (int(label.min()), int(label.max())) if label.size else (0, 0)
        if 0 <= lo and hi <= max(SEGMENTS):
            return label.astype(np.uint8, copy=False)
    elif label.size and np.all(np.isin(label, np.arange(max(SEGMENTS) + 1))):
        return label.astype(np.uint8)
    values = np.unique(label)
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
    raise ValueError(
        f"{where}: values {shown} are not ImageCAS-X segment codes (0 background, 1..14)"
    )


def labels_onto_grid(
    label: np.ndarray, label_affine: np.ndarray, shape: Sequence[int], affine: np.ndarray
) -> np.ndarray:
    """Resample a label map onto another grid (``shape``, ``affine``) with nearest neighbour.

    Each target voxel takes the code of the label voxel its centre falls in (0 outside the
    label's field of view), so codes are never mixed.
    """
    from scipy import ndimage

    to_label = np.linalg.inv(np.asarray(label_affine, dtype=np.float64)) @ np.asarray(
        affine, dtype=np.float64
    )
    return ndimage.affine_transform(
        np.asarray(label),
        to_label[:3, :3],
        offset=to_label[:3, 3],
        output_shape=tuple(int(s) for s in shape),
        output=np.uint8,
        order=0,
        mode="constant",
        cval=0,
    )


def _nearest_codes(codes: np.ndarray, spacing: Sequence[float], queries: np.ndarray) -> np.ndarray:
    """The code of the labelled voxel of ``codes`` nearest (in mm) to each query point (voxel
    index coordinates of ``codes``' grid, ``(K, 3)``)."""
    from scipy.spatial import cKDTree

    from vesselfm.data.preprocessing import bounding_box

    box = bounding_box(codes > 0)
    if len(queries) == 0 or box is None:
        return np.zeros(len(queries), dtype=np.uint8)
    vessel = np.argwhere(codes[box] > 0) + np.array([b.start for b in box])
    scale = np.asarray(spacing, dtype=np.float64)
    _, nearest = cKDTree(vessel * scale).query(np.asarray(queries) * scale)
    return codes[tuple(vessel[nearest].T)]


def _centres(mask: np.ndarray, src_shape: Sequence[int], dst_shape: Sequence[int]) -> np.ndarray:
    """Centres of ``mask``'s voxels (on ``src_shape``) in index coordinates of ``dst_shape``
    (the same field of view, voxel centres aligned as :func:`resampled_affine` does)."""
    scale = np.asarray(dst_shape, dtype=np.float64) / np.asarray(src_shape, dtype=np.float64)
    return (np.argwhere(mask) + 0.5) * scale - 0.5


def resample_segments(codes: np.ndarray, lumen: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Segment codes on the grid of the resampled ``lumen`` mask (same field of view).

    The lumen is resampled as the binary label is (:func:`resample_label`), so a segment set and
    a lumen set of the same cases have the same vessel voxels; each of them takes the code of
    the nearest labelled voxel of ``codes`` (nearest neighbour that never lands on background).

    Args:
        codes: uint8 codes on the original grid ``(X, Y, Z)``.
        lumen: 0/1 on the new grid.
        spacing: the original voxel size in mm (for "nearest").

    Returns:
        uint8 codes on the new grid, 0 where ``lumen`` is 0.
    """
    out = np.zeros(lumen.shape, dtype=np.uint8)
    inside = lumen > 0
    queries = _centres(inside, lumen.shape, codes.shape)
    out[inside] = _nearest_codes(codes, spacing, queries)
    return out


def restore_segments(
    prepared: np.ndarray, shape: Sequence[int], spacing: Sequence[float]
) -> np.ndarray:
    """The prepared codes taken back to the original grid ``shape``: the lumen as the
    round-trip Dice takes it back (trilinear, >= 0.5), each voxel the code of the nearest
    prepared vessel voxel. ``spacing``: the prepared voxel size in mm."""
    from vesselfm.data.preprocessing import resample_probabilities

    lumen = resample_probabilities((prepared > 0).astype(np.float32), shape) >= 0.5
    out = np.zeros(tuple(int(s) for s in shape), dtype=np.uint8)
    out[lumen] = _nearest_codes(prepared, spacing, _centres(lumen, shape, prepared.shape))
    return out


def segment_dice(truth: np.ndarray, other: np.ndarray) -> dict[str, float]:
    """``{segment name: Dice}`` of ``other`` against ``truth`` for the codes ``truth`` holds.

    One pass over the box holding both label maps' vessels: a 15 x 15 table of (truth, other)
    code pairs gives every segment's overlap and sizes.
    """
    from vesselfm.data.preprocessing import bounding_box

    n = max(SEGMENTS) + 1
    boxes = [b for b in (bounding_box(truth > 0), bounding_box(other > 0)) if b is not None]
    if not boxes:
        return {}
    box = tuple(
        slice(min(b[k].start for b in boxes), max(b[k].stop for b in boxes)) for k in range(3)
    )
    t = np.asarray(truth[box], dtype=np.int64).ravel()
    o = np.asarray(other[box], dtype=np.int64).ravel()
    pairs = np.bincount(t * n + o, minlength=n * n).reshape(n, n)
    inter, size_t, size_o = np.diag(pairs), pairs.sum(axis=1), pairs.sum(axis=0)
    return {
        SEGMENTS[c]: round(2.0 * int(inter[c]) / int(size_t[c] + size_o[c]), 6)
        for c in range(1, n)
        if size_t[c] > 0
    }


def segment_round_trip(
    codes: np.ndarray, prepared: np.ndarray, prepared_spacing: Sequence[float]
) -> dict[str, float]:
    """Per-segment Dice of the prepared codes taken back up (:func:`restore_segments`) against
    the original ``codes``: the ceiling a segment model trained on the prepared set can reach.

    When every axis grows by a power of two (ImageCAS: 256 -> 512 in-plane), only the box around
    the vessels (one coarse voxel wider) is taken back up, as :func:`round_trip_dice` does: the
    interpolation there is exact, and outside it the way back is 0.
    """
    from vesselfm.data.preprocessing import bounding_box

    shape, small = codes.shape, prepared.shape
    factors = [s // m if s % m == 0 else 0 for s, m in zip(shape, small, strict=True)]
    box = bounding_box(prepared > 0)
    if box is None or not all(f > 0 and f & (f - 1) == 0 for f in factors):
        return segment_dice(codes, restore_segments(prepared, shape, prepared_spacing))
    coarse = tuple(
        slice(max(0, b.start - 1), min(m, b.stop + 1)) for b, m in zip(box, small, strict=True)
    )
    fine = tuple(slice(c.start * f, c.stop * f) for c, f in zip(coarse, factors, strict=True))
    back = np.zeros(shape, dtype=np.uint8)
    back[fine] = restore_segments(
        prepared[coarse], [c.stop - c.start for c in fine], prepared_spacing
    )
    return segment_dice(codes, back)
