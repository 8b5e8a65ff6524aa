"""Loader tuning: labels packed to bits, the workers' allocator, Lightning's per-worker seeding."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from vesselfm.data.datamodules import ImageCASDataModule
from vesselfm.data.loading import collate_label_bits, unpacked_batch


@pytest.mark.parametrize("depth", [24, 13, 1])
def test_label_bits_round_trip(depth):
    labels = torch.rand(2, 1, 5, 3, depth, generator=torch.Generator().manual_seed(depth)) < 0.3
    labels = labels.to(torch.uint8)
    batch = collate_label_bits([{"image": torch.zeros(1, 5, 3, depth), "label": x} for x in labels])
    assert batch["label_bits"].shape == (2, 1, 5, 3, -(-depth // 8))
    assert torch.equal(unpacked_batch(batch)["label"], labels.float())
    with pytest.raises(ValueError, match="label_bits"):
        collate_label_bits(
            [{"image": torch.zeros(1), "label": torch.tensor([2], dtype=torch.uint8)}]
        )


_FAULTS_SCRIPT = """
import resource, sys, torch
from vesselfm.data.loading import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def one_patch():
    # a transform chain: 128^3 float32 tensors (8 MB each, 96 MB in all) alive at once, then freed
    tensors = [torch.ones(2 << 20) for _ in range(12)]
    del tensors
for _ in range(3):  # warm up: the heap grows once
    one_patch()
before = faults()
for _ in range(10):
    one_patch()
print((faults() - before) / 10)
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's malloc: keep_freed_memory is Linux-only"
)
def test_workers_keep_freed_memory_instead_of_faulting_it_in_again():
    from cli import run_code

    def faults_per_patch(mode: str) -> float:
        # glibc's adaptive thresholds make its default depend on the process's history; pinned
        # at their start value (mmap every block over 128 kB) the baseline faults every time
        env = {"MALLOC_MMAP_THRESHOLD_": "131072"}
        out = run_code(_FAULTS_SCRIPT, mode, env=env, check=True)
        return float(out.stdout.strip())

    # each 8 MB block mapped and unmapped: 2048 page faults apiece, 24 000 per patch
    assert faults_per_patch("default") > 20000
    # kept: the heap serves the same memory again
    assert faults_per_patch("keep") < 100


def test_loader_workers_keep_lightnings_per_worker_seeding(prepared, monkeypatch):
    from functools import partial

    from lightning.fabric.utilities.seed import pl_worker_init_function
    from torch.utils.data import DataLoader, Dataset

    from vesselfm.data.loading import loader_worker_init

    class NumpyDraws(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> int:
            return int(np.random.randint(2**31))

    def draws(loader: DataLoader) -> list[int]:
        torch.manual_seed(0)  # the workers' base seed
        return [int(b) for b in loader]

    dm = ImageCASDataModule(prepared, batch_size=1, num_workers=2, persistent_workers=False)
    ours = dm._loader(NumpyDraws(), 1, False, 2)
    assert ours.worker_init_fn.func is loader_worker_init
    lightnings = DataLoader(
        NumpyDraws(), num_workers=2, worker_init_fn=partial(pl_worker_init_function, rank=None)
    )
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    torchs_own = draws(ours)
    monkeypatch.setenv("PL_SEED_WORKERS", "1")  # as seed_everything(workers=True) sets it
    # with it, the workers draw exactly what Lightning's own worker_init_fn gives them
    assert draws(ours) == draws(lightnings) != torchs_own
