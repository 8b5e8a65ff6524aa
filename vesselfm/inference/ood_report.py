"""Score a trained network on the out-of-distribution phantom families, with and without the
intensity TTA members, and report them (``ood_metrics.csv`` and a ``summary.md`` section).

The demo (``experiment=phantom_demo``, key ``ood``) calls :func:`evaluate_ood` after testing. Each
case of :mod:`vesselfm.data.phantom.ood` is segmented in memory by the same
:class:`~vesselfm.inference.SlidingWindowPredictor` as ``infer`` (the training preprocessing,
the threshold and post-processing of the ``inference`` config) and scored at its native grid by
:func:`vesselfm.metrics.compute_metrics`.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from torch import nn

    from vesselfm.data.preprocessing import PreprocessConfig

log = logging.getLogger(__name__)

# TTA variant -> inference.tta keys (vesselFM's intensity members)
TTA_VARIANTS: dict[str, dict[str, bool]] = {
    "none": {},
    "invert": {"invert": True},
    "equalize": {"equalize_hist": True},
    "invert+equalize": {"invert": True, "equalize_hist": True},
}
METRICS = ("dice", "cldice", "betti_0_error")
# The targets for every OOD family (held-out cases)
TARGETS = {"dice": 0.70, "cldice": 0.80, "betti_0_error": 5.0}


def evaluate_ood(
    network: nn.Module,
    *,
    shape: Sequence[int],
    seed: int,
    cases: int,
    families: Sequence[str] | None = None,
    tta: Sequence[str] = ("none",),
    inference: Mapping[str, Any] | None = None,
    preprocess: PreprocessConfig | None = None,
) -> list[dict[str, Any]]:
    """Segment and score ``cases`` cases of each family, once per TTA variant.

    Args:
        network: the trained network ``(B, 1, X, Y, Z)`` -> logits.
        shape: phantom ``(X, Y, Z)`` voxels.
        seed: the families' seed.
        cases: cases per family.
        families: names from :data:`vesselfm.data.phantom.ood.OOD_FAMILIES` (default all).
        tta: names from :data:`TTA_VARIANTS`.
        inference: the ``inference`` config group (its own ``tta`` is replaced per variant).
        preprocess: the training preprocessing.

    Returns:
        One row per family, case and variant: ``family``, ``case``, ``tta``, ``held_out``,
        ``held_out_value`` and :data:`METRICS`.
    """
    from vesselfm.data.phantom.ood import OOD_FAMILIES, generate_ood_case
    from vesselfm.inference.predictor import SlidingWindowPredictor
    from vesselfm.metrics import compute_metrics

    families = list(families) if families else list(OOD_FAMILIES)
    unknown = [t for t in tta if t not in TTA_VARIANTS] + [
        f for f in families if f not in OOD_FAMILIES
    ]
    if unknown:
        raise ValueError(
            f"unknown ood entries {unknown}; families: {list(OOD_FAMILIES)}, tta: {list(TTA_VARIANTS)}"
        )
    base = dict(inference or {})
    predictors = {}
    for name in tta:
        cfg = {**base, "tta": {**dict(base.get("tta") or {}), **TTA_VARIANTS[name]}}
        predictors[name] = SlidingWindowPredictor.from_config(
            network, cfg, preprocess=preprocess, progress=False
        )
    rows: list[dict[str, Any]] = []
    for family in families:
        for index in range(int(cases)):
            case = generate_ood_case(family, shape, seed=seed, index=index)
            for name, predictor in predictors.items():
                prob = predictor.predict_array(case.image, case.affine)
                mask = predictor.binarize(prob, case.spacing)
                values = compute_metrics(
                    mask, case.label.astype(bool), spacing=case.spacing, metrics=METRICS
                )
                rows.append(
                    {
                        "family": family,
                        "case": case.case_id,
                        "tta": name,
                        "held_out": OOD_FAMILIES[family]["held_out"],
                        "held_out_value": round(float(case.held_out_value), 4),
                        **values,
                    }
                )
            log.info("ood: scored %s", case.case_id)
    return rows


def _mean(rows: Sequence[Mapping[str, Any]], key: str) -> float | None:
    vals = [float(r[key]) for r in rows if r.get(key) is not None]
    return float(np.mean(vals)) if vals else None


def summarize_ood(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Mean of :data:`METRICS` per family and TTA variant, and whether the targets are met."""
    out = []
    keys = list(dict.fromkeys((r["family"], r["tta"]) for r in rows))
    for family, variant in keys:
        sel = [r for r in rows if r["family"] == family and r["tta"] == variant]
        means = {k: _mean(sel, k) for k in METRICS}
        met = (
            all(means[k] is not None for k in METRICS)
            and means["dice"] >= TARGETS["dice"]  # type: ignore[operator]
            and means["cldice"] >= TARGETS["cldice"]  # type: ignore[operator]
            and means["betti_0_error"] <= TARGETS["betti_0_error"]  # type: ignore[operator]
        )
        out.append({"family": family, "tta": variant, "n": len(sel), **means, "target_met": met})
    return out


def ood_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """The ``summary.md`` section: per family and TTA variant, mean Dice, clDice, β0 error."""
    from vesselfm.data.phantom.ood import OOD_FAMILIES

    lines = [
        "## Out-of-distribution families",
        "",
        "Mean over the cases; targets: Dice >= 0.70, clDice >= 0.80, β0 error <= 5 "
        "(per case: ood_metrics.csv).",
        "",
        "| family | held out | TTA | n | Dice | clDice | β0 error | target met |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    for s in summarize_ood(rows):
        spec = OOD_FAMILIES[s["family"]]
        held = f"{spec['held_out']} {tuple(spec['range'])} (train {tuple(spec['train_range'])})"
        lines.append(
            f"| {s['family']} | {held} | {s['tta']} | {s['n']} | {fmt(s['dice'])} | "
            f"{fmt(s['cldice'])} | {fmt(s['betti_0_error'])} | {'yes' if s['target_met'] else 'no'} |"
        )
    return "\n".join(lines) + "\n"


def write_ood_reports(rows: Sequence[Mapping[str, Any]], output_dir: str | Path) -> dict[str, Path]:
    """Write ``ood_metrics.csv`` (one row per case and variant) and append the section to
    ``summary.md`` (created if the test wrote none)."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    csv_path = out / "ood_metrics.csv"
    fields = ["family", "case", "tta", "held_out", "held_out_value", *METRICS]
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: ("" if r.get(k) is None else r[k]) for k in fields})
    md = out / "summary.md"
    text = md.read_text() if md.is_file() else "# Evaluation summary\n"
    md.write_text(text.rstrip("\n") + "\n\n" + ood_markdown(rows))
    return {"csv": csv_path, "md": md}


__all__ = [
    "METRICS",
    "TARGETS",
    "TTA_VARIANTS",
    "evaluate_ood",
    "ood_markdown",
    "summarize_ood",
    "write_ood_reports",
]
