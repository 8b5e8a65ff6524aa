"""Interactive 3D view: a plotly figure of the prediction's surface, errors coloured, as one HTML file.

With a ground truth the figure holds up to three surfaces, each a legend entry that toggles it:
true positives (prediction and ground truth), false positives (prediction only) and false
negatives (ground truth only). Hiding the false negatives shows the prediction; hiding the false
positives shows the ground truth. Without a ground truth it holds the prediction's surface.

The HTML embeds plotly.js (about 4.7 MB), so the page opens offline, from a file or an e-mail.
Large masks are meshed with a coarser marching-cubes step so that the page stays small (about
``max_faces`` triangles in all: 400 000 faces give a page of about 15 MB).

Example:
    >>> fig = make_figure(pred, affine, gt=label, title="case 1")  # doctest: +SKIP
    >>> save_html(fig, "out/1_3d.html")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vesselfm.utils.io import atomic_path
from vesselfm.viz.mesh import bounding_box, mask_to_mesh

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from vesselfm.io.terminology import Segment

log = logging.getLogger(__name__)

# name -> (legend label, colour). Colour-blind-safe: blue/orange for the errors, grey for agreement.
SURFACES: dict[str, tuple[str, str]] = {
    "prediction": ("prediction", "#d62728"),
    "tp": ("true positive (prediction ∩ ground truth)", "#c7c7c7"),
    "fp": ("false positive (prediction only)", "#ff7f0e"),
    "fn": ("false negative (ground truth only)", "#1f77b4"),
}

DEFAULT_MAX_FACES = 400_000
# Light Taubin smoothing for the view only: hides the voxel staircase, keeps the volume.
DEFAULT_SMOOTH_ITERATIONS = 10
# Marching cubes gives about this many triangles per exposed voxel face (measured on spheres
# and tubes: 1.0-1.3); used to pick the step size before meshing.
_FACES_PER_EXPOSED_FACE = 1.3

# Runs in the page once plotly has drawn the figure: records what was drawn in data attributes of
# a hidden element (#vesselfm-status), so a headless browser can check the page really rendered.
STATUS_SCRIPT = """
var gd = document.getElementById('{plot_id}');
var status = document.createElement('div');
status.id = 'vesselfm-status';
status.style.display = 'none';
status.setAttribute('data-traces', gd.data.length);
status.setAttribute('data-mesh-traces', gd.data.filter(function (t) { return t.type === 'mesh3d'; }).length);
status.setAttribute('data-canvases', gd.querySelectorAll('canvas').length);
status.setAttribute('data-webgl', String(!!(gd._fullLayout.scene && gd._fullLayout.scene._scene)));
document.body.appendChild(status);
"""


def _exposed_faces(mask: np.ndarray) -> int:
    """Voxel faces between foreground and background (including the volume's border)."""
    box = bounding_box(mask)
    if box is None:
        return 0
    crop = np.pad(np.asarray(mask[box] != 0), 1)
    return int(sum(np.count_nonzero(np.diff(crop, axis=a)) for a in range(3)))


def choose_step_size(masks: list[np.ndarray], max_faces: int) -> int:
    """The smallest marching-cubes step that keeps the masks' meshes near ``max_faces`` in all.

    Faces scale with the surface area over the step squared; the area is estimated from the
    number of exposed voxel faces.

    Args:
        masks: ``(X, Y, Z)`` binary masks meshed together.
        max_faces: triangle budget for all of them.

    Returns:
        A step size >= 1.
    """
    if max_faces < 1:
        raise ValueError(f"max_faces must be >= 1, got {max_faces}")
    estimate = _FACES_PER_EXPOSED_FACE * sum(_exposed_faces(m) for m in masks)
    return max(1, math.ceil(math.sqrt(estimate / max_faces)))


def _mesh_trace(
    vertices: np.ndarray, faces: np.ndarray, name: str, color: str, opacity: float
) -> go.Mesh3d:
    import plotly.graph_objects as go

    # float32/int32 arrays are embedded base64-encoded: half the size of float64, and no loss
    # that a screen shows (float32 resolves 1e-4 mm at 500 mm).
    v = vertices.astype(np.float32)
    f = faces.astype(np.int32)
    return go.Mesh3d(
        x=v[:, 0],
        y=v[:, 1],
        z=v[:, 2],
        i=f[:, 0],
        j=f[:, 1],
        k=f[:, 2],
        name=name,
        color=color,
        opacity=opacity,
        showlegend=True,
        flatshading=False,
        lighting={
            "ambient": 0.45,
            "diffuse": 0.8,
            "specular": 0.2,
            "roughness": 0.5,
            "fresnel": 0.1,
        },
        hoverinfo="name",
    )


def error_masks(pred: np.ndarray, gt: np.ndarray) -> dict[str, np.ndarray]:
    """Split a prediction against a ground truth into ``tp``, ``fp`` and ``fn`` boolean masks."""
    pred = np.asarray(pred) != 0
    gt = np.asarray(gt) != 0
    if pred.shape != gt.shape:
        raise ValueError(f"pred and gt must have the same shape, got {pred.shape} and {gt.shape}")
    return {"tp": pred & gt, "fp": pred & ~gt, "fn": gt & ~pred}


def make_figure(
    pred: np.ndarray,
    affine: np.ndarray,
    gt: np.ndarray | None = None,
    *,
    step_size: int | None = None,
    max_faces: int = DEFAULT_MAX_FACES,
    smooth_iterations: int = DEFAULT_SMOOTH_ITERATIONS,
    title: str | None = None,
    opacity: float = 1.0,
    error_opacity: float = 0.5,
) -> go.Figure:
    """A plotly 3D figure of a prediction's surface, with TP / FP / FN coloured when ``gt`` is given.

    Args:
        pred: ``(X, Y, Z)`` binary prediction (nonzero is vessel).
        affine: ``(4, 4)`` voxel-to-scanner matrix (mm); the axes are scanner x, y, z in mm.
        gt: optional ``(X, Y, Z)`` ground truth on the same grid.
        step_size: marching-cubes step in voxels; ``None`` picks the smallest step that keeps
            all surfaces near ``max_faces`` triangles.
        max_faces: triangle budget used when ``step_size`` is ``None``.
        smooth_iterations: Taubin smoothing passes for each surface (0: the raw voxel staircase).
        title: figure title.
        opacity: opacity of the prediction / true-positive surface, in (0, 1].
        error_opacity: opacity of the false-positive and false-negative surfaces. Translucent by
            default: boundary disagreements form thin shells around the true positives, which
            opaque error surfaces would hide.

    Returns:
        A ``plotly.graph_objects.Figure`` with one ``mesh3d`` trace per non-empty surface
        (``prediction``; or ``tp``, ``fp``, ``fn``), equal mm scaling on all axes.

    Raises:
        ValueError: shapes differ, or a mask is not 3D.
    """

    pred = np.asarray(pred)
    masks = {"prediction": pred != 0} if gt is None else error_masks(pred, gt)
    surfaces = {
        key: (*SURFACES[key], error_opacity if key in ("fp", "fn") else opacity) for key in masks
    }
    return _surfaces_figure(
        masks, surfaces, affine, step_size, max_faces, smooth_iterations, title, "surfaces"
    )


def _surfaces_figure(
    masks: dict[Any, np.ndarray],
    surfaces: dict[Any, tuple[str, str, float]],
    affine: np.ndarray,
    step_size: int | None,
    max_faces: int,
    smooth_iterations: int,
    title: str | None,
    what: str,
) -> go.Figure:
    """The figure of ``masks``: each meshed (one marching-cubes step for all, the smallest that
    keeps them near ``max_faces`` when ``step_size`` is ``None``) and drawn as one ``mesh3d``
    trace named and coloured by ``surfaces[key]`` (``(name, colour, opacity)``), empty ones
    left out; the count is logged as ``what``."""
    import plotly.graph_objects as go

    auto_step = step_size is None
    step_size = choose_step_size(list(masks.values()), max_faces) if auto_step else int(step_size)
    while True:
        meshes = {
            key: mask_to_mesh(m, affine, step_size, smooth_iterations) for key, m in masks.items()
        }
        n_faces = sum(len(faces) for _, faces in meshes.values())
        if not auto_step or n_faces <= max_faces:
            break
        step_size += 1  # the estimate was low: coarsen until the page fits its budget
    traces = [
        _mesh_trace(vertices, faces, *surfaces[key])
        for key, (vertices, faces) in meshes.items()
        if len(faces)
    ]
    log.info(
        "3D view: %d %s, %d triangles (marching-cubes step %d)",
        len(traces),
        what,
        n_faces,
        step_size,
    )
    fig = go.Figure(traces)
    _layout(fig, title, step_size, n_faces)
    return fig


def _layout(fig: go.Figure, title: str | None, step_size: int, n_faces: int) -> None:
    axis = {"showbackground": True, "backgroundcolor": "#f4f4f4", "gridcolor": "#dddddd"}
    fig.update_layout(
        title={"text": title} if title else None,
        scene={
            "aspectmode": "data",  # equal mm on all axes
            "xaxis": {"title": {"text": "x (mm)"}, **axis},
            "yaxis": {"title": {"text": "y (mm)"}, **axis},
            "zaxis": {"title": {"text": "z (mm)"}, **axis},
            # From the front (+y is anterior in RAS), a little above: patient's right on the left.
            "camera": {
                "eye": {"x": 0.4, "y": 2.0, "z": 0.6},
                "up": {"x": 0, "y": 0, "z": 1},
                "projection": {"type": "orthographic"},
            },
        },
        legend={"itemclick": "toggle", "x": 0.01, "y": 0.99, "bgcolor": "rgba(255,255,255,0.7)"},
        margin={"l": 0, "r": 0, "t": 40 if title else 0, "b": 0},
        paper_bgcolor="white",
        meta={"step_size": step_size, "faces": n_faces},
    )


def hex_colour(rgb: Sequence[float]) -> str:
    """``#rrggbb`` of an RGB colour in [0, 1] (a :class:`~vesselfm.io.terminology.Segment`'s)."""
    return "#" + "".join(f"{round(255 * float(c)):02x}" for c in rgb)


def segment_masks(labels: np.ndarray, segments: Sequence[Segment]) -> dict[int, np.ndarray]:
    """``{code: labels == code}`` of each segment of ``segments`` present in ``labels``."""
    labels = np.asarray(labels)
    present = set(np.unique(labels).tolist())
    return {s.label: labels == s.label for s in segments if s.label in present}


def make_segments_figure(
    labels: np.ndarray,
    affine: np.ndarray,
    segments: Sequence[Segment] | None = None,
    *,
    step_size: int | None = None,
    max_faces: int = DEFAULT_MAX_FACES,
    smooth_iterations: int = DEFAULT_SMOOTH_ITERATIONS,
    title: str | None = None,
    opacity: float = 1.0,
) -> go.Figure:
    """A plotly 3D figure of a segment model's label map: one surface per code present, in the
    segment's colour, named in the legend and on hover (``LAD (2)``); a legend entry toggles it.

    Args:
        labels: ``(X, Y, Z)`` codes (0 background; ImageCAS-X's 1..14).
        affine: ``(4, 4)`` voxel-to-scanner matrix (mm).
        segments: the table naming and colouring the codes; default
            :data:`vesselfm.io.terminology.CORONARY_SEGMENTS`.
        step_size, max_faces, smooth_iterations, title, opacity: as :func:`make_figure`.

    Returns:
        A ``plotly.graph_objects.Figure`` with one ``mesh3d`` trace per segment present, in code
        order, equal mm scaling on all axes.
    """
    from vesselfm.io.terminology import CORONARY_SEGMENTS

    table = list(CORONARY_SEGMENTS if segments is None else segments)
    masks = segment_masks(labels, table)
    named = {s.label: s for s in table}
    surfaces = {
        code: (f"{named[code].name} ({code})", hex_colour(named[code].color), opacity)
        for code in masks
    }
    return _surfaces_figure(
        masks, surfaces, affine, step_size, max_faces, smooth_iterations, title, "segments"
    )


def save_html(fig: go.Figure, path: str | os.PathLike[str]) -> Path:
    """Write ``fig`` as one self-contained HTML page (plotly.js embedded; opens offline).

    Args:
        fig: a plotly figure.
        path: target ``.html`` file, written atomically.

    Returns:
        The path written.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.write_html(
            tmp,
            include_plotlyjs=True,
            full_html=True,
            default_height="96vh",
            post_script=STATUS_SCRIPT,
            config={
                "displaylogo": False,
                "toImageButtonOptions": {"format": "png", "filename": path.stem},
            },
        )
    log.info("wrote %s (%.1f MB)", path, path.stat().st_size / 1e6)
    return path
