"""Datasets over a prepared set (``python -m vesselfm.prepare``): its cases read from the manifest,
random training patches and whole validation/test volumes.

Training draws random patches, a configurable share centred on vessel voxels (nnU-Net's
foreground oversampling: vessels are 0.1-0.3 % of a CTA), reading only the patch (plus an
optional margin) from the memory-mapped ``img.npy``/``mask.npy``; the crop is normalised with
the case's percentile range from the manifest, then augmented. Validation and test give whole
prepared volumes with the geometry needed to score at native resolution.

Example:
    >>> cases, preprocess = read_prepared_cases("/data/imagecas_prepared")  # doctest: +SKIP
    >>> ds = RandomPatchDataset(cases["train"], (128, 128, 128), 100, 0.33, preprocess)  # doctest: +SKIP
    >>> ds[0]["image"].shape  # doctest: +SKIP
    torch.Size([1, 128, 128, 128])
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from vesselfm.data.imagecas import case_sort_key
from vesselfm.data.manifest import MANIFEST, load_manifest
from vesselfm.data.preprocessing import PreprocessConfig, c_order, normalize_intensity


@dataclass(frozen=True)
class PreparedCase:
    """One case of a prepared set, paths resolved."""

    case_id: str
    split: str
    image: Path
    mask: Path
    fg: Path | None
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    intensity_range: tuple[float, float]
    original_label: str
    original_shape: tuple[int, int, int]
    original_spacing: tuple[float, float, float]


def read_prepared_cases(
    data_dir: str | os.PathLike[str],
) -> tuple[dict[str, list[PreparedCase]], PreprocessConfig]:
    """The cases of a prepared set by split, and its preprocessing config.

    Raises:
        FileNotFoundError: no ``manifest.json`` in ``data_dir`` (the message gives the command).
    """
    root = Path(data_dir).expanduser()
    manifest = load_manifest(root)
    if manifest is None:
        raise FileNotFoundError(
            f"data.data_dir={root} has no {MANIFEST}; prepare it first: "
            f"python -m vesselfm.prepare source=<ImageCAS folder or zip> output={root}"
        )
    splits: dict[str, list[PreparedCase]] = {"train": [], "val": [], "test": []}
    for case_id, e in sorted(
        manifest.get("cases", {}).items(), key=lambda kv: case_sort_key(kv[0])
    ):
        original_label = str(e["original_label"])
        if not Path(original_label).is_absolute():
            original_label = str(root / original_label)
        splits.setdefault(e["split"], []).append(
            PreparedCase(
                case_id=case_id,
                split=e["split"],
                image=root / e["image"],
                mask=root / e["mask"],
                fg=root / e["fg"] if e.get("fg") else None,
                shape=tuple(int(s) for s in e["prepared_shape"]),
                spacing=tuple(float(s) for s in e["prepared_spacing"]),
                intensity_range=(float(e["intensity_range"][0]), float(e["intensity_range"][1])),
                original_label=original_label,
                original_shape=tuple(int(s) for s in e["original_shape"]),
                original_spacing=tuple(float(s) for s in e["original_spacing"]),
            )
        )
    return splits, PreprocessConfig.from_mapping(manifest.get("preprocess"))


class _Volumes:
    """Lazily opened memory maps, one per file, per process (each DataLoader worker its own)."""

    def __init__(self) -> None:
        self._maps: dict[Path, np.ndarray] = {}
        self._fg: dict[Path, np.ndarray] = {}
        self._by_class: dict[Path, list[np.ndarray]] = {}

    def get(self, path: Path) -> np.ndarray:
        arr = self._maps.get(path)
        if arr is None:
            arr = self._maps[path] = np.load(path, mmap_mode="r")
        return arr

    def foreground(self, case: PreparedCase) -> np.ndarray:
        key = case.fg or case.mask
        arr = self._fg.get(key)
        if arr is None:
            if case.fg is not None and case.fg.is_file():
                arr = np.asarray(np.load(case.fg))
            else:  # a set without fg.npy: find the vessel voxels once
                arr = np.argwhere(np.asarray(self.get(case.mask)) > 0)
            self._fg[key] = arr
        return arr

    def foreground_by_class(self, case: PreparedCase) -> list[np.ndarray]:
        """:meth:`foreground`'s voxels grouped by their label value (segment code), one array
        per value present, in increasing order of the value."""
        key = case.fg or case.mask
        groups = self._by_class.get(key)
        if groups is None:
            fg = self.foreground(case)
            codes = np.asarray(self.get(case.mask)[tuple(fg.T.astype(np.intp))]) if len(fg) else []
            groups = [fg[codes == c] for c in np.unique(codes)]
            self._by_class[key] = groups
        return groups


def read_region(
    volume: np.ndarray,
    start: Sequence[int],
    size: Sequence[int],
    pad_value: float,
    dtype: np.dtype | type | None = None,
) -> np.ndarray:
    """``volume[start : start + size]`` copied out of a (memory-mapped) array into C order (as
    ``dtype``, in the same copy; default: the volume's), padded with ``pad_value`` where the
    region leaves the volume."""
    src, dst = [], []
    for s, n, dim in zip(start, size, volume.shape, strict=True):
        lo, hi = max(0, s), min(dim, s + n)
        src.append(slice(lo, max(lo, hi)))
        dst.append(slice(lo - s, lo - s + max(0, hi - lo)))
    region = np.asarray(volume[tuple(src)])
    if region.shape == tuple(size):
        # a Fortran-ordered file (prepared before C order was the rule) is reordered here
        return c_order(np.array(region, dtype=dtype))
    out = np.full(tuple(size), pad_value, dtype=dtype or volume.dtype)
    out[tuple(dst)] = region
    return out


def _without_metadata(transform: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Run MONAI transforms on plain tensors: a crop has no geometry worth tracking, and
    MetaTensor bookkeeping costs about a tenth of the published augmentation's time."""
    try:
        from monai.data import get_track_meta, set_track_meta
    except ImportError:  # pragma: no cover - monai is a dependency
        return transform(data)
    previous = get_track_meta()
    set_track_meta(False)
    try:
        return transform(data)
    finally:
        set_track_meta(previous)


class RandomPatchDataset(Dataset):
    """Random training patches with foreground oversampling.

    Item ``i`` is a patch of case ``i % len(cases)`` (shuffle the loader: each case is visited
    equally often). With probability ``foreground_ratio`` the patch contains a vessel voxel
    chosen at random, centred on it where the volume allows (nnU-Net's rule); otherwise its
    position is uniform. With ``balance_classes`` (segment labels) that voxel is drawn from one
    of the case's label values chosen with equal odds, then uniformly among that value's voxels
    (MONAI's ``RandCropByLabelClassesd`` with equal ratios), so a short segment is centred on
    as often as the longest. The crop is ``patch_size + 2 * margin`` voxels, normalised, then
    ``transform`` brings it to ``patch_size``.

    Randomness comes from torch's RNG (seeded per DataLoader worker and per epoch by
    Lightning / ``seed_everything``), so crops differ across workers and epochs and repeat
    with the same seed. The transforms' own random states are seeded from it by
    :meth:`seed_transforms`: as each loader worker starts, when the DataModule makes a loader
    that reads in the main process, and otherwise at the first item in a process; not per item,
    since MONAI's ``set_random_state`` builds a new NumPy ``RandomState`` for every transform
    (about 1.4 ms per patch for the published pipeline). Indexing one dataset by hand twice
    after the same ``torch.manual_seed`` therefore repeats the crops but not the augmentation
    unless :meth:`seed_transforms` is called in between.

    Items are ``{"image": (1, *patch_size) image_dtype, "label": (1, *patch_size) label_dtype}``;
    the label enters ``transform`` as uint8 (as stored).
    """

    def __init__(
        self,
        cases: Sequence[PreparedCase],
        patch_size: Sequence[int],
        samples: int,
        foreground_ratio: float,
        preprocess: PreprocessConfig,
        transform: Any | None = None,
        margin: Sequence[int] = (0, 0, 0),
        image_dtype: torch.dtype = torch.float32,
        label_dtype: torch.dtype = torch.float32,
        balance_classes: bool = False,
    ) -> None:
        if not cases:
            raise ValueError("no training cases: the prepared set's train split is empty")
        self.cases = list(cases)
        self.patch_size = tuple(int(p) for p in patch_size)
        self.samples = int(samples)
        self.foreground_ratio = float(foreground_ratio)
        self.preprocess = preprocess
        self.transform = transform
        self.margin = tuple(int(m) for m in margin)
        self.image_dtype, self.label_dtype = image_dtype, label_dtype
        self.balance_classes = bool(balance_classes)
        self._transform_seeded_in: int | None = None  # the process that seeded the transforms
        self._volumes = _Volumes()

    def __len__(self) -> int:
        return self.samples

    def _start(self, case: PreparedCase, rng: np.random.Generator) -> tuple[np.ndarray, bool]:
        """Corner of the patch (before the margin) and whether it was placed on a vessel voxel."""
        shape = np.asarray(case.shape, dtype=np.int64)
        patch = np.asarray(self.patch_size, dtype=np.int64)
        fits = shape >= patch
        if rng.random() < self.foreground_ratio:
            fg = self._volumes.foreground(case)
            if self.balance_classes and len(fg):
                groups = self._volumes.foreground_by_class(case)
                fg = groups[rng.integers(len(groups))]
            if len(fg):
                centre = fg[rng.integers(len(fg))].astype(np.int64)
                start = centre - patch // 2
                # Inside the volume where the patch fits (the vessel voxel stays in the patch).
                return np.where(fits, np.clip(start, 0, np.maximum(shape - patch, 0)), start), True
        random = np.array([rng.integers(0, max(int(h), 0) + 1) for h in shape - patch])
        return np.where(fits, random, -((patch - shape) // 2)), False

    def seed_transforms(self, seed: int | None = None) -> None:
        """Seed the transforms' random states with ``seed`` (default: a draw from torch's RNG)."""
        if seed is None:
            seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        if self.transform is not None and hasattr(self.transform, "set_random_state"):
            self.transform.set_random_state(seed=seed)
        self._transform_seeded_in = os.getpid()

    def __getitem__(self, index: int) -> dict[str, Any]:
        seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        rng = np.random.default_rng(seed)
        case = self.cases[index % len(self.cases)]
        size = tuple(p + 2 * m for p, m in zip(self.patch_size, self.margin, strict=True))
        start, _ = self._start(case, rng)
        start = start - np.asarray(self.margin)
        lo = case.intensity_range[0]
        # read as float32 and normalised in place, in NumPy (its int16 cast is ~4x faster)
        image = read_region(self._volumes.get(case.image), start, size, lo, dtype=np.float32)
        label = read_region(self._volumes.get(case.mask), start, size, pad_value=0)
        data = {
            "image": torch.from_numpy(
                normalize_intensity(image, case.intensity_range, self.preprocess, copy=False)
            )[None],
            "label": torch.from_numpy(label)[None],
        }
        if self.transform is not None:
            if self._transform_seeded_in != os.getpid():
                self.seed_transforms(seed)
            data = _without_metadata(self.transform, data)
        image = torch.as_tensor(data["image"]).as_subclass(torch.Tensor)
        label = torch.as_tensor(data["label"]).as_subclass(torch.Tensor)
        if (
            label.is_floating_point()
            and not self.label_dtype.is_floating_point
            and bool(torch.frac(label).any())
        ):  # the cast would truncate it
            raise ValueError(
                "data.augment made the training label fractional (a transform interpolates the "
                "label linearly): give the label key mode nearest"
            )
        return {"image": image.to(self.image_dtype), "label": label.to(self.label_dtype)}


class VolumeDataset(Dataset):
    """Whole prepared volumes (validation, test): deterministic, normalised as ``infer`` does.

    Item: ``{"image": (1, X, Y, Z) float32, "label": (1, X, Y, Z) float32 0/1, "case": str,
    "spacing": (3,) mm, "original_label": str, "original_shape": (3,), "original_spacing": (3,) mm}``.
    """

    def __init__(self, cases: Sequence[PreparedCase], preprocess: PreprocessConfig) -> None:
        self.cases = list(cases)
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.cases)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.cases[index]
        image = np.load(case.image)
        label = np.load(case.mask)
        return {
            "image": torch.from_numpy(
                normalize_intensity(image, case.intensity_range, self.preprocess)[None]
            ),
            "label": torch.from_numpy(label[None].astype(np.float32)),
            "case": case.case_id,
            "spacing": torch.tensor(case.spacing, dtype=torch.float64),
            "original_label": case.original_label,
            "original_shape": torch.tensor(case.original_shape, dtype=torch.int64),
            "original_spacing": torch.tensor(case.original_spacing, dtype=torch.float64),
        }


__all__ = [
    "PreparedCase",
    "RandomPatchDataset",
    "VolumeDataset",
    "read_prepared_cases",
    "read_region",
]
