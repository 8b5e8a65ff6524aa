"""Cohort throughput: the old sequential loop against the pipelined cohort path, side by side.

    python scripts/bench_cohort.py [--n 12] [--shape 512 512 250] [--model tiny] [--device cpu]
        [--num-workers auto] [--threads auto] [--cache /tmp/vesselfm-bench-cohort]
        [--override 'preprocess={in_plane_size: 128}' ...]

Both modes segment the same folder of phantom scans (``vesselfm.phantom``'s generator, written
once into ``--cache`` and reused) with the same predictor (``model=<--model>``, random weights
for ``tiny``; the packaged ``inference`` defaults) into fresh output folders:

- ``sequential``: today's loop before the cohort path, ``predict_file`` per scan: read,
  preprocess, predict, resample back, write, one after the other in one thread;
- ``pipelined``: :func:`vesselfm.inference.segment_files` (Lightning predict, loader workers
  reading ahead, a writer thread).

Each mode runs in its own subprocess, so that its peak memory is its own: the resident memory of
the process and all its children (loader workers) summed, sampled every 50 ms. Prints scans/hour
of each, their ratio, peak RSS, and checks that both wrote the same masks. ``--device cuda
--model vesselfm_base`` where a GPU is lent (the base weights must be in the Hugging Face cache).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def make_cohort(cache: Path, n: int, shape: tuple[int, int, int]) -> list[Path]:
    """``n`` phantom scans of ``shape`` in ``cache/<shape>/`` (generated once, then reused)."""
    from vesselfm.data.phantom import generate_phantom, save_phantom

    folder = cache / "x".join(map(str, shape))
    folder.mkdir(parents=True, exist_ok=True)
    scans = []
    for seed in range(n):
        image = folder / f"{seed:03d}.img.nii.gz"
        if not image.exists():
            t0 = time.perf_counter()
            phantom = generate_phantom(shape, seed=seed)
            label = folder / "labels" / f"{seed:03d}.label.nii.gz"
            label.parent.mkdir(exist_ok=True)
            save_phantom(phantom, image, label)
            print(f"  generated {image.name} in {time.perf_counter() - t0:.1f} s", flush=True)
        scans.append(image)
    return scans


def _predictor(model: str, device: str, threads: str, extra: list[str]) -> tuple[object, bool]:
    """The infer config's predictor for ``model``, with its threads and ``cpu_memory`` applied as
    the infer CLI applies them; also whether ``cpu_memory``'s tuning took effect."""
    from omegaconf import OmegaConf

    from vesselfm.inference import SlidingWindowPredictor, resolve_preprocess_and_threshold
    from vesselfm.models import load_model
    from vesselfm.utils.cli import _compose
    from vesselfm.utils.hardware import apply_cpu_memory, apply_threads

    overrides = ["input=x", f"model={model}", f"inference.device={device}", f"threads={threads}"]
    if model == "tiny":
        overrides.append("model.checkpoint=null")
    cfg = _compose("infer", [*overrides, *extra])
    apply_threads(cfg.threads)
    applied = apply_cpu_memory(cfg.cpu_memory)  # as the infer CLI does (run_guarded)
    chosen = cfg.get("preprocess")
    chosen = None if chosen is None else OmegaConf.to_container(chosen, resolve=True)
    preprocess, threshold = resolve_preprocess_and_threshold(cfg.model, chosen, None)
    inference = {**OmegaConf.to_container(cfg.inference, resolve=True), "threshold": threshold}
    import torch

    torch.manual_seed(0)  # model=tiny: the same random weights in both modes
    predictor = SlidingWindowPredictor.from_config(
        load_model(cfg.model), inference, preprocess=preprocess
    )
    return predictor, applied


def run_mode(args: argparse.Namespace) -> None:
    """One mode, in this (child) process; prints one JSON line."""
    import logging

    logging.basicConfig(level=logging.WARNING)
    scans = [Path(p) for p in args.scans]
    out = Path(args.out)
    predictor, _ = _predictor(args.model, args.device, args.threads, args.override)
    t0 = time.perf_counter()
    if args.mode == "sequential":
        for scan in scans:
            predictor.predict_file(scan, out)  # type: ignore[attr-defined]
    else:
        from vesselfm.inference import segment_files

        result = segment_files(
            scans,
            predictor,
            out,
            progress=False,
            num_workers=args.num_workers,  # type: ignore[arg-type]
        )
        assert result.segmented == len(scans) and not result.failed, result.failed
    seconds = time.perf_counter() - t0
    print(json.dumps({"mode": args.mode, "seconds": seconds, "scans": len(scans)}), flush=True)


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


def measure(mode: str, scans: list[Path], out: Path, args: argparse.Namespace) -> dict:
    """Run one mode in a subprocess; its result plus the peak RSS of its process tree."""
    cmd = [
        sys.executable,
        __file__,
        "--_mode",
        mode,
        "--_out",
        str(out),
        "--model",
        args.model,
        "--device",
        args.device,
        "--threads",
        args.threads,
        "--num-workers",
        str(args.num_workers),
        *[f"--override={o}" for o in args.override],
        "--_scans",
        *map(str, scans),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)
    peak = [0]

    def sample() -> None:
        while proc.poll() is None:
            peak[0] = max(peak[0], _tree_rss(proc.pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, _ = proc.communicate()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"{mode} failed (exit {proc.returncode})")
    result = json.loads(stdout.strip().splitlines()[-1])
    result["peak_rss_gib"] = peak[0] / 2**30
    result["scans_per_hour"] = result["scans"] / result["seconds"] * 3600
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=12)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 250))
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="auto")
    parser.add_argument("--num-workers", default="auto")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        help="an infer override for both modes, e.g. --override 'preprocess={in_plane_size: 128}'",
    )
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "vesselfm-bench-cohort"
    )
    parser.add_argument("--_mode", help=argparse.SUPPRESS)
    parser.add_argument("--_out", help=argparse.SUPPRESS)
    parser.add_argument("--_scans", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._mode:
        args.mode, args.out, args.scans = args._mode, args._out, args._scans
        run_mode(args)
        return

    import torch

    from vesselfm.utils.hardware import available_cpus

    print(
        f"machine: {available_cpus()} cores, {torch.backends.cpu.get_cpu_capability()}, "
        f"torch {torch.__version__}; {args.n} scans {'x'.join(map(str, args.shape))}, "
        f"model={args.model}, device={args.device}, threads={args.threads}, "
        f"num_workers={args.num_workers}, overrides={args.override}",
        flush=True,
    )
    scans = make_cohort(args.cache, args.n, tuple(args.shape))
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-cohort-") as tmp:
        for mode in ("sequential", "pipelined"):
            out = Path(tmp) / mode
            results[mode] = measure(mode, scans, out, args)
            r = results[mode]
            print(
                f"{mode:>10}: {r['seconds']:7.1f} s  {r['scans_per_hour']:7.1f} scans/h  "
                f"peak RSS {r['peak_rss_gib']:.2f} GiB",
                flush=True,
            )
        same = all(
            (Path(tmp) / "sequential" / p.name).read_bytes() == p.read_bytes()
            for p in sorted((Path(tmp) / "pipelined").glob("*_pred.nii.gz"))
        )
        shutil.rmtree(tmp, ignore_errors=True)
    ratio = results["pipelined"]["scans_per_hour"] / results["sequential"]["scans_per_hour"]
    print(f"ratio pipelined/sequential: {ratio:.2f}x; masks byte-identical: {same}")
    print("\n| mode | s | scans/h | peak RSS (GiB) |\n|---|---|---|---|")
    for mode, r in results.items():
        print(
            f"| {mode} | {r['seconds']:.1f} | {r['scans_per_hour']:.1f} | {r['peak_rss_gib']:.2f} |"
        )


if __name__ == "__main__":
    main()
