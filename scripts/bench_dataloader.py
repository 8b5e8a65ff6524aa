"""Training samples per second from one DataLoader worker: memory-mapped patch reads and the
faster augmentation vs the reference (load the whole img.npy/mask.npy, crop, then augment with
MONAI's own transforms, eagerly, as vesselFM's fine-tuning does).

    python scripts/bench_dataloader.py [--shape 256 256 275] [--patch 128] [--samples 120]
                                       [--batch-size 6] [--repeat 2] [--work /tmp/bench_loader]
                                       [--reference-float64] [--reference-keep-memory]
                                       [--per-transform]

Both sides apply the published augmentation (configs/data/imagecas.yaml: same transforms,
probabilities and ranges) to a normalised crop, in one worker process with one torch thread;
the reference with the ``monai.transforms`` originals and float32 image and label batches (as
vesselFM's fine-tuning), ours as ``ImageCASDataModule`` builds it (its own ``train_dataloader``
with one worker): the subclasses in ``vesselfm.data.transforms`` that compute the same
transforms faster, batches of float16 images and labels packed 8 voxels to a byte
(``data.transfer_dtype``, ``data.label_bits``; float32 again on the device), and workers that
keep freed memory for reuse
(``keep_freed_memory``; ``--reference-keep-memory`` adds a row where the reference's worker
does the same). Printed side
by side, with and without augmentation (so that the gain from reading only the patch is visible
on its own), alternating reference and ours ``--repeat`` times, with the load average. Two
numbers per side: samples/s through a DataLoader with one worker (the target), and the
milliseconds of work per sample alone (``dataset[i]`` in this process, with glibc's default
allocator for both sides); the difference is mostly the cost of moving each batch out of the
worker (16 MB per 128³ sample in float32, 4.25 MB as float16 + bits) and, for the reference, the
page faults of its worker's allocations.

``--reference-float64`` adds the reference reading the files the reference preparation writes
(``np.save`` of skimage's float64 output: 8 bytes per voxel for image and mask) instead of
vesselfm's int16/uint8 files.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class WholeVolumeReference(Dataset):
    """The reference way: np.load the whole volume, crop at random, normalise, augment."""

    def __init__(self, cases, patch, samples, preprocess, transform, files=None) -> None:
        self.cases, self.patch, self.samples = cases, patch, samples
        self.preprocess, self.transform = preprocess, transform
        self.files = files  # {case_id: (img.npy, mask.npy)} to read instead of the prepared set's

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int):
        from vesselfm.data.preprocessing import normalize_intensity

        case = self.cases[i % len(self.cases)]
        img_path, mask_path = self.files[case.case_id] if self.files else (case.image, case.mask)
        img = np.load(img_path)
        mask = np.load(mask_path)
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        s = [
            int(rng.integers(0, max(d - p, 0) + 1))
            for d, p in zip(img.shape, self.patch, strict=True)
        ]
        sl = tuple(slice(a, a + p) for a, p in zip(s, self.patch, strict=True))
        data = {
            "image": normalize_intensity(img[sl], case.intensity_range, self.preprocess)[None],
            "label": mask[sl][None].astype(np.float32),
        }
        if self.transform is not None:
            self.transform.set_random_state(seed=int(rng.integers(2**31)))
            data = self.transform(data)
        return {"image": torch.as_tensor(data["image"]), "label": torch.as_tensor(data["label"])}


def reference_transforms(patch):
    """The published pipeline with MONAI's original classes (data.fast_transforms=false)."""
    from vesselfm.data.transforms import train_transforms

    return train_transforms(True, patch, fast=False)


def _reference_worker_init(_: int) -> None:
    torch.set_num_threads(1)


def _reference_worker_init_keeping_memory(worker_id: int) -> None:
    from vesselfm.data.loading import keep_freed_memory

    _reference_worker_init(worker_id)
    keep_freed_memory()


def reference_loader(dataset: Dataset, batch_size: int, keep_memory: bool = False) -> DataLoader:
    init = _reference_worker_init_keeping_memory if keep_memory else _reference_worker_init
    return DataLoader(
        dataset, batch_size=batch_size, num_workers=1, worker_init_fn=init, prefetch_factor=2
    )


def rate(loader: DataLoader) -> float:
    """Samples per second through ``loader`` (start-up and first batch not timed)."""
    it = iter(loader)
    next(it)
    t = time.perf_counter()
    n = 0
    for batch in it:
        n += len(batch["image"])
    return n / (time.perf_counter() - t)


def work_ms(dataset: Dataset, samples: int) -> float:
    """Milliseconds per sample of ``dataset[i]`` in this process, one torch thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        dataset[0]
        t = time.perf_counter()
        for i in range(1, samples + 1):
            dataset[i]
        return (time.perf_counter() - t) / samples * 1e3
    finally:
        torch.set_num_threads(threads)


def per_transform(dataset: Dataset, calls: int = 20) -> None:
    """Each vesselfm subclass against its MONAI original on the same crops: milliseconds per
    call with probability 1, one thread, MONAI without metadata tracking (as ours runs)."""
    import monai.transforms as mt
    from monai.data import set_track_meta

    import vesselfm.data.transforms as vt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    set_track_meta(False)
    crops = []
    for i in range(10):
        item = dataset[i]
        crops.append({"image": item["image"].float(), "label": item["label"]})
    print(
        f"per transform, ms per call on {tuple(crops[0]['image'].shape[1:])} crops (probability 1):"
    )
    print(f"{'':24s}{'MONAI':>9s}{'ours':>9s}{'ratio':>8s}")
    try:
        for config in vt.augmentation_configs(True):
            name = config["_target_"].rsplit(".", 1)[1]
            if name not in vt.FAST_TRANSFORMS:
                continue
            kwargs = {k: v for k, v in config.items() if k != "_target_"} | {"prob": 1.0}
            times = []
            for module in (mt, vt):
                t = getattr(module, name)(**kwargs)
                t.set_random_state(seed=0)
                t(dict(crops[0]))
                start = time.perf_counter()
                for i in range(calls):
                    t(dict(crops[i % len(crops)]))
                times.append((time.perf_counter() - start) / calls * 1e3)
            print(
                f"{name:24s}{times[0]:9.2f}{times[1]:9.2f}{times[0] / times[1]:7.1f}x", flush=True
            )
    finally:
        set_track_meta(True)
        torch.set_num_threads(threads)


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--shape", type=int, nargs=3, default=[256, 256, 275], help="prepared volume shape"
    )
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--samples", type=int, default=120)
    ap.add_argument(
        "--batch-size", type=int, default=6, help="the published fine-tune's batch size"
    )
    ap.add_argument(
        "--repeat", type=int, default=2, help="alternating rounds of reference and ours"
    )
    ap.add_argument(
        "--work", type=Path, default=None, help="folder to keep the prepared phantoms in (reused)"
    )
    ap.add_argument(
        "--reference-float64", action="store_true", help="also: reference on float64 files"
    )
    ap.add_argument(
        "--per-transform",
        action="store_true",
        help="also: each faster transform against its MONAI original, per call",
    )
    ap.add_argument(
        "--reference-keep-memory",
        action="store_true",
        help="also: reference with ours' allocator setting (keep_freed_memory) in its worker",
    )
    args = ap.parse_args()

    from vesselfm.data.datamodules import ImageCASDataModule
    from vesselfm.data.datasets import read_prepared_cases
    from vesselfm.data.manifest import load_manifest
    from vesselfm.data.phantom import write_phantom_dataset
    from vesselfm.data.prepare import PrepareOptions, prepare_dataset
    from vesselfm.data.preprocessing import PreprocessConfig

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        if load_manifest(work / "prep") is None:
            write_phantom_dataset(
                work / "raw", args.cases, shape=tuple(args.shape), seed=0, progress=False
            )
            options = PrepareOptions(preprocess=PreprocessConfig(in_plane_size=None))
            prepare_dataset(
                work / "raw",
                work / "prep",
                split="random",
                split_ratios=(1, 0, 0),
                options=options,
                workers=1,
                progress=False,
            )
        cases, pre = read_prepared_cases(work / "prep")
        train = cases["train"]
        patch = (args.patch,) * 3
        n = args.samples
        f64 = {}
        if args.reference_float64:
            for c in train:
                paths = (
                    work / "f64" / f"{c.case_id}_img.npy",
                    work / "f64" / f"{c.case_id}_mask.npy",
                )
                if not all(p.is_file() for p in paths):
                    paths[0].parent.mkdir(parents=True, exist_ok=True)
                    np.save(paths[0], np.load(c.image).astype(np.float64))
                    np.save(paths[1], np.load(c.mask).astype(np.float64))
                f64[c.case_id] = paths
        if args.per_transform:
            dm = ImageCASDataModule(
                work / "prep", patch_size=patch, augment=False, num_workers=0, samples_per_epoch=10
            )
            dm.setup("fit")
            per_transform(dm.train_set)
        print(
            f"machine: {os.cpu_count()} CPU cores; {len(train)} prepared cases {tuple(args.shape)} (int16), "
            f"patch {patch}, 1 DataLoader worker, 1 torch thread, batch {args.batch_size}, {n} samples each"
        )
        print(
            f"{'':46s}{'reference':>11s}{'ours':>11s}{'ratio':>7s}   work in the worker, ms/sample (ref, ours)"
            "   load average before, after"
        )
        for r in range(1, args.repeat + 1):
            for name, augment in (
                ("crop only (augment=false)", False),
                ("published augmentation", True),
            ):
                sides = [("", None, False)]
                if args.reference_keep_memory:
                    sides.append((", reference keeping freed memory", None, True))
                if f64:
                    sides.append((", reference on float64", f64, False))
                for suffix, files, keep_memory in sides:
                    before = _load()
                    ref_tf = reference_transforms(patch) if augment else None
                    ref_ds = WholeVolumeReference(train, patch, n, pre, ref_tf, files)
                    # ours as training builds it (data/imagecas.yaml defaults), one worker
                    dm = ImageCASDataModule(
                        work / "prep",
                        patch_size=patch,
                        batch_size=args.batch_size,
                        num_workers=1,
                        pin_memory=False,
                        persistent_workers=False,
                        samples_per_epoch=n,
                        augment=augment,
                        label_bits=True,
                    )
                    dm.setup("fit")
                    ours_ds = dm.train_set
                    ref_loader = reference_loader(ref_ds, args.batch_size, keep_memory)
                    ref, ours = rate(ref_loader), rate(dm.train_dataloader())
                    ref_ms, ours_ms = work_ms(ref_ds, min(n, 30)), work_ms(ours_ds, min(n, 30))
                    print(
                        f"{f'{r}: {name}{suffix}':46s}{ref:9.1f}/s{ours:9.1f}/s{ours / ref:6.1f}x   "
                        f"{ref_ms:8.1f}, {ours_ms:6.1f} ({ref_ms / ours_ms:.1f}x)                {before}, {_load()}",
                        flush=True,
                    )
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
