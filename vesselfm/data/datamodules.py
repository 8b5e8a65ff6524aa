"""Lightning DataModules over a prepared set (``python -m vesselfm.prepare``) or generated phantoms.

They give the datasets of :mod:`vesselfm.data.datasets` (random training patches with
foreground oversampling, whole validation/test volumes) to DataLoaders tuned by
:mod:`vesselfm.data.loading` (worker allocator and seeding, labels packed to bits), and turn
the batches back into float32 on the device.

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
from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vesselfm.data.datasets import (
    PreparedCase,
    RandomPatchDataset,
    VolumeDataset,
    read_prepared_cases,
)
from vesselfm.data.loading import collate_label_bits, loader_worker_init, unpacked_batch
from vesselfm.data.preprocessing import PreprocessConfig
from vesselfm.data.transforms import train_transforms

log = logging.getLogger(__name__)


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


class StyledPatchDataset(Dataset):
    """Training patches of ``base`` re-rendered in a new random style each
    (:func:`vesselfm.data.phantom.style.randomise`; ``data.style_per=patch``).

    Each item first draws its style seed from torch's RNG (seeded per worker and epoch like the
    crops), then takes ``base``'s patch, re-renders it (extra labelled tubes join the label),
    normalises it to [0, 1] by its 1-99 % percentiles and clips it to ``value_range``, as the
    training preprocessing does a whole volume (vesselFM's: [0, 1], clipped).

    Args:
        base: a :class:`RandomPatchDataset` (its ``cases`` give each patch's voxel size).
        ranges: factor ranges (default :data:`vesselfm.data.phantom.style.TRAIN_RANGES`).
        probability: share of patches re-rendered; the others keep the phantom's CT look
            (the choice is drawn from the item's style seed).
        value_range: clip the normalised patch to this (``None``: no clipping).
    """

    def __init__(
        self,
        base: RandomPatchDataset,
        ranges: Mapping[str, Any] | None = None,
        probability: float = 1.0,
        value_range: tuple[float, float] | None = (0.0, 1.0),
    ) -> None:
        self.base = base
        self.ranges = dict(ranges) if ranges else None
        self.probability = float(probability)
        self.value_range = value_range

    def __len__(self) -> int:
        return len(self.base)

    def seed_transforms(self, seed: int | None = None) -> None:
        self.base.seed_transforms(seed)

    def restyle(self, item: Mapping[str, Any], index: int, style_seed: int) -> dict[str, Any]:
        """``item`` (``base[index]``) re-rendered with the style drawn from ``style_seed``."""
        from vesselfm.data.phantom.style import randomise

        case = self.base.cases[index % len(self.base.cases)]
        image = item["image"][0].float().numpy()
        label = item["label"][0].numpy().astype(np.uint8)
        styled, label, _ = randomise(
            image, label, case.spacing, np.random.default_rng(style_seed), self.ranges
        )
        lo, hi = np.percentile(styled, [1.0, 99.0])
        styled = (styled - lo) / max(float(hi - lo), 1e-6)
        if self.value_range is not None:
            styled = np.clip(styled, *self.value_range)
        return {
            "image": torch.from_numpy(styled.astype(np.float32))[None].to(item["image"].dtype),
            "label": torch.from_numpy(label)[None].to(item["label"].dtype),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        style_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
        item = self.base[index]
        if np.random.default_rng([style_seed, 1]).random() >= self.probability:
            return item
        return self.restyle(item, index, style_seed)


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
        balance_classes: segment labels: the foreground patches are centred on each label
            value (segment code) present in the case with equal odds, instead of in proportion
            to its voxels (:class:`~vesselfm.data.datasets.RandomPatchDataset`).
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
        balance_classes: bool = False,
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
        self.balance_classes = bool(balance_classes)
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
                balance_classes=self.balance_classes,
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
        data_dir: the prepared set's folder (default ``<work_dir>/prepared``, and
            ``<work_dir>/prepared-randomised`` for ``style=randomised, style_per=case``).
        style: ``ct`` (the CT generator's look) or ``randomised`` (domain-randomised training
            cases, :mod:`vesselfm.data.phantom.style`). Validation and test phantoms are always
            CT-style: the held-out figures stay comparable.
        style_per: with ``style=randomised``: ``case`` writes each training phantom in one
            random style (raw cases in ``<work_dir>/raw-randomised``); ``patch`` keeps CT-style
            training phantoms and re-renders every training patch in a new random style as it is
            loaded (:class:`StyledPatchDataset`).
        style_probability: with ``style_per=patch``: the share of training patches re-rendered
            (the others keep the CT look).
        style_ranges: with ``style_per=patch``: factor ranges that replace those of
            :data:`vesselfm.data.phantom.style.TRAIN_RANGES` (e.g. ``{"noise": (0.0, 0.05)}``).
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
        style: str = "ct",
        style_per: str = "case",
        style_probability: float = 1.0,
        style_ranges: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        from vesselfm.data.phantom.style import STYLE_PER, STYLES, TRAIN_RANGES

        if style not in STYLES:
            raise ValueError(f"data.style must be one of {list(STYLES)}, got {style!r}")
        if style_per not in STYLE_PER:
            raise ValueError(f"data.style_per must be one of {list(STYLE_PER)}, got {style_per!r}")
        if not 0.0 <= float(style_probability) <= 1.0:
            raise ValueError(f"data.style_probability must be in [0, 1], got {style_probability!r}")
        self.style, self.style_per = style, style_per
        self.style_probability = float(style_probability)
        self.style_ranges = {k: _plain(v) for k, v in dict(style_ranges or {}).items()}
        unknown = sorted(set(self.style_ranges) - set(TRAIN_RANGES))
        if unknown:
            raise ValueError(
                f"data.style_ranges must be known style factors {sorted(TRAIN_RANGES)}, got {unknown}"
            )
        # per-case randomised training phantoms live apart from CT-style ones
        self._tag = "-randomised" if (style, style_per) == ("randomised", "case") else ""
        self.n = {"train": int(n_train), "val": int(n_val), "test": int(n_test)}
        if self.n["train"] < 1 or min(self.n.values()) < 0:
            raise ValueError(f"data.n_train must be >= 1 and n_val, n_test >= 0, got {self.n}")
        self.shape = _triple(_plain(shape), "shape")
        self.work_dir = Path(work_dir).expanduser()
        prepared = (
            Path(data_dir).expanduser()
            if data_dir is not None
            else self.work_dir / f"prepared{self._tag}"
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

        raw = self.work_dir / f"raw{self._tag}"
        total = sum(self.n.values())
        for index in range(1, total + 1):
            if not all(p.is_file() for p in case_paths(raw, index)):
                # validation and test phantoms stay CT-style
                style = "randomised" if self._tag and index <= self.n["train"] else "ct"
                write_phantom_dataset(
                    raw,
                    1,
                    shape=self.shape,
                    seed=self.seed,
                    start_index=index,
                    progress=False,
                    style=style,
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

    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        if (self.style, self.style_per) == ("randomised", "patch") and isinstance(
            self.train_set, RandomPatchDataset
        ):
            pre = self._preprocess_config
            self.train_set = StyledPatchDataset(  # type: ignore[assignment]
                self.train_set,
                self.style_ranges or None,
                probability=self.style_probability,
                value_range=(pre.b_min, pre.b_max) if pre.clip else None,
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
    "StyledPatchDataset",
]
