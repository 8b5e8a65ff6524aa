"""Prepare speed per full-size case: vesselfm.prepare (workers=2) vs the reference procedure.

Reference (the one-off script users run today): nibabel load + ``get_fdata`` (float64),
``skimage.transform.resize`` order 1 with anti-aliasing for the image and order 0 for the label
to 256×256×N, ``np.save``; one case after the other in one process.

    python scripts/bench_prepare.py [--cases 4] [--shape 512 512 275] [--workers 2]

Writes phantoms (``generate_phantom``) as NIfTI first, then times both on the same files and
prints seconds per case side by side.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def reference(img_path: Path, lab_path: Path, out: Path) -> None:
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=4)
    ap.add_argument("--shape", type=int, nargs=3, default=[512, 512, 275])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = ap.parse_args()

    from vesselfm.data.phantom import write_phantom_dataset
    from vesselfm.data.prepare import PrepareOptions, prepare_dataset

    work = Path(tempfile.mkdtemp(prefix="bench_prepare_"))
    try:
        t = time.perf_counter()
        pairs = write_phantom_dataset(work / "raw", args.cases, shape=tuple(args.shape), seed=0, progress=False)
        print(f"wrote {args.cases} phantoms {tuple(args.shape)} in {time.perf_counter() - t:.1f} s "
              f"({os.path.getsize(pairs[0][0]) / 1e6:.0f} MB per image .nii.gz)")

        t = time.perf_counter()
        for i, (img, lab) in enumerate(pairs):
            reference(img, lab, work / "ref" / str(i))
        ref = (time.perf_counter() - t) / args.cases

        t = time.perf_counter()
        summary = prepare_dataset(work / "raw", work / "ours", split="random", options=PrepareOptions(),
                                  workers=args.workers, progress=False)
        ours = (time.perf_counter() - t) / args.cases
        print(f"machine: {os.cpu_count()} CPU cores; cases: {args.cases} of {tuple(args.shape)} -> 256x256x{args.shape[2]}")
        print(f"{'':28s}{'s/case':>10s}")
        print(f"{'reference (1 process)':28s}{ref:10.2f}")
        print(f"{f'vesselfm.prepare workers={args.workers}':28s}{ours:10.2f}   (wall time incl. worker start-up)")
        print(f"speed-up: {ref / ours:.1f}x;  mean round-trip Dice {summary.mean_round_trip_dice:.4f}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
