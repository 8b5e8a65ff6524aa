"""Benchmark of experiment=phantom_segments: train a segment model on ImageCAS-X-layout phantoms
on the CPU, then report the held-out phantoms' mean Dice over LM, LAD, LCx and RCA, with the wall
and CPU time (the issue's target: >= 0.80 within 10 minutes on a 2-core CPU).

    python scripts/bench_segments.py [key=value ...]     # extra train overrides

It tests on 12 held-out phantoms (``data.n_test=12`` unless given; the experiment's own 4 are
the first four of them, and training and validation phantoms do not change: a case's seed
depends on its index alone), so one run's figure is not four cases' luck.

Prints one JSON line: the four segments' mean Dice over test cases, their mean, every dice_*
column's mean, the validation Dice after each epoch (from the CSV logger), wall and CPU seconds,
the load average before and after (the CPU time is the figure to trust on a shared box), the
machine's CPU capability and the overrides.
"""

from __future__ import annotations

import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MAIN_SEGMENTS = ("LM", "LAD", "LCx", "RCA")


def main(argv: list[str]) -> dict:
    import torch

    run = Path(tempfile.mkdtemp(prefix="bench_segments_"))
    held_out = [] if any(a.startswith("data.n_test=") for a in argv) else ["data.n_test=12"]
    overrides = ["experiment=phantom_segments", f"hydra.run.dir={run}", *held_out, *argv]
    load_before = os.getloadavg()
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vesselfm.train", *overrides], check=True)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(run / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    columns = [c for c in rows[0] if c.startswith("dice")]
    means = {}
    for c in columns:
        values = [float(r[c]) for r in rows if r.get(c) not in (None, "", "nan")]
        means[c] = sum(values) / len(values) if values else None
    main4 = [means.get(f"dice_{s}") for s in MAIN_SEGMENTS]
    val_curve = []
    for log in sorted(run.glob("csv/*/metrics.csv")):
        with open(log) as fh:
            for r in csv.DictReader(fh):
                if r.get("val/dice") not in (None, ""):
                    val_curve.append([int(r["step"]), round(float(r["val/dice"]), 3)])
    result = {
        "test_cases": len(rows),
        "dice_main4": {s: v for s, v in zip(MAIN_SEGMENTS, main4, strict=True)},
        "mean_dice_LM_LAD_LCx_RCA": (
            sum(v for v in main4 if v is not None) / sum(v is not None for v in main4)
        ),
        "dice_means": means,
        "val_dice_by_step": val_curve,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "load_before_after": [round(load_before[0], 1), round(os.getloadavg()[0], 1)],
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cores": len(os.sched_getaffinity(0)),
        "overrides": overrides,
        "run_dir": str(run),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
