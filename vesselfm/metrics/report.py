"""Aggregate per-case metric rows and write ``metrics.csv``, ``summary.json`` and ``summary.md``.

A row is ``{"case": str, **compute_metrics(...)}``. Means and standard deviations are taken over
the cases where a metric is defined (not ``None``/NaN), and every summary entry says how many
cases that was (``n``). ``std`` is the sample standard deviation (``ddof=1``, as pandas), ``None``
with fewer than two values.

A summary never passes a partial result off as whole: where the caller says how many cases were
asked for (``expected``), ``summary.md`` says "scored N of M" and both summaries list the cases
that were not scored (``missing``: e.g. ``missing_predictions``, labels without a prediction;
``failed``: case → reason).
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vesselfm.metrics.compute import METRIC_NAMES
from vesselfm.utils.io import atomic_path

#: The files :func:`write_reports` writes.
REPORT_FILES: tuple[str, ...] = ("metrics.csv", "summary.json", "summary.md")
#: The columns of the published vesselFM ImageCAS table, leading ``summary.md``.
HEADLINE: tuple[tuple[str, str], ...] = (
    ("dice", "Dice"),
    ("cldice", "clDice"),
    ("betti_0_error", "β0 error"),
    ("betti_1_error", "β1 error"),
)
#: Metrics that are counts or millimetres (shown with 2 decimals; the rest are in [0, 1]).
UNBOUNDED: frozenset[str] = frozenset(
    {"betti_0", "betti_1", "betti_2", "betti_0_error", "betti_1_error", "hd95_mm", "assd_mm"}
)


def defined_number(value: Any) -> float | None:
    """``value`` as a float, or ``None`` where it is missing, text or NaN (a metric left out)."""
    if value is None or isinstance(value, (str, bytes)):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) else v


def _metric_columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    """METRIC_NAMES present in the rows, in table order, then any other keys (not ``case``)."""
    seen: list[str] = []
    for row in rows:
        for key in row:
            if key != "case" and key not in seen:
                seen.append(key)
    known = [m for m in METRIC_NAMES if m in seen]
    return known + [k for k in seen if k not in METRIC_NAMES]


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float | int | None]]:
    """Mean, sample standard deviation and number of defined cases, per metric.

    Args:
        rows: one dict per case, ``{"case": id, metric: value, ...}``; ``None``/NaN values are
            skipped.

    Returns:
        ``{metric: {"mean": float | None, "std": float | None, "n": int}}`` in
        :data:`METRIC_NAMES` order (other numeric columns after).
    """
    summary: dict[str, dict[str, float | int | None]] = {}
    for name in _metric_columns(rows):
        values = [v for v in (defined_number(row.get(name)) for row in rows) if v is not None]
        arr = np.asarray(values, dtype=np.float64)
        summary[name] = {
            "mean": float(arr.mean()) if arr.size else None,
            "std": float(arr.std(ddof=1)) if arr.size > 1 else None,
            "n": int(arr.size),
        }
    return summary


def _fmt(name: str, stats: dict[str, float | int | None]) -> str:
    if stats["mean"] is None:
        return "–"
    digits = 2 if name in UNBOUNDED else 4
    text = f"{stats['mean']:.{digits}f}"
    if stats["std"] is not None:
        text += f" ± {stats['std']:.{digits}f}"
    return text


def summary_markdown(
    summary: dict[str, dict[str, float | int | None]],
    n_cases: int,
    expected: int | None = None,
    missing: Mapping[str, Sequence[str]] | None = None,
    failed: Mapping[str, str] | None = None,
) -> str:
    """The summary as Markdown: the published table's headline columns, then every metric.

    Args:
        summary: :func:`summarize`'s result.
        n_cases: the cases scored.
        expected: the cases asked for; the text then says "scored N of M".
        missing: lists of case ids that could not be scored, by reason (e.g.
            ``{"missing_predictions": [...]}``), each listed.
        failed: ``{case: reason}`` of the cases that failed, each listed.
    """
    if expected is None:
        count = f"{n_cases} case(s)"
    else:
        count = f"Scored {n_cases} of {expected} case(s)"
    lines = [
        "# Evaluation summary",
        "",
        f"{count}; mean ± sample std over the cases where a metric is defined (n).",
        "",
    ]
    for name, cases in (missing or {}).items():
        if cases:
            title = name.replace("_", " ").capitalize()
            lines += [f"{title} ({len(cases)}, not scored): {', '.join(cases)}", ""]
    if failed:
        lines += [f"Failed ({len(failed)}, not scored):", ""]
        lines += [f"- {case}: {reason}" for case, reason in failed.items()]
        lines += [""]
    head = [(k, title) for k, title in HEADLINE if k in summary]
    if head:
        lines += [
            "| " + " | ".join(title for _, title in head) + " |",
            "|" + "---|" * len(head),
            "| " + " | ".join(_fmt(k, summary[k]) for k, _ in head) + " |",
            "",
        ]
    lines += ["| metric | mean ± std | n |", "|---|---|---|"]
    lines += [f"| {name} | {_fmt(name, stats)} | {stats['n']} |" for name, stats in summary.items()]
    return "\n".join(lines) + "\n"


def _csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (bool, np.bool_)):
        return str(int(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(value) else repr(float(value))
    return str(value)


def write_reports(
    rows: list[dict[str, Any]],
    output_dir: str | Path,
    expected: int | None = None,
    missing: Mapping[str, Sequence[str]] | None = None,
    failed: Mapping[str, str] | None = None,
) -> dict[str, Path]:
    """Write ``metrics.csv`` (a row per case, ``case`` first), ``summary.json`` and
    ``summary.md`` into ``output_dir``, each atomically.

    Args:
        rows: one dict per case, ``{"case": id, **compute_metrics(...)}``.
        output_dir: the folder to write into (created if missing).
        expected: the number of cases asked for. When given, ``summary.json`` also holds
            ``"scored"`` (``len(rows)``), ``"expected"``, ``"failed"`` (``{case: reason}``) and
            each list of ``missing`` (e.g. ``"missing_predictions": [ids]``), and ``summary.md``
            says "scored N of M" and lists them.
        missing: lists of case ids not scored, by reason (keys become ``summary.json`` keys).
        failed: ``{case: reason}`` of the cases that failed.

    Returns:
        ``{"csv": path, "json": path, "md": path}``.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    columns = _metric_columns(rows)
    summary = summarize(rows)
    paths = {key: out / name for key, name in zip(("csv", "json", "md"), REPORT_FILES, strict=True)}

    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["case", *columns])
        for row in rows:
            writer.writerow([str(row.get("case", "")), *(_csv_value(row.get(c)) for c in columns)])
    document: dict[str, Any] = dict(summary)
    if expected is not None:
        document = {
            "scored": len(rows),
            "expected": int(expected),
            **{name: list(cases) for name, cases in (missing or {}).items()},
            "failed": dict(failed or {}),
            **summary,
        }
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(document, indent=2) + "\n")
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(
            summary_markdown(summary, len(rows), expected, missing, failed), encoding="utf-8"
        )
    return paths
