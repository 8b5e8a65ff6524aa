"""The analysis targets of issue 18 on held-out ImageCAS-X phantoms: ground-truth or predicted masks.

    python scripts/bench_analysis_targets.py [--n 20] [--shape 512 512 256] [--seed 18018]
                                             [--stenoses 3] [--work DIR] [--cores 2]
                                             [--predicted CKPT [--infer KEY=VALUE ...]]

Writes ``--n`` ImageCAS-X phantoms (``python -m vesselfm.phantom layout=imagecasx``; seed
``--seed``, which no training config uses, so they are held out; ``--stenoses`` planted
lesions of 20-90 % each, recorded as rendered) into ``--work``/phantoms (kept: a rerun reuses the cases
already there), then for each case analyses the ground-truth mask (the union of the segments:
names by anatomy, not from the segment map) exactly as ``python -m vesselfm.analyse`` does and
scores it with :func:`vesselfm.analysis.scoring.score_analysis` (``python -m vesselfm.evaluate
stenoses=`` computes the same columns). Reference radii are the ground truth's inscribed radius
(its distance transform) at the reference centreline points.

Prints one line per case and the target table (mean over the cases; naming and CAD-RADS as the
rate of cases), and writes ``targets.csv`` (per case) into ``--work``. Stenosis sensitivity and
PPV are also pooled over all lesions of all cases (``pooled``), as a per-case mean is undefined
for cases without a >= 50 % lesion.

With ``--predicted CKPT`` the phantoms' scans are first segmented by ``python -m vesselfm.infer
model.checkpoint=CKPT`` (plus the ``--infer`` overrides, default ``model=tiny``) into
``--work``/predicted, and the predicted masks are analysed instead, scored against the same
truth (the issue's table on the phantom demo model's predicted masks: ``--shape 96 96 64``, the
demo's phantoms, and a ``phantom_demo`` checkpoint).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import time
from pathlib import Path

TARGETS = {
    "cl_ov": (">=", 0.95),
    "cl_ai_mm": ("<=", 0.3),
    "radius_mae_mm": ("<=", 0.15),
    "main_names_all_correct": (">=", 0.95),
    "stenosis_sensitivity": (">=", 0.9),
    "stenosis_ppv": (">=", 0.85),
    "stenosis_degree_mae": ("<=", 8.0),
    "cad_rads_exact": (">=", 0.8),
}


def _mean(values):
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return (sum(vals) / len(vals), len(vals)) if vals else (float("nan"), 0)


def table(rows, columns, pooled, shape, seed, predicted=None) -> str:
    """The target table (Markdown) over ``rows``."""
    masks = "ground-truth masks" if predicted is None else f"masks predicted by {predicted}"
    lines = [
        f"{len(rows)} case(s), shape {tuple(shape)}, seed {seed}, {masks}",
        "",
        "| metric | target | measured (mean over cases) | n | met |",
        "|---|---|---|---|---|",
    ]
    for key in (*columns, "main_names_all_correct"):
        mean, n = _mean([r[key] for r in rows])
        op, goal = TARGETS.get(key, ("", None))
        met = ""
        if goal is not None:
            met = "yes" if (mean >= goal if op == ">=" else mean <= goal) else "no"
        target = "" if goal is None else f"{op} {goal}"
        lines.append(f"| {key} | {target} | {mean:.3f} | {n} | {met} |")
    sig_true, sig_found, hit_true, hit_found = pooled
    sens = hit_true / sig_true if sig_true else float("nan")
    ppv = hit_found / sig_found if sig_found else float("nan")
    lines += [
        "",
        f"pooled over all cases: >= 50 % lesions true {sig_true}, found {sig_found}; "
        f"sensitivity {sens:.3f}, PPV {ppv:.3f}",
    ]
    return "\n".join(lines) + "\n"


def _infer(volumes: Path, output: Path, checkpoint: Path, overrides: list[str]) -> None:
    """Segment the phantoms' scans with ``python -m vesselfm.infer`` (the checkpoint's
    preprocessing and threshold) into ``output`` (kept: a rerun reuses the masks there)."""
    import subprocess
    import sys

    if output.is_dir() and any(output.glob("*_pred.nii.gz")):
        return
    command = [
        sys.executable,
        "-m",
        "vesselfm.infer",
        f"input={volumes}",
        f"output={output}",
        f"model.checkpoint={checkpoint}",
        "progress=false",
        *overrides,
    ]
    subprocess.run(command, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 256))
    parser.add_argument("--seed", type=int, default=18018)
    parser.add_argument("--stenoses", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path("runs/bench_analysis_targets"))
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument(
        "--predicted",
        type=Path,
        default=None,
        metavar="CKPT",
        help="analyse the masks this checkpoint predicts (python -m vesselfm.infer) instead of "
        "the ground truth",
    )
    parser.add_argument(
        "--infer",
        nargs="*",
        default=["model=tiny"],
        help="overrides for python -m vesselfm.infer with --predicted (default: model=tiny)",
    )
    args = parser.parse_args()

    from analysis_bench_setup import imagecasx_phantom, machine_line, pin_cores

    pin_cores(args.cores)

    import numpy as np

    from vesselfm.analysis.pipeline import analyse_mask
    from vesselfm.analysis.scoring import (
        COLUMNS,
        MAIN_NAMES,
        SIGNIFICANT_PERCENT,
        lesion_pairs,
        score_analysis,
    )
    from vesselfm.analysis.stenosis import cad_rads
    from vesselfm.io import read_volume
    from vesselfm.io.centerlines import read_centerlines
    from vesselfm.metrics.folders import read_stenoses
    from vesselfm.metrics.imagecasx import centerline_files

    print(machine_line(), flush=True)
    work = args.work
    data = work / "phantoms"  # the phantoms' own folder (the phantom writer keeps it for them)
    rows = []
    sig_true = sig_found = hit_true = hit_found = 0
    if args.predicted is not None:
        t0 = time.perf_counter()
        for index in range(1, args.n + 1):
            imagecasx_phantom(data, index, tuple(args.shape), args.seed, args.stenoses)
        _infer(data / "volumes", work / "predicted", args.predicted, list(args.infer))
        print(f"phantoms and inference: {time.perf_counter() - t0:.0f} s", flush=True)
    for index in range(1, args.n + 1):
        cid = str(index)
        t0 = time.perf_counter()
        files = imagecasx_phantom(data, index, tuple(args.shape), args.seed, args.stenoses)
        t1 = time.perf_counter()
        seg = read_volume(files["segmentation"])
        mask = np.asarray(seg.array) != 0
        if args.predicted is None:
            analysed = mask
        else:
            pred = read_volume(work / "predicted" / f"{cid}_pred.nii.gz")
            analysed = np.asarray(pred.array) != 0
        result = analyse_mask(analysed, seg.affine, case=cid)
        t2 = time.perf_counter()
        lines = {
            side: read_centerlines(p)
            for side, p in centerline_files(files["centerlines"], cid).items()
        }
        true = read_stenoses(files["stenoses"])
        row = score_analysis(result, mask, seg.affine, lines, true)
        # per-case naming target: every one of LM/LAD/LCx/RCA the reference has is named right
        row["main_names_all_correct"] = float(row["main_names_correct"] == 1.0)
        st = [t for t in true if t["degree_percent"] >= SIGNIFICANT_PERCENT]
        sf = [f for f in result["stenoses"] if f["degree_percent"] >= SIGNIFICANT_PERCENT]
        pairs = lesion_pairs(st, sf)
        sig_true += len(st)
        sig_found += len(sf)
        hit_true += len({i for _, i, _ in pairs})
        hit_found += len({j for _, _, j in pairs})
        row.update(
            case=cid,
            true_cad_rads=cad_rads([(t["branch"], t["degree_percent"]) for t in true]),
            found_cad_rads=result["cad_rads"],
            true_lesions=";".join(
                f"{t['tree']}/{t['branch']}@{t['arc_mm']:.0f}mm:{t['degree_percent']:.0f}"
                for t in true
            ),
            found_lesions=";".join(
                f"{f['tree']}/{f['branch']}@{f['arc_mm']:.0f}mm:{f['degree_percent']:.0f}"
                for f in result["stenoses"]
            ),
            names=",".join(sorted({b["name"] for b in result["branches"]} & set(MAIN_NAMES))),
            generate_s=round(t1 - t0, 1),
            analyse_s=round(t2 - t1, 1),
        )
        rows.append(row)
        print(
            f"case {cid}: "
            + " ".join(f"{k}={row[k]:.3f}" for k in COLUMNS)
            + f" | CAD-RADS true {row['true_cad_rads']} found {row['found_cad_rads']}"
            + f" | true {row['true_lesions']} | found {row['found_lesions']}"
            + f" | analyse {row['analyse_s']} s",
            flush=True,
        )
        work.mkdir(parents=True, exist_ok=True)
        keys = ["case", *COLUMNS, "main_names_all_correct"] + [
            k for k in row if k not in COLUMNS and k not in ("case", "main_names_all_correct")
        ]
        with open(work / "targets.csv", "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)
        pooled = (sig_true, sig_found, hit_true, hit_found)
        text = table(rows, COLUMNS, pooled, args.shape, args.seed, args.predicted)
        (work / "targets.md").write_text(text)

    print("\n" + text)

    print(json.dumps({"load_average_after": os.getloadavg()}))


if __name__ == "__main__":
    main()
