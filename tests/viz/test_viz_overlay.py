"""PNG overlays: written, non-trivial, outlined where the mask is, in radiological orientation."""

from __future__ import annotations

from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from vesselfm.utils.outputs import RECORD_NAME
from vesselfm.viz import save_overlays


def _red(path: Path) -> np.ndarray:
    """Pixels of the prediction's outline colour (#d62728)."""
    rgb = matplotlib.image.imread(path)[..., :3]
    return np.abs(rgb - np.array([0.839, 0.153, 0.157])).max(axis=-1) < 0.12


def test_overlays_are_written_and_non_trivial(case, tmp_path: Path) -> None:
    paths = save_overlays(
        case.image, case.pred, tmp_path / "png", gt=case.label, prefix="7_", spacing=(0.4, 0.5, 0.8)
    )
    assert [p.name for p in paths] == [
        "7_axial.png",
        "7_coronal.png",
        "7_sagittal.png",
        "7_mip.png",
    ]
    # the PNGs and the output record naming them, nothing else
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(
        [RECORD_NAME, *(p.name for p in paths)]
    )
    for path in paths:
        rgb = matplotlib.image.imread(path)[..., :3]
        assert rgb.shape[0] > 300 and rgb.shape[1] > 300
        assert rgb.std() > 0.05, f"{path.name} is blank"
        assert _red(path).sum() > 50, f"{path.name} has no prediction outline"
        cyan = np.abs(rgb - np.array([0.09, 0.745, 0.812])).max(axis=-1) < 0.12
        assert cyan.sum() > 20, f"{path.name} has no ground-truth outline"


def test_without_image_or_gt(case, tmp_path: Path) -> None:
    paths = save_overlays(None, case.label, tmp_path)
    assert len(paths) == 4 and all(p.stat().st_size > 5000 for p in paths)


def test_radiological_orientation_puts_the_patients_right_on_the_left(tmp_path: Path) -> None:
    # RAS+ voxel order: a blob at high axis-0 index is on the patient's right -> image's left.
    mask = np.zeros((60, 50, 30), np.uint8)
    mask[45:52, 10:16, 12:18] = 1  # right, posterior, mid
    axial, coronal, sagittal, _ = save_overlays(None, mask, tmp_path)
    for path in (axial, coronal):
        cols = np.nonzero(_red(path))[1]
        assert cols.mean() < matplotlib.image.imread(path).shape[1] / 2, path.name
    rows = np.nonzero(_red(axial))[0]
    assert rows.mean() > matplotlib.image.imread(axial).shape[0] / 2, (
        "posterior must be at the bottom"
    )
    cols = np.nonzero(_red(sagittal))[1]
    assert cols.mean() > matplotlib.image.imread(sagittal).shape[1] / 2, "posterior on the right"


def test_mismatched_shapes_are_an_error(case, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="gt must have the mask's shape"):
        save_overlays(None, case.pred, tmp_path, gt=case.label[1:])
    with pytest.raises(ValueError, match="spacing"):
        save_overlays(None, case.pred, tmp_path, spacing=(1, 0, 1))
    assert list(tmp_path.iterdir()) == []
