"""What scripts/bench_analyse.py and scripts/bench_analysis_targets.py share: the process pinned to
``--cores`` CPUs, the line naming the machine, and held-out ImageCAS-X phantoms written once."""

from __future__ import annotations

import os
import platform
from pathlib import Path


def pin_cores(cores: int) -> None:
    """Run this process (and its BLAS/OpenMP threads) on the first ``cores`` CPUs it may use."""
    allowed = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, allowed[:cores])
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, str(cores))


def machine_line() -> str:
    """The CPU, the cores pinned, torch's CPU capability and the load average (a shared box)."""
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except ImportError:
        capability = "n/a"
    return (
        f"machine: {platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} "
        f"core(s) pinned of {os.cpu_count()}, cpu capability {capability}; load average "
        f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )


def imagecasx_phantom(
    folder: Path, index: int, shape: tuple[int, int, int], seed: int, stenoses: int
) -> dict[str, Path]:
    """Case ``index`` of the ImageCAS-X phantom set ``seed`` in ``folder`` (``python -m
    vesselfm.phantom layout=imagecasx``), written unless it is there already; its files
    ``{"volume", "segmentation", "stenoses", "centerlines"}`` (the last one the folder)."""
    from vesselfm.data.phantom import write_phantom_dataset

    cid = str(index)
    paths = {
        "volume": folder / "volumes" / f"{cid}.img.nii.gz",
        "segmentation": folder / "segmentations" / f"{cid}.coronary.nii.gz",
        "stenoses": folder / "stenoses" / f"{cid}.json",
        "centerlines": folder / "centerlines",
    }
    if not all(paths[k].exists() for k in ("volume", "segmentation", "stenoses")):
        write_phantom_dataset(
            folder,
            1,
            shape=tuple(shape),
            seed=seed,
            start_index=index,
            progress=False,
            layout="imagecasx",
            stenoses=stenoses,
        )
    return paths
