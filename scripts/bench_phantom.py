"""Time the phantom generator: small cases (as tests and demos use) and one ImageCAS-size case.

    python scripts/bench_phantom.py [--repeats 5] [--full-shape 512 512 256] [--no-full]

Prints seconds per case for generation and for writing the two gzipped NIfTI files, and checks
the label's Betti numbers on every generated case. No thresholds: read the numbers.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from vesselfm.data.phantom import generate_phantom, label_topology, save_phantom


def bench(shape: tuple[int, int, int], repeats: int, write: bool) -> None:
    gen, wrote, sizes = [], [], []
    for seed in range(repeats):
        t0 = time.perf_counter()
        ph = generate_phantom(shape, seed=seed)
        gen.append(time.perf_counter() - t0)
        assert label_topology(ph.label) == (2, 0, 0), (shape, seed)
        if write:
            with tempfile.TemporaryDirectory() as tmp:
                img, lab = Path(tmp, "1.img.nii.gz"), Path(tmp, "1.label.nii.gz")
                t0 = time.perf_counter()
                save_phantom(ph, img, lab)
                wrote.append(time.perf_counter() - t0)
                sizes.append((img.stat().st_size + lab.stat().st_size) / 2**20)
    line = (
        f"{'x'.join(map(str, shape)):>12}  generate median {statistics.median(gen):6.2f} s "
        f"(min {min(gen):.2f}, max {max(gen):.2f}, n={len(gen)})"
    )
    if write:
        line += (
            f"  write {statistics.median(wrote):5.2f} s  files {statistics.median(sizes):6.1f} MiB"
        )
    print(line, flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--full-shape", type=int, nargs=3, default=(512, 512, 256))
    parser.add_argument("--no-full", action="store_true", help="skip the ImageCAS-size case")
    args = parser.parse_args()
    print(f"cpus: {os.cpu_count()}; load average: {os.getloadavg()[0]:.1f}")
    generate_phantom((32, 32, 32), seed=0)  # imports and first-call overheads
    for shape in ((64, 64, 48), (96, 96, 96), (128, 128, 96)):
        bench(shape, args.repeats, write=shape == (96, 96, 96))
    if not args.no_full:
        bench(tuple(args.full_shape), 1, write=True)
        bench((512, 512, 206), 1, write=False)
        bench((512, 512, 275), 1, write=False)


if __name__ == "__main__":
    main()
