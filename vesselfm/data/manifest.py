"""The prepared set's manifest: ``<output>/manifest.json`` (a DESIGN contract).

A prepared set (``python -m vesselfm.prepare``) is the vesselFM sample layout plus this file::

    <output>/<split>/<case>/img.npy    image on the prepared grid
    <output>/<split>/<case>/mask.npy   label on the prepared grid, uint8 0/1
    <output>/<split>/<case>/fg.npy     foreground voxel indices, uint16 (K, 3)
    <output>/<split>/<case>/label.nii.gz   copy of the original label (only for archive sources)
    <output>/manifest.json

The manifest is one JSON object: ``format`` (:data:`MANIFEST_FORMAT`), ``created``/``updated``
(ISO 8601, UTC), ``source`` (the raw folders or archives), the preparation settings
(``preprocess``, ``label_threshold``, ``image_dtype``), ``split`` (how the splits were made),
``cases`` (case id -> :class:`ManifestEntry`), ``failed`` (case id -> reason), optionally
``pending`` (cases prepared but not yet given a split) and, after a run, ``summary``.

This module reads, writes and checks it; it imports neither torch, Lightning nor Hydra, so
anything that only needs to know which cases a set holds (``evaluate split=``) stays light.
:mod:`vesselfm.data.prepare` writes the entries, :mod:`vesselfm.data.datasets` reads them
into typed cases.

Example:
    >>> from vesselfm.data.manifest import load_manifest
    >>> manifest = load_manifest("data/prepared")  # doctest: +SKIP
    >>> [cid for cid, e in manifest["cases"].items() if e["split"] == "test"]  # doctest: +SKIP
    ['1', '7', '12']
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypedDict

import numpy as np

from vesselfm.utils.io import atomic_path

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# the files of one case, in <output>/<split>/<case>/
IMAGE_FILE, MASK_FILE, FG_FILE, LABEL_COPY = "img.npy", "mask.npy", "fg.npy", "label.nii.gz"


class ManifestEntry(TypedDict):
    """One case of ``manifest["cases"]``, as :func:`vesselfm.data.prepare.prepare_case` writes it.

    Paths of the prepared files are relative to the set's folder (``<split>/<case>/img.npy``);
    ``original_label`` is absolute, or relative to the set for a copy (archive sources). Shapes
    are ``(X, Y, Z)`` voxels, spacings mm, affines 4x4 voxel -> RAS+ mm (nested lists).

    Attributes:
        split: ``train``, ``val`` or ``test``.
        image_source, label_source: the raw files (``archive.zip::member`` for archive members).
        original_label: the label to score against at native resolution.
        original_shape, original_spacing, original_affine: the raw scan's grid.
        prepared_shape, prepared_spacing, prepared_affine: the prepared grid.
        image, mask, fg: the prepared files.
        image_dtype, mask_dtype: dtypes of ``img.npy`` and ``mask.npy`` (``mask_dtype`` uint8).
        label_voxels, prepared_label_voxels: vessel voxels before and after resampling.
        intensity_range: the image's percentile values (training normalises with them).
        round_trip_dice: Dice of the label against the prepared mask brought back to the
            original grid.
        seconds: time spent preparing the case.
    """

    split: str
    image_source: str
    label_source: str
    original_label: str
    original_shape: list[int]
    original_spacing: list[float]
    original_affine: list[list[float]]
    prepared_shape: list[int]
    prepared_spacing: list[float]
    prepared_affine: list[list[float]]
    image: str
    mask: str
    fg: str
    image_dtype: str
    mask_dtype: str
    label_voxels: int
    prepared_label_voxels: int
    intensity_range: list[float]
    round_trip_dice: float
    seconds: float


def manifest_path(location: str | os.PathLike[str]) -> Path:
    """The manifest file a user means by ``location``: ``<location>/manifest.json`` for a
    folder, else ``location`` itself (a ``manifest.json`` given by its path), ``~`` expanded."""
    path = Path(location).expanduser()
    return path / MANIFEST if path.is_dir() else path


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a ``manifest.json`` file.

    Args:
        path: the manifest file (see :func:`manifest_path` for a folder-or-file argument).

    Returns:
        The manifest; its ``cases`` table maps case ids to :class:`ManifestEntry` dicts.

    Raises:
        FileNotFoundError: no such file.
        ValueError: not JSON, or not a prepared set's manifest (no ``cases`` table).
    """
    path = Path(path)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err}); delete it to prepare the set again"
        ) from err
    if not isinstance(manifest, dict) or not isinstance(manifest.get("cases", {}), dict):
        raise ValueError(
            f"{path}: not a prepared set's manifest (no 'cases' table); choose another output= "
            "folder, or move that file away"
        )
    return manifest


def load_manifest(output: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of the prepared set in folder ``output``, or ``None`` when there is none yet.

    Raises:
        ValueError: a ``manifest.json`` that is not JSON or not a prepared set's manifest.
    """
    path = Path(output) / MANIFEST
    if not path.is_file():
        return None
    return read_manifest(path)


def write_manifest(output: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Write ``<output>/manifest.json`` atomically (never half-written)."""
    with atomic_path(Path(output) / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False), encoding="utf-8")


def case_is_complete(output: Path, entry: Mapping[str, Any]) -> bool:
    """True when a manifest entry's files exist in ``output`` with the recorded shape and dtype
    (``img.npy``, ``mask.npy`` uint8, a 2D ``fg.npy`` and, for a copy, the original label)."""
    try:
        shape = tuple(entry["prepared_shape"])
        img = np.load(output / entry["image"], mmap_mode="r")
        mask = np.load(output / entry["mask"], mmap_mode="r")
        fg = np.load(output / entry["fg"], mmap_mode="r")
        ok = (
            img.shape == shape
            and str(img.dtype) == entry["image_dtype"]
            and mask.shape == shape
            and mask.dtype == np.uint8
            and fg.ndim == 2
        )
        if ok and not Path(entry["original_label"]).is_absolute():
            ok = (output / entry["original_label"]).is_file()
        return ok
    except (OSError, ValueError, KeyError, TypeError):
        return False


__all__ = [
    "FG_FILE",
    "IMAGE_FILE",
    "LABEL_COPY",
    "MANIFEST",
    "MANIFEST_FORMAT",
    "MASK_FILE",
    "ManifestEntry",
    "case_is_complete",
    "load_manifest",
    "manifest_path",
    "read_manifest",
    "write_manifest",
]
