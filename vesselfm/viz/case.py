"""Everything to look at one case: STL meshes, the 3D HTML page and the PNG overlays.

:func:`visualise_case` is what ``python -m vesselfm.visualise``, the notebook and the training
demo call. It reads any scan the case-file layer reads (NIfTI, NRRD, MetaImage, ``.seg.nrrd``, a DICOM-SEG
``_pred.dcm``; ``image=`` also a DICOM series as a folder or ``.zip``, read with the
``series=``/``phase=``/``dicom.resample=`` of :func:`vesselfm.io.dicom.selection`), thresholds the
prediction, and writes (``<case>`` is the case
id of the prediction file: ``1_pred.nii.gz`` and ``1.label.nii.gz`` are case ``1``)::

    <output>/<case>_pred.stl   <case>_gt.stl            binary STL in scanner mm
    <output>/<case>_3d.html                             interactive, self-contained
    <output>/<case>_axial.png  _coronal.png  _sagittal.png  _mip.png

A segment model's label map (ImageCAS-X codes 1..14, :func:`label_map_codes`) is drawn by
segment: one coloured, named surface per code present in the 3D view, each segment filled in its
colour on the overlays, and ``<case>_pred_<name>.stl`` per segment beside the whole tree's STL.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from vesselfm.io import (
    EXTENSIONS,
    GridError,
    Volume,
    VolumeError,
    check_case_id,
    check_same_grid,
    is_dicom_input,
    ras_voxel_order,
    read_volume,
)
from vesselfm.io import case_id as file_case_id
from vesselfm.io.terminology import CORONARY_SEGMENTS, SEGMENTS
from vesselfm.utils.errors import UserError
from vesselfm.viz.figure3d import (
    DEFAULT_MAX_FACES,
    DEFAULT_SMOOTH_ITERATIONS,
    make_figure,
    make_segments_figure,
    save_html,
)
from vesselfm.viz.mesh import mask_to_stl, segment_stl_path
from vesselfm.viz.overlay import save_overlays

log = logging.getLogger(__name__)


def _load(path: str | os.PathLike[str], role: str) -> Volume:
    """Read a volume (:func:`vesselfm.io.read_volume`: a file, or a DICOM series as a folder
    or ``.zip``), with a one-line error naming the role."""
    path = Path(path)
    if not (path.is_file() or is_dicom_input(path)):
        raise FileNotFoundError(
            f"{role}={path}: no such file; give the path of a {', '.join(EXTENSIONS)} file or "
            "a DICOM series' folder or .zip"
        )
    try:
        return read_volume(path)
    except VolumeError as err:
        raise ValueError(f"{role}={err}") from err


def label_map_codes(array: np.ndarray) -> list[int] | None:
    """The codes of a segment model's label map, or ``None`` for a mask or probabilities:
    integer values (stored in any dtype) from 0 to 14 (ImageCAS-X's), some above 1."""
    values = np.unique(np.asarray(array))
    if values.size == 0 or values.max() <= 1 or values.min() < 0 or values.max() > max(SEGMENTS):
        return None
    if not np.array_equal(values, np.rint(values)):
        return None
    return [int(v) for v in values if v != 0]


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
    segments: bool | None = None,
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
        image_path: optional image (e.g. the CTA in HU) for the PNG backgrounds: a volume file
            or a DICOM series (folder or ``.zip``).
        case_id: name used in the output files; default the case id of ``pred_path``
            (:func:`vesselfm.io.case_id`: ``1_pred.nii.gz`` → ``1``).
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
        segments: the prediction is a segment model's label map (ImageCAS-X codes,
            :data:`vesselfm.io.terminology.CORONARY_SEGMENTS`); ``None``: when it holds integer
            codes above 1 (:func:`label_map_codes`). Then the 3D view has one surface per code
            present in the segment's colour, named in the legend and on hover; the overlays fill
            each segment in its colour, named in the legend; ``stl`` also writes
            ``<case>_pred_<name>.stl`` per segment (``<case>_pred.stl``: the whole tree);
            ``threshold`` is not used for the prediction.

    Returns:
        The paths written, keyed ``pred_stl``, ``gt_stl``, ``html``, ``axial``, ``coronal``,
        ``sagittal``, ``mip`` (only those written), and ``stl_<name>`` per segment.

    Raises:
        FileNotFoundError: an input file does not exist.
        ValueError: an input is not a valid 3D volume (:func:`vesselfm.io.read_volume`), the
            inputs are not on one grid (:func:`vesselfm.io.check_same_grid`), the prediction's
            grid is too thin for a surface, or the threshold is outside [0, 1].
        UserError: ``output_dir`` is a file, or holds outputs vesselfm did not write.
    """
    from vesselfm.utils.outputs import check_overwrite, forget_files

    if not 0.0 <= float(threshold) <= 1.0:
        raise ValueError(
            f"threshold must be in [0, 1] (foreground is value >= threshold), got {threshold}"
        )
    pred_vol = _load(pred_path, "pred")
    if min(pred_vol.shape) < 2:
        raise ValueError(
            f"pred={pred_path}: shape {pred_vol.shape} has an axis shorter than 2 voxels; "
            "a surface needs a 3D volume"
        )
    gt_vol = None if gt_path is None else _load(gt_path, "gt")
    image_vol = None if image_path is None else _load(image_path, "image")
    for role, other in (("gt", gt_vol), ("image", image_vol)):
        if other is not None:
            try:
                check_same_grid(other, pred_vol)
            except GridError as err:
                raise ValueError(f"{role}={err}") from err
    codes = label_map_codes(pred_vol.array) if segments is not False else None
    if segments and codes is None:
        raise ValueError(
            f"pred={pred_path}: segments=true needs a label map of ImageCAS-X codes 0..14 "
            "(a segment model's <case>_pred file)"
        )
    table = [s for s in CORONARY_SEGMENTS if codes is not None and s.label in codes]
    case = case_id or check_case_id(pred_path, file_case_id(pred_path), "pred")
    output_dir = Path(output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise UserError(f"output={output_dir} is a file; give a folder for the views")
    names = [f"{case}_pred.stl"] * stl + [f"{case}_gt.stl"] * (stl and gt_vol is not None)
    seg_stls = {
        s.name: segment_stl_path(output_dir / f"{case}_pred.stl", s.name) for s in table if stl
    }
    names += [p.name for p in seg_stls.values()]
    names += [f"{case}_3d.html"] * html
    names += [f"{case}_{view}.png" for view in ("axial", "coronal", "sagittal", "mip")] * png
    check_overwrite([output_dir / n for n in names], overwrite)
    output_dir.mkdir(parents=True, exist_ok=True)
    affine = pred_vol.affine
    labels = None if codes is None else np.rint(pred_vol.array).astype(np.uint8)
    pred = pred_vol.array >= threshold if labels is None else labels > 0
    gt = None if gt_vol is None else gt_vol.array >= threshold
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
            for segment in table:
                written[f"stl_{segment.name}"] = mask_to_stl(
                    labels == segment.label,
                    affine,
                    seg_stls[segment.name],
                    step_size,
                    smooth_iterations,
                )
        if html and labels is not None:
            fig = make_segments_figure(
                labels,
                affine,
                step_size=html_step_size,
                max_faces=html_max_faces,
                smooth_iterations=html_smooth_iterations,
                title=f"case {case}: segments " + ", ".join(f"{s.name} ({s.label})" for s in table),
            )
            written["html"] = save_html(fig, output_dir / f"{case}_3d.html")
        elif html:
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
            reorder, spacing = ras_voxel_order(affine)

            def canonical(a: np.ndarray | None) -> np.ndarray | None:
                return None if a is None else reorder(a)

            image = None if image_vol is None else image_vol.array
            pngs = save_overlays(
                canonical(image),
                canonical(pred if labels is None else labels),
                output_dir,
                gt=canonical(gt),
                prefix=f"{case}_",
                spacing=spacing,
                segments=None if labels is None else CORONARY_SEGMENTS,
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
