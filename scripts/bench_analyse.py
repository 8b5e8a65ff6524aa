"""Seconds to analyse one full-size coronary mask (read, centreline tree, names, lumen profiles,
stenoses, CAD-RADS, and the JSON/CSV/Markdown/PNG/HTML outputs), the target being <= 30 s on 2
cores.

    python scripts/bench_analyse.py [--mask FILE] [--shape 512 512 275] [--seed 3] [--stenoses 2]
                                    [--repeat 3] [--cores 2] [--no-plots] [--no-html] [--work DIR]

Without ``--mask`` the mask is the segment map of case 1 of an ImageCAS-X phantom set of
``--shape`` voxels and seed ``--seed`` (``python -m vesselfm.phantom layout=imagecasx``: both
trees with side branches and ``--stenoses`` planted narrowings of 20-90 %, ImageCAS-like
spacing), written once into ``--work``/phantoms (not timed). Each repeat
times :func:`vesselfm.analysis.analyse_file` and :func:`vesselfm.analysis.report.write_case`
in this process (the imports are warmed up by a first, untimed run). The process is pinned to
``--cores`` CPUs; the load average is printed before and after, because on a shared machine
the wall time says as much about the neighbours as about the code; the process's CPU time
(user + system, all its threads) is printed beside it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mask", type=Path, default=None)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 275))
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--stenoses", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-html", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()

    from analysis_bench_setup import imagecasx_phantom, machine_line, pin_cores

    pin_cores(args.cores)

    import numpy as np

    from vesselfm.analysis import analyse_file
    from vesselfm.analysis.report import write_case

    work = args.work or Path(tempfile.mkdtemp(prefix="bench_analyse_"))
    work.mkdir(parents=True, exist_ok=True)
    mask = args.mask
    if mask is None:
        t0 = time.perf_counter()
        phantom = imagecasx_phantom(
            work / "phantoms", 1, tuple(args.shape), args.seed, args.stenoses
        )
        mask = phantom["segmentation"]
        print(f"phantom {tuple(args.shape)} seed {args.seed}: {time.perf_counter() - t0:.1f} s")

    print(machine_line())
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    out = work / "out"
    plots, html = not args.no_plots, not args.no_html
    result = analyse_file(mask, "bench", keep_mask=html)  # warm-up: imports, caches
    write_case(result, out, plots=plots, html=html)
    times, cpu = [], []
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        result = analyse_file(mask, "bench", keep_mask=html)
        write_case(result, out, plots=plots, html=html)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    vox = int(np.count_nonzero(np.asarray(__import__("nibabel").load(str(mask)).dataobj)))
    print(f"load average after:  {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(
        f"mask {mask.name}: {vox} lumen voxels; {len(result['branches'])} branches, "
        f"{sum(b['length_mm'] for b in result['branches']):.0f} mm of centreline, "
        f"{len(result['stenoses'])} stenoses, CAD-RADS {result['cad_rads']}"
    )
    print(
        f"analyse + write: wall median {statistics.median(times):.2f} s, min {min(times):.2f} s; "
        f"CPU time of this process median {statistics.median(cpu):.2f} s; over {len(times)} "
        "runs (target <= 30 s wall)"
    )


if __name__ == "__main__":
    main()
