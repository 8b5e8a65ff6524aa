"""The 3D view: TP / FP / FN surfaces in mm, a page that embeds plotly.js and renders in Chromium."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from vesselfm.utils.outputs import RECORD_NAME
from vesselfm.viz import apply_affine, error_masks, make_figure, save_html
from vesselfm.viz.figure3d import SURFACES


def _faces(fig) -> int:
    return sum(len(t.i) for t in fig.data)


def test_error_surfaces_sit_where_the_errors_are(case) -> None:
    fig = make_figure(case.pred, case.affine, gt=case.label, step_size=1)
    assert [t.type for t in fig.data] == ["mesh3d"] * 3
    assert [t.name for t in fig.data] == [SURFACES[k][0] for k in ("tp", "fp", "fn")]
    assert len({t.color for t in fig.data}) == 3
    errors = error_masks(case.pred, case.label)
    for trace, key in zip(fig.data, ("tp", "fp", "fn"), strict=True):
        xyz = np.stack([trace.x, trace.y, trace.z], axis=1)
        voxels_mm = apply_affine(case.affine, np.argwhere(errors[key]))
        # each surface lies within a voxel of its own error voxels, in scanner mm
        np.testing.assert_allclose(xyz.min(0), voxels_mm.min(0), atol=0.81)
        np.testing.assert_allclose(xyz.max(0), voxels_mm.max(0), atol=0.81)
    assert fig.layout.scene.aspectmode == "data"


def test_without_gt_one_prediction_surface_and_empty_errors_are_left_out(case) -> None:
    fig = make_figure(case.pred, case.affine)
    assert [t.name for t in fig.data] == ["prediction"]
    perfect = make_figure(case.label, case.affine, gt=case.label)
    assert [t.name for t in perfect.data] == [SURFACES["tp"][0]]


def test_face_budget_picks_a_coarser_step(case) -> None:
    full = make_figure(case.pred, case.affine, gt=case.label, step_size=1)
    budget = _faces(full) // 5
    small = make_figure(case.pred, case.affine, gt=case.label, max_faces=budget)
    assert small.layout.meta["step_size"] >= 2
    assert 0 < _faces(small) <= budget


def test_shape_mismatch_is_an_error(case) -> None:
    with pytest.raises(ValueError, match="same shape"):
        make_figure(case.pred, case.affine, gt=case.label[:-1])


def test_html_is_self_contained(case, tmp_path: Path) -> None:
    path = save_html(make_figure(case.pred, case.affine, gt=case.label), tmp_path / "view.html")
    html = path.read_text(encoding="utf-8")
    assert not re.search(r"<script[^>]+src=", html), "plotly.js must be embedded, not fetched"
    assert "Plotly.newPlot" in html and "vesselfm-status" in html
    assert 3e6 < path.stat().st_size < 20e6  # plotly.js (~4.7 MB) + a small figure
    # the page and the output record naming it; no temporary left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == [RECORD_NAME, "view.html"]


@pytest.mark.slow
def test_page_renders_its_mesh_traces_in_headless_chromium(case, tmp_path: Path, chromium) -> None:
    path = save_html(make_figure(case.pred, case.affine, gt=case.label), tmp_path / "view.html")
    result = chromium(path.as_uri(), "--dump-dom")
    assert result.returncode == 0, result.stderr[-2000:]
    status = re.search(r'<div id="vesselfm-status"([^>]*)>', result.stdout)
    assert status, "the page's script did not run: no #vesselfm-status in the DOM"
    attrs = dict(re.findall(r'data-([\w-]+)="([^"]*)"', status.group(1)))
    assert attrs["mesh-traces"] == "3"
    assert attrs["webgl"] == "true", "plotly did not build its WebGL scene"
    assert int(attrs["canvases"]) >= 1


@pytest.mark.slow
def test_screenshot_shows_the_coloured_error_surfaces(case, tmp_path: Path, chromium) -> None:
    import matplotlib.image

    def coloured_pixels(pred: np.ndarray, name: str) -> tuple[int, int]:
        page = save_html(make_figure(pred, case.affine, gt=case.label), tmp_path / f"{name}.html")
        shot = tmp_path / f"{name}.png"
        result = chromium(page.as_uri(), f"--screenshot={shot}", "--window-size=900,700")
        assert result.returncode == 0 and shot.is_file(), result.stderr[-2000:]
        r, g, b = np.moveaxis(matplotlib.image.imread(shot)[..., :3], -1, 0)
        # hues of the translucent, shaded surfaces (drawn over white or grey)
        orange = (r > b + 0.25) & (g > b + 0.05) & (r > g + 0.05)
        blue = (b > r + 0.2) & (b > g + 0.05) & (b > 0.45)
        return int(orange.sum()), int(blue.sum())

    # Against a perfect prediction (the same page with no error surfaces, legend and axes alike),
    # the false-positive (orange) and false-negative (blue) surfaces add many shaded pixels.
    orange, blue = coloured_pixels(case.pred, "errors")
    orange_0, blue_0 = coloured_pixels(case.label, "perfect")
    assert orange - orange_0 > 500
    assert blue - blue_0 > 500
