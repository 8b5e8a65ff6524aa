"""HD95 and ASSD in mm against MONAI, hand-computed distances, and empty masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance
from scipy import ndimage as ndi

from vesselfm.metrics import compute_metrics, hd95_assd

# MONAI deprecates an argument its own metric passes internally.
pytestmark = pytest.mark.filterwarnings("ignore:.*always_return_as_numpy:FutureWarning")


def _monai(pred: np.ndarray, label: np.ndarray, spacing) -> tuple[float, float]:
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    g = torch.from_numpy(label[None, None].astype(np.float32))
    hd = compute_hausdorff_distance(
        p, g, include_background=True, percentile=95, spacing=list(spacing)
    )
    asd = compute_average_surface_distance(
        p, g, include_background=True, symmetric=True, spacing=list(spacing)
    )
    return float(hd), float(asd)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.4, 0.35, 0.625), (2.0, 0.5, 1.0)])
@pytest.mark.parametrize("seed", [0, 1])
def test_matches_monai(seed, spacing):
    rng = np.random.default_rng(seed)
    shape = (32, 30, 28)
    label = ndi.gaussian_filter(rng.random(shape), 1.5) > 0.53
    pred = ndi.binary_dilation(label, iterations=1) & (rng.random(shape) < 0.97)
    pred[2:5, 25:29, 20:24] = True  # a false positive far away
    label[-1, 10:14, 10:14] = True  # touching the volume border
    hd95, assd = hd95_assd(pred, label, spacing)
    ref_hd95, ref_assd = _monai(pred, label, spacing)
    # MONAI works in float32
    assert hd95 == pytest.approx(ref_hd95, rel=1e-5)
    assert assd == pytest.approx(ref_assd, rel=1e-5)


def test_tree_damage_matches_monai(tree):
    spacing = (0.4, 0.4, 0.5)
    got = compute_metrics(
        tree.extra_blob, tree.label, spacing=spacing, metrics=("hd95_mm", "assd_mm")
    )
    ref_hd95, ref_assd = _monai(tree.extra_blob, tree.label, spacing)
    assert got["hd95_mm"] == pytest.approx(ref_hd95, rel=1e-5)
    assert got["assd_mm"] == pytest.approx(ref_assd, rel=1e-5)


def test_hand_computed_single_voxels():
    # Each single voxel is its own surface; they lie 3 voxels apart along axis 0 (2 mm each).
    pred = np.zeros((10, 5, 5), bool)
    label = np.zeros_like(pred)
    pred[2, 2, 2] = True
    label[5, 2, 2] = True
    assert hd95_assd(pred, label, spacing=(2.0, 1.0, 1.0)) == pytest.approx((6.0, 6.0))
    assert hd95_assd(pred, label, spacing=(0.5, 1.0, 1.0)) == pytest.approx((1.5, 1.5))


def test_identical_masks_are_zero(tree):
    assert hd95_assd(tree.label, tree.label, (0.4, 0.4, 0.5)) == (0.0, 0.0)


@pytest.mark.parametrize(("pred_on", "label_on"), [(0, 0), (1, 0), (0, 1)])
def test_an_empty_side_is_undefined(pred_on, label_on):
    pred = np.zeros((6, 6, 6), bool)
    label = np.zeros_like(pred)
    pred[1:3, 1:3, 1:3] = bool(pred_on)
    label[2:5, 2:5, 2:5] = bool(label_on)
    got = compute_metrics(pred, label, metrics=("hd95_mm", "assd_mm"))
    assert got == {"hd95_mm": None, "assd_mm": None}


@pytest.mark.parametrize("spacing", [(1.0, 1.0), (1.0, 0.0, 1.0), (1.0, -1.0, 1.0)])
def test_bad_spacing_raises(spacing):
    m = np.ones((3, 3, 3), bool)
    with pytest.raises(ValueError, match="spacing"):
        compute_metrics(m, m, spacing=spacing, metrics=("hd95_mm",))
