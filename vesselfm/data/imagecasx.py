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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vesselfm.data.imagecas import (
    SPLITS,
    Case,
    SourceFile,
    _read_table,
    case_sort_key,
    normalise_case_id,
)

log = logging.getLogger(__name__)

#: ImageCAS-X segment codes -> names (``Other``: D3, D4, OM3, OM4 and smaller side branches)
SEGMENTS: dict[int, str] = {
    1: "LM",
    2: "LAD",
    3: "LCx",
    4: "D1",
    5: "D2",
    6: "OM1",
    7: "OM2",
    8: "IM",
    9: "RCA",
    10: "R-PDA",
    11: "R-PLA",
    12: "L-PDA",
    13: "L-PLA",
    14: "Other",
}
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
