"""Prepare speed per full-size case: vesselfm.prepare (workers=2) vs the reference procedure.

Reference (the one-off script users run today): nibabel load + ``get_fdata`` (float64),
``skimage.transform.resize`` order 1 with anti-aliasing for the image and order 0 for the label
to 256×256×N, ``np.save``; one case after the other in one process.

    python scripts/bench_prepare.py [--cases 4] [--shape 512 512 275] [--workers 2] [--repeat 2]
                                    [--raw /tmp/phantoms_512]

Writes phantoms (``generate_phantom``) as NIfTI first (or reuses those in ``--raw``), then times
both on the same files, alternating reference and ours ``--repeat`` times, and prints seconds
per case (wall time for all cases / cases) side by side with the load average, since a shared
machine's other jobs change both numbers. CPU seconds per case (all processes) are printed too:
they show the work each side does, which other jobs on the machine barely change.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def reference(img_path: Path, lab_path: Path, out: Path) -> None:
    # vesselFM's own recipe, as published (nibabel + skimage): the baseline, so not vesselfm.io
    import nibabel as nib
    from skimage.transform import resize

    img = nib.load(img_path).get_fdata()
    lab = nib.load(lab_path).get_fdata()
    shape = (256, 256, img.shape[2])
    img_r = resize(img, shape, order=1, anti_aliasing=True, preserve_range=True)
    lab_r = resize(lab, shape, order=0, anti_aliasing=False, preserve_range=True)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "img.npy", img_r)
    np.save(out / "mask.npy", lab_r)


def _cpu() -> float:
    """CPU seconds used so far by this process and its finished children (the workers)."""
    me, kids = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def _load() -> str:
    return "/".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 275])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--repeat", type=int, default=2, help="alternating rounds of reference and ours"
    )
    ap.add_argument(
        "--raw", type=Path, default=None, help="phantom folder to reuse (written if missing)"
    )
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    from vesselfm.data.phantom import case_paths, write_phantom_dataset
    from vesselfm.data.prepare import PrepareOptions, prepare_dataset

    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    raw = args.raw or work / "raw"
    try:
        t = time.perf_counter()
        pairs = [case_paths(raw, i) for i in range(1, args.cases + 1)]
        if not all(p.is_file() for pair in pairs for p in pair):
            pairs = write_phantom_dataset(
                raw, args.cases, shape=tuple(args.shape), seed=0, progress=False
            )
            print(
                f"wrote {args.cases} phantoms {tuple(args.shape)} in {time.perf_counter() - t:.1f} s"
            )
        print(
            f"machine: {os.cpu_count()} CPU cores; {args.cases} cases of {tuple(args.shape)} -> "
            f"256x256x{args.shape[2]} ({os.path.getsize(pairs[0][0]) / 1e6:.0f} MB per image .nii.gz)"
        )
        print(
            f"{'round':>5s}  {'reference s/case':>16s}  {f'ours (workers={args.workers}) s/case':>26s}  {'ratio':>6s}"
            f"  {'CPU s/case ref, ours':>20s}  load average (1/5/15 min) before, after"
        )
        ratios = []
        for r in range(1, args.repeat + 1):
            before = _load()
            t, c = time.perf_counter(), _cpu()
            for i, (img, lab) in enumerate(pairs):
                reference(img, lab, work / "ref" / str(i))
            ref = (time.perf_counter() - t) / args.cases
            ref_cpu = (_cpu() - c) / args.cases
            out = work / f"ours{r}"
            t, c = time.perf_counter(), _cpu()
            summary = prepare_dataset(
                raw,
                out,
                split="random",
                options=PrepareOptions(),
                workers=args.workers,
                limit=args.cases,
                progress=False,
            )
            ours = (time.perf_counter() - t) / args.cases
            ours_cpu = (_cpu() - c) / args.cases
            shutil.rmtree(out, ignore_errors=True)
            ratios.append(ref / ours)
            print(
                f"{r:5d}  {ref:16.2f}  {ours:26.2f}  {ref / ours:5.1f}x  {ref_cpu:9.2f}, {ours_cpu:8.2f}  {before}, {_load()}",
                flush=True,
            )
        print(
            f"speed-up: {min(ratios):.1f}x-{max(ratios):.1f}x (ours: wall time incl. worker start-up); "
            f"mean round-trip Dice {summary.mean_round_trip_dice:.4f}"
        )
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
