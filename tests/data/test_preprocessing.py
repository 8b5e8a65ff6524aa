"""The one resampling and normalisation shared by prepare, training and infer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import ScaleIntensityRangePercentiles

from vesselfm.data.preprocessing import (
    PreprocessConfig,
    intensity_range,
    normalize_intensity,
    resample_image,
    resample_label,
    resample_probabilities,
    resampled_affine,
    spacing_from_affine,
    target_shape,
)


def test_normalisation_matches_monai_percentile_scaling():
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 200, size=(24, 20, 16)).astype(np.float32)
    cfg = PreprocessConfig()
    ours = normalize_intensity(volume, intensity_range(volume, cfg), cfg)
    ref = ScaleIntensityRangePercentiles(lower=1, upper=99, b_min=0, b_max=1, clip=True)(volume[None])[0]
    np.testing.assert_allclose(ours, np.asarray(ref), atol=1e-5)
    torch_out = normalize_intensity(torch.from_numpy(volume), intensity_range(volume, cfg), cfg)
    np.testing.assert_allclose(torch_out.numpy(), ours, atol=1e-6)


def test_constant_volume_does_not_divide_by_zero():
    cfg = PreprocessConfig()
    out = normalize_intensity(np.full((4, 4, 4), 7.0), (7.0, 7.0), cfg)
    assert np.all(out == 0.0)


@pytest.mark.parametrize(
    ("cfg", "expected"),
    [
        (PreprocessConfig(), (256, 256, 230)),
        (PreprocessConfig(in_plane_size=None), (512, 512, 230)),
        (PreprocessConfig(target_spacing=(0.8, 0.8, 1.0)), (224, 224, 115)),
    ],
)
def test_target_shape(cfg, expected):
    assert target_shape((512, 512, 230), (0.35, 0.35, 0.5), cfg) == expected


@pytest.mark.parametrize("bad", [{"lower": 99, "upper": 1}, {"target_spacing": (1, 1)}, {"in_plane_size": 2}, {"nope": 1}])
def test_bad_config_is_rejected(bad):
    with pytest.raises(ValueError, match="preprocess"):
        PreprocessConfig.from_mapping(bad)


def test_resampled_affine_keeps_field_of_view():
    affine = np.diag([-0.4, -0.4, 0.5, 1.0])
    affine[:3, 3] = [100.0, 80.0, -20.0]
    shape, new_shape = (64, 48, 30), (32, 24, 30)
    new = resampled_affine(affine, shape, new_shape)
    np.testing.assert_allclose(spacing_from_affine(new), (0.8, 0.8, 0.5))
    # The outer voxel faces (corners of the field of view) map to the same world points.
    for corner in ([-0.5, -0.5, -0.5], [s - 0.5 for s in shape]):
        old_world = affine @ np.r_[corner, 1.0]
        new_corner = [(c + 0.5) * n / s - 0.5 for c, n, s in zip(corner, new_shape, shape)]
        np.testing.assert_allclose(new @ np.r_[new_corner, 1.0], old_world, atol=1e-9)


def test_image_downsampling_is_area_average():
    volume = np.arange(4 * 4 * 2, dtype=np.float32).reshape(4, 4, 2)
    out = resample_image(volume, (2, 2, 2))
    np.testing.assert_allclose(out[0, 0, 0], volume[:2, :2, 0].mean())
    assert out.dtype == np.float32


def test_label_round_trip_keeps_a_tube():
    label = np.zeros((64, 64, 20), dtype=np.uint8)
    yy, xx = np.mgrid[:64, :64]
    label[((xx - 30.3) ** 2 + (yy - 33.1) ** 2) <= 3.0**2, :] = 1
    down = resample_label(label, (32, 32, 20))
    up = resample_probabilities(down.astype(np.float32), label.shape) >= 0.5
    dice = 2 * np.sum(up & (label > 0)) / (up.sum() + label.sum())
    assert down.dtype == np.uint8 and set(np.unique(down)) == {0, 1}
    assert dice > 0.8


def test_probabilities_stay_in_unit_range():
    prob = np.random.default_rng(1).random((10, 10, 10)).astype(np.float32)
    out = resample_probabilities(prob, (17, 23, 9))
    assert out.shape == (17, 23, 9) and out.min() >= 0 and out.max() <= 1
