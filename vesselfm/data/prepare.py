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
"""

from __future__ import annotations

import concurrent.futures as cf
import datetime as _dt
import gzip
import json
import logging
import multiprocessing as mp
import os
import shutil
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vesselfm.data.imagecas import (
    SPLITS,
    Case,
    SourceFile,
    case_sort_key,
    discover_cases,
    find_split_file,
    random_split,
    read_official_split,
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
    spacing_from_affine,
    target_shape,
)
from vesselfm.utils.io import atomic_path

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
IMAGE_FILE, MASK_FILE, FG_FILE, LABEL_COPY = "img.npy", "mask.npy", "fg.npy", "label.nii.gz"
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
    """

    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    label_threshold: float = DEFAULT_LABEL_THRESHOLD
    image_dtype: str = "auto"
    affine_tolerance: float = 1e-3

    def __post_init__(self) -> None:
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
        }


@dataclass
class PrepareSummary:
    """What a run did. ``prepared``: newly written; ``skipped``: already complete."""

    output: Path
    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, dict[str, str]] = field(default_factory=dict)
    not_in_split: list[str] = field(default_factory=list)
    per_split: dict[str, int] = field(default_factory=dict)
    mean_round_trip_dice: float | None = None
    min_round_trip_dice: tuple[str, float] | None = None
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.per_split.values())

    def lines(self) -> list[str]:
        """A human-readable summary, one fact per line."""
        out = [
            f"prepared set: {self.output}",
            f"cases: {self.total} ready ({', '.join(f'{s} {self.per_split.get(s, 0)}' for s in SPLITS)})"
            f"; this run: {len(self.prepared)} prepared, {len(self.skipped)} already done, "
            f"{len(self.failed)} failed"
            + (f", {len(self.not_in_split)} not in the split file" if self.not_in_split else ""),
        ]
        if self.mean_round_trip_dice is not None:
            worst = self.min_round_trip_dice
            out.append(
                f"round-trip Dice (label down and back up to the original grid): mean {self.mean_round_trip_dice:.4f}"
                + (f", lowest {worst[1]:.4f} (case {worst[0]})" if worst else "")
            )
        for case_id, info in self.failed.items():
            out.append(f"failed case {case_id}: {info['reason']}")
        out.append(f"time: {self.seconds:.1f} s")
        return out


# ------------------------------------------------------------------------------------ reading


def _gzip_module() -> Any:
    """ISA-L's gzip (``isal.igzip``, 2-3x faster inflate, same API) when installed, else ``gzip``."""
    try:
        from isal import igzip
    except ImportError:
        return gzip
    return igzip


def read_nifti(src: SourceFile) -> Any:
    """Open a NIfTI file on disk or inside a zip archive (header read; data read on access)."""
    import nibabel as nib

    if src.member is None:
        return nib.load(src.path)
    with zipfile.ZipFile(src.path) as zf:
        data = zf.read(src.member)
    if src.member.endswith(".gz"):
        data = _gzip_module().decompress(data)
    return nib.Nifti1Image.from_bytes(data)


def read_nifti_array(src: SourceFile) -> tuple[np.ndarray, np.ndarray]:
    """The voxel array (see :func:`read_volume`) and the 4×4 affine of a NIfTI file.

    A ``.nii.gz`` on disk is inflated straight into the array's buffer, with ISA-L when
    ``isal`` is installed (decompression is most of the time of reading a CTA).
    """
    import nibabel as nib

    if src.member is None and str(src.path).endswith(".gz"):
        with _gzip_module().open(src.path, "rb") as fileobj:
            img = nib.Nifti1Image.from_file_map(
                nib.Nifti1Image.make_file_map({"image": fileobj, "header": fileobj})
            )
            return read_volume(img), np.asarray(img.affine, dtype=np.float64)
    img = read_nifti(src)
    return read_volume(img), np.asarray(img.affine, dtype=np.float64)


def read_volume(img: Any) -> np.ndarray:
    """The voxel array of a nibabel image in its stored dtype, scaled only when the header
    says so (float32 then, never float64: a 512×512×275 scan is 144 MB as int16, 577 MB as float64)."""
    proxy = img.dataobj
    if not hasattr(proxy, "get_unscaled"):
        return np.asanyarray(proxy)
    raw = np.asanyarray(proxy.get_unscaled())
    slope = float(getattr(proxy, "slope", 1.0))
    inter = float(getattr(proxy, "inter", 0.0))
    if slope == 1.0 and inter == 0.0:
        return raw
    if raw.dtype.kind in "iu" and slope.is_integer() and inter.is_integer():
        return raw.astype(np.int32) * int(slope) + int(inter)
    return raw.astype(np.float32) * np.float32(slope) + np.float32(inter)


def _load(src: SourceFile, what: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data, affine = read_nifti_array(src)
    except Exception as err:  # noqa: BLE001 - nibabel, gzip, zlib and zipfile raise many types
        raise CaseError(
            f"{what} {src}: unreadable or truncated ({type(err).__name__}: {err})"
        ) from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{what} {src}: expected a 3D volume, got shape {data.shape}")
    return data, affine


def _check_label(label: np.ndarray, src: SourceFile) -> np.ndarray:
    """The label as bool; raise when it is not binary 0/1 or holds NaN."""
    if label.dtype.kind == "f" and not np.isfinite(label).all():
        raise CaseError(f"label {src}: holds NaN or infinite values")
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


def clean_temporary_files(folder: Path) -> int:
    """Remove leftovers of interrupted writes (``.<name>.<random>.tmp<suffix>``) from ``folder``."""
    removed = 0
    if folder.is_dir():
        for p in folder.glob(".*.tmp*"):
            p.unlink(missing_ok=True)
            removed += 1
    return removed


# ---------------------------------------------------------------------------------- one case


def prepare_case(
    case: Case, split: str, output: str | os.PathLike[str], options: PrepareOptions
) -> dict[str, Any]:
    """Prepare one case into ``<output>/<split>/<case>/`` and return its manifest entry.

    Args:
        case: the image/label pair.
        split: ``train``, ``val`` or ``test``.
        output: the prepared set's root folder.
        options: resampling, label threshold and storage dtype.

    Returns:
        The manifest entry: source paths, original and prepared geometry (shape, spacing in
        mm, 4×4 affine), label voxel counts, ``intensity_range``, round-trip Dice, dtypes.

    Raises:
        CaseError: unreadable or truncated file, image/label shape or affine mismatch,
            non-binary label, NaN in the image. Nothing is written for such a case.
    """
    start = time.perf_counter()
    output = Path(output)
    image, affine = _load(case.image, "image")
    if image.dtype.kind == "f" and not np.isfinite(image).all():
        raise CaseError(f"image {case.image}: holds NaN or infinite values")
    label_raw, label_affine = _load(case.label, "label")
    if label_raw.shape != image.shape:
        raise CaseError(
            f"label {case.label}: shape {tuple(label_raw.shape)} differs from the image's {tuple(image.shape)}"
        )
    diff = float(np.max(np.abs(label_affine - affine)))
    if diff > options.affine_tolerance:
        raise CaseError(
            f"label {case.label}: affine differs from the image's by up to {diff:.4g} mm "
            f"(tolerance {options.affine_tolerance:g} mm)"
        )
    label = _check_label(label_raw, case.label)
    del label_raw

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

    case_dir = output / split / case.case_id
    case_dir.mkdir(parents=True, exist_ok=True)
    clean_temporary_files(case_dir)
    _save_npy(case_dir / IMAGE_FILE, stored)
    _save_npy(case_dir / MASK_FILE, c_order(mask))
    _save_npy(
        case_dir / FG_FILE, foreground_samples(mask, FG_SAMPLES, seed=_stable_seed(case.case_id))
    )
    rel = f"{split}/{case.case_id}"
    if case.label.member is not None:
        # Archive sources: keep a readable copy of the original label for native-resolution scoring.
        with zipfile.ZipFile(case.label.path) as zf, atomic_path(case_dir / LABEL_COPY) as tmp:
            data = zf.read(case.label.member)
            tmp.write_bytes(
                data if case.label.member.endswith(".gz") else gzip.compress(data, compresslevel=1)
            )
        original_label = f"{rel}/{LABEL_COPY}"
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


# ---------------------------------------------------------------------------------- manifest


def load_manifest(output: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The manifest of a prepared set, or ``None`` when there is none yet."""
    path = Path(output) / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not valid JSON ({err}); delete it to prepare the set again"
        ) from err


def write_manifest(output: str | os.PathLike[str], manifest: Mapping[str, Any]) -> None:
    """Write ``manifest.json`` atomically (never half-written)."""
    with atomic_path(Path(output) / MANIFEST) as tmp:
        tmp.write_text(json.dumps(manifest, indent=1, sort_keys=False))


def case_is_complete(output: Path, entry: Mapping[str, Any]) -> bool:
    """True when a manifest entry's files exist with the recorded shape and dtype."""
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


# ---------------------------------------------------------------------------------- the set


def plan_splits(
    cases: Sequence[Case],
    split: str | None,
    split_file: str | os.PathLike[str] | None,
    fold: int,
    seed: int,
    ratios: Sequence[float],
    sheet: str | None = None,
) -> tuple[dict[str, str], dict[str, Any]]:
    """Assign each case to train/val/test; return the assignment and the manifest's ``split`` block."""
    ids = [c.case_id for c in cases]
    mode = (split or ("official" if split_file else "random")).lower()
    if mode == "official":
        if split_file is None:
            raise ValueError(
                "split=official needs split_file=<imageCAS_data_split.xlsx or .csv>; or use split=random"
            )
        table, used_sheet = read_official_split(split_file, fold=fold, sheet=sheet, case_ids=ids)
        if not set(ids) & set(table):
            raise ValueError(
                f"split_file={split_file}: none of its {len(table)} case ids match the source's "
                f"{len(ids)} cases (e.g. {ids[:3]} vs {sorted(table, key=case_sort_key)[:3]}); "
                "check the file, or pass split_sheet="
            )
        info = {
            "mode": "official",
            "fold": int(fold),
            "seed": None,
            "split_file": str(Path(split_file).resolve()),
            "sheet": used_sheet,
        }
        return {i: table[i] for i in ids if i in table}, info
    if mode == "random":
        info = {
            "mode": "random",
            "fold": None,
            "seed": int(seed),
            "split_file": None,
            "ratios": [float(r) for r in ratios],
        }
        return random_split(ids, seed=seed, ratios=ratios), info
    raise ValueError(
        f"split must be 'official' or 'random' (or null: official when split_file is given), got {split!r}"
    )


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
) -> PrepareSummary:
    """Prepare every case of ``source`` into ``output`` (resumable).

    Args:
        source: raw folder or zip archive (see :func:`vesselfm.data.imagecas.discover_cases`).
        output: folder of the prepared set.
        split: ``official`` (needs ``split_file``), ``random``, or ``None``: official when a
            split file is given or lies in the source folder (``imageCAS_data_split.xlsx``),
            else random.
        split_file: ImageCAS's split workbook or its CSV export.
        split_sheet: the workbook sheet to read (default: the one matching the case ids).
        fold: which of ImageCAS's 4 splits (1: 700 train / 50 val / 250 test).
        seed: seed of the random split.
        split_ratios: train/val/test shares of the random split.
        options: resampling, label threshold, storage dtype.
        workers: processes preparing cases in parallel (1: in this process).
        limit: prepare only the first ``limit`` cases (by case id), e.g. to try settings.
        progress: show a progress bar.
        manifest_interval: seconds between manifest saves while running.

    Returns:
        A :class:`PrepareSummary`.

    Raises:
        ValueError: bad source, split file or settings; ``output`` prepared with other settings.
        RuntimeError: no case could be prepared.
    """
    t0 = time.perf_counter()
    options = options or PrepareOptions()
    output = Path(output).expanduser()
    workers = int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")

    found = discover_cases(source)
    cases = found.cases[: int(limit)] if limit else found.cases
    if split is None and split_file is None:
        split_file = find_split_file(source)
        if split_file is not None:
            log.info(
                "using the split file found in the source: %s (split=random to ignore it)",
                split_file,
            )
    assignment, split_info = plan_splits(
        cases, split, split_file, fold, seed, split_ratios, split_sheet
    )
    summary = PrepareSummary(output=output)
    summary.not_in_split = [c.case_id for c in cases if c.case_id not in assignment]
    if summary.not_in_split:
        log.warning(
            "%d case(s) not in the split file, not prepared: %s",
            len(summary.not_in_split),
            ", ".join(summary.not_in_split[:10])
            + (" ..." if len(summary.not_in_split) > 10 else ""),
        )
    cases = [c for c in cases if c.case_id in assignment]

    output.mkdir(parents=True, exist_ok=True)
    manifest = load_manifest(output) or {}
    settings = options.to_dict()
    for key, value in settings.items():
        if key in manifest and manifest[key] != value:
            raise ValueError(
                f"output={output} was prepared with {key}={manifest[key]}, this run asks for {value}; "
                "prepare into a new output folder (or delete that one)"
            )
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    entries: dict[str, Any] = dict(manifest.get("cases", {}))
    failed: dict[str, Any] = {}
    wanted = {c.case_id for c in cases}
    stale = [cid for cid in entries if cid not in wanted]
    for cid in stale:
        entries.pop(cid)
    if stale:
        log.warning(
            "%d case(s) of the existing manifest are not in this run and were dropped from it",
            len(stale),
        )
    manifest = {
        "format": MANIFEST_FORMAT,
        "created": manifest.get("created", now),
        "updated": now,
        "source": [
            str(Path(s).expanduser().resolve())
            for s in ([source] if isinstance(source, (str, os.PathLike)) else source)
        ],
        **settings,
        "split": split_info,
        "cases": entries,
        "failed": failed,
    }

    todo: list[Case] = []
    for case in cases:
        target = assignment[case.case_id]
        entry = entries.get(case.case_id)
        if entry is not None and case_is_complete(output, entry):
            if entry["split"] != target:
                _move_case(output, case.case_id, entry, target)
            summary.skipped.append(case.case_id)
            continue
        entries.pop(case.case_id, None)
        todo.append(case)
    for split_name in SPLITS:
        clean_all = output / split_name
        if clean_all.is_dir():
            for d in clean_all.iterdir():
                clean_temporary_files(d)
    write_manifest(output, manifest)
    if summary.skipped:
        log.info("%d case(s) already prepared, skipped", len(summary.skipped))

    def record(case_id: str, entry: dict[str, Any] | None, reason: str | None) -> None:
        if entry is not None:
            entries[case_id] = entry
            summary.prepared.append(case_id)
        else:
            case = by_id[case_id]
            failed[case_id] = {
                "image": str(case.image),
                "label": str(case.label),
                "reason": str(reason),
            }
            log.warning("case %s failed: %s", case_id, reason)

    by_id = {c.case_id: c for c in todo}
    bar = None
    last_write = time.monotonic()
    try:
        if workers == 1 or len(todo) <= 1:
            bar = _progress(len(todo), progress)
            for case in todo:
                record(*_run_case(case, assignment[case.case_id], str(output), options))
                bar.update(1)
                if time.monotonic() - last_write > manifest_interval:
                    write_manifest(output, manifest)
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
                    pool.submit(_run_case, case, assignment[case.case_id], str(output), options)
                    for case in todo
                ]
                # After the first submit: the workers are forked before the bar's monitor thread starts.
                bar = _progress(len(todo), progress)
                try:
                    for fut in cf.as_completed(futures):
                        record(*fut.result())
                        bar.update(1)
                        if time.monotonic() - last_write > manifest_interval:
                            write_manifest(output, manifest)
                            last_write = time.monotonic()
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    raise
    finally:
        if bar is not None:
            bar.close()
        manifest["cases"] = dict(sorted(entries.items(), key=lambda kv: case_sort_key(kv[0])))
        manifest["failed"] = dict(sorted(failed.items(), key=lambda kv: case_sort_key(kv[0])))
        summary.failed = manifest["failed"]
        summary.per_split = {s: sum(e["split"] == s for e in entries.values()) for s in SPLITS}
        dices = {
            cid: e["round_trip_dice"] for cid, e in entries.items() if e.get("label_voxels", 0) > 0
        }
        if dices:
            summary.mean_round_trip_dice = float(np.mean(list(dices.values())))
            worst = min(dices, key=dices.get)
            summary.min_round_trip_dice = (worst, float(dices[worst]))
        summary.seconds = time.perf_counter() - t0
        manifest["summary"] = {
            "cases": summary.per_split,
            "failed": len(failed),
            "mean_round_trip_dice": summary.mean_round_trip_dice,
        }
        write_manifest(output, manifest)

    if not entries:
        raise RuntimeError(
            f"no case could be prepared from source={source}: {len(failed)} failed "
            + (
                f"(first: case {next(iter(failed))}: {next(iter(failed.values()))['reason']})"
                if failed
                else ""
            )
        )
    for line in summary.lines():
        log.info(line)
    return summary


def _move_case(output: Path, case_id: str, entry: dict[str, Any], split: str) -> None:
    """Move a finished case to another split folder (the split plan changed)."""
    src = output / entry["split"] / case_id
    dst = output / split / case_id
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.exists():
        shutil.rmtree(dst)
    os.replace(src, dst)
    old = f"{entry['split']}/{case_id}/"
    for key in ("image", "mask", "fg", "original_label"):
        if str(entry[key]).startswith(old):
            entry[key] = f"{split}/{case_id}/" + str(entry[key])[len(old) :]
    entry["split"] = split


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
    "case_is_complete",
    "dice",
    "foreground_samples",
    "load_manifest",
    "plan_splits",
    "prepare_case",
    "prepare_dataset",
    "read_nifti",
    "read_nifti_array",
    "read_volume",
    "round_trip_dice",
    "write_manifest",
]
