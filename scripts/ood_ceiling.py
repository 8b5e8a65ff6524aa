"""How much of the vessels does the ``thick_slices`` family leave to find? (README, "Randomised
phantoms")

An oracle that knows every case's exact label but sees it only through the family's own
resolution loss: the label re-sampled as the case's image was
(:func:`vesselfm.data.phantom.ood.thick_slices`, each slab of ``f`` = 3.0-3.5 slices averaged,
linear in between), then thresholded. No noise, no blur, no anatomy around the vessels, and the
best threshold per case chosen with the answer in hand, so no model segmenting the image can
be expected to beat it by much: a vessel that runs within one slab has lost where in the slab
it lies. Its Dice, clDice and β0 error are what the family's targets (Dice >= 0.70, clDice >=
0.80, β0 error <= 5) should be read against. ``pool_trees`` and ``dark_vessels`` keep their
full resolution: their oracle is the label itself (Dice 1).

    python scripts/ood_ceiling.py [--cases 2] [--shape 96 96 64] [--seed 0]

The defaults are the demo's OOD cases (``ood.cases: 2``, the phantoms' ``data.shape``, ``ood.seed:
0``). Prints a markdown table per case and the mean; ``main`` returns the rows.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

import numpy as np

from vesselfm.data.phantom.ood import generate_ood_case, thick_slices
from vesselfm.metrics import compute_metrics
from vesselfm.metrics.overlap import confusion_counts, overlap_metrics

THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.1, 0.91, 0.05))
METRICS = ("dice", "cldice", "betti_0_error")


def ceiling_rows(cases: int, shape: Sequence[int], seed: int) -> list[dict[str, float | str]]:
    """Per ``thick_slices`` case: the oracle's metrics at threshold 0.5 and at its best-Dice one."""
    rows: list[dict[str, float | str]] = []
    for index in range(cases):
        case = generate_ood_case("thick_slices", shape, seed=seed, index=index)
        label = case.label.astype(bool)
        seen = thick_slices(label, case.held_out_value)
        dice = {t: overlap_metrics(confusion_counts(seen >= t, label))["dice"] for t in THRESHOLDS}
        best = max(THRESHOLDS, key=lambda t: dice[t])
        for name, t in (("0.5", 0.5), ("best", best)):
            scores = compute_metrics(seen >= t, label, case.spacing, metrics=METRICS)
            rows.append({"case": case.case_id, "factor": round(case.held_out_value, 3),
                         "threshold": name if name == "0.5" else f"best ({t:.2f})",
                         **{m: scores[m] for m in METRICS}})  # fmt: skip
    return rows


def main(argv: Sequence[str] | None = None) -> list[dict[str, float | str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2, help="cases of the family (default 2)")
    parser.add_argument("--shape", type=int, nargs=3, default=(96, 96, 64), metavar=("X", "Y", "Z"))
    parser.add_argument("--seed", type=int, default=0, help="the families' seed (ood.seed)")
    args = parser.parse_args(argv)
    if args.cases < 1:
        parser.error(f"--cases must be >= 1, got {args.cases}")
    rows = ceiling_rows(args.cases, args.shape, args.seed)
    print(
        "| case | slab factor | threshold | Dice | clDice | β0 error |\n|---|---|---|---|---|---|"
    )
    for r in rows:
        print(f"| {r['case']} | {r['factor']} | {r['threshold']} | {r['dice']:.3f} | "
              f"{r['cldice']:.3f} | {r['betti_0_error']} |")  # fmt: skip
    for kind in ("0.5", "best"):
        sel = [r for r in rows if str(r["threshold"]).startswith(kind)]
        means = {m: float(np.mean([float(r[m]) for r in sel])) for m in METRICS}
        print(f"| mean | | {kind} | {means['dice']:.3f} | {means['cldice']:.3f} | "
              f"{means['betti_0_error']:.1f} |")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
