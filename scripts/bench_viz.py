"""Benchmark the visualisation on a full-size coronary mask (ImageCAS: 512 x 512 x 206-275).

Generates a synthetic phantom of that size (``vesselfm.data.phantom``), a stand-in prediction
(voxels above 150 HU within three voxels of the label, as in the notebook), writes them as NIfTI and
times each step of ``visualise_case``: the STL meshes at full resolution, the 3D page within its
face budget, and the PNG overlays. Prints times (s), triangle counts and file sizes (MB).

    python scripts/bench_viz.py                       # 512 x 512 x 275, seed 0
    python scripts/bench_viz.py --shape 256 256 138   # smaller
    python scripts/bench_viz.py --dilate 3            # a stress test: masks 3 voxels thicker
    python scripts/bench_viz.py --bad-pred            # a stress test: every voxel above 150 HU
    python scripts/bench_viz.py --pred P.nii.gz --gt L.nii.gz --image I.nii.gz   # your own case
"""

from __future__ import annotations

import argparse
import logging
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from vesselfm.io import read_volume, write_volume
from vesselfm.viz import (
    make_figure,
    mask_to_mesh,
    save_html,
    save_overlays,
    save_stl,
    visualise_case,
)


def _timed(label: str, fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    print(f"{label:42s} {time.perf_counter() - start:7.2f} s")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 275))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pred", type=Path, help="a prediction NIfTI instead of the phantom")
    parser.add_argument("--gt", type=Path)
    parser.add_argument("--image", type=Path)
    parser.add_argument(
        "--dilate", type=int, default=0, help="thicken the phantom's masks by N voxels"
    )
    parser.add_argument(
        "--bad-pred",
        action="store_true",
        help="predict every voxel above 150 HU (blood pool and bone: a zero-shot-like failure, a huge surface)",
    )
    parser.add_argument("--keep", type=Path, help="write the outputs here instead of a temp dir")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}")

    tmp = Path(tempfile.mkdtemp(prefix="bench_viz_"))
    out = args.keep or tmp / "viz"
    if args.pred is None:
        from vesselfm.data.phantom import generate_phantom, save_phantom

        phantom = _timed(
            f"phantom {tuple(args.shape)} (not viz)", generate_phantom, tuple(args.shape), args.seed
        )
        pred = (
            ndimage.binary_dilation(phantom.label, iterations=3) & (phantom.image > 150)
        ).astype(np.uint8)
        if args.bad_pred:
            pred = (phantom.image > 150).astype(np.uint8)
        if args.dilate:
            phantom.label = ndimage.binary_dilation(phantom.label, iterations=args.dilate).astype(
                np.uint8
            )
            pred = ndimage.binary_dilation(pred, iterations=args.dilate).astype(np.uint8)
        args.image, args.gt, args.pred = (
            tmp / "1.img.nii.gz",
            tmp / "1.label.nii.gz",
            tmp / "1_pred.nii.gz",
        )
        save_phantom(phantom, args.image, args.gt)
        write_volume(pred, phantom.affine, args.pred)
    pred_vol = read_volume(args.pred)
    pred = pred_vol.array >= 0.5
    gt = None if args.gt is None else read_volume(args.gt).array >= 0.5
    affine = pred_vol.affine
    print(
        f"volume {pred.shape}, prediction {int(pred.sum())} voxels"
        + ("" if gt is None else f", label {int(gt.sum())} voxels")
    )

    print("-- steps")
    vertices, faces = _timed("mask_to_mesh (pred, step 1)", mask_to_mesh, pred, affine)
    stl = _timed("save_stl", save_stl, vertices, faces, out / "step_pred.stl")
    print(f"   {len(faces)} triangles, {stl.stat().st_size / 1e6:.1f} MB")
    fig = _timed("make_figure (TP/FP/FN, auto step)", make_figure, pred, affine, gt)
    html = _timed("save_html", save_html, fig, out / "step_3d.html")
    print(
        f"   step {fig.layout.meta['step_size']}, {fig.layout.meta['faces']} triangles, {html.stat().st_size / 1e6:.1f} MB"
    )
    image = None if args.image is None else read_volume(args.image).array
    _timed("save_overlays (4 PNGs)", save_overlays, image, pred, out, gt=gt, prefix="step_")

    print("-- visualise_case (what the CLI runs, NIfTI reading included)")
    written = _timed(
        "visualise_case", visualise_case, args.pred, out, gt_path=args.gt, image_path=args.image
    )
    for key, path in written.items():
        print(f"   {key:9s} {path.stat().st_size / 1e6:7.2f} MB  {path}")


if __name__ == "__main__":
    main()
