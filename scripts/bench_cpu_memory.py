"""``cpu_memory=reuse`` against glibc's defaults (``release``), side by side on the same scan.

    python scripts/bench_cpu_memory.py [--shape 512 512 250] [--model tiny] [--reps 2]
        [--threads auto] [--cache /tmp/vesselfm-bench-cohort]

Each mode segments the same full-size phantom scan (``bench_cohort.py``'s cohort cache, written
once) with ``predict_file``, as ``python -m vesselfm.infer`` does, in its own subprocess (the
malloc settings are per process), the modes alternating ``--reps`` times. Prints, per mode, the
median seconds per scan and its predict step, the CPU seconds in the kernel, the minor page
faults, the peak resident memory, and whether both wrote the same mask.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MODES = ("release", "reuse")


def run_one(args: argparse.Namespace) -> None:
    """One scan in this (child) process under ``--_mode``; prints one JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    sys.path.insert(0, str(Path(__file__).parent))
    from bench_cohort import _predictor

    predictor, applied = _predictor(args.model, "cpu", args.threads, [f"cpu_memory={args._mode}"])
    before = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    result = predictor.predict_file(args._scan, args._out)  # type: ignore[attr-defined]
    seconds = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_SELF)
    line = {
        "mode": args._mode,
        "applied": applied,
        "seconds": seconds,
        "predict": result["timings"]["predict"],
        "user": after.ru_utime - before.ru_utime,
        "sys": after.ru_stime - before.ru_stime,
        "faults": after.ru_minflt - before.ru_minflt,
        "peak_gib": after.ru_maxrss / 2**20,
    }
    print(json.dumps(line), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 250))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--threads", default="auto")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "vesselfm-bench-cohort"
    )
    parser.add_argument("--_mode", help=argparse.SUPPRESS)
    parser.add_argument("--_scan", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._mode:
        run_one(args)
        return

    import platform

    import torch

    sys.path.insert(0, str(Path(__file__).parent))
    from bench_cohort import make_cohort

    from vesselfm.utils.hardware import available_cpus

    print(
        f"machine: {platform.processor() or platform.machine()}, {available_cpus()} cores, "
        f"{torch.backends.cpu.get_cpu_capability()}, torch {torch.__version__}, glibc "
        f"{platform.libc_ver()[1]}; scan {'x'.join(map(str, args.shape))}, model={args.model}, "
        f"threads={args.threads}",
        flush=True,
    )
    (scan,) = make_cohort(args.cache, 1, tuple(args.shape))
    rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="bench-cpu-memory-") as tmp:
        for rep in range(args.reps):
            for mode in MODES:
                out = Path(tmp) / f"{mode}{rep}"
                cmd = [sys.executable, __file__, "--model", args.model, "--threads", args.threads]
                cmd += ["--_mode", mode, "--_scan", str(scan), "--_out", str(out)]
                done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
                rows[mode].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(f"  {mode} #{rep + 1}: {rows[mode][-1]['seconds']:.1f} s", flush=True)
        masks = {p.read_bytes() for p in Path(tmp).glob("*/*_pred.nii.gz")}
    print("\n| cpu_memory | s per scan | predict s | kernel CPU s | page faults | peak GiB |")
    print("|---|---|---|---|---|---|")
    median = {}
    for mode, runs in rows.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0] if k not in ("mode",)}
        median[mode] = med
        print(
            f"| {mode}{'' if all(r['applied'] for r in runs) or mode == 'release' else ' (not applied)'}"
            f" | {med['seconds']:.1f} | {med['predict']:.1f} | {med['sys']:.1f} | "
            f"{med['faults'] / 1e6:.2f} M | {med['peak_gib']:.2f} |"
        )
    ratio = median["release"]["seconds"] / median["reuse"]["seconds"]
    print(f"\nreuse is {ratio:.2f}x as fast per scan; masks identical: {len(masks) == 1}")


if __name__ == "__main__":
    main()
