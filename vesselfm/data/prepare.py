"""Turn raw NIfTI pairs (ImageCAS or alike) into a prepared training set.

Output, the vesselFM sample layout plus a manifest::

    <output>/<split>/<case>/img.npy    image on the prepared grid (int16 HU for integer scans, else float32)
    <output>/<split>/<case>/mask.npy   label on the prepared grid, uint8 0/1
    <output>/<split>/<case>/fg.npy     up to 10 000 foreground voxel indices, uint16 (K, 3), for
                                       foreground-oversampled crops
    <output>/<split>/<case>/label.nii.gz   copy of the original label (only for archive sources)
    <output>/manifest.json

The image is resampled with :func:`vesselfm.data.preprocessing.resample_image` (area averaging
on shrinking axes: anti-aliased) and *not* normalised: the manifest stores each case's
``intensity_range`` (the percentiles of the prepared image), and training normalises crops with
:func:`~vesselfm.data.preprocessing.normalize_intensity`, exactly as ``infer`` does a whole scan.

Every file is written under a temporary name and renamed when complete; a case enters the
manifest only when all its files are written. A rerun skips the cases the manifest lists whose
files are intact, and redoes the rest.

Splits are stable: a case keeps the split it was first given, whatever later runs ask
(``limit=``, another seed or ratios). Cases the official split file lists get its split (a file
that contradicts the set is refused before anything is written); the other new cases are
prepared into ``<output>/.pending/`` and drawn at random only from those that prepared
successfully, then moved into their split folder. A split the settings ask for never ends up
empty without an error. See :func:`prepare_dataset`.
"""

from __future__ import annotations

import concurrent.futures as cf
import dataclasses
import datetime as _dt
import gzip
import logging
import multiprocessing as mp
import os
import time
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vesselfm.data.imagecas import (
    SPLITS,
    Case,
    Discovery,
    SourceFile,
    case_sort_key,
    discover_cases,
    draw_splits,
    find_split_file,
    read_official_split,
    split_sizes,
)
from vesselfm.data.imagecasx import (
    SEGMENTS,
    check_segment_codes,
    discover_imagecasx,
    is_imagecasx_root,
    labels_onto_grid,
    resample_segments,
    segment_round_trip,
)
from vesselfm.data.manifest import (
    FG_FILE,
    IMAGE_FILE,
    LABEL_COPY,
    MANIFEST,
    MANIFEST_FORMAT,
    MASK_FILE,
    case_is_complete,
    load_manifest,
    write_manifest,
)
from vesselfm.data.preprocessing import (
    PreprocessConfig,
    bounding_box,
    c_order,
    intensity_range,
    resample_image,
    resample_label,
    resample_probabilities,
    resampled_affine,
    target_shape,
)
from vesselfm.io import (
    GridError,
    Volume,
    VolumeError,
    case_id_problem,
    check_same_grid,
    read_volume,
    read_volume_bytes,
    split_extension,
)
from vesselfm.io.frames import spacing_from_affine
from vesselfm.utils.errors import UserError
from vesselfm.utils.io import atomic_path, remove_stale_temporaries

log = logging.getLogger(__name__)

# new cases whose split is drawn once the run knows which cases prepared successfully
PENDING = ".pending"
IMAGE_DTYPES = ("auto", "int16", "float16", "float32")
# Thin vessels: a prepared voxel is vessel when at least this share of it was vessel. 0.5 is the
# unbiased choice (volume preserved); see ImageCASDataSetPrep.md for the round-trip Dice per threshold.
DEFAULT_LABEL_THRESHOLD = 0.5
FG_SAMPLES = 10_000


class CaseError(Exception):
    """A case that cannot be prepared: the message names the file and the reason."""


@dataclass(frozen=True)
class PrepareOptions:
    """How each case is prepared (stored in the manifest; a rerun must use the same).

    Attributes:
        preprocess: grid and intensity settings shared with training and ``infer``.
        label_threshold: a prepared voxel is vessel when at least this share of it was vessel.
        image_dtype: ``auto`` (int16 when the scan holds integers, as CT in HU does, else
            float32), ``int16``, ``float16`` or ``float32``.
        affine_tolerance: largest difference in mm allowed between image and label affines.
        layout: ``imagecas`` (binary labels on their scan's grid) or ``imagecasx`` (segment
            codes 0..14; a label on another grid is resampled onto its scan's with nearest
            neighbour).
        labels: ``lumen`` (binary mask) or ``segments`` (ImageCAS-X codes kept; ``imagecasx``
            only).
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    label_threshold: float = DEFAULT_LABEL_THRESHOLD
    image_dtype: str = "auto"
    affine_tolerance: float = 1e-3
    layout: str = "imagecas"
    labels: str = "lumen"

    def __post_init__(self) -> None:
        from vesselfm.data.imagecasx import LABEL_MODES, LAYOUTS

        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {list(LAYOUTS)}, got {self.layout!r}")
        if self.labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {list(LABEL_MODES)}, got {self.labels!r}")
        if self.image_dtype not in IMAGE_DTYPES:
            raise ValueError(
                f"image_dtype must be one of {list(IMAGE_DTYPES)}, got {self.image_dtype!r}"
            )
        if not 0.0 < float(self.label_threshold) < 1.0:
            raise ValueError(f"label_threshold must be in (0, 1), got {self.label_threshold}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "preprocess": self.preprocess.to_dict(),
            "label_threshold": float(self.label_threshold),
            "image_dtype": self.image_dtype,
            "layout": self.layout,
            "labels": self.labels,
        }


@dataclass
class PrepareSummary:
    """What a run did.

    Attributes:
        output: the prepared set's folder.
        prepared: cases written by this run; ``skipped``: already complete.
        failed: what this run could not prepare, keyed by case id (by the file's path for a
            pair without a usable id or an archive that could not be opened):
            ``{"image", "label", "reason"}``, or ``{"source", "reason"}`` for an archive.
        not_in_split: cases the official split file does not list (not prepared, on purpose).
        per_split: cases per split in the whole set after the run.
        split_note: how this run gave new cases their split (``None``: it gave none).
        empty_splits: splits the settings ask for that hold no case after the run, with why.
        attempted: how many cases (and unusable source entries) this run was asked to do.
    """

    output: Path
    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    not_in_split: list[str] = field(default_factory=list)
    per_split: dict[str, int] = field(default_factory=dict)
    split_note: str | None = None
    empty_splits: dict[str, str] = field(default_factory=dict)
    attempted: int = 0
    mean_round_trip_dice: float | None = None
    min_round_trip_dice: tuple[str, float] | None = None
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.per_split.values())

    @property
    def complete(self) -> bool:
        """Whether the run did all it was asked: no case failed and no split is left empty."""
        return not self.failed and not self.empty_splits

    def lines(self) -> list[str]:
        """A human-readable summary, one fact per line."""
        out = [
            f"prepared set: {self.output}",
            f"cases: {self.total} ready ({', '.join(f'{s} {self.per_split.get(s, 0)}' for s in SPLITS)})"
            f"; this run: {len(self.prepared)} prepared, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed"
            + (f", {len(self.not_in_split)} not in the split file" if self.not_in_split else ""),
        ]
        if self.split_note:
            out.append(self.split_note)
        if self.mean_round_trip_dice is not None:
            worst = self.min_round_trip_dice
            out.append(
                f"round-trip Dice (label down and back up to the original grid): mean {self.mean_round_trip_dice:.4f}"
                + (f", lowest {worst[1]:.4f} (case {worst[0]})" if worst else "")
            )
        for key, info in self.failed.items():
            # pairs without a usable id and unreadable archives are keyed by a path the reason names
            what = f"failed case {key}" if case_id_problem(key) is None else "failed"
            out.append(f"{what}: {info['reason']}")
        for split, why in self.empty_splits.items():
            out.append(f"empty split {split}: {why}")
        out.append(f"time: {self.seconds:.1f} s")
        return out

    def problem(self) -> str | None:
        """One line saying what the run could not do and how to go on; ``None`` when complete."""
        if self.complete:
            return None
        parts = []
        if self.failed:
            ids = list(self.failed)
            shown = ", ".join(ids[:5]) + (", ..." if len(ids) > 5 else "")
            first = next(iter(self.failed.values()))["reason"]
            parts.append(
                f"{len(ids)} of {self.attempted} case(s) could not be prepared ({shown}; first: {first})"
            )
        for split, why in self.empty_splits.items():
            parts.append(f"the set has no {split} case ({why})")
        return (
            "; ".join(parts)
            + f"; the {self.total} ready case(s) are kept in {self.output} (failures listed in its "
            f"{MANIFEST}); fix or remove those files and rerun the same command to go on"
        )

    def raise_if_incomplete(self) -> None:
        """Raise when the run could not do all it was asked (the CLI's exit status 2).

        Raises:
            UserError: one line naming the failed cases and the empty splits.
        """
        problem = self.problem()
        if problem is not None:
            raise UserError(problem)


# ------------------------------------------------------------------------------------ reading


def read_source(src: SourceFile, what: str) -> Volume:
    """The volume of a file on disk or inside a zip archive, in its stored dtype
    (:func:`vesselfm.io.read_volume`).

    Raises:
        CaseError: the file cannot be read or is no valid volume, naming ``what`` (``image``,
            ``label``) and the file.
    """
    try:
        if src.member is None:
            return read_volume(src.path)
        with zipfile.ZipFile(src.path) as zf:
            data = zf.read(src.member)
        return read_volume_bytes(data, str(src))
    except VolumeError as err:
        raise CaseError(f"{what} {err}") from err
    except (OSError, zipfile.BadZipFile, KeyError) as err:
        raise CaseError(
            f"{what} {src}: cannot read it from the archive ({type(err).__name__}: {err})"
        ) from err


def _check_label(label: np.ndarray, src: SourceFile) -> np.ndarray:
    """The label as bool; raise when it is not binary 0/1 (NaN was refused when it was read)."""
    if label.dtype == np.bool_:
        return label
    if label.dtype.kind in "iu":
        lo, hi = int(label.min()), int(label.max())
        if lo >= 0 and hi <= 1:
            # uint8 0/1 is already a valid bool buffer: a view, not a 72 M-voxel copy
            return label.view(bool) if label.dtype.itemsize == 1 else label.astype(bool)
    elif np.all((label == 0) | (label == 1)):
        return label.astype(bool)
    values = np.unique(label)
    shown = ", ".join(f"{v:g}" for v in values[:6]) + (", ..." if values.size > 6 else "")
    raise CaseError(f"label {src}: not binary, values {shown} (expected 0 and 1)")


def _storage_dtype(image: np.ndarray, requested: str) -> np.dtype:
    if requested != "auto":
        return np.dtype(requested)
    if image.dtype.kind in "iub":
        info = np.iinfo(np.int16)
        if image.size == 0 or (int(image.min()) >= info.min and int(image.max()) <= info.max):
            return np.dtype(np.int16)
    return np.dtype(np.float32)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two boolean masks; 1.0 when both are empty."""
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    if total == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(a & b)) / total


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def round_trip_dice(label: np.ndarray, mask: np.ndarray, label_voxels: int | None = None) -> float:
    """Dice of ``label`` against the prepared ``mask`` taken back up to the label's grid.

    The way back is :func:`~vesselfm.data.preprocessing.resample_probabilities` (trilinear)
    thresholded at 0.5. When each axis grows by a power of two (ImageCAS: 256 → 512 in-plane,
    depth kept) only the box around the mask (one coarse voxel wider) is taken back up: the
    interpolation weights are then exact binary fractions, so the box gives the same voxels as
    the whole grid, and outside it the way back is 0.

    Args:
        label: the original label, boolean ``(X, Y, Z)``.
        mask: the prepared label, 0/1 on the prepared grid.
        label_voxels: ``count_nonzero(label)`` when already known.

    Returns:
        Dice in [0, 1]; 1.0 when both are empty.
    """
    shape = tuple(int(s) for s in label.shape)
    small = tuple(int(s) for s in mask.shape)
    n_label = int(np.count_nonzero(label)) if label_voxels is None else int(label_voxels)
    if not all(s % m == 0 and _power_of_two(s // m) for s, m in zip(shape, small, strict=True)):
        return dice(resample_probabilities(mask, shape) >= 0.5, label)
    box = bounding_box(mask)
    if box is None:
        return 1.0 if n_label == 0 else 0.0
    coarse = tuple(
        slice(max(0, b.start - 1), min(m, b.stop + 1)) for b, m in zip(box, small, strict=True)
    )
    factor = tuple(s // m for s, m in zip(shape, small, strict=True))
    fine = tuple(slice(c.start * f, c.stop * f) for c, f in zip(coarse, factor, strict=True))
    back = resample_probabilities(mask[coarse], [c.stop - c.start for c in fine]) >= 0.5
    n_back = int(np.count_nonzero(back))
    if n_back + n_label == 0:
        return 1.0
    return 2.0 * int(np.count_nonzero(back & label[fine])) / (n_back + n_label)


def foreground_samples(mask: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` foreground voxel indices of ``mask`` chosen at random, uint16 ``(K, 3)``."""
    flat = np.flatnonzero(mask.reshape(-1))
    if flat.size > n:
        flat = np.sort(np.random.default_rng(seed).choice(flat, size=n, replace=False))
    coords = (
        np.stack(np.unravel_index(flat, mask.shape), axis=1)
        if flat.size
        else np.zeros((0, 3), np.int64)
    )
    return coords.astype(np.uint16)


def _save_npy(path: Path, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        np.save(tmp, array)


def case_folder(output: Path, split: str, case_id: str) -> Path:
    """``<output>/<split>/<case_id>``: always a folder inside the split folder, never the split
    folder itself nor anything above it.

    Raises:
        CaseError: ``case_id`` cannot name a folder (``""``, ``.``, ``..``, a path separator).
    """
    if split not in (*SPLITS, PENDING):
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    problem = case_id_problem(case_id)
    if problem is not None:
        raise CaseError(f"case {case_id!r}: {problem}")
    folder = output / split / case_id
    assert folder.parent == output / split and folder.name == case_id, folder
    return folder


# ---------------------------------------------------------------------------------- one case


def prepare_case(
    case: Case, split: str, output: str | os.PathLike[str], options: PrepareOptions
) -> dict[str, Any]:
    """Prepare one case into ``<output>/<split>/<case>/`` and return its manifest entry.

    Args:
        case: the image/label pair.
        split: ``train``, ``val`` or ``test``; or :data:`PENDING` (drawn later).
        output: the prepared set's root folder.
        options: resampling, label threshold and storage dtype.

    Returns:
        The manifest entry: source paths, original and prepared geometry (shape, spacing in
        mm, 4×4 affine), label voxel counts, ``intensity_range``, round-trip Dice, dtypes.

    Raises:
        CaseError: unreadable or truncated file, image/label shape or affine mismatch,
            non-binary label, NaN in the image, a case id that cannot name a folder. Nothing
            is written for such a case.
    """
    start = time.perf_counter()
    output = Path(output)
    case_dir = case_folder(output, split, case.case_id)  # checked before any work
    image_volume = read_source(case.image, "image")
    label_volume = read_source(case.label, "label")
    extra: dict[str, Any] = {}
    label_array = label_volume.array
    try:
        check_same_grid(label_volume, image_volume, atol=options.affine_tolerance)
    except GridError as err:
        if options.layout != "imagecasx":
            raise CaseError(f"label {err}") from err
        # ImageCAS-X labels of a scan resampled elsewhere: back onto the scan's grid, codes kept
        label_array = labels_onto_grid(
            label_array, label_volume.affine, image_volume.shape, image_volume.affine
        )
        if np.any(label_volume.array) and not np.any(label_array):
            raise CaseError(
                f"label {case.label}: does not overlap its scan {case.image} at all (different "
                "patient frames?); give the scan this label was drawn on"
            ) from err
        log.warning(
            "label %s is on another grid than its scan (%s, spacing %s mm vs %s, %s mm): "
            "resampled onto the scan's grid with nearest neighbour",
            case.label,
            "x".join(map(str, label_volume.shape)),
            ", ".join(f"{v:.3g}" for v in spacing_from_affine(label_volume.affine)),
            "x".join(map(str, image_volume.shape)),
            ", ".join(f"{v:.3g}" for v in spacing_from_affine(image_volume.affine)),
        )
        extra["label_resampled"] = {
            "method": "nearest",
            "from_shape": list(label_volume.shape),
            "from_affine": np.asarray(label_volume.affine).tolist(),
        }
    image, affine = image_volume.array, image_volume.affine
    codes = None
    if options.layout == "imagecasx":
        try:
            codes = check_segment_codes(label_array, f"label {case.label}")
        except ValueError as err:
            raise CaseError(str(err)) from err
        label = codes > 0
    else:
        label = _check_label(label_array, case.label)
    del image_volume, label_volume, label_array

    cfg = options.preprocess
    spacing = spacing_from_affine(affine)
    shape = tuple(int(s) for s in image.shape)
    new_shape = target_shape(shape, spacing, cfg)
    new_affine = resampled_affine(affine, shape, new_shape)

    dtype = _storage_dtype(image, options.image_dtype)
    resampled = resample_image(image, new_shape)
    if dtype.kind == "i":
        np.rint(resampled, out=resampled)
        if not np.can_cast(image.dtype, dtype):  # an average of int16 values fits int16
            info = np.iinfo(dtype)
            np.clip(resampled, info.min, info.max, out=resampled)
    # C order on disk: training crops come out C-contiguous, as the network takes them
    stored = c_order(resampled.astype(dtype, copy=False))
    del resampled, image
    value_range = intensity_range(stored, cfg)
    mask = resample_label(label, new_shape, threshold=options.label_threshold)
    label_voxels = int(np.count_nonzero(label))
    round_trip = round_trip_dice(label, mask, label_voxels)
    del label
    if codes is not None and options.labels == "segments":
        mask = resample_segments(codes, mask, spacing)
        counts = np.bincount(codes.ravel(order="K"), minlength=max(SEGMENTS) + 1)
        extra["segment_voxels"] = {SEGMENTS[c]: int(counts[c]) for c in SEGMENTS if counts[c]}
        extra["round_trip_segment_dice"] = segment_round_trip(
            codes, mask, spacing_from_affine(new_affine)
        )
    del codes

    case_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(case_dir)  # left by a run killed while writing this case
    _save_npy(case_dir / IMAGE_FILE, stored)
    _save_npy(case_dir / MASK_FILE, c_order(mask))
    _save_npy(
        case_dir / FG_FILE, foreground_samples(mask, FG_SAMPLES, seed=_stable_seed(case.case_id))
    )
    rel = f"{split}/{case.case_id}"
    if case.label.member is not None:
        # Archive sources: keep a readable copy of the original label for native-resolution scoring.
        copy = _label_copy_name(case.label.member)
        with zipfile.ZipFile(case.label.path) as zf, atomic_path(case_dir / copy) as tmp:
            data = zf.read(case.label.member)
            nii = copy == LABEL_COPY and not case.label.member.lower().endswith(".gz")
            tmp.write_bytes(gzip.compress(data, compresslevel=1) if nii else data)
        original_label = f"{rel}/{copy}"
    else:
        original_label = str(Path(case.label.path).resolve())

    return {
        "split": split,
        "image_source": str(case.image),
        "label_source": str(case.label),
        "original_label": original_label,
        "original_shape": list(shape),
        "original_spacing": list(spacing),
        "original_affine": affine.tolist(),
        "prepared_shape": list(new_shape),
        "prepared_spacing": list(spacing_from_affine(new_affine)),
        "prepared_affine": new_affine.tolist(),
        "image": f"{rel}/{IMAGE_FILE}",
        "mask": f"{rel}/{MASK_FILE}",
        "fg": f"{rel}/{FG_FILE}",
        "image_dtype": str(stored.dtype),
        "mask_dtype": "uint8",
        "label_voxels": label_voxels,
        "prepared_label_voxels": int(np.count_nonzero(mask)),
        "intensity_range": list(value_range),
        "round_trip_dice": round(float(round_trip), 6),
        **extra,
        "seconds": round(time.perf_counter() - start, 3),
    }


def _stable_seed(case_id: str) -> int:
    return int.from_bytes(case_id.encode()[:8].ljust(8, b"\0"), "little") % (2**32)


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


def _pool_context() -> tuple[Any, int]:
    """The multiprocessing context for the worker pool and the torch threads per worker.

    ``fork`` where the platform has it and this process runs no other Python thread: the
    workers then start at once with everything imported (spawn re-imports torch in each, seconds
    per worker). Forked workers use one torch thread each, the rule PyTorch's DataLoader
    workers follow (OpenMP state does not survive a fork); a case is mostly single-threaded
    work (inflating, reading) anyway, so ``workers=`` should be the number of cores.
    Otherwise ``spawn``, with the cores shared out between the workers.
    """
    import sys
    import threading

    # tqdm's monitor thread (left running by earlier progress bars) only sleeps and never
    # touches what the workers use.
    others = [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and type(t).__name__ != "TMonitor"
    ]
    if sys.platform.startswith("linux") and not others:
        return mp.get_context("fork"), 1
    return mp.get_context("spawn"), 0


def _run_case(
    case: Case, split: str, output: str, options: PrepareOptions
) -> tuple[str, dict[str, Any] | None, str | None]:
    """Worker entry: ``(case_id, entry, None)`` or ``(case_id, None, reason)``."""
    try:
        return case.case_id, prepare_case(case, split, output, options), None
    except CaseError as err:
        return case.case_id, None, str(err)
    except MemoryError:
        return case.case_id, None, f"{case.image}: out of memory (lower workers=)"


# ---------------------------------------------------------------------------------- the set


@dataclass
class SplitSettings:
    """The split a run asks for: ``official`` (a split file's table) or ``random`` (seed, ratios)."""

    mode: str
    table: dict[str, str] | None
    seed: int
    ratios: tuple[float, float, float]
    info: dict[str, Any]

    def asks_for(self, split: str) -> bool:
        """Whether these settings put any case in ``split`` (a ratio above 0, or a split file
        that lists cases in it)."""
        if self.table is not None:
            return split in self.table.values()
        return self.ratios[SPLITS.index(split)] > 0

    def describe(self) -> str:
        if self.mode == "imagecasx":
            return f"the ImageCAS-X split lists in {self.info['split_file']}"
        if self.table is not None:
            return f"split_file={self.info['split_file']} fold={self.info['fold']}"
        return f"seed={self.seed} split_ratios={list(self.ratios)}"


def split_settings(
    case_ids: Sequence[str],
    split: str | None,
    split_file: str | os.PathLike[str] | None,
    fold: int,
    seed: int,
    ratios: Sequence[float],
    sheet: str | None = None,
) -> SplitSettings:
    """Read and check the split settings of a run (the split file is read here, before any write).

    Raises:
        ValueError: unknown ``split``, ``official`` without a file, a file matching none of
            ``case_ids``, bad ``split_ratios``.
    """
    mode = (split or ("official" if split_file else "random")).lower()
    checked = tuple(float(r) for r in ratios)
    split_sizes(0, checked)  # raises on bad ratios
    if mode == "official":
        if split_file is None:
            raise ValueError(
                "split=official needs split_file=<imageCAS_data_split.xlsx or .csv>; or use split=random"
            )
        table, used_sheet = read_official_split(
            split_file, fold=fold, sheet=sheet, case_ids=case_ids
        )
        if not set(case_ids) & set(table):
            raise ValueError(
                f"split_file={split_file}: none of its {len(table)} case ids match the source's "
                f"{len(case_ids)} cases (e.g. {list(case_ids)[:3]} vs {sorted(table, key=case_sort_key)[:3]}); "
                "check the file, or pass split_sheet="
            )
        info = {
            "mode": "official",
            "fold": int(fold),
            "seed": None,
            "split_file": str(Path(split_file).resolve()),
            "sheet": used_sheet,
        }
        return SplitSettings("official", table, int(seed), checked, info)
    if mode == "random":
        info = {
            "mode": "random",
            "fold": None,
            "seed": int(seed),
            "split_file": None,
            "ratios": list(checked),
        }
        return SplitSettings("random", None, int(seed), checked, info)
    raise ValueError(
        f"split must be 'official' or 'random' (or null: official when split_file is given), got {split!r}"
    )


def _check_output(output: Path) -> None:
    """``output=`` must be a folder or not exist yet (nor sit below a file)."""
    for path in (output, *output.parents):
        if path.is_dir():
            return
        if path.exists() or path.is_symlink():
            kind = "a file" if path.is_file() else "not a folder"
            what = f"is {kind}" if path == output else f"lies below {path}, which is {kind}"
            raise ValueError(
                f"output={output} {what}; give a folder for the prepared set "
                "(output=<dir>, new or prepared before)"
            )


def _case_folders_on_disk(output: Path) -> dict[str, list[str]]:
    """``{case_id: [splits]}`` of the case folders under ``<output>/{train,val,test}/``."""
    found: dict[str, list[str]] = {}
    for split in SPLITS:
        folder = output / split
        if folder.is_dir():
            for child in folder.iterdir():
                if child.is_dir():
                    found.setdefault(child.name, []).append(split)
    return found


def _known_splits(
    output: Path,
    entries: dict[str, Any],
    pending: dict[str, Any],
    old_failed: Mapping[str, Any],
) -> tuple[dict[str, str], dict[str, list[str]]]:
    """The split each case of the set already has, and the cases found in two split folders.

    From its manifest entry; else from a case that failed after it was placed; else from its
    case folder on disk (a manifest lost, or a run killed between moving a pending case and
    saving the manifest: such a pending entry is moved into ``entries``). Cases in two split
    folders without a manifest entry are not guessed.
    """
    fixed: dict[str, str] = {cid: e["split"] for cid, e in entries.items()}
    for cid, f in old_failed.items():
        if f.get("split") in SPLITS:
            fixed.setdefault(cid, f["split"])
    ambiguous: dict[str, list[str]] = {}
    for cid, splits in _case_folders_on_disk(output).items():
        if cid in fixed:
            for s in splits:
                if s != fixed[cid]:
                    log.warning(
                        "%s holds case %s, which the manifest puts in %s: that folder is not "
                        "used (remove it)",
                        output / s / cid,
                        cid,
                        fixed[cid],
                    )
        elif len(splits) == 1:
            fixed[cid] = splits[0]
        else:
            ambiguous[cid] = splits
    for cid in list(pending):
        if cid in fixed:  # the pending case reached its split folder before the manifest
            if not (output / PENDING / cid).exists():
                entries.setdefault(cid, _relocate(pending[cid], cid, PENDING, fixed[cid]))
            del pending[cid]
    return fixed, ambiguous


def _relocate(entry: dict[str, Any], case_id: str, old: str, new: str) -> dict[str, Any]:
    """A manifest entry with its folder ``<old>/<case_id>/`` renamed to ``<new>/<case_id>/``."""
    entry = dict(entry)
    prefix = f"{old}/{case_id}/"
    for key in ("image", "mask", "fg", "original_label"):
        if str(entry.get(key, "")).startswith(prefix):
            entry[key] = f"{new}/{case_id}/" + str(entry[key])[len(prefix) :]
    entry["split"] = new
    return entry


def _assign(output: Path, case_id: str, entry: dict[str, Any], split: str) -> dict[str, Any]:
    """Move a pending case into its split folder (its first split: nothing is moved between
    splits) and return its entry.

    Raises:
        CaseError: the split folder already holds a folder of that name.
    """
    src = case_folder(output, PENDING, case_id)
    dst = case_folder(output, split, case_id)
    if dst.exists() or dst.is_symlink():
        raise CaseError(
            f"case {case_id}: {dst} exists already and is not in the manifest; move it away and "
            f"rerun (the prepared case waits in {src})"
        )
    dst.parent.mkdir(exist_ok=True)
    os.rename(src, dst)
    return _relocate(entry, case_id, PENDING, split)


def _count(splits: Iterable[str]) -> dict[str, int]:
    counts = dict.fromkeys(SPLITS, 0)
    for s in splits:
        counts[s] += 1
    return counts


def _few(ids: Sequence[str], n: int = 5) -> str:
    ids = sorted(ids, key=case_sort_key)
    return ", ".join(ids[:n]) + (", ..." if len(ids) > n else "")


def prepare_dataset(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    *,
    split: str | None = None,
    split_file: str | os.PathLike[str] | None = None,
    split_sheet: str | None = None,
    fold: int = 1,
    seed: int = 0,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
    options: PrepareOptions | None = None,
    workers: int = 2,
    limit: int | None = None,
    progress: bool = True,
    manifest_interval: float = 2.0,
    overwrite: bool = False,
    layout: str | None = None,
    images: str | os.PathLike[str] | None = None,
) -> PrepareSummary:
    """Prepare every case of ``source`` into ``output`` (resumable).

    **Splits are stable**: a case keeps the split it was first given. A rerun never moves a
    case to another split and never drops one from the manifest, whatever its ``limit=``,
    ``seed=`` or ``split_ratios=``: cases already in the set keep their split, new ones are
    drawn with this run's settings so that each split approaches its share of the whole set.
    The official split file is authoritative for the cases it lists: when it puts a case of
    the set into another split than the set has (another fold or file), the run is refused
    before anything is written (prepare that split into a new ``output=`` folder).

    **Drawn from the cases that prepared**: cases the split file does not decide are prepared
    into ``<output>/.pending/`` first and drawn at random, among those that prepared
    successfully, once all are done; then moved into their split folder.

    **No silently empty split**: a split the settings ask for (a ratio above 0, or a split file
    that lists cases in it) that this run would leave empty is refused before any write; one
    left empty because its cases failed is reported in :attr:`PrepareSummary.empty_splits`.

    Everything about the run is checked before the first write (the output folder, the
    source, the split, the settings of an existing set, files vesselfm did not write);
    everything about a case before that case's first write. Cases that fail are listed in the
    summary and the manifest; the others are prepared. The caller decides what a failure means
    (:meth:`PrepareSummary.raise_if_incomplete`; the CLI exits with status 2).

    Args:
        source: raw folder or zip archive (see :func:`vesselfm.data.imagecas.discover_cases`).
        output: folder of the prepared set.
        split: ``official`` (needs ``split_file``), ``random``, or ``None``: official when a
            split file is given or lies in the source folder (``imageCAS_data_split.xlsx``),
            else random.
        split_file: ImageCAS's split workbook or its CSV export.
        split_sheet: the workbook sheet to read (default: the one matching the case ids).
        fold: which of ImageCAS's 4 splits (1: 700 train / 50 val / 250 test).
        seed: seed of the random draw of new cases.
        split_ratios: train/val/test shares of the random split.
        options: resampling, label threshold, storage dtype.
        workers: processes preparing cases in parallel (1: in this process).
        limit: prepare only the first ``limit`` cases (by case id), e.g. to try settings; the
            set's other cases stay as they are.
        progress: show a progress bar.
        manifest_interval: seconds between manifest saves while running.
        overwrite: write into ``output`` even when it holds files vesselfm did not write (those
            at the paths prepare writes are replaced; the others are left alone).
        layout: ``imagecas`` (pairs of scans and binary labels), ``imagecasx`` (an ImageCAS-X
            root: its split lists less ``exclude.txt`` decide the splits, ``split=`` and
            ``split_file=`` do not apply; centrelines and descriptors go into the manifest) or
            ``None``: ``imagecasx`` when ``source`` holds ``segmentations/`` and ``filelist/``.
        images: the scans of an ImageCAS-X root when they lie elsewhere (e.g. the Kaggle folders
            ``1-200/<id>.img.nii.gz``, searched recursively); default ``<source>/volumes``.

    Returns:
        A :class:`PrepareSummary`.

    Raises:
        ValueError: bad source, split file or settings; ``output`` is a file, was prepared
            with other settings, or its split contradicts the split file; a split would be empty.
        UserError: ``output`` holds files vesselfm did not write, and not ``overwrite``.
        RuntimeError: no case could be prepared.
    """
    from vesselfm.utils.outputs import foreign_files_in

    t0 = time.perf_counter()
    options = options or PrepareOptions()
    output = Path(output).expanduser()
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if limit is not None and int(limit) < 1:
        raise ValueError(f"limit must be >= 1 (or null: all cases), got {limit}")

    # ---- everything about the run, before the first write
    _check_output(output)
    if not overwrite:
        foreign = foreign_files_in(output)
        if foreign:
            raise UserError(
                f"output={output} holds {len(foreign)} file(s) vesselfm did not write (e.g. "
                f"{foreign[0]}); prepare into a new or empty folder (output=), or pass "
                "overwrite=true to write there anyway"
            )
    single = isinstance(source, (str, os.PathLike))
    if layout is None:
        layout = "imagecasx" if single and is_imagecasx_root(source) else options.layout
    options = dataclasses.replace(options, layout=str(layout))  # checks layout
    if options.labels == "segments" and options.layout != "imagecasx":
        raise ValueError(
            f"labels=segments needs ImageCAS-X segment labels, and source={source} is no "
            "ImageCAS-X root (segmentations/ and filelist/); ImageCAS labels are binary: use "
            "labels=lumen"
        )
    xsource = None
    if options.layout == "imagecasx":
        if split is not None or split_file is not None:
            raise ValueError(
                "split= and split_file= do not apply to an ImageCAS-X root: its filelist/"
                "{train,val,test,exclude}.txt decide the splits (leave both unset)"
            )
        if not single:
            raise ValueError(f"layout=imagecasx needs one ImageCAS-X root as source, got {source}")
        xsource = discover_imagecasx(source, images)
        found = Discovery(cases=xsource.cases)
        log.info(
            "ImageCAS-X root %s: %d case(s) in its split lists, %d excluded by exclude.txt%s",
            source,
            len(xsource.table),
            len(xsource.excluded),
            f" ({_few(xsource.excluded)})" if xsource.excluded else "",
        )
    else:
        if images is not None:
            raise ValueError(
                "images= names the scans of an ImageCAS-X root (layout=imagecasx); for ImageCAS "
                "pairs give their folder as source="
            )
        found = discover_cases(source)
    cases = found.cases[: int(limit)] if limit else found.cases
    summary = PrepareSummary(output=output)
    failed: dict[str, dict[str, Any]] = {}
    if not limit:  # with limit=, only the first cases by id are this run's business
        for case, reason in found.invalid:
            failed[str(case.image)] = {
                "image": str(case.image),
                "label": str(case.label),
                "reason": reason,
            }
        for path, reason in found.unreadable:
            failed[path] = {"source": path, "reason": f"{path}: {reason}"}
        for cid, reason in xsource.missing if xsource is not None else ():
            failed[cid] = {"reason": reason}
    if not found.cases:  # only pairs without a usable id: nothing to prepare
        first = next(iter(failed.values()))["reason"]
        raise RuntimeError(
            f"no case could be prepared from source={source}: {len(failed)} failed (first: {first})"
        )
    if xsource is None and split is None and split_file is None:
        split_file = find_split_file(source)
        if split_file is not None:
            log.info(
                "using the split file found in the source: %s (split=random to ignore it)",
                split_file,
            )
    if xsource is not None:
        ratios = tuple(float(r) for r in split_ratios)
        plan = SplitSettings("imagecasx", dict(xsource.table), int(seed), ratios, xsource.info())  # type: ignore[arg-type]
    else:
        plan = split_settings(
            [c.case_id for c in cases], split, split_file, fold, seed, split_ratios, split_sheet
        )
    table = plan.table

    manifest = load_manifest(output) or {}
    settings = options.to_dict()
    for key, value in settings.items():
        if key in manifest and manifest[key] != value:
            raise ValueError(
                f"output={output} was prepared with {key}={manifest[key]}, this run asks for {value}; "
                "prepare into a new output folder (or delete that one)"
            )
    entries: dict[str, Any] = dict(manifest.get("cases", {}))
    pending: dict[str, Any] = dict(manifest.get("pending", {}))
    old_failed: dict[str, Any] = dict(manifest.get("failed", {}))
    for cid in [cid for cid in (*entries, *pending) if case_id_problem(cid) is not None]:
        # written by a version that accepted such ids; its files are left where they are
        log.warning(
            "manifest entry of case %r dropped: %s", cid, case_id_problem(cid) or "invalid id"
        )
        entries.pop(cid, None)
        pending.pop(cid, None)

    fixed, ambiguous = _known_splits(output, entries, pending, old_failed)
    for cid in xsource.excluded if xsource is not None else ():
        if cid in fixed:
            log.warning(
                "case %s is in %s but was prepared into %s/%s by an earlier run: it stays in the "
                "set (splits never drop a case); prepare into a new output= folder to leave it out",
                cid,
                xsource.root / "filelist" / "exclude.txt",
                output,
                fixed[cid],
            )

    if table is not None:
        conflicts = [
            (cid, s, table[cid]) for cid, s in fixed.items() if cid in table and table[cid] != s
        ]
        if conflicts:
            cid, have, want = sorted(conflicts, key=lambda c: case_sort_key(c[0]))[0]
            more = f" (and {len(conflicts) - 1} more case(s))" if len(conflicts) > 1 else ""
            raise ValueError(
                f"{plan.describe()} puts case {cid} in {want}, but output={output} has it in "
                f"{have}{more}; splits never move a case (a test case must not become a "
                "training case): prepare this split into a new output= folder"
            )

    # What this run does with each case.
    unusable = len(failed)  # pairs without a usable id, archives that could not be opened
    todo: list[tuple[Case, str]] = []
    for case in cases:
        cid = case.case_id
        if cid in ambiguous:
            failed[cid] = {
                "image": str(case.image),
                "label": str(case.label),
                "reason": f"case {cid}: folders in {' and '.join(ambiguous[cid])} of output={output} "
                "and no manifest entry; remove the wrong one (splits never move a case)",
            }
        elif cid in entries and case_is_complete(output, entries[cid]):
            summary.skipped.append(cid)
        elif cid in fixed:
            todo.append((case, fixed[cid]))  # redone where it is
        elif cid in pending and case_is_complete(output, pending[cid]):
            summary.skipped.append(cid)  # prepared, waiting for the draw
        elif table is not None and cid not in table:
            summary.not_in_split.append(cid)
        else:
            pending.pop(cid, None)  # half-written: redone
            todo.append((case, table[cid] if table is not None else PENDING))
    summary.attempted = len(cases) - len(summary.not_in_split) + unusable
    if summary.not_in_split:
        log.warning(
            "%d case(s) not in the split file, not prepared: %s",
            len(summary.not_in_split),
            _few(summary.not_in_split, 10),
        )

    # A split the settings ask for must not end up empty: refused now when the plan (every
    # case succeeding) leaves it empty; reported at the end when failures do.
    planned = _count(e["split"] for e in entries.values())
    for case, s in todo:
        if s in SPLITS and case.case_id not in entries:
            planned[s] += 1
    waiting = [
        cid for cid in pending if cid in summary.skipped or case_is_complete(output, pending[cid])
    ]
    waiting += [c.case_id for c, s in todo if s == PENDING]
    for s in _draw(waiting, plan, planned).values():
        planned[s] += 1
    for s in SPLITS:
        if plan.asks_for(s) and planned[s] == 0:
            raise ValueError(_empty_split_message(s, plan, planned, table, output))
    # ---- writing starts here
    output.mkdir(parents=True, exist_ok=True)
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    split_block = manifest.get("split") if fixed else None  # once a case has a split
    for cid in (*entries, *pending, *(c.case_id for c, _ in todo)):
        for s in (*SPLITS, PENDING):
            remove_stale_temporaries(output / s / cid)  # left by a killed run
    remove_stale_temporaries(output)
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": manifest.get("created", now),
        "updated": now,
        "source": [
            str(Path(s).expanduser().resolve())
            for s in ([source] if isinstance(source, (str, os.PathLike)) else source)
        ],
        **settings,
        "split": split_block or plan.info,
        "cases": entries,
        "failed": old_failed,
    }
    if xsource is not None:
        manifest["imagecasx"] = {
            "root": str(xsource.root.resolve()),
            "images": str(Path(images).expanduser().resolve()) if images is not None else None,
            "descriptors_file": xsource.descriptors_file,
            "segments": {str(code): name for code, name in SEGMENTS.items()},
        }
    if summary.skipped:
        log.info("%d case(s) already prepared, skipped", len(summary.skipped))

    by_id = {c.case_id: (c, s) for c, s in todo}
    run_failed = failed  # what this run could not do (the exit status)

    def save() -> None:
        # cases not attempted by this run keep their old failure (and split) in the manifest
        attempted = set(by_id) | set(summary.skipped) | set(run_failed)
        carried = {
            cid: f
            for cid, f in old_failed.items()
            if case_id_problem(cid) is None
            and cid not in attempted
            and cid not in entries
            and cid not in pending
        }
        manifest["cases"] = dict(sorted(entries.items(), key=lambda kv: case_sort_key(kv[0])))
        manifest["failed"] = dict(
            sorted({**carried, **run_failed}.items(), key=lambda kv: case_sort_key(kv[0]))
        )
        if pending:
            manifest["pending"] = dict(sorted(pending.items(), key=lambda kv: case_sort_key(kv[0])))
        else:
            manifest.pop("pending", None)
        write_manifest(output, manifest)

    def record(case_id: str, entry: dict[str, Any] | None, reason: str | None) -> None:
        case, where = by_id[case_id]
        if entry is not None:
            (pending if where == PENDING else entries)[case_id] = entry
            summary.prepared.append(case_id)
            return
        # the case's files are not complete: out of the set (its split, if any, is kept)
        entries.pop(case_id, None)
        pending.pop(case_id, None)
        run_failed[case_id] = {
            "image": str(case.image),
            "label": str(case.label),
            "reason": str(reason),
            **({"split": where} if where in SPLITS else {}),
        }
        log.warning("case %s failed: %s", case_id, reason)

    save()
    bar = None
    last_write = time.monotonic()
    try:
        if workers == 1 or len(todo) <= 1:
            bar = _progress(len(todo), progress)
            for case, where in todo:
                record(*_run_case(case, where, str(output), options))
                bar.update(1)
                if time.monotonic() - last_write > manifest_interval:
                    save()
                    last_write = time.monotonic()
        else:
            ctx, threads = _pool_context()
            if not threads:  # spawned workers share out the run's threads (the `threads` key)
                import torch

                threads = max(1, torch.get_num_threads() // workers)
            with cf.ProcessPoolExecutor(
                max_workers=min(workers, len(todo)),
                mp_context=ctx,
                initializer=_worker_init,
                initargs=(threads,),
            ) as pool:
                futures = [
                    pool.submit(_run_case, case, where, str(output), options)
                    for case, where in todo
                ]
                # After the first submit: the workers are forked before the bar's monitor thread starts.
                bar = _progress(len(todo), progress)
                try:
                    for fut in cf.as_completed(futures):
                        record(*fut.result())
                        bar.update(1)
                        if time.monotonic() - last_write > manifest_interval:
                            save()
                            last_write = time.monotonic()
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        if bar is not None:
            bar.close()
        save()

    # ---- the split of the new cases, drawn from those that prepared successfully
    ready = {
        cid: e
        for cid, e in pending.items()
        if cid in summary.prepared or cid in summary.skipped or case_is_complete(output, e)
    }
    placed = _count(e["split"] for e in entries.values())
    assigned = _draw(list(ready), plan, placed)
    for cid in sorted(assigned, key=case_sort_key):
        try:
            entries[cid] = _assign(output, cid, ready[cid], assigned[cid])
        except (CaseError, OSError) as err:
            case = by_id.get(cid, (None, None))[0]
            run_failed[cid] = {
                "image": str(case.image) if case else ready[cid].get("image_source", ""),
                "label": str(case.label) if case else ready[cid].get("label_source", ""),
                "reason": str(err),
            }
            continue
        del pending[cid]
    if not pending:
        try:
            (output / PENDING).rmdir()  # only when empty
        except OSError:
            pass
    new_by_file = [cid for cid in summary.prepared if by_id[cid][1] in SPLITS and cid not in fixed]
    drawn = [cid for cid in assigned if table is None or cid not in table]
    by_file = new_by_file + [cid for cid in assigned if cid not in drawn]
    notes = []
    if drawn:
        left_out = [cid for cid, (_, s) in by_id.items() if s == PENDING and cid in run_failed]
        notes.append(
            f"drawn at random ({plan.describe()}) among the {len(drawn)} new case(s) that "
            "prepared successfully"
            + (f" ({len(left_out)} other(s) failed and are left out)" if left_out else "")
        )
    if by_file:
        notes.append(f"{len(by_file)} new case(s) placed as {plan.describe()} says")
    if notes:
        summary.split_note = (
            "split: " + "; ".join(notes) + "; cases already in the set keep their split"
        )
    newly = [cid for cid in assigned if cid in entries] + new_by_file
    if (
        split_block
        and newly
        and {k: v for k, v in split_block.items() if k != "later"} != plan.info
    ):
        split_block.setdefault("later", []).append(
            {**plan.info, "cases": sorted(newly, key=case_sort_key)}
        )
        manifest["split"] = split_block

    summary.failed = dict(sorted(run_failed.items(), key=lambda kv: case_sort_key(kv[0])))
    summary.per_split = _count(e["split"] for e in entries.values())
    for s in SPLITS:
        if plan.asks_for(s) and summary.per_split[s] == 0:
            meant = [cid for cid, f in run_failed.items() if f.get("split") == s]
            summary.empty_splits[s] = (
                f"its {len(meant)} case(s) failed: {_few(meant)}"
                if meant
                else f"only {summary.total} case(s) prepared successfully, too few to draw one for it"
            )
    dices = {
        cid: e["round_trip_dice"] for cid, e in entries.items() if e.get("label_voxels", 0) > 0
    }
    if dices:
        summary.mean_round_trip_dice = float(np.mean(list(dices.values())))
        worst = min(dices, key=dices.get)
        summary.min_round_trip_dice = (worst, float(dices[worst]))
    if xsource is not None:  # what evaluation needs beside the masks
        for cid, entry in (*entries.items(), *pending.items()):
            entry["centerlines"] = xsource.centerlines.get(cid, [])
            if cid in xsource.descriptors:
                entry["descriptors"] = xsource.descriptors[cid]
    summary.seconds = time.perf_counter() - t0
    manifest["summary"] = {
        "cases": summary.per_split,
        "failed": len(manifest["failed"]),
        "mean_round_trip_dice": summary.mean_round_trip_dice,
        "split_note": summary.split_note,
    }
    save()

    if not entries:
        first = next(iter(run_failed.values()), None)
        raise RuntimeError(
            f"no case could be prepared from source={source}: {len(run_failed)} failed"
            + (f" (first: {first['reason']})" if first else "")
        )
    for line in summary.lines():
        log.info(line)
    return summary


def _draw(
    case_ids: Sequence[str], plan: SplitSettings, placed: Mapping[str, int]
) -> dict[str, str]:
    """The split of cases not placed yet: the split file's where it lists them, else drawn at
    random beside the ``placed`` ones (cases per split)."""
    table = plan.table or {}
    out = {cid: table[cid] for cid in case_ids if cid in table}
    counts = dict(placed)
    for s in out.values():
        counts[s] = counts.get(s, 0) + 1
    rest = [cid for cid in case_ids if cid not in out]
    if rest:
        out.update(draw_splits(rest, seed=plan.seed, ratios=plan.ratios, existing=counts))
    return out


def _empty_split_message(
    split: str,
    plan: SplitSettings,
    planned: Mapping[str, int],
    table: Mapping[str, str] | None,
    output: Path,
) -> str:
    n = sum(planned.values())
    if table is not None:
        listed = [cid for cid, s in table.items() if s == split]
        return (
            f"the set in output={output} would have no {split} case: {plan.describe()} puts none "
            f"of its {n} case(s) there (it lists {len(listed)} others, e.g. {_few(listed, 3)}); "
            "add those cases to source= (or raise limit=), or use split=random"
        )
    zero = list(plan.ratios)
    zero[SPLITS.index(split)] = 0.0
    return (
        f"the set in output={output} would have no {split} case: split_ratios={list(plan.ratios)} "
        f"over {n} case(s) leave none for {split} (3 or more cases give val and test one each); "
        f"prepare more cases (limit=), or set split_ratios={zero} to leave {split} empty on purpose"
    )


class _NoProgress:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool) -> Any:
    if not enabled or total == 0:
        return _NoProgress()  # no tqdm at all: it would start a monitor thread
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        desc="prepare",
        unit="case",
        disable=not enabled or total == 0,
        dynamic_ncols=True,
    )


__all__ = [
    "CaseError",
    "PrepareOptions",
    "PrepareSummary",
    "dice",
    "foreground_samples",
    "case_folder",
    "split_settings",
    "prepare_case",
    "prepare_dataset",
    "read_source",
    "round_trip_dice",
]


def _label_copy_name(member: str) -> str:
    """The name of the copy of an archive's label: ``label.nii.gz`` for NIfTI (gzip-compressed),
    ``label.nrrd``/``label.mha`` for the ITK formats (their own compression)."""
    from vesselfm.io import format_of

    if format_of(member) in (None, "nifti"):
        return LABEL_COPY
    return "label" + split_extension(Path(member).name)[1].lower()
