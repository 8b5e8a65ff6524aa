"""Lightning DataModules over a prepared set (``python -m vesselfm.prepare``) or generated phantoms.

Training draws random patches, a configurable share centred on vessel voxels (nnU-Net's
foreground oversampling: vessels are 0.1-0.3 % of a CTA), reading only the patch (plus an
optional margin) from the memory-mapped ``img.npy``/``mask.npy``; the crop is normalised with
the case's percentile range from the manifest, then augmented. Validation and test give whole
prepared volumes with the geometry needed to score at native resolution.

Example:
    >>> dm = ImageCASDataModule("/data/imagecas_prepared", patch_size=(128, 128, 128))  # doctest: +SKIP
    >>> dm.setup("fit")  # doctest: +SKIP
    >>> batch = next(iter(dm.train_dataloader()))  # float16 image, uint8 label  # doctest: +SKIP
    >>> batch = dm.on_after_batch_transfer(batch, 0)  # as Lightning does  # doctest: +SKIP
    >>> batch["image"].shape, batch["label"].dtype  # doctest: +SKIP
    (torch.Size([6, 1, 128, 128, 128]), torch.float32)
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vesselfm.data.imagecas import case_sort_key
from vesselfm.data.prepare import MANIFEST, load_manifest
from vesselfm.data.preprocessing import PreprocessConfig, c_order, normalize_intensity
from vesselfm.data.transforms import train_transforms

log = logging.getLogger(__name__)


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


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory(mmap_threshold: int = 32 << 20, trim_threshold: int = 1 << 30) -> bool:
    """Have glibc's ``malloc`` serve blocks of up to ``mmap_threshold`` bytes (32 MiB, its
    maximum) from the heap and keep up to ``trim_threshold`` bytes of freed heap for reuse.

    By default glibc maps each large block from the kernel and returns it when freed, so every
    128³ float32 tensor that an augmentation allocates (8 MB) costs about 2000 page faults: on
    the published pipeline that is 4700 faults and about a third of the time per training
    patch. A loader worker allocates the same few sizes over and over, so keeping the memory is
    the right trade (the heap stays at the worker's peak, about 200 MB for 128³ patches).
    Returns whether it applied (``False`` off glibc)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    # the order matters: a trim threshold alone turns off glibc's adaptive mmap threshold
    return bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold))) and bool(
        mallopt(_M_TRIM_THRESHOLD, int(trim_threshold))
    )


def loader_worker_init(worker_id: int, rank: int | None = None) -> None:
    """``worker_init_fn`` of the DataModule's loaders.

    Args:
        worker_id: the DataLoader worker's index.
        rank: the process's global rank, for Lightning's per-worker seeds.

    Runs :func:`keep_freed_memory`, then Lightning's per-worker seeding when
    ``seed_everything(workers=True)`` asked for it (Lightning adds its own only to loaders that
    have no ``worker_init_fn``), then seeds the dataset's transforms from the worker's torch RNG
    (``RandomPatchDataset.seed_transforms``).
    """
    keep_freed_memory()
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        from lightning.fabric.utilities.seed import pl_worker_init_function

        pl_worker_init_function(worker_id, rank=rank)
    info = torch.utils.data.get_worker_info()
    if info is not None and hasattr(info.dataset, "seed_transforms"):
        info.dataset.seed_transforms()


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


def collate_label_bits(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``collate_fn`` of the training loader with ``data.label_bits``: images (and any other
    key) stacked as ``default_collate`` does; the 0/1 labels packed 8 voxels to a byte along the
    last axis (``np.packbits``) as ``label_bits`` ``(B, 1, X, Y, ceil(Z / 8))`` uint8, an eighth
    of the bytes to move out of the worker. :func:`unpack_label_bits` restores them."""
    from torch.utils.data import default_collate

    batch = default_collate([{k: v for k, v in s.items() if k != "label"} for s in samples])
    labels = np.stack([np.asarray(s["label"]) for s in samples])
    if labels.dtype != np.uint8 or labels.max(initial=0) > 1:
        raise ValueError(
            "data.label_bits needs 0/1 uint8 training labels; set data.label_bits=false to "
            "move other labels as they are"
        )
    batch["label_bits"] = torch.from_numpy(np.packbits(labels, axis=-1))
    return batch


def unpack_label_bits(
    bits: torch.Tensor, depth: int, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The labels :func:`collate_label_bits` packed: ``(..., ceil(depth / 8))`` uint8 to
    ``(..., depth)`` 0/1 of ``dtype``, on ``bits``' device."""
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=bits.device)
    unpacked = (bits.unsqueeze(-1) >> shifts) & 1  # np.packbits' order: first voxel, high bit
    return unpacked.flatten(-2)[..., :depth].to(dtype)


def unpacked_batch(batch: Mapping[str, Any]) -> dict[str, Any]:
    """``batch`` with ``label_bits`` (if present) unpacked into a float32 ``label`` shaped as
    ``image``."""
    batch = dict(batch)
    bits = batch.pop("label_bits", None)
    if isinstance(bits, torch.Tensor):
        batch["label"] = unpack_label_bits(bits, int(batch["image"].shape[-1]))
    return batch


class RandomPatchDataset(Dataset):
    """Random training patches with foreground oversampling.

    Item ``i`` is a patch of case ``i % len(cases)`` (shuffle the loader: each case is visited
    equally often). With probability ``foreground_ratio`` the patch contains a vessel voxel
    chosen at random, centred on it where the volume allows (nnU-Net's rule); otherwise its
    position is uniform. The crop is ``patch_size + 2 * margin`` voxels, normalised, then
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


def _triple(value: int | Sequence[int], key: str) -> tuple[int, int, int]:
    vals = [int(value)] * 3 if isinstance(value, (int, np.integer)) else [int(v) for v in value]
    if len(vals) != 3 or min(vals) < 0:
        raise ValueError(f"data.{key} must be 3 non-negative integers (X, Y, Z), got {value}")
    return tuple(vals)  # type: ignore[return-value]


def _plain(value: Any) -> Any:
    """OmegaConf containers (passed with ``_recursive_=False``) as plain Python objects."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf
    except ImportError:  # pragma: no cover - omegaconf comes with hydra
        return value
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    return value


TRANSFER_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


class ImageCASDataModule(L.LightningDataModule):
    """Training patches and whole validation/test volumes from a prepared set.

    Args:
        data_dir: the prepared set (``python -m vesselfm.prepare ... output=<data_dir>``).
        patch_size: training patch ``(X, Y, Z)`` voxels (vesselFM: 128³).
        batch_size: training patches per batch (vesselFM: 6). Validation/test: 1 volume.
        num_workers: DataLoader worker processes.
        pin_memory: pin batches for faster host-to-GPU copies.
        persistent_workers: keep workers alive between epochs (when ``num_workers > 0``).
        foreground_ratio: share of patches containing (centred on) a vessel voxel, in [0, 1].
        samples_per_epoch: patches per training epoch; ``None``: one per training case.
        augment: ``True`` (the published fine-tune's pipeline), ``False``, or a list of
            ``_target_`` transform configs (MONAI dict transforms keyed image/label).
        crop_margin: voxels read around the patch on each side, so that spatial augmentation
            samples real data instead of padding (0: pad, as the published pipeline does).
        num_shots: train on the first N training cases only (few-shot), ``None`` for all.
        seed: unused for sampling (torch's RNG, seeded by ``seed_everything``, drives it);
            kept for the record and for the phantom subclass.
        prefetch_factor: batches each worker loads ahead.
        transfer_dtype: dtype of training images between the loader workers and the training
            step: ``float16`` (default) halves the bytes each batch costs to move out of a
            worker (labels travel as uint8: 0/1 is exact), ``float32`` keeps them full
            precision. :meth:`on_after_batch_transfer` casts both to float32 on the device, so
            ``training_step`` sees float32. float16 keeps 11 significant bits of the [0, 1]
            normalised intensity (about 0.5 HU of a 1000 HU window), finer than bf16 autocast.
        label_bits: ``True`` (``data.label_bits``, on in ``configs/data/imagecas.yaml``):
            training labels leave the workers packed 8 voxels to a byte, as ``label_bits``
            (:func:`collate_label_bits`; a third fewer bytes per batch), and
            :meth:`on_after_batch_transfer` (or :func:`unpacked_batch`) gives the float32
            ``label`` back; a loop that reads the loader's batches itself must call one of them.
            ``False`` (the default here): uint8 ``label``.
        fast_transforms: build the listed ``monai.transforms.X`` as the faster
            ``vesselfm.data.transforms.X`` where there is one (see that module for what differs).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None,
        patch_size: int | Sequence[int] = (128, 128, 128),
        batch_size: int = 6,
        num_workers: int = 4,
        pin_memory: bool = True,
        persistent_workers: bool = True,
        foreground_ratio: float = 0.33,
        samples_per_epoch: int | None = None,
        augment: bool | Sequence[Any] | Mapping[str, Any] = True,
        crop_margin: int | Sequence[int] = 0,
        num_shots: int | None = None,
        seed: int = 0,
        prefetch_factor: int | None = 2,
        transfer_dtype: str = "float16",
        label_bits: bool = False,
        fast_transforms: bool = True,
    ) -> None:
        super().__init__()
        self.data_dir = Path(data_dir).expanduser() if data_dir is not None else None
        self.patch_size = _triple(_plain(patch_size), "patch_size")
        if min(self.patch_size) < 1:
            raise ValueError(f"data.patch_size must be positive, got {patch_size}")
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"data.batch_size must be >= 1, got {batch_size}")
        self.num_workers = int(num_workers)
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {num_workers}")
        self.pin_memory = bool(pin_memory)
        self.persistent_workers = bool(persistent_workers)
        self.foreground_ratio = float(foreground_ratio)
        if not 0.0 <= self.foreground_ratio <= 1.0:
            raise ValueError(f"data.foreground_ratio must be in [0, 1], got {foreground_ratio}")
        self.samples_per_epoch = None if samples_per_epoch is None else int(samples_per_epoch)
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise ValueError(
                f"data.samples_per_epoch must be >= 1 or null, got {samples_per_epoch}"
            )
        self.augment = _plain(augment)
        self.crop_margin = _triple(_plain(crop_margin), "crop_margin")
        self.num_shots = None if num_shots is None else int(num_shots)
        if self.num_shots is not None and self.num_shots < 1:
            raise ValueError(f"data.num_shots must be >= 1 or null, got {num_shots}")
        self.seed = int(seed)
        self.prefetch_factor = prefetch_factor
        if transfer_dtype not in TRANSFER_DTYPES:
            raise ValueError(
                f"data.transfer_dtype must be one of {sorted(TRANSFER_DTYPES)}, got {transfer_dtype!r}"
            )
        self.transfer_dtype = TRANSFER_DTYPES[transfer_dtype]
        self.label_bits = bool(label_bits)
        # Build the transforms now: a bad _target_ fails before any data is touched.
        # labels leave the pipeline as uint8 (float32 after a MONAI resampling) and are
        # checked and cast to uint8 by the dataset
        self._train_transform = train_transforms(
            self.augment, self.patch_size, None, fast=bool(fast_transforms)
        )
        self._cases: dict[str, list[PreparedCase]] | None = None
        self._preprocess: PreprocessConfig | None = None
        self.train_set: RandomPatchDataset | None = None
        self.val_set: VolumeDataset | None = None
        self.test_set: VolumeDataset | None = None

    @property
    def preprocess(self) -> PreprocessConfig:
        """The prepared set's :class:`PreprocessConfig` (from its manifest)."""
        if self._preprocess is None:
            self._load()
        assert self._preprocess is not None
        return self._preprocess

    def _load(self) -> None:
        if self.data_dir is None:
            raise ValueError("data.data_dir is not set; give the prepared set's folder")
        self._cases, self._preprocess = read_prepared_cases(self.data_dir)

    def prepare_data(self) -> None:
        """Check that the prepared set exists (runs once per node before ``setup``)."""
        if self.data_dir is None:
            raise ValueError("data.data_dir is not set; give the prepared set's folder")
        read_prepared_cases(self.data_dir)

    def setup(self, stage: str | None = None) -> None:
        self._load()
        assert self._cases is not None
        train = self._cases.get("train", [])
        if self.num_shots is not None:
            train = train[: self.num_shots]
        if stage in (None, "fit"):
            samples = self.samples_per_epoch or len(train)
            self.train_set = RandomPatchDataset(
                train,
                self.patch_size,
                samples,
                self.foreground_ratio,
                self.preprocess,
                transform=self._train_transform,
                margin=self.crop_margin,
                image_dtype=self.transfer_dtype,
                label_dtype=torch.uint8,
            )
        if stage in (None, "fit", "validate"):
            self.val_set = VolumeDataset(self._cases.get("val", []), self.preprocess)
        if stage in (None, "test", "predict"):
            self.test_set = VolumeDataset(self._cases.get("test", []), self.preprocess)
        log.info(
            "prepared set %s: %d train%s, %d val, %d test cases",
            self.data_dir,
            len(train),
            f" (num_shots={self.num_shots})" if self.num_shots else "",
            len(self._cases.get("val", [])),
            len(self._cases.get("test", [])),
        )

    def _loader(
        self, dataset: Dataset, batch_size: int, shuffle: bool, workers: int, **kwargs: Any
    ) -> DataLoader:
        if workers > 0:
            kwargs["persistent_workers"] = self.persistent_workers
            if self.prefetch_factor is not None:
                kwargs["prefetch_factor"] = int(self.prefetch_factor)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            num_workers=workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            worker_init_fn=partial(loader_worker_init, rank=self._rank()) if workers > 0 else None,
            **kwargs,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Training batches arrive as ``transfer_dtype`` images and packed (``label_bits``) or
        uint8 labels: float32 ``image`` and ``label`` here, on the device (Lightning calls this
        after moving the batch)."""
        if isinstance(batch, Mapping):
            batch = unpacked_batch(batch)
            for key in ("image", "label"):
                value = batch.get(key)
                if isinstance(value, torch.Tensor) and value.dtype != torch.float32:
                    batch[key] = value.to(torch.float32)
        return batch

    def _rank(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else int(trainer.global_rank)

    def train_dataloader(self) -> DataLoader:
        if self.train_set is None:
            self.setup("fit")
        if self.num_workers == 0:  # items come from this process: seed its transforms now
            self.train_set.seed_transforms()
        collate = {"collate_fn": collate_label_bits} if self.label_bits else {}
        return self._loader(self.train_set, self.batch_size, True, self.num_workers, **collate)

    def val_dataloader(self) -> DataLoader:
        if self.val_set is None:
            self.setup("validate")
        # Whole volumes: fewer workers, each holds one volume in memory.
        return self._loader(self.val_set, 1, False, min(self.num_workers, 2))

    def test_dataloader(self) -> DataLoader:
        if self.test_set is None:
            self.setup("test")
        return self._loader(self.test_set, 1, False, min(self.num_workers, 2))


class PhantomDataModule(ImageCASDataModule):
    """:class:`ImageCASDataModule` over synthetic phantoms generated and prepared on the fly.

    ``prepare_data`` writes ``n_train + n_val + n_test`` phantoms in the ImageCAS layout to
    ``<work_dir>/raw`` (:func:`vesselfm.data.phantom.write_phantom_dataset`), writes a split
    file in the official format (cases ``1..n_train`` train, then val, then test) and prepares
    them with the real ``prepare`` code into ``<work_dir>/prepared`` (or ``data_dir``). Both
    steps skip what is already there, so a second run starts at once.

    Args:
        n_train, n_val, n_test: number of phantoms per split.
        shape: phantom ``(X, Y, Z)`` voxels.
        seed: phantom dataset seed.
        work_dir: where the raw phantoms (and by default the prepared set) go.
        preprocess: :class:`PreprocessConfig` fields (e.g. ``{"in_plane_size": None}`` keeps the grid).
        prepare_workers: processes for the preparation.
        data_dir: the prepared set's folder (default ``<work_dir>/prepared``).
        **kwargs: as :class:`ImageCASDataModule`.
    """

    def __init__(
        self,
        n_train: int = 12,
        n_val: int = 2,
        n_test: int = 4,
        shape: Sequence[int] = (96, 96, 64),
        seed: int = 0,
        work_dir: str | os.PathLike[str] = "phantoms",
        preprocess: Mapping[str, Any] | PreprocessConfig | None = None,
        prepare_workers: int = 1,
        data_dir: str | os.PathLike[str] | None = None,
        **kwargs: Any,
    ) -> None:
        self.n = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
        if self.n["train"] < 1 or min(self.n.values()) < 0:
            raise ValueError(f"data.n_train must be >= 1 and n_val, n_test >= 0, got {self.n}")
        self.shape = _triple(_plain(shape), "shape")
        self.work_dir = Path(work_dir).expanduser()
        prepared = (
            Path(data_dir).expanduser() if data_dir is not None else self.work_dir / "prepared"
        )
        super().__init__(data_dir=prepared, seed=seed, **kwargs)
        pre = _plain(preprocess)
        self._preprocess_config = (
            pre if isinstance(pre, PreprocessConfig) else PreprocessConfig.from_mapping(pre)
        )
        self.prepare_workers = int(prepare_workers)

    @property
    def preprocess(self) -> PreprocessConfig:
        return self._preprocess_config

    def prepare_data(self) -> None:
        from vesselfm.data.phantom import case_paths, write_phantom_dataset
        from vesselfm.data.prepare import PrepareOptions, prepare_dataset

        raw = self.work_dir / "raw"
        total = sum(self.n.values())
        for index in range(1, total + 1):
            if not all(p.is_file() for p in case_paths(raw, index)):
                write_phantom_dataset(
                    raw, 1, shape=self.shape, seed=self.seed, start_index=index, progress=False
                )
        split_file = self.work_dir / "split.csv"
        rows = ["id,fold_1"]
        index = 1
        for split in ("train", "val", "test"):
            for _ in range(self.n[split]):
                rows.append(f"{index},{split}")
                index += 1
        split_file.write_text("\n".join(rows) + "\n")
        prepare_dataset(
            raw,
            self.data_dir,
            split="official",
            split_file=split_file,
            fold=1,
            options=PrepareOptions(preprocess=self._preprocess_config),
            workers=self.prepare_workers,
            progress=False,
        )

    def _load(self) -> None:
        super()._load()
        if self._preprocess != self._preprocess_config:
            raise ValueError(
                f"{self.data_dir} was prepared with {self._preprocess}, data.preprocess asks for "
                f"{self._preprocess_config}; delete it or choose another data.work_dir"
            )


__all__ = [
    "ImageCASDataModule",
    "PhantomDataModule",
    "PreparedCase",
    "RandomPatchDataset",
    "VolumeDataset",
    "keep_freed_memory",
    "loader_worker_init",
    "read_prepared_cases",
    "read_region",
]
