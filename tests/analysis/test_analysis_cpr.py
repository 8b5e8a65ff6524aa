"""Straightened reformation with ``image=``: the lumen width across the picture is the tube's
diameter, narrowed at the planted stenosis; the CLI writes ``<case>_cpr.png``."""

from __future__ import annotations

import numpy as np
import pytest
from analysis_phantoms import narrowed, tube, world_grid
from synthetic import save_nifti

from vesselfm.analyse import analyse
from vesselfm.analysis.reformation import ACROSS_MM, straighten
from vesselfm.utils.cli import UserError

SHAPE = (48, 48, 80)
AFFINE = np.array(
    [[-0.4, 0.0, 0.0, 12.0], [0.0, -0.4, 0.0, 25.0], [0.0, 0.0, 0.5, -30.0], [0.0, 0.0, 0.0, 1.0]]
)


def _stenosed():
    world = world_grid(SHAPE, AFFINE)
    a, b = world[24, 24, 2], world[24, 24, 77]
    length = float(np.linalg.norm(b - a))
    return world, a, b, tube(world, a, b, narrowed(2.0, 2.0, length, [(18.0, 0.75, 5.0)]))


def test_straightened_lumen_width_is_the_diameter():
    """A 4 mm tube along z with a 75 % narrowing 18 mm from its start: across the straightened
    mask the lumen is ~4 mm wide, ~1 mm at the lesion; the line is sampled in world mm."""
    _, a, b, mask = _stenosed()
    arc = np.arange(0.0, 30.0, 0.5)
    points = a + arc[:, None] * (b - a) / np.linalg.norm(b - a)
    lumen, offsets = straighten(mask.astype(np.float32), AFFINE, points)
    assert offsets[0] == pytest.approx(-6.0) and offsets[1] - offsets[0] == pytest.approx(0.2)
    width = (lumen >= 0.5).sum(axis=1) * ACROSS_MM
    healthy = width[(arc > 4) & (arc < 12)]
    assert np.all(np.abs(healthy - 4.0) <= 0.6)
    assert width[np.argmin(np.abs(arc - 18.0))] <= 1.6
    assert lumen[:, np.argmin(np.abs(offsets))].min() == pytest.approx(1.0)  # the axis is lumen


def test_cli_writes_the_reformation_and_refuses_a_scan_on_another_grid(compose_cfg, tmp_path):
    _, _, _, mask = _stenosed()
    folder = tmp_path / "in"
    save_nifti(folder / "s.label.nii.gz", mask.astype(np.uint8), AFFINE)
    save_nifti(
        tmp_path / "scans" / "s.img.nii.gz", np.where(mask, 400, -50).astype(np.int16), AFFINE
    )
    out = tmp_path / "out"
    cfg = compose_cfg(
        "analyse",
        [f"mask={folder}", f"image={tmp_path / 'scans'}", f"output={out}", "html=false"],
    )
    result = analyse(cfg)
    png = out / "s_cpr.png"
    assert result["paths"]["s"]["cpr"] == png
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    other = tmp_path / "other"
    save_nifti(other / "s.img.nii.gz", np.zeros((48, 48, 40), np.int16), AFFINE)
    cfg = compose_cfg(
        "analyse",
        [f"mask={folder}", f"image={other}", f"output={tmp_path / 'out2'}", "html=false"],
    )
    with pytest.raises(UserError, match="s.img.nii.gz"):
        analyse(cfg)
