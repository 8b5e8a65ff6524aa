"""DataLoader tuning: the loader workers' allocator and seeding, and labels packed to bits.

Loader workers allocate the same few large blocks for every patch; :func:`keep_freed_memory`
keeps glibc from giving them back to the kernel after each one. Training labels are 0/1, so
:func:`collate_label_bits` moves them out of the workers 8 voxels to a byte and
:func:`unpacked_batch` restores them on the device.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

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


__all__ = [
    "collate_label_bits",
    "keep_freed_memory",
    "loader_worker_init",
    "unpack_label_bits",
    "unpacked_batch",
]
