"""Draw the randomised-style and out-of-distribution picture grid for the README.

    python scripts/render_style_docs.py [--out docs/phantom_styles.png]

Row 1: one 96x96x64 phantom (seed 1) in the CT style and in five randomised styles (seeds of the
style stream differ per case). Row 2: the label, then the three OOD families (two cases each
where room). Middle axial slice, label contour in red.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from vesselfm.data.phantom import generate_phantom
    from vesselfm.data.phantom.ood import OOD_FAMILIES, generate_ood_case

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/phantom_styles.png")
    args = parser.parse_args()
    shape = (96, 96, 64)
    panels = [("CT style", generate_phantom(shape, seed=1))]
    for s in range(1, 6):
        panels.append(
            (f"randomised, case {s}", generate_phantom(shape, seed=s, style="randomised"))
        )
    for fam in OOD_FAMILIES:
        for i in range(2):
            panels.append((f"OOD {fam} {i}", generate_ood_case(fam, shape, seed=0, index=i)))
    fig, axes = plt.subplots(2, 6, figsize=(15, 5.4))
    for ax, (title, case) in zip(axes.ravel(), panels, strict=True):
        lab = case.label
        k = int(np.argmax(lab.sum(axis=(0, 1)))) if lab.any() else shape[2] // 2
        img = case.image[:, :, k].T.astype(np.float32)
        lo, hi = np.percentile(case.image, [1, 99])
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower")
        ax.contour(lab[:, :, k].T, levels=[0.5], colors="r", linewidths=0.6, origin="lower")
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=45)
    print(args.out)


if __name__ == "__main__":
    main()
