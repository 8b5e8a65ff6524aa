"""Render the README figures of a synthetic phantom: docs/phantom_{axial,mip,3d}.png.

    python scripts/render_phantom_docs.py [--shape 256 256 128] [--seed 4] [--out docs]

A moderate-size phantom (half the ImageCAS resolution) keeps this under a minute on a laptop.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from mpl_toolkits.mplot3d.art3d import Poly3DCollection  # noqa: E402
from scipy import ndimage  # noqa: E402
from skimage.measure import marching_cubes  # noqa: E402

from vesselfm.data.phantom import Phantom, Tissue, generate_phantom  # noqa: E402

WINDOW = (-250, 650)  # HU: a CTA window (level 200, width 900)
TREE_COLOURS = ("#e4572e", "#3c91e6")


def _trees(label: np.ndarray) -> np.ndarray:
    """Component map (1, 2) of the label, ordered by size."""
    components, n = ndimage.label(label, structure=np.ones((3, 3, 3)))
    sizes = ndimage.sum_labels(np.ones_like(label), components, index=np.arange(1, n + 1))
    order = np.argsort(-sizes) + 1
    out = np.zeros(label.shape, dtype=np.uint8)
    for rank, comp in enumerate(order, start=1):
        out[components == comp] = rank
    return out


def axial(ph: Phantom, path: Path) -> None:
    """The slice where the label runs most in-plane (left main / LAD), and one lower down."""
    area = ndimage.uniform_filter1d(ph.label.sum(axis=(0, 1)).astype(float), 9)
    k_top = int(np.argmax(area))
    heart = np.flatnonzero((ph.tissue == Tissue.MYOCARDIUM).any(axis=(0, 1)))
    k_mid = int(heart[len(heart) // 3])
    sx, sy, sz = ph.spacing
    fig, axes = plt.subplots(1, 3, figsize=(16, 5.8))
    panels = ((k_top, False), (k_top, True), (k_mid, True))
    for ax, (k, overlay) in zip(axes, panels, strict=True):
        ax.imshow(ph.image[:, :, k].T, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], aspect=sy / sx)
        if overlay:
            ax.contour(ph.label[:, :, k].T, [0.5], colors="#ff3b3b", linewidths=0.9)
        ax.set_title(
            f"slice {k}" + (" + label (red)" if overlay else f", HU {WINDOW[0]}..{WINDOW[1]}")
        )
        ax.set_axis_off()
    fig.suptitle(
        f"synthetic coronary CTA {'x'.join(map(str, ph.image.shape))}, spacing "
        f"{sx:.2f}x{sy:.2f}x{sz:.2f} mm; radiological view (patient's right on the left, anterior up)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def mip(ph: Phantom, path: Path) -> None:
    sx, sy, sz = ph.spacing
    trees = _trees(ph.label)
    fig, axes = plt.subplots(1, 3, figsize=(15, 5.2))
    views = (
        ("axial MIP (from the feet)", trees.max(axis=2).T, sy / sx, "upper"),
        ("coronal MIP (from the front)", trees.max(axis=1).T, sz / sx, "lower"),
        ("sagittal MIP (from the left)", trees.max(axis=0).T, sz / sy, "lower"),
    )
    cmap = matplotlib.colors.ListedColormap(["black", *TREE_COLOURS])
    for ax, (title, data, aspect, origin) in zip(axes, views, strict=True):
        ax.imshow(
            data, cmap=cmap, vmin=0, vmax=2, aspect=aspect, origin=origin, interpolation="nearest"
        )
        ax.set_title(title)
        ax.set_axis_off()
    fig.suptitle(
        "maximum-intensity projections of the label: left tree (red), right tree (blue)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def view3d(ph: Phantom, path: Path) -> None:
    trees = _trees(ph.label)
    light = matplotlib.colors.LightSource(azdeg=300, altdeg=35)
    flip = np.array([1.0, -1.0, 1.0])  # display frame: x left, y anterior, z superior
    fig = plt.figure(figsize=(8, 8))
    ax = fig.add_subplot(projection="3d")
    lo, hi = np.full(3, np.inf), np.full(3, -np.inf)
    for tree, colour in zip((1, 2), TREE_COLOURS, strict=True):
        mask = ndimage.gaussian_filter(np.pad(trees == tree, 1).astype(np.float32), 0.6)
        verts, faces, _, _ = marching_cubes(mask, 0.5, spacing=ph.spacing)
        verts = verts * flip
        lo, hi = np.minimum(lo, verts.min(0)), np.maximum(hi, verts.max(0))
        ax.add_collection3d(
            Poly3DCollection(
                verts[faces], facecolors=colour, linewidths=0, shade=True, lightsource=light
            )
        )
    # The heart (myocardium), coarse and translucent, for context.
    if ph.tissue is not None:
        heart = ndimage.binary_closing(ph.tissue == Tissue.MYOCARDIUM, iterations=2)[::3, ::3, ::3]
        heart = ndimage.gaussian_filter(np.pad(heart, 1).astype(np.float32), 1.0)
        verts, faces, _, _ = marching_cubes(heart, 0.5, spacing=tuple(3 * h for h in ph.spacing))
        ax.add_collection3d(
            Poly3DCollection(
                verts[faces] * flip, facecolors="#c9b8a8", linewidths=0, alpha=0.12,
                shade=True, lightsource=light,
            )
        )  # fmt: skip
    centre, half = (lo + hi) / 2, (hi - lo).max() / 2 * 1.05
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.view_init(elev=12, azim=-100)
    ax.set_xlabel("left (mm)")
    ax.set_ylabel("anterior (mm)")
    ax.set_zlabel("superior (mm)")
    ax.set_title("coronary trees (label, marching cubes) on the heart, seen from the front")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 128))
    parser.add_argument("--seed", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ph = generate_phantom(tuple(args.shape), seed=args.seed, calcifications=2, stenoses=1)
    print(f"generated {ph.image.shape} in {time.perf_counter() - t0:.2f} s, spacing {ph.spacing}")
    axial(ph, args.out / "phantom_axial.png")
    mip(ph, args.out / "phantom_mip.png")
    view3d(ph, args.out / "phantom_3d.png")
    print(f"wrote {args.out}/phantom_{{axial,mip,3d}}.png")


if __name__ == "__main__":
    main()
