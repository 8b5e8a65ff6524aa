"""Everything to look at one case: STL meshes, the 3D HTML page and the PNG overlays.

:func:`visualise_case` is what ``python -m vesselfm.visualise``, the notebook and the training
demo call. It reads NIfTI files, thresholds the prediction, and writes (``<case>`` is the case
id of the prediction file: ``1_pred.nii.gz`` and ``1.label.nii.gz`` are case ``1``)::

    <output>/<case>_pred.stl   <case>_gt.stl            binary STL in scanner mm
    <output>/<case>_3d.html                             interactive, self-contained
    <output>/<case>_axial.png  _coronal.png  _sagittal.png  _mip.png
"""

from __future__ import annotations

import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np

from vesselfm.utils.errors import UserError
from vesselfm.viz.figure3d import (
    DEFAULT_MAX_FACES,
    DEFAULT_SMOOTH_ITERATIONS,
    make_figure,
    save_html,
)
from vesselfm.viz.mesh import mask_to_stl
from vesselfm.viz.overlay import save_overlays

log = logging.getLogger(__name__)

_CASE_SUFFIXES = re.compile(r"(\.img|\.label|_pred|_prob|_label|_gt|_img|_image)$")


def case_id_from_path(path: str | os.PathLike[str]) -> str:
    """``1.img.nii.gz``, ``1.label.nii.gz`` and ``1_pred.nii.gz`` -> ``1``; ``scan.nii`` -> ``scan``."""
    name = Path(path).name
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            name = name[: -len(ext)]
            break
    return _CASE_SUFFIXES.sub("", name) or name


def _load(path: str | os.PathLike[str], role: str) -> Any:
    """Load a NIfTI image, with a one-line error naming the role and the file."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{role}={path}: no such file; give the path of a .nii or .nii.gz file"
        )
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises several types for unreadable files
        raise ValueError(
            f"{role}={path}: not a readable NIfTI file ({type(err).__name__}: {err})"
        ) from err
    if len(img.shape) != 3:
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = img.slicer[..., 0]
        else:
            raise ValueError(f"{role}={path}: expected a 3D volume, got shape {img.shape}")
    return img


def visualise_case(
    pred_path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    gt_path: str | os.PathLike[str] | None = None,
    image_path: str | os.PathLike[str] | None = None,
    *,
    case_id: str | None = None,
    threshold: float = 0.5,
    step_size: int = 1,
    smooth_iterations: int = 0,
    html_step_size: int | None = None,
    html_max_faces: int = DEFAULT_MAX_FACES,
    html_smooth_iterations: int = DEFAULT_SMOOTH_ITERATIONS,
    stl: bool = True,
    html: bool = True,
    png: bool = True,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write STL meshes, the interactive 3D page and PNG overlays for one case.

    Every input is checked before the first file is written (a 3D grid at least 2 voxels
    along each axis, a finite affine, the threshold, the other files' grids, outputs that
    vesselfm did not write); if writing fails part-way, the files written so far are removed.

    Args:
        pred_path: prediction NIfTI (binary, or a probability map thresholded at ``threshold``).
        output_dir: folder for the outputs (created).
        gt_path: optional ground-truth NIfTI on the prediction's grid: adds ``<case>_gt.stl``,
            colours TP / FP / FN in the 3D view and outlines it on the PNGs.
        image_path: optional image NIfTI (e.g. the CTA in HU) for the PNG backgrounds.
        case_id: name used in the output files; default from ``pred_path``.
        threshold: foreground is ``value >= threshold`` (for the prediction and the ground truth),
            as in ``infer`` and ``evaluate``.
        step_size: marching-cubes step for the STL files (1: full resolution).
        smooth_iterations: Taubin smoothing passes for the STL files (0: exact voxel surface).
        html_step_size: marching-cubes step for the 3D view; ``None`` keeps it near
            ``html_max_faces`` triangles.
        html_max_faces: triangle budget of the 3D view (400 000: a page of about 15 MB).
        html_smooth_iterations: Taubin smoothing passes for the 3D view.
        stl, html, png: which outputs to write.
        overwrite: replace existing outputs that vesselfm did not write (outputs it wrote
            earlier are always replaced).

    Returns:
        The paths written, keyed ``pred_stl``, ``gt_stl``, ``html``, ``axial``, ``coronal``,
        ``sagittal``, ``mip`` (only those written).

    Raises:
        FileNotFoundError: an input file does not exist.
        ValueError: an input is not a 3D NIfTI, the shapes differ, the affine is not finite, a
            grid is too thin for a surface, or the threshold is outside [0, 1].
        UserError: ``output_dir`` is a file, or holds outputs vesselfm did not write.
    """
    import nibabel as nib

    from vesselfm.utils.outputs import check_overwrite, forget_files

    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(
            f"threshold must be in [0, 1] (foreground is value >= threshold), got {threshold}"
        )
    pred_img = _load(pred_path, "pred")
    if min(pred_img.shape) < 2:
        raise ValueError(
            f"pred={pred_path}: shape {pred_img.shape} has an axis shorter than 2 voxels; "
            "a surface needs a 3D volume"
        )
    if (
        not np.isfinite(pred_img.affine).all()
        or abs(np.linalg.det(pred_img.affine[:3, :3])) < 1e-12
    ):
        raise ValueError(
            f"pred={pred_path}: its affine is not finite or singular; fix the file's header "
            "(qform/sform)"
        )
    gt_img = None if gt_path is None else _load(gt_path, "gt")
    image_img = None if image_path is None else _load(image_path, "image")
    for role, path, other in (("gt", gt_path, gt_img), ("image", image_path, image_img)):
        if other is None:
            continue
        if other.shape != pred_img.shape:
            raise ValueError(
                f"{role}={path}: shape {other.shape} differs from the prediction's {pred_img.shape} "
                f"({pred_path}); give files on the same voxel grid"
            )
        if not np.allclose(other.affine, pred_img.affine, atol=1e-3):
            log.warning(
                "%s=%s: affine differs from the prediction's; using the prediction's", role, path
            )
    case = case_id or case_id_from_path(pred_path)
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output={output_dir} is a file; give a folder for the views")
    names = [f"{case}_pred.stl"] * stl + [f"{case}_gt.stl"] * (stl and gt_img is not None)
    names += [f"{case}_3d.html"] * html
    names += [f"{case}_{view}.png" for view in ("axial", "coronal", "sagittal", "mip")] * png
    check_overwrite([output_dir / n for n in names], overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    affine = pred_img.affine

    def binary(img: Any) -> np.ndarray:
        return np.asanyarray(img.dataobj) >= threshold

    pred = binary(pred_img)
    gt = None if gt_img is None else binary(gt_img)
    if not pred.any():
        log.warning(
            "pred=%s: no voxel at or above threshold %s; the meshes will be empty",
            pred_path,
            threshold,
        )
    written: dict[str, Path] = {}
    started = time.time_ns()
    try:
        if stl:
            written["pred_stl"] = mask_to_stl(
                pred, affine, output_dir / f"{case}_pred.stl", step_size, smooth_iterations
            )
            if gt is not None:
                written["gt_stl"] = mask_to_stl(
                    gt, affine, output_dir / f"{case}_gt.stl", step_size, smooth_iterations
                )
        if html:
            fig = make_figure(
                pred,
                affine,
                gt,
                step_size=html_step_size,
                max_faces=html_max_faces,
                smooth_iterations=html_smooth_iterations,
                title=f"case {case}"
                + (": prediction vs ground truth" if gt is not None else ": prediction"),
            )
            written["html"] = save_html(fig, output_dir / f"{case}_3d.html")
        if png:
            # Overlays are drawn in RAS+ voxel order (radiological display), whatever the file's.
            ornt = nib.orientations.io_orientation(affine)

            def canonical(a: np.ndarray | None) -> np.ndarray | None:
                return None if a is None else nib.orientations.apply_orientation(a, ornt)

            spacing = nib.affines.voxel_sizes(affine)[np.argsort(ornt[:, 0])]
            image = None if image_img is None else np.asanyarray(image_img.dataobj)
            pngs = save_overlays(
                canonical(image),
                canonical(pred),
                output_dir,
                gt=canonical(gt),
                prefix=f"{case}_",
                spacing=tuple(spacing),
            )
            written.update(zip(("axial", "coronal", "sagittal", "mip"), pngs, strict=True))
    except BaseException:
        # no partial set of views: what this call wrote goes again
        partial = [
            p
            for p in (output_dir / n for n in names)
            if p.exists() and p.stat().st_mtime_ns >= started
        ]
        for path in partial:
            path.unlink()
        forget_files(partial)
        raise
    return written
