"""The one resampling and normalisation shared by prepare, training and infer."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.transforms import ScaleIntensityRangePercentiles

from vesselfm.data.preprocessing import (
    PreprocessConfig,
    c_order,
    intensity_range,
    normalize_intensity,
    resample_image,
    resample_label,
    resample_probabilities,
    resampled_affine,
    target_shape,
)
from vesselfm.io.frames import spacing_from_affine


def test_normalisation_matches_monai_percentile_scaling():
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 200, size=(24, 20, 16)).astype(np.float32)
    cfg = PreprocessConfig()
    ours = normalize_intensity(volume, intensity_range(volume, cfg), cfg)
    ref = ScaleIntensityRangePercentiles(lower=1, upper=99, b_min=0, b_max=1, clip=True)(
        volume[None]
    )[0]
    np.testing.assert_allclose(ours, np.asarray(ref), atol=1e-5)
    torch_out = normalize_intensity(torch.from_numpy(volume), intensity_range(volume, cfg), cfg)
    np.testing.assert_allclose(torch_out.numpy(), ours, atol=1e-6)


def test_ignore_below_takes_the_percentiles_over_the_body_not_the_air():
    rng = np.random.default_rng(0)
    # a CT slab: 60 % air around a body of soft tissue (40 HU) with a few vessels (350 HU)
    volume = np.full((40, 40, 10), -1000.0, np.float32)
    volume[:, 16:, :] = 40.0
    volume[5:10, 20:25, :] = 350.0
    volume += rng.normal(0, 10, volume.shape).astype(np.float32)
    every = intensity_range(volume, PreprocessConfig())
    body = intensity_range(volume, PreprocessConfig(ignore_below=-500))
    assert every[0] < -990 and every[1] > 300  # air sets the low end
    above = volume[volume > -500]
    assert body == pytest.approx(tuple(np.percentile(above, [1, 99])))
    assert 0 < body[0] < 40 < 300 < body[1]
    out = normalize_intensity(volume, body, PreprocessConfig(ignore_below=-500))
    # air is clipped to 0 like any value below the range; the vessels' contrast against the
    # tissue is most of [0, 1] instead of a fifth of it
    assert float(out[0, 0, 0]) == 0.0
    assert float(np.median(out[5:10, 20:25])) - float(np.median(out[30:, 30:])) > 0.8
    plain = normalize_intensity(volume, every, PreprocessConfig())
    assert float(np.median(plain[5:10, 20:25])) - float(np.median(plain[30:, 30:])) < 0.25
    # a scan (nearly) all below the threshold, e.g. MR in other units, keeps every voxel
    assert intensity_range(volume, PreprocessConfig(ignore_below=1e6)) == every
    assert PreprocessConfig.from_mapping({"ignore_below": -500}).to_dict()["ignore_below"] == -500
    # unset, it is not written: records from before it existed compare equal
    assert "ignore_below" not in PreprocessConfig().to_dict()


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


@pytest.mark.parametrize(
    "bad",
    [
        {"lower": 99, "upper": 1},
        {"target_spacing": (1, 1)},
        {"in_plane_size": 2},
        {"nope": 1},
        {"ignore_below": "air"},
    ],
)
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
        new_corner = [
            (c + 0.5) * n / s - 0.5 for c, n, s in zip(corner, new_shape, shape, strict=True)
        ]
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


def _area(volume: np.ndarray, shape) -> np.ndarray:
    """The plain definition: F.interpolate(mode="area") on the C-ordered float32 volume."""
    x = torch.from_numpy(np.ascontiguousarray(volume, dtype=np.float32))[None, None]
    return torch.nn.functional.interpolate(x, size=tuple(shape), mode="area")[0, 0].numpy()


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize(
    "shape", [(16, 12, 10), (8, 6, 10), (11, 7, 10)], ids=["x2", "x4", "uneven"]
)
def test_image_resampling_equals_area_interpolation_in_any_memory_order(order, shape):
    rng = np.random.default_rng(3)
    ints = np.asarray(rng.integers(-1024, 3000, size=(32, 24, 10)), dtype=np.int16, order=order)
    # Integer CT values and whole-number factors: exactly the area average (sums of int16 are
    # exact in float32); uneven windows may round the division differently by one ulp.
    if shape[0] in (16, 8):
        np.testing.assert_array_equal(resample_image(ints, shape), _area(ints, shape))
    else:
        np.testing.assert_allclose(
            resample_image(ints, shape), _area(ints, shape), rtol=1e-6, atol=0
        )
    floats = np.asarray(rng.normal(size=(32, 24, 10)), dtype=np.float32, order=order)
    np.testing.assert_allclose(
        resample_image(floats, shape), _area(floats, shape), rtol=0, atol=1e-6
    )


def test_resampling_keeps_the_grid_when_the_shape_is_unchanged():
    volume = np.arange(60, dtype=np.int16).reshape(3, 4, 5)
    out = resample_image(volume, (3, 4, 5))
    assert out.dtype == np.float32 and np.array_equal(out, volume)


@pytest.mark.parametrize("threshold", [0.25, 0.5, 0.75])
@pytest.mark.parametrize(
    ("shape", "where"),
    [
        ((20, 20, 12), "inside"),
        ((20, 20, 12), "border"),
        ((10, 20, 6), "inside"),
        ((17, 13, 12), "inside"),
    ],
)
def test_label_resampling_around_the_vessels_equals_the_whole_grid(threshold, shape, where):
    rng = np.random.default_rng(5)
    label = np.zeros((40, 40, 12), dtype=np.uint8)
    lo = (0, 0, 0) if where == "border" else (9, 13, 3)
    label[lo[0] : lo[0] + 17, lo[1] : lo[1] + 11, lo[2] : lo[2] + 7] = rng.random((17, 11, 7)) < 0.4
    expected = (_area(label > 0, shape) >= threshold).astype(np.uint8)
    for arr in (label, np.asfortranarray(label), label.astype(bool)):
        out = resample_label(arr, shape, threshold=threshold)
        assert out.dtype == np.uint8 and out.shape == shape
        np.testing.assert_array_equal(out, expected)


def test_empty_label_resamples_to_zeros():
    assert not resample_label(np.zeros((8, 8, 4), np.uint8), (4, 4, 4)).any()


def test_bounding_box():
    from vesselfm.data.preprocessing import bounding_box

    mask = np.zeros((6, 7, 8), bool)
    assert bounding_box(mask) is None
    mask[1, 2, 3] = mask[4, 2, 5] = True
    assert bounding_box(mask) == (slice(1, 5), slice(2, 3), slice(3, 6))


def test_normalisation_does_not_modify_its_input():
    cfg = PreprocessConfig()
    volume = np.linspace(-100, 100, 64, dtype=np.float32).reshape(4, 4, 4)
    before = volume.copy()
    normalize_intensity(volume, (-50.0, 50.0), cfg)
    normalize_intensity(torch.from_numpy(volume), (-50.0, 50.0), cfg)
    np.testing.assert_array_equal(volume, before)
    # copy=False: the same values, in the float32 array given
    expected = normalize_intensity(volume, (-50.0, 50.0), cfg)
    out = normalize_intensity(volume, (-50.0, 50.0), cfg, copy=False)
    assert out is volume and np.array_equal(volume, expected)


@pytest.mark.parametrize("dtype", [np.int16, np.uint8, np.float32, ">i2"])
@pytest.mark.parametrize("order", ["F", "C", "strided"])
def test_c_order_copies_into_c_order_with_the_same_values(dtype, order):
    base = np.random.default_rng(0).integers(0, 200, (9, 7, 5)).astype(dtype)
    vol = {"F": np.asfortranarray(base), "C": base, "strided": base[::2, :, 1:]}[order]
    out = c_order(vol)
    assert out.flags.c_contiguous and out.dtype == vol.dtype
    np.testing.assert_array_equal(out, vol)
    if order == "C":
        assert out is vol
