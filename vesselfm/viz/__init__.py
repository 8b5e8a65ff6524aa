"""Look at a segmentation: STL meshes, an offline interactive 3D view, slice overlays.

- :func:`mask_to_mesh`, :func:`mask_to_stl`, :func:`save_stl`, :func:`load_stl`: marching-cubes
  surfaces in scanner millimetres (through the NIfTI affine), binary STL.
- :func:`make_figure`, :func:`save_html`: a plotly figure with TP / FP / FN surfaces coloured,
  written as one self-contained HTML page.
- :func:`save_overlays`: axial / coronal / sagittal PNG overlays and a slab MIP.
- :func:`visualise_case`: all of it for one case from NIfTI files (``python -m vesselfm.visualise``).
"""

from __future__ import annotations

from vesselfm.viz.case import visualise_case
from vesselfm.viz.figure3d import error_masks, make_figure, save_html
from vesselfm.viz.mesh import (
    apply_affine,
    load_stl,
    mask_to_mesh,
    mask_to_stl,
    mesh_volume,
    save_stl,
)
from vesselfm.viz.overlay import save_overlays

__all__ = [
    "apply_affine",
    "error_masks",
    "load_stl",
    "make_figure",
    "mask_to_mesh",
    "mask_to_stl",
    "mesh_volume",
    "save_html",
    "save_overlays",
    "save_stl",
    "visualise_case",
]
