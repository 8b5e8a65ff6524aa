"""Writing an analysis: ``<case>_analysis.json``, ``<case>_branches.csv``, ``<case>_report.md``,
``<case>_profiles.png`` and the cohort's ``summary.csv``/``summary.md``.

Every file is written through :func:`vesselfm.utils.io.atomic_path`: an interrupted run leaves no
half-written file, and each is recorded in the folder's ``.vesselfm-outputs.json``.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vesselfm.analysis.pipeline import NOTICE
from vesselfm.utils.io import atomic_path

CSV_COLUMNS = ("branch_id", "branch", "arc_mm", "x_mm", "y_mm", "z_mm", "radius_mm", "diameter_mm")
SUMMARY_COLUMNS = (
    "case",
    "cad_rads",
    "branches",
    "centreline_mm",
    "stenoses",
    "max_degree_percent",
    "worst_branch",
    "loops",
)
MAIN = ("LM", "LAD", "LCx", "RCA")


def case_files(output: str | os.PathLike[str], case: str) -> dict[str, Path]:
    """The per-case output paths."""
    out = Path(output)
    return {
        "json": out / f"{case}_analysis.json",
        "csv": out / f"{case}_branches.csv",
        "md": out / f"{case}_report.md",
        "png": out / f"{case}_profiles.png",
        "html": out / f"{case}_centreline.html",
        "cpr": out / f"{case}_cpr.png",
    }


def public(result: dict[str, Any]) -> dict[str, Any]:
    """The JSON contract: the result without its private keys."""
    return {k: v for k, v in result.items() if not k.startswith("_")}


def write_case(
    result: dict[str, Any],
    output: str | os.PathLike[str],
    plots: bool = True,
    html: bool = False,
) -> dict[str, Path]:
    """Write one case's JSON, CSV, Markdown report, with ``plots`` its profile picture (and its
    straightened reformations when ``result["_image"]`` holds the scan on the mask's grid), and
    with ``html`` its 3D view (both need the mask: ``result["_mask"] = (array, affine)``)."""
    paths = case_files(output, result["case"])
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(public(result), indent=1) + "\n", encoding="utf-8")
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(CSV_COLUMNS)
        for bid, name, arc, x, y, z, r, d in result["_samples"]:
            writer.writerow(
                [
                    bid,
                    name,
                    f"{arc:.3f}",
                    f"{x:.3f}",
                    f"{y:.3f}",
                    f"{z:.3f}",
                    f"{r:.3f}",
                    f"{d:.3f}",
                ]
            )
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(markdown(result), encoding="utf-8")
    written = {k: paths[k] for k in ("json", "csv", "md")}
    if plots and result["branches"] and profile_plot(result, paths["png"]):
        written["png"] = paths["png"]
    if plots and result.get("_image") is not None and result.get("_mask") is not None:
        from vesselfm.analysis.reformation import cpr_plot

        mask, affine = result["_mask"]
        if cpr_plot(result, result["_image"], mask, affine, paths["cpr"]):
            written["cpr"] = paths["cpr"]
    if html and result["branches"]:
        from vesselfm.viz.figure3d import save_html

        mask, affine = result.get("_mask", (None, None))
        written["html"] = save_html(centreline_figure(result, mask, affine), paths["html"])
    return written


def centreline_figure(result: dict[str, Any], mask: Any = None, affine: Any = None) -> Any:
    """A plotly 3D figure: the centreline of every branch coloured by its area-equivalent
    diameter, stenoses as red markers labelled with their degree, over the mask's translucent
    surface when ``mask`` and ``affine`` are given (RAS mm, as the STL and the other 3D view)."""
    import numpy as np
    import plotly.graph_objects as go

    if mask is not None:
        from vesselfm.viz.figure3d import make_figure

        fig = make_figure(np.asarray(mask) != 0, affine, opacity=0.25, title=result["case"])
    else:
        fig = go.Figure()
    top = max((max(b["diameter_mm"], default=0) for b in result["branches"]), default=1.0)
    for k, b in enumerate(result["branches"]):
        p = np.asarray(b["points_mm"])
        fig.add_trace(
            go.Scatter3d(
                x=p[:, 0],
                y=p[:, 1],
                z=p[:, 2],
                mode="lines",
                name=f"{b['id']} {b['name']}",
                line={
                    "width": 6,
                    "color": b["diameter_mm"],
                    "colorscale": "Viridis",
                    "cmin": 0.0,
                    "cmax": min(top, 6.0),
                    "showscale": k == 0,
                    "colorbar": {"title": "diameter (mm)"},
                },
                hovertext=[f"{b['name']} {d:.2f} mm" for d in b["diameter_mm"]],
                hoverinfo="text",
            )
        )
    if result["stenoses"]:
        q = np.asarray([s["position_mm"] for s in result["stenoses"]])
        fig.add_trace(
            go.Scatter3d(
                x=q[:, 0],
                y=q[:, 1],
                z=q[:, 2],
                mode="markers+text",
                name="stenoses",
                marker={"size": 6, "color": "red"},
                text=[f"{s['branch']} {s['degree_percent']:.0f}%" for s in result["stenoses"]],
            )
        )
    fig.update_layout(
        title=f"{result['case']}: CAD-RADS {result['cad_rads']} ({NOTICE})",
        scene={"aspectmode": "data"},
    )
    return fig


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def markdown(result: dict[str, Any]) -> str:
    """A readable summary of one case."""
    lines = [
        f"# Coronary analysis: {result['case']}",
        "",
        f"**CAD-RADS {result['cad_rads']}** ({NOTICE}).",
        "",
        f"Voxel spacing {' × '.join(f'{s:g}' for s in result['spacing_mm'])} mm; branch names "
        f"by {result['naming']}; {len(result['branches'])} branches, "
        f"{len(result['stenoses'])} stenoses, {len(result['loops'])} loops.",
        "",
        "## Stenoses",
        "",
    ]
    if result["stenoses"]:
        lines += [
            "| branch | id | arc from ostium (mm) | degree (%) | grade | length (mm) | min / reference diameter (mm) |",
            "|---|---|---|---|---|---|---|",
        ]
        for s in result["stenoses"]:
            lines.append(
                f"| {s['branch']} | {s['branch_id']} | {s['arc_mm']:.1f} | {s['degree_percent']:.1f} | "
                f"{s['grade']} | {s['length_mm']:.1f} | {s['minimal_diameter_mm']:.2f} / "
                f"{s['reference_diameter_mm']:.2f} |"
            )
    else:
        lines.append(
            "None found (diameter reductions of 20 % or more, in vessels of 1.5 mm or more)."
        )
    lines += [
        "",
        "## Branches",
        "",
        "| id | parent | name (confidence) | tree | length (mm) | mean / min diameter (mm) |",
        "|---|---|---|---|---|---|",
    ]
    for b in result["branches"]:
        d = b["diameter_mm"]
        parent = "" if b["parent_id"] is None else b["parent_id"]
        lines.append(
            f"| {b['id']} | {parent} | {b['name']} ({b['confidence']:.2f}) | {b['tree']} | "
            f"{b['length_mm']:.1f} | {_mean(d):.2f} / {min(d) if d else 0:.2f} |"
        )
    lines += [
        "",
        "Degrees are diameter reductions of the area-equivalent diameter against a reference fitted",
        "to the healthy vessel around each lesion. Coordinates (JSON, CSV) are RAS mm.",
        f"This report is {NOTICE}.",
        "",
    ]
    return "\n".join(lines)


def profile_plot(result: dict[str, Any], path: Path) -> bool:
    """Diameter profiles (area-equivalent and 2× inscribed radius) of the main vessels against
    arc length from the ostium, stenoses marked; ``False`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    groups: dict[str, list[dict[str, Any]]] = {}
    for b in result["branches"]:
        key = b["name"] if b["name"] in MAIN else None
        if key:
            groups.setdefault(f"{key} ({b['tree']})" if key == "RCA" else key, []).append(b)
    if not groups:  # no main vessel named: the longest branches
        longest = sorted(result["branches"], key=lambda b: -b["length_mm"])[:4]
        groups = {f"branch {b['id']}": [b] for b in longest}
    fig, axes = plt.subplots(len(groups), 1, figsize=(7, 2.2 * len(groups)), squeeze=False)
    for ax, (label, branches) in zip(axes[:, 0], groups.items(), strict=True):
        for b in branches:
            n = len(b["diameter_mm"])
            arc = [b["arc_start_mm"] + k * (b["length_mm"] / max(n - 1, 1)) for k in range(n)]
            ax.plot(arc, b["diameter_mm"], color="tab:blue", lw=1.2)
            ax.plot(arc, [2 * r for r in b["radius_mm"]], color="tab:gray", lw=0.8, ls="--")
        ids = {b["id"] for b in branches}
        for s in result["stenoses"]:
            if s["branch_id"] in ids:
                ax.axvline(s["arc_mm"], color="tab:red", lw=0.8)
                ax.annotate(
                    f"{s['degree_percent']:.0f}%",
                    (s["arc_mm"], s["minimal_diameter_mm"]),
                    color="tab:red",
                    fontsize=8,
                )
        ax.set_ylabel(f"{label}\ndiameter (mm)")
    axes[-1, 0].set_xlabel("arc length from the ostium (mm)")
    axes[0, 0].set_title(
        f"{result['case']}: area-equivalent (solid), 2× inscribed radius (dashed); CAD-RADS "
        f"{result['cad_rads']}, {NOTICE}",
        fontsize=8,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return True


def summary_row(result: dict[str, Any]) -> dict[str, Any]:
    """One case's row of the cohort summary."""
    worst = max(result["stenoses"], key=lambda s: s["degree_percent"], default=None)
    return {
        "case": result["case"],
        "cad_rads": result["cad_rads"],
        "branches": len(result["branches"]),
        "centreline_mm": round(sum(b["length_mm"] for b in result["branches"]), 1),
        "stenoses": len(result["stenoses"]),
        "max_degree_percent": "" if worst is None else worst["degree_percent"],
        "worst_branch": "" if worst is None else worst["branch"],
        "loops": len(result["loops"]),
    }


def write_summary(
    rows: Sequence[dict[str, Any]], output: str | os.PathLike[str]
) -> dict[str, Path]:
    """The cohort table: ``summary.csv`` and ``summary.md`` (one row per case)."""
    out = Path(output)
    paths = {"csv": out / "summary.csv", "md": out / "summary.md"}
    with atomic_path(paths["csv"]) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=SUMMARY_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["cad_rads"]] = counts.get(r["cad_rads"], 0) + 1
    lines = [
        f"# Coronary analysis: {len(rows)} case(s)",
        "",
        "CAD-RADS: " + ", ".join(f"{k}: {v}" for k, v in sorted(counts.items())) + f" ({NOTICE}).",
        "",
        "| " + " | ".join(SUMMARY_COLUMNS) + " |",
        "|" + "---|" * len(SUMMARY_COLUMNS),
    ]
    lines += ["| " + " | ".join(str(r[c]) for c in SUMMARY_COLUMNS) + " |" for r in rows]
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths
