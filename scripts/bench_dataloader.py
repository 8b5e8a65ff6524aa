"""Training samples per second from one DataLoader worker: memory-mapped patch reads vs the
reference (load the whole img.npy/mask.npy, then crop and augment).

    python scripts/bench_dataloader.py [--shape 256 256 275] [--patch 128] [--samples 40]

Both sides run the same published augmentation (MONAI transforms from configs/data/imagecas.yaml)
on a normalised crop, in one worker process with one torch thread. Printed side by side, with
and without augmentation, so that the gain from reading only the patch is visible on its own.
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

    def __init__(self, cases, patch, samples, preprocess, transform) -> None:
        self.cases, self.patch, self.samples, self.preprocess, self.transform = cases, patch, samples, preprocess, transform

    def __len__(self) -> int:
        return self.samples

    def __getitem__(self, i: int):
        from vesselfm.data.preprocessing import normalize_intensity

        case = self.cases[i % len(self.cases)]
        img = np.load(case.image)
        mask = np.load(case.mask)
        rng = np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,))))
        s = [int(rng.integers(0, max(d - p, 0) + 1)) for d, p in zip(img.shape, self.patch, strict=True)]
        sl = tuple(slice(a, a + p) for a, p in zip(s, self.patch, strict=True))
        data = {"image": normalize_intensity(img[sl], case.intensity_range, self.preprocess)[None],
                "label": mask[sl][None].astype(np.float32)}
        if self.transform is not None:
            self.transform.set_random_state(seed=int(rng.integers(2**31)))
            data = self.transform(data)
        return {"image": torch.as_tensor(data["image"]), "label": torch.as_tensor(data["label"])}


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)


def rate(dataset: Dataset, samples: int) -> float:
    loader = DataLoader(dataset, batch_size=1, num_workers=1, worker_init_fn=_worker_init, prefetch_factor=4)
    it = iter(loader)
    next(it)  # worker start-up and first sample not timed
    t = time.perf_counter()
    n = 0
    for _ in it:
        n += 1
    return n / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=[256, 256, 275], help="prepared volume shape")
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--patch", type=int, default=128)
    ap.add_argument("--samples", type=int, default=40)
    args = ap.parse_args()

    from vesselfm.data.imagecas_datamodule import RandomPatchDataset, read_prepared_cases
    from vesselfm.data.phantom import write_phantom_dataset
    from vesselfm.data.prepare import PrepareOptions, prepare_dataset
    from vesselfm.data.preprocessing import PreprocessConfig
    from vesselfm.data.transforms import train_transforms

    work = Path(tempfile.mkdtemp(prefix="bench_loader_"))
    try:
        write_phantom_dataset(work / "raw", args.cases, shape=tuple(args.shape), seed=0, progress=False)
        prepare_dataset(work / "raw", work / "prep", split="random", split_ratios=(1, 0, 0),
                        options=PrepareOptions(preprocess=PreprocessConfig(in_plane_size=None)), workers=1, progress=False)
        cases, pre = read_prepared_cases(work / "prep")
        train = cases["train"]
        patch = (args.patch,) * 3
        print(f"machine: {os.cpu_count()} CPU cores; {len(train)} prepared cases {tuple(args.shape)} (int16), patch {patch}, "
              f"1 DataLoader worker, 1 torch thread, {args.samples} samples each")
        print(f"{'':34s}{'reference':>12s}{'mmap crop':>12s}{'ratio':>8s}")
        for name, augment in (("crop only (augment=false)", False), ("published augmentation", True)):
            ref = rate(WholeVolumeReference(train, patch, args.samples, pre, train_transforms(augment, patch) if augment else None), args.samples)
            ours = rate(RandomPatchDataset(train, patch, args.samples, 0.33, pre, transform=train_transforms(augment, patch) if augment else None), args.samples)
            print(f"{name:34s}{ref:10.1f}/s{ours:10.1f}/s{ours / ref:7.1f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
