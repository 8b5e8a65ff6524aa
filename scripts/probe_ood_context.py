"""Why does a demo checkpoint miss the out-of-distribution families? Two probes of a trained lumen
network (README, "Randomised phantoms"):

1. **Tubes**: a straight tube (radius 1-6 voxels) in a uniform background (level 0.3, 0.6, 0.9 of
   the normalised range) with a little noise, bright or dark: the mean vessel probability inside
   it. High everywhere means the network has learned a sign- and calibre-invariant tube detector.
2. **Context**: each family's case, normalised as ``infer`` normalises it, then with everything
   farther than ``k`` voxels from the label replaced by the median of a 2-voxel shell around the
   vessels (``k`` = 3, 8, 16; "all" keeps the image as is; "far blurred 6": beyond 8 voxels the
   image blurred by sigma 6 voxels instead, its layout kept): the mean probability inside the
   label and the Dice. If the vessels are found once the far context is flattened, what the
   network misses them for is the context, not the vessels' own look. ``p_without_vessel`` is
   the control: the same image with the vessels painted over by that median, so a probability
   that stays high there comes from the edge of the kept sleeve, not from the vessels.
3. **Distant context**: a straight tube of the ``pool_trees`` look (a small contrast at a high
   level, CT-like blur and noise) alone in the window, then with air (two slabs of 0 along the
   window's y faces, 18-24 voxels from the tube at 64^3), a bright pool (an elliptic cylinder
   of 1.0, 3 voxels beside it), or both: the mean probability inside it and the false voxels.
   vesselFM's DynUNet (and the tiny model) normalises every layer over the whole window
   (instance norm), so a strong edge anywhere in the window can change what a faint tube looks
   like to it.

    python scripts/probe_ood_context.py --checkpoint <run>/checkpoints/<best>.ckpt [--cases 2]

Prints three markdown tables. The cases are normalised as ``infer`` normalises a scan for this
checkpoint (the preprocessing it records: percentiles 1-99 onto [0, 1], over the body only when
it was trained with ``preprocess.ignore_below``; vesselFM's without a checkpoint) and segmented
with a 64^3 sliding window (``--roi``); the tubes are 64^3 volumes (``--tube-size``).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy import ndimage

from vesselfm.data.preprocessing import PreprocessConfig, intensity_range, normalize_intensity

RADII = (1, 2, 3, 4, 6)
LEVELS = (0.3, 0.6, 0.9)
CONTRASTS = (0.15, 0.3, -0.15, -0.3, -0.45)
# voxels of context kept around the label (None: the whole image), and the blur of the far
# context (0: flattened to the shell's median)
KEEP = ((3, 0.0), (8, 0.0), (16, 0.0), (8, 6.0), (None, 0.0))
# distant-context probe: tube radii, (level, contrast) pairs, and what else is in the window
DISTANT_RADII = (3, 5, 7, 9)
DISTANT_LOOKS = ((0.82, 0.12), (0.6, 0.12), (0.6, 0.3))
DISTANT_CONTEXTS = ("none", "air", "pool", "pool+air")


def _load(checkpoint: str | None, model: str) -> torch.nn.Module:
    from hydra import compose, initialize_config_module
    from omegaconf import OmegaConf

    from vesselfm.models.components.network import load_model

    overrides = [f"model={model}", f"model.checkpoint={checkpoint or 'null'}"]
    with initialize_config_module("configs", version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    return load_model(OmegaConf.to_container(cfg.model, resolve=True)).eval()


def _preprocess(checkpoint: str | None) -> PreprocessConfig:
    """The preprocessing ``checkpoint`` records (``infer`` uses it), else vesselFM's."""
    from vesselfm.inference.metadata import read_checkpoint_metadata

    return read_checkpoint_metadata(checkpoint).get("preprocess") or PreprocessConfig()


def _normalise(image: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """As ``infer`` normalises a scan with ``config``: percentiles onto [0, 1], clipped."""
    return normalize_intensity(image, intensity_range(image, config), config)  # type: ignore[return-value]


def shell_median(x: np.ndarray, label: np.ndarray) -> np.float32:
    """The median of ``x`` over a 2-voxel shell around ``label``: what the vessels sit in."""
    label = label.astype(bool)
    return np.float32(np.median(x[ndimage.binary_dilation(label, iterations=2) & ~label]))


def _prob(net: torch.nn.Module, x: np.ndarray, roi: int) -> np.ndarray:
    from monai.inferers import sliding_window_inference

    with torch.no_grad():
        t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))[None, None]
        return torch.sigmoid(sliding_window_inference(t, (roi,) * 3, 2, net, overlap=0.25))[
            0, 0
        ].numpy()


def tube_table(net: torch.nn.Module, size: int = 64, roi: int = 64) -> list[dict[str, float]]:
    """Mean probability inside a straight z-tube per level, contrast and radius."""
    rng = np.random.default_rng(0)
    x, y = np.mgrid[:size, :size].astype(np.float32)
    d = np.sqrt((x - size / 2) ** 2 + (y - size / 2 + 0.3) ** 2)[:, :, None]
    d = np.broadcast_to(d, (size, size, size))
    rows = []
    for level in LEVELS:
        for contrast in CONTRASTS:
            row: dict[str, float] = {"level": level, "contrast": contrast}
            for r in RADII:
                frac = np.clip(r + 0.5 - d, 0.0, 1.0)
                img = level + contrast * frac + rng.normal(0.0, 0.02, frac.shape)
                row[f"r{r}"] = float(_prob(net, np.clip(img, 0.0, 1.0), roi)[d <= r].mean())
            rows.append(row)
    return rows


def distant_image(
    size: int, radius: int, level: float, contrast: float, context: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One window of the distant-context probe: ``(image, tube label)``. The tube runs along z
    ``size / 16`` voxels off centre in x; ``context`` holds "air" (slabs of 0, a tenth of the
    window thick, on both y faces) and/or "pool" (an elliptic cylinder of 1.0 whose edge lies 3
    voxels beyond the tube's, on its side towards the window's centre)."""
    x, y = np.mgrid[:size, :size].astype(np.float32)
    cx, cy = size / 2 + size / 16, size / 2
    d = np.broadcast_to(np.sqrt((x - cx) ** 2 + (y - cy + 0.3) ** 2)[:, :, None], (size,) * 3)
    img = np.full((size,) * 3, level, np.float32)
    if "pool" in context:
        ax, ay = size / 6.4, size / 3.2
        img[((x - (cx - radius - 3 - ax)) / ax) ** 2 + ((y - cy) / ay) ** 2 <= 1.0] = 1.0
    if "air" in context:
        slab = max(2, size // 10)
        img[:, :slab] = 0.0
        img[:, -slab:] = 0.0
    img = ndimage.gaussian_filter(img + contrast * np.clip(radius + 0.5 - d, 0.0, 1.0), 0.7)
    img += rng.normal(0.0, 0.025, img.shape).astype(np.float32)
    return np.clip(img, 0.0, 1.0), d <= radius


def distant_context_table(
    net: torch.nn.Module, size: int = 64, roi: int = 64
) -> list[dict[str, object]]:
    """Mean probability inside a straight z-tube (and the false voxels) with air and/or a bright
    pool elsewhere in the window, per radius and look (:func:`distant_image`)."""
    rng = np.random.default_rng(0)
    rows: list[dict[str, object]] = []
    for r in DISTANT_RADII:
        for level, contrast in DISTANT_LOOKS:
            for context in DISTANT_CONTEXTS:
                img, label = distant_image(size, r, level, contrast, context, rng)
                prob = _prob(net, img, roi)
                rows.append({
                    "radius": r, "level": level, "contrast": contrast, "context": context,
                    "p_in_tube": float(prob[label].mean()),
                    "false_voxels": int(((prob > 0.5) & ~label).sum()),
                })  # fmt: skip
    return rows


def flatten_context(
    x: np.ndarray,
    label: np.ndarray,
    keep: int | None,
    blur: float = 0.0,
    fill: float | None = None,
) -> np.ndarray:
    """``x`` with every voxel farther than ``keep`` voxels (face-neighbour steps) from ``label``
    set to ``fill`` (default :func:`shell_median`), or with ``blur`` > 0 to ``x``
    Gaussian-blurred by that sigma (the layout kept, its detail gone); ``keep=None`` returns
    ``x``."""
    if keep is None:
        return x
    label = label.astype(bool)
    if blur > 0:
        far = ndimage.gaussian_filter(x, blur)
    else:
        far = shell_median(x, label) if fill is None else np.float32(fill)
    return np.where(ndimage.binary_dilation(label, iterations=keep), x, far).astype(np.float32)


def context_table(
    net: torch.nn.Module,
    cases: int,
    shape: tuple[int, int, int],
    seed: int = 0,
    roi: int = 64,
    preprocess: PreprocessConfig | None = None,
) -> list[dict[str, object]]:
    """Per family and case: probability in the label and Dice with ``k`` voxels of context,
    each case normalised with ``preprocess`` (default vesselFM's)."""
    from vesselfm.data.phantom.ood import OOD_FAMILIES, generate_ood_case
    from vesselfm.metrics import compute_metrics

    rows: list[dict[str, object]] = []
    for family in OOD_FAMILIES:
        for index in range(cases):
            case = generate_ood_case(family, shape, seed=seed, index=index)
            label = case.label.astype(bool)
            x = _normalise(case.image.astype(np.float32), preprocess or PreprocessConfig())
            fill = shell_median(x, label)
            for keep, blur in KEEP:
                y = flatten_context(x, label, keep, blur, fill)
                prob = _prob(net, y, roi)
                mask = prob > 0.5
                # control: the same image with the vessels themselves painted over by the shell's
                # median; a high probability then comes from the kept sleeve, not the vessels
                control = _prob(net, np.where(label, fill, y), roi)
                rows.append({
                    "family": family, "case": case.case_id,
                    "context": "all" if keep is None
                    else f"{keep} vox" + (f", far blurred {blur:g}" if blur else ""),
                    "p_in_label": float(prob[label].mean()),
                    "p_without_vessel": float(control[label].mean()),
                    "dice": float(compute_metrics(mask, label, metrics=("dice",))["dice"]),  # type: ignore[arg-type]
                    "false_voxels": int((mask & ~label).sum()),
                })  # fmt: skip
    return rows


def _markdown(rows: list[dict[str, object]]) -> str:
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        out.append(
            "| "
            + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r.values())
            + " |"
        )
    return "\n".join(out)


def main(argv: list[str] | None = None) -> tuple[list, list, list]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", help="a lumen model's .ckpt (default: random weights)")
    ap.add_argument("--model", default="tiny", help="model config (default tiny)")
    ap.add_argument("--cases", type=int, default=2, help="cases per family (default 2)")
    ap.add_argument("--shape", type=int, nargs=3, default=[96, 96, 64], help="family shape")
    ap.add_argument("--tube-size", type=int, default=64, help="tube volume edge (default 64)")
    ap.add_argument("--roi", type=int, default=64, help="sliding window edge (default 64)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    net = _load(args.checkpoint, args.model)
    tubes = tube_table(net, args.tube_size, args.roi)
    print("## Straight tubes in a uniform background: mean probability inside\n")
    print(_markdown(tubes))  # type: ignore[arg-type]
    preprocess = _preprocess(args.checkpoint)
    context = context_table(net, args.cases, tuple(args.shape), roi=args.roi, preprocess=preprocess)  # type: ignore[arg-type]
    print("\n## Families with the context beyond k voxels of the label flattened\n")
    print(_markdown(context))
    distant = distant_context_table(net, args.tube_size, args.roi)
    print("\n## A faint tube with air or a bright pool elsewhere in the window\n")
    print(_markdown(distant))
    return tubes, context, distant


if __name__ == "__main__":
    main()
