"""PNG overlays: axial, coronal and sagittal slices and a slab MIP with the mask's outline.

Arrays are expected in RAS+ voxel order (``nibabel.as_closest_canonical``; :func:`visualise_case`
reorients for you): axis 0 runs to the patient's right, axis 1 to anterior, axis 2 to superior.
Slices are drawn in radiological convention (patient's right on the image's left, anterior up in
the axial view) with millimetre extents and orientation letters on the edges.

Matplotlib runs on the Agg backend (no display needed).

Example:
    >>> save_overlays(image, pred, "out", gt=label, prefix="1_", spacing=(0.4, 0.4, 0.5))  # doctest: +SKIP
    [PosixPath('out/1_axial.png'), PosixPath('out/1_coronal.png'), ...]
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vesselfm.utils.io import atomic_path
from vesselfm.viz.mesh import bounding_box

if TYPE_CHECKING:
    from vesselfm.io.terminology import Segment

log = logging.getLogger(__name__)

PRED_COLOR = "#d62728"
GT_COLOR = "#17becf"
# opacity of a segment model's segments filled over the slices
SEGMENT_ALPHA = 0.55
# A CTA window (level 300 HU, width 800): contrast-filled lumen bright, myocardium grey.
CTA_WINDOW_HU = (-100.0, 700.0)

# view -> (axis sliced, (horizontal axis, vertical axis), (left, right, bottom, top) letters).
# Radiological: the patient's right (+axis 0) on the image's left; anterior on the sagittal left.
VIEWS: dict[str, tuple[int, tuple[int, int], tuple[str, str, str, str]]] = {
    "axial": (2, (0, 1), ("R", "L", "P", "A")),
    "coronal": (1, (0, 2), ("R", "L", "I", "S")),
    "sagittal": (0, (1, 2), ("A", "P", "I", "S")),
}


def intensity_window(image: np.ndarray) -> tuple[float, float]:
    """Display range: the CTA window for HU images, else the 1st-99th percentile.

    An image is taken to be in HU when it holds values below -500 (air) and above 100.
    """
    sample = np.asarray(image)[::4, ::4, ::2] if np.asarray(image).ndim == 3 else np.asarray(image)
    lo, hi = float(sample.min()), float(sample.max())
    if lo < -500 and hi > 100:
        return CTA_WINDOW_HU
    p1, p99 = np.percentile(sample, [1, 99])
    return (float(p1), float(p99) if p99 > p1 else float(p1) + 1.0)


def _best_slice(masks: Sequence[np.ndarray], axis: int) -> int:
    """The slice along ``axis`` with the most foreground (of all masks together)."""
    other = tuple(a for a in range(3) if a != axis)
    counts = sum(np.count_nonzero(m, axis=other) for m in masks)
    if not np.any(counts):
        return masks[0].shape[axis] // 2
    return int(np.argmax(counts))


def _draw(
    ax: Any,
    background: np.ndarray,
    window: tuple[float, float],
    pred: np.ndarray,
    gt: np.ndarray | None,
    spacing: Sequence[float],
    axes: tuple[int, int],
    letters: tuple[str, str, str, str],
    fill: bool,
    labels: np.ndarray | None = None,
    lut: np.ndarray | None = None,
) -> None:
    """Draw a 2D background with the prediction (red) and ground-truth (cyan) outlines; with a
    segment model's ``labels`` (codes) and ``lut`` (code -> RGBA), each segment filled in its
    colour instead of red."""
    h_axis, v_axis = axes
    width = background.shape[0] * float(spacing[h_axis])
    height = background.shape[1] * float(spacing[v_axis])
    extent = (0.0, width, 0.0, height)
    ax.imshow(
        background.T,
        cmap="gray",
        vmin=window[0],
        vmax=window[1],
        origin="lower",
        extent=extent,
        interpolation="nearest",
    )
    # Contour coordinates: pixel centres in mm along each drawn axis.
    xs = (np.arange(background.shape[0]) + 0.5) * float(spacing[h_axis])
    ys = (np.arange(background.shape[1]) + 0.5) * float(spacing[v_axis])
    if fill and labels is not None and lut is not None and np.any(labels):
        ax.imshow(
            lut[np.asarray(labels, dtype=np.int64).T],
            origin="lower",
            extent=extent,
            interpolation="nearest",
        )
    elif fill and np.any(pred):
        ax.imshow(
            np.ma.masked_equal(pred.T.astype(np.uint8), 0),
            cmap="autumn",
            alpha=0.3,
            origin="lower",
            extent=extent,
            interpolation="nearest",
        )
    for mask, color, style in ((pred, PRED_COLOR, "solid"), (gt, GT_COLOR, "dashed")):
        if mask is not None and np.any(mask) and not np.all(mask):
            ax.contour(
                xs,
                ys,
                mask.T.astype(np.float32),
                levels=[0.5],
                colors=[color],
                linewidths=0.9,
                linestyles=style,
            )
    # Flip horizontally: +axis 0 (patient's right) / +axis 1 (anterior) on the image's left.
    ax.set_xlim(width, 0.0)
    ax.set_ylim(0.0, height)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    style = {"color": "yellow", "fontsize": 10, "fontweight": "bold"}
    ax.text(0.01, 0.5, letters[0], transform=ax.transAxes, ha="left", va="center", **style)
    ax.text(0.99, 0.5, letters[1], transform=ax.transAxes, ha="right", va="center", **style)
    ax.text(0.5, 0.01, letters[2], transform=ax.transAxes, ha="center", va="bottom", **style)
    ax.text(0.5, 0.99, letters[3], transform=ax.transAxes, ha="center", va="top", **style)


def _legend(fig: Any, with_gt: bool, segments: Sequence[Segment] = ()) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles: list[Any] = [Line2D([], [], color=PRED_COLOR, label="prediction")]
    handles += [Patch(color=s.color, alpha=SEGMENT_ALPHA, label=s.name) for s in segments]
    if with_gt:
        handles.append(Line2D([], [], color=GT_COLOR, linestyle="dashed", label="ground truth"))
    fig.legend(
        handles=handles,
        loc="outside lower center",
        ncol=min(len(handles), 5),
        frameon=False,
        fontsize=9,
    )


def segment_lut(segments: Sequence[Segment]) -> np.ndarray:
    """``(max code + 1, 4)`` RGBA per code: each segment's colour at :data:`SEGMENT_ALPHA`, 0 and
    codes without a segment transparent."""
    lut = np.zeros((max((s.label for s in segments), default=0) + 1, 4), dtype=np.float32)
    for segment in segments:
        lut[segment.label] = (*segment.color, SEGMENT_ALPHA)
    return lut


def _save(fig: Any, path: Path, dpi: int) -> Path:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png", facecolor="white")
    plt.close(fig)
    return path


def save_overlays(
    image: np.ndarray | None,
    mask: np.ndarray,
    output_dir: str | os.PathLike[str],
    gt: np.ndarray | None = None,
    prefix: str = "",
    *,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    window: tuple[float, float] | None = None,
    dpi: int = 120,
    segments: Sequence[Segment] | None = None,
) -> list[Path]:
    """Write axial, coronal and sagittal overlays and a slab MIP of ``mask`` over ``image``.

    Each slice view shows the slice with the most foreground along its axis. The MIP figure
    has three panels (projection along each axis) over the mask's slab: the image's maximum
    intensity inside the mask's bounding box along the projection axis (so the spine or the
    sternum do not hide the vessels), with the outline of the mask's projection.

    Args:
        image: ``(X, Y, Z)`` intensities (HU or any scale) in RAS+ voxel order, or ``None``
            (then the mask itself is the background).
        mask: ``(X, Y, Z)`` prediction (nonzero is foreground), drawn red, filled and outlined.
        output_dir: folder for the PNGs (created).
        gt: optional ``(X, Y, Z)`` ground truth, outlined in dashed cyan.
        prefix: file-name prefix, e.g. ``"1_"``.
        spacing: voxel size in mm along each axis (for true proportions).
        window: display range of ``image``; default :func:`intensity_window`.
        dpi: resolution of the PNGs.
        segments: ``mask`` is a segment model's label map (codes) and these segments
            (:data:`vesselfm.io.terminology.CORONARY_SEGMENTS`) name and colour them: each
            segment is filled in its colour and named in the legend (those present); the outline
            is the union's.

    Returns:
        The paths written: ``<prefix>axial.png``, ``<prefix>coronal.png``,
        ``<prefix>sagittal.png``, ``<prefix>mip.png``.

    Raises:
        ValueError: the arrays are not 3D or their shapes differ.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    codes = np.asarray(mask) if segments is not None else None
    mask = np.asarray(mask) != 0
    present = []
    lut = None
    if codes is not None:
        values = set(np.unique(codes).tolist())
        present = [s for s in segments if s.label in values]  # type: ignore[union-attr]
        lut = segment_lut(list(segments))  # type: ignore[arg-type]
        if values - {0} - {s.label for s in present}:
            raise ValueError(
                f"mask holds codes {sorted(values - {0} - {s.label for s in present})} that no "
                "segment names"
            )
    if mask.ndim != 3:
        raise ValueError(f"mask must be a 3D array (X, Y, Z), got shape {mask.shape}")
    for name, other in (("image", image), ("gt", gt)):
        if other is not None and np.shape(other) != mask.shape:
            raise ValueError(
                f"{name} must have the mask's shape {mask.shape}, got {np.shape(other)}"
            )
    if len(spacing) != 3 or min(float(s) for s in spacing) <= 0:
        raise ValueError(f"spacing must be 3 positive voxel sizes in mm, got {tuple(spacing)}")
    gt_mask = None if gt is None else np.asarray(gt) != 0
    background = mask.astype(np.float32) if image is None else np.asarray(image)
    window = window or ((0.0, 1.0) if image is None else intensity_window(background))
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    masks = [mask] if gt_mask is None else [mask, gt_mask]
    written: list[Path] = []

    for view, (axis, axes, letters) in VIEWS.items():
        index = _best_slice(masks, axis)
        # basic indexing: a view (np.take would copy the whole, often non-contiguous, volume)
        at = (slice(None),) * axis + (index,)
        fig, ax = plt.subplots(figsize=(6, 6), layout="constrained")
        gt_slice = None if gt_mask is None else gt_mask[at]
        _draw(
            ax,
            background[at],
            window,
            mask[at],
            gt_slice,
            spacing,
            axes,
            letters,
            fill=True,
            labels=None if codes is None else codes[at],
            lut=lut,
        )
        ax.set_title(f"{view}, slice {index} of {mask.shape[axis]}", fontsize=10)
        _legend(fig, gt_mask is not None, present)
        written.append(_save(fig, output_dir / f"{prefix}{view}.png", dpi))

    box = bounding_box(mask if gt_mask is None else mask | gt_mask)
    fig, axs = plt.subplots(1, 3, figsize=(15, 5.5), layout="constrained")
    for ax, (view, (axis, axes, letters)) in zip(axs, VIEWS.items(), strict=True):
        slab = (slice(None),) * axis + ((slice(None) if box is None else box[axis]),)
        mip = np.max(background[slab], axis=axis)
        mip_gt = None if gt_mask is None else np.max(gt_mask[slab], axis=axis)
        _draw(
            ax,
            mip,
            window,
            np.max(mask[slab], axis=axis),
            mip_gt,
            spacing,
            axes,
            letters,
            fill=False,
        )
        ax.set_title(f"{view} MIP over the mask's slab", fontsize=10)
    _legend(fig, gt_mask is not None, present)
    written.append(_save(fig, output_dir / f"{prefix}mip.png", dpi))
    log.info("wrote %d overlays to %s", len(written), output_dir)
    return written
