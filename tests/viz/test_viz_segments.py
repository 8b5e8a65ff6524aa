"""A segment model's label map in the 3D view and overlays: one surface per code present, in the
segment's colour, named in the legend and on hover; one STL per segment; overlays filled in the
segments' colours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from synthetic import ANISO_AFFINE, save_nifti, tube

from vesselfm.io.terminology import CORONARY_SEGMENTS
from vesselfm.viz import load_stl, visualise_case
from vesselfm.viz.case import label_map_codes
from vesselfm.viz.mesh import apply_affine

SHAPE = (24, 20, 12)


def two_segments() -> np.ndarray:
    """Codes 2 (LAD) and 9 (RCA) in two tubes, nothing else."""
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[tube(SHAPE, (3, 5, 2), (20, 5, 9), 2.0)] = 2
    labels[tube(SHAPE, (3, 14, 2), (20, 14, 9), 2.0)] = 9
    return labels


def test_label_map_view_names_and_colours_each_segment(tmp_path: Path) -> None:
    labels = two_segments()
    pred = save_nifti(tmp_path / "1_pred.nii.gz", labels, ANISO_AFFINE)
    written = visualise_case(pred, tmp_path / "viz", html_smooth_iterations=0)

    html = written["html"].read_text(encoding="utf-8")
    assert '"name":"LAD (2)"' in html and '"name":"RCA (9)"' in html
    assert "LM (1)" not in html and "LCx (3)" not in html  # only the codes present
    for code in (2, 9):  # each surface in its segment's colour
        rgb = CORONARY_SEGMENTS[code - 1].color
        assert '"color":"#' + "".join(f"{round(255 * c):02x}" for c in rgb) + '"' in html

    # one STL per segment, lying on that segment's voxels (mm, through the affine)
    for code, name in ((2, "LAD"), (9, "RCA")):
        vertices, faces = load_stl(written[f"stl_{name}"])
        assert written[f"stl_{name}"].name == f"1_pred_{name}.stl" and len(faces)
        voxels = apply_affine(ANISO_AFFINE, np.argwhere(labels == code).astype(float))
        lo, hi = voxels.min(0), voxels.max(0)
        step = np.abs(ANISO_AFFINE[:3, :3]).sum(1)  # half a voxel each side, at most
        assert np.all(vertices >= lo - step) and np.all(vertices <= hi + step)
    assert "stl_LM" not in written

    # the axial overlay fills each segment in its colour: without image= the background inside
    # the mask is white, so a segment's pixels are 0.55 * its colour + 0.45 * white
    from matplotlib.image import imread

    png = imread(written["axial"])[..., :3]
    png = png[: int(0.8 * png.shape[0])]  # the slice, without the legend's patches below it
    for code in (2, 9, 1):
        blended = 0.55 * np.asarray(CORONARY_SEGMENTS[code - 1].color) + 0.45
        hits = (np.abs(png - blended[None, None]).max(-1) <= 0.02).sum()
        assert hits > 100 if code != 1 else hits == 0, CORONARY_SEGMENTS[code - 1].name


def test_label_map_codes_tells_masks_from_codes() -> None:
    assert label_map_codes(two_segments()) == [2, 9]
    assert label_map_codes(two_segments() > 0) is None  # a 0/1 mask
    assert label_map_codes(np.linspace(0, 1, 8).reshape(2, 2, 2)) is None  # probabilities
    assert label_map_codes(np.full((2, 2, 2), 15)) is None  # not an ImageCAS-X code
