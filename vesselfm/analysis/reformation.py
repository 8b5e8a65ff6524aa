"""Straightened planar reformation of the main vessels (``<case>_cpr.png``, with ``image=``).

Along each main vessel (LM→LAD, LCx, RCA: the branches of that name joined from the ostium) the
scan is sampled on lines perpendicular to the centreline, every centreline sample (0.5 mm) and
every 0.2 mm across, ±6 mm, with a normal carried along the vessel by parallel transport (so the
picture does not twist); the mask is sampled the same way and its 0.5 level drawn as the lumen
outline, stenoses are marked at their arc length with their degree. Trilinear interpolation
(:func:`scipy.ndimage.map_coordinates`) in the voxel grid of the scan: world mm through the
affine, so flipped and anisotropic grids come out in millimetres.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

HALF_WIDTH_MM = 6.0
ACROSS_MM = 0.2
WINDOW_HU = (-200.0, 800.0)
VESSELS = ("LAD", "LCx", "RCA")


def _frames(points: np.ndarray) -> np.ndarray:
    """A unit normal per point, perpendicular to the tangent, carried by parallel transport."""
    tangent = np.gradient(points, axis=0)
    tangent /= np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-9)
    seed = np.eye(3)[int(np.argmin(np.abs(tangent[0])))]
    normal = np.empty_like(points)
    n = seed - (seed @ tangent[0]) * tangent[0]
    for k, t in enumerate(tangent):
        n = n - (n @ t) * t
        n /= max(float(np.linalg.norm(n)), 1e-9)
        normal[k] = n
    return normal


def straighten(
    volume: np.ndarray, affine: np.ndarray, points_mm: np.ndarray, order: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """``(len(points), n_across)`` samples of ``volume`` on the perpendicular lines through
    ``points_mm`` (world mm), and the offsets across (mm)."""
    from scipy.ndimage import map_coordinates

    points = np.asarray(points_mm, dtype=float)
    offsets = np.arange(-HALF_WIDTH_MM, HALF_WIDTH_MM + ACROSS_MM / 2, ACROSS_MM)
    world = points[:, None, :] + offsets[None, :, None] * _frames(points)[:, None, :]
    inv = np.linalg.inv(np.asarray(affine, dtype=float))
    vox = world.reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]
    values = map_coordinates(
        np.asarray(volume, dtype=np.float32), vox.T, order=order, mode="constant", cval=0.0
    )
    return values.reshape(len(points), len(offsets)), offsets


def vessel_paths(result: dict[str, Any]) -> dict[str, tuple[np.ndarray, np.ndarray, set[int]]]:
    """``{name: (points (N, 3), arc (N,), branch ids)}`` of each main vessel: its branches from
    the ostium (the LM before the LAD and LCx), ordered by arc length."""
    by_id = {b["id"]: b for b in result["branches"]}
    out = {}
    for name in VESSELS:
        chain = sorted(
            (b for b in result["branches"] if b["name"] == name), key=lambda b: b["arc_start_mm"]
        )
        if not chain:
            continue
        parent = by_id.get(chain[0]["parent_id"])
        if parent is not None and parent["name"] == "LM":
            chain = [parent, *chain]
        pts, arc, ids = [], [], set()
        for b in chain:
            p = np.asarray(b["points_mm"], dtype=float)
            step = b["length_mm"] / max(len(p) - 1, 1)
            a = b["arc_start_mm"] + step * np.arange(len(p))
            keep = slice(1, None) if pts else slice(None)  # a joint point once
            pts.append(p[keep])
            arc.append(a[keep])
            ids.add(b["id"])
        out[name] = (np.concatenate(pts), np.concatenate(arc), ids)
    return out


def cpr_plot(
    result: dict[str, Any], image: np.ndarray, mask: np.ndarray, affine: np.ndarray, path: Path
) -> bool:
    """Write the straightened reformations of ``result``'s main vessels to ``path`` (PNG);
    ``False`` when there is no main vessel or matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    from vesselfm.utils.io import atomic_path

    paths = vessel_paths(result)
    if not paths:
        return False
    fig, axes = plt.subplots(len(paths), 1, figsize=(8, 1.6 * len(paths) + 0.6), squeeze=False)
    for ax, (name, (points, arc, ids)) in zip(axes[:, 0], paths.items(), strict=True):
        hu, offsets = straighten(image, affine, points)
        lumen, _ = straighten((np.asarray(mask) != 0).astype(np.float32), affine, points)
        extent = (float(arc[0]), float(arc[-1]), float(offsets[0]), float(offsets[-1]))
        ax.imshow(
            hu.T,
            cmap="gray",
            vmin=WINDOW_HU[0],
            vmax=WINDOW_HU[1],
            origin="lower",
            extent=extent,
            aspect="auto",
        )
        ax.contour(arc, offsets, lumen.T, levels=[0.5], colors="yellow", linewidths=0.7)
        for s in result["stenoses"]:
            if s["branch_id"] in ids:
                ax.axvline(s["arc_mm"], color="red", lw=0.8)
                ax.annotate(
                    f"{s['degree_percent']:.0f}%",
                    (s["arc_mm"], offsets[-1]),
                    color="red",
                    fontsize=8,
                    va="top",
                )
        ax.set_ylabel(f"{name}\nmm")
    axes[-1, 0].set_xlabel("arc length from the ostium (mm)")
    axes[0, 0].set_title(
        f"{result['case']}: straightened reformation, lumen outline (yellow), stenoses (red); "
        "automated, not a diagnosis",
        fontsize=8,
    )
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return True
