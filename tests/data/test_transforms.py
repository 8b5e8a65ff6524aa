"""The faster subclasses in vesselfm.data.transforms against their MONAI originals: each claim of
the module docstring (same random draws and values up to float rounding, except RandGaussianNoised's
noise; dtypes; plain tensors; MONAI's own code where the shortcut does not apply), and the
data.fast_transforms switch."""

from __future__ import annotations

import monai.transforms as mt
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

import vesselfm.data.transforms as vt
from vesselfm.data.transforms import FAST_TRANSFORMS, default_augmentations, train_transforms

SHAPE = (40, 36, 24)


@pytest.fixture(scope="module")
def sample() -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(0)
    img = ndimage.gaussian_filter(rng.random(SHAPE), 1.5).astype(np.float32)
    img = (img - img.min()) / (img.max() - img.min())
    return {
        "image": torch.from_numpy(img)[None],
        "label": torch.from_numpy((img > 0.6).astype(np.float32))[None],
    }


def _pair(name: str, seed: int, **kwargs):
    ours, ref = getattr(vt, name)(**kwargs), getattr(mt, name)(**kwargs)
    ours.set_random_state(seed)
    ref.set_random_state(seed)
    return ours, ref


def _run(t, sample):
    out = t({k: v.clone() for k, v in sample.items()})
    return {k: torch.as_tensor(v).as_subclass(torch.Tensor) for k, v in out.items()}


AFFINE = {"keys": ["image", "label"], "mode": ["bilinear", "nearest"], "padding_mode": "zeros"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"shear_range": [0.4, 0.4, 0.4]},  # the published one
        {
            "shear_range": [0.3, 0.2, 0.4, 0.3],
            "translate_range": [4, 3, 0],
            "rotate_range": [0, 0, 0.5],
        },
        {"shear_range": [0.4] * 6, "padding_mode": "border"},  # Z depends on X, Y: 3D sampling
        {"scale_range": [0.2, 0.2, 0.2]},  # scales Z: 3D sampling
    ],
    ids=["published", "in_plane", "full_shear", "scale"],
)
def test_rand_affine_equals_monai(sample, kwargs):
    args = {**AFFINE, **kwargs}
    for seed in range(4):
        ours, ref = _pair("RandAffined", seed, prob=0.6, **args)
        for _ in range(3):  # consecutive calls: the random streams stay in step
            a, b = _run(ours, sample), _run(ref, sample)
            assert a["image"].dtype == torch.float32 and a["image"].shape == b["image"].shape
            np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), rtol=0, atol=1e-4)
            assert (a["label"] != b["label"]).float().mean() <= 1e-3
            assert set(torch.unique(a["label"]).tolist()) <= {0.0, 1.0}


def _sparse_label(dtype=torch.uint8) -> torch.Tensor:
    """A thin tube and a few stray voxels: about 0.2 % of the grid, as a vessel label."""
    label = torch.zeros((1, *SHAPE), dtype=dtype)
    for i in range(SHAPE[2]):
        label[0, 8 + i, 20 - i // 2, i] = 1
    label[0, 0, 0, 0] = label[0, -1, -1, -1] = label[0, 30, 3, 12] = 1
    return label


AFFINE_CASES = [
    {"shear_range": [0.4, 0.4, 0.4]},
    {
        "shear_range": [0.3, 0.2, 0.4, 0.3],
        "translate_range": [4, 3, 0],
        "rotate_range": [0, 0, 0.5],
    },
    {"shear_range": [0.4] * 6},
    {"scale_range": [0.2, 0.2, 0.2], "rotate_range": [0.3, 0.2, 0.1]},
]


@pytest.mark.parametrize("kwargs", AFFINE_CASES, ids=["published", "in_plane", "3d_shear", "3d"])
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_sparse_label_resampling_equals_the_dense_one_and_monai(sample, kwargs, dtype, monkeypatch):
    label = _sparse_label(dtype)
    data = {"image": sample["image"], "label": label}
    outs = {}
    for name, share in (("sparse", 1.0), ("dense", 0.0)):
        monkeypatch.setattr(vt, "SPARSE_NEAREST_MAX_CANDIDATES", share)
        calls = []
        monkeypatch.setattr(
            vt,
            "_sparse_nearest_affine",
            lambda *a, f=vt._sparse_nearest_affine, c=calls: c.append(f(*a)) or c[-1],
        )
        outs[name] = []
        for seed in range(4):
            t = vt.RandAffined(prob=1.0, **{**AFFINE, **kwargs})
            t.set_random_state(seed)
            outs[name].append(_run(t, data)["label"])
        # the sparse path ran (and gave the label) only where allowed to
        assert calls and all((c is not None) == (name == "sparse") for c in calls)
    for seed, (a, b) in enumerate(zip(outs["sparse"], outs["dense"], strict=True)):
        assert a.dtype == dtype and torch.equal(a, b)
        ref = mt.RandAffined(prob=1.0, **{**AFFINE, **kwargs})
        ref.set_random_state(seed)
        assert torch.equal(a.float(), _run(ref, data)["label"])
        assert 0 < a.sum() and not torch.equal(a, label)


def _dense_nearest(label, affine):
    grid = vt._slice_grid(affine, tuple(label.shape[1:]))
    return vt._slicewise_affine(label, grid, "nearest", "zeros", label.dtype)


SHEAR = np.eye(4)
SHEAR[0, 1], SHEAR[1, 0], SHEAR[0, 3] = 0.31, -0.23, 1.37


def test_sparse_resampling_keeps_channels_and_values():
    label = torch.cat([_sparse_label(), 3 * _sparse_label().flip(1)])
    out = vt._sparse_nearest_affine(label, SHEAR)
    assert torch.equal(out, _dense_nearest(label, SHEAR))
    assert set(torch.unique(out[1]).tolist()) == {0, 3}


@pytest.mark.parametrize("layout", ["permuted", "fortran"])
def test_sparse_resampling_of_a_non_contiguous_label(layout):
    label = _sparse_label()
    if layout == "permuted":  # a view whose memory is (C, Y, X, Z)
        label = label.transpose(1, 2).contiguous().transpose(1, 2)
    else:
        label = torch.from_numpy(np.asfortranarray(label.numpy()))
    assert not label.is_contiguous()
    out = vt._sparse_nearest_affine(label, SHEAR)
    assert out.sum() > 0 and torch.equal(out, _dense_nearest(label.contiguous(), SHEAR))


def test_sparse_resampling_declines_what_would_not_pay():
    label = _sparse_label()
    shrink = np.diag([0.1, 0.1, 0.1, 1.0])  # hundreds of candidates per nonzero voxel
    assert vt._sparse_nearest_affine(label, shrink) is None
    assert vt._sparse_nearest_affine(label, np.diag([0.0, 1.0, 1.0, 1.0])) is None  # singular
    dense = torch.zeros((1, *SHAPE), dtype=torch.uint8)
    dense[0, ::2] = 1  # half the voxels
    assert vt._sparse_nearest_affine(dense, SHEAR) is None


def test_bfloat16_inputs_take_the_numpy_paths(sample):
    label = _sparse_label(torch.bfloat16)
    out = vt._sparse_nearest_affine(label, SHEAR)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out.float(), _dense_nearest(_sparse_label(), SHEAR).float())
    zoomed = vt._zoom_axis(label, 3, 1.2, False)
    assert torch.equal(zoomed.float(), vt._zoom_axis(_sparse_label(), 3, 1.2, False).float())
    x = sample["image"].to(torch.bfloat16)
    xp, fp = torch.tensor([0.0, 0.3, 0.6, 1.0]), torch.tensor([0.0, 0.5, 0.7, 1.0])
    ours = vt._TakeHistogramShift(num_control_points=4).interp(x, xp.to(x.dtype), fp.to(x.dtype))
    ref = mt.RandHistogramShift(num_control_points=4).interp(x, xp.to(x.dtype), fp.to(x.dtype))
    assert torch.equal(ours, torch.as_tensor(ref))


@pytest.mark.parametrize("dtype", [np.uint8, np.bool_, np.float32])
@pytest.mark.parametrize("size", [64, 61])
def test_flat_nonzero_equals_numpy(dtype, size):
    a = (np.random.default_rng(size).random((size, 7)) < 0.05).astype(dtype)
    a[0, 0] = a[-1, -1] = 1
    np.testing.assert_array_equal(vt._flat_nonzero(a), np.flatnonzero(a))


def test_rand_affine_actually_shears(sample):
    t = vt.RandAffined(prob=1.0, shear_range=[0.4, 0.4, 0.4], **AFFINE)
    t.set_random_state(1)
    out = _run(t, sample)
    assert not torch.equal(out["image"], sample["image"]) and not torch.equal(
        out["label"], sample["label"]
    )


ZOOM = {"keys": ["image", "label"], "mode": ["trilinear", "nearest"], "padding_mode": "constant"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"min_zoom": 1.0, "max_zoom": 1.3},  # the published one
        {"min_zoom": [1.0, 1.1, 1.0], "max_zoom": [1.3, 1.2, 1.6]},  # one factor per axis
        {"min_zoom": 0.8, "max_zoom": 1.2},  # may shrink: MONAI's code (pads)
    ],
    ids=["published", "per_axis", "shrinks"],
)
def test_rand_zoom_equals_monai(sample, kwargs):
    zoomed = 0
    for seed in range(5):
        ours, ref = _pair("RandZoomd", seed, prob=0.7, **ZOOM, **kwargs)
        for _ in range(3):  # consecutive calls: the random streams stay in step
            a, b = _run(ours, sample), _run(ref, sample)
            zoomed += ref._do_transform
            assert a["image"].dtype == torch.float32 and a["image"].shape == b["image"].shape
            np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), rtol=0, atol=1e-5)
            assert torch.equal(a["label"].float(), b["label"])
    assert zoomed >= 5


def test_rand_zoom_keeps_a_uint8_label_uint8(sample):
    outs = []
    for dtype in (torch.float32, torch.uint8):
        t = vt.RandZoomd(prob=1.0, min_zoom=1.2, max_zoom=1.3, **ZOOM)
        t.set_random_state(0)
        outs.append(t({"image": sample["image"].clone(), "label": sample["label"].to(dtype)}))
    assert outs[1]["label"].dtype == torch.uint8
    assert torch.equal(outs[1]["label"].float(), outs[0]["label"])
    assert not torch.equal(outs[0]["label"], sample["label"])


def test_rand_gaussian_smooth_equals_monai(sample):
    for seed in range(4):
        kw = {
            "keys": ["image"],
            "prob": 0.7,
            "sigma_x": (0.0, 0.5),
            "sigma_y": (0.0, 0.5),
            "sigma_z": (0.2, 1.5),
        }
        ours, ref = _pair("RandGaussianSmoothd", seed, **kw)
        for _ in range(3):
            a, b = _run(ours, sample), _run(ref, sample)
            np.testing.assert_allclose(a["image"].numpy(), b["image"].numpy(), rtol=0, atol=1e-6)


def test_rand_histogram_shift_equals_monai_exactly(sample):
    for seed in range(6):
        ours, ref = _pair(
            "RandHistogramShiftd", seed, keys=["image"], prob=0.7, num_control_points=(5, 10)
        )
        for _ in range(3):
            a, b = _run(ours, sample), _run(ref, sample)
            assert torch.equal(a["image"], b["image"])
    assert not torch.equal(a["image"], sample["image"])


@pytest.mark.parametrize("points", [2, 5, 10, 300])
def test_histogram_map_equals_monai_inside_and_outside_the_control_points(sample, points):
    # values below the first and above the last control point take MONAI's clamps
    x = sample["image"] * 1.4 - 0.2
    xp = torch.sort(torch.rand(points, generator=torch.Generator().manual_seed(points)))[0]
    fp = torch.sort(torch.rand(points, generator=torch.Generator().manual_seed(99)))[0]
    assert x.min() < xp[0] and x.max() > xp[-1]
    ours = vt._TakeHistogramShift(num_control_points=max(points, 4)).interp(x, xp, fp)
    ref = mt.RandHistogramShift(num_control_points=max(points, 4)).interp(x, xp, fp)
    assert torch.equal(ours, torch.as_tensor(ref))


def test_rand_gaussian_noise_draws_as_monai(sample):
    for seed in range(6):
        ours, ref = _pair("RandGaussianNoised", seed, keys=["image"], prob=0.5, mean=0.3, std=0.01)
        a, b = _run(ours, sample), _run(ref, sample)
        # the first call: the same decision and the same standard deviation; the fields differ
        # (MONAI draws 2 M float64 normals from its stream, torch draws ours), and so do the
        # later draws of this transform: same distribution, other numbers.
        assert ours._do_transform == ref._do_transform
        if ours._do_transform:
            noise = (a["image"] - sample["image"]).numpy()
            ref_noise = (b["image"] - sample["image"]).numpy()
            assert abs(noise.mean() - 0.3) < 1e-3 and abs(ref_noise.mean() - 0.3) < 1e-3
            np.testing.assert_allclose(noise.std(), ref_noise.std(), rtol=0.03)
            assert not np.allclose(noise, ref_noise)
        else:
            assert torch.equal(a["image"], sample["image"])
        for _ in range(5):
            noise = _run(ours, sample)["image"] - sample["image"]
            assert noise.std() <= 0.0102 and (noise.std() == 0 or abs(noise.mean() - 0.3) < 1e-3)
    # the same seed gives the same noise
    x, y = (
        vt.RandGaussianNoised(keys=["image"], prob=1.0),
        vt.RandGaussianNoised(keys=["image"], prob=1.0),
    )
    x.set_random_state(3)
    y.set_random_state(3)
    assert torch.equal(_run(x, sample)["image"], _run(y, sample)["image"])


def test_the_published_list_is_plain_monai_and_written_once():
    targets = [c["_target_"] for c in default_augmentations()]
    assert targets == [
        "monai.transforms.RandZoomd",
        "monai.transforms.RandAffined",
        "monai.transforms.RandFlipd",
        "monai.transforms.RandFlipd",
        "monai.transforms.RandGaussianSmoothd",
        "monai.transforms.RandGaussianNoised",
        "monai.transforms.RandHistogramShiftd",
    ]
    # the Python default is the YAML's list, read from the shipped config
    assert "DEFAULT_AUGMENTATIONS" not in vars(vt)
    assert default_augmentations()[1]["shear_range"] == [0.4, 0.4, 0.4]


@pytest.mark.parametrize("fast", [True, False])
def test_fast_transforms_swaps_in_the_faster_classes_and_logs_it_once(fast, caplog):
    with caplog.at_level("INFO", logger="vesselfm.data.transforms"):
        pipeline = train_transforms(True, (16, 16, 16), fast=fast)
    built = [type(t) for t in pipeline.transforms[:7]]
    names = [c.__name__ for c in built]
    if fast:
        # each listed MONAI transform with a faster class is built as it, the others as MONAI's
        assert built == [FAST_TRANSFORMS.get(n, getattr(mt, n)) for n in names]
        assert built.count(mt.RandFlipd) == 2 and len(set(built) - {mt.RandFlipd}) == 5
    else:
        assert built == [getattr(mt, n) for n in names]
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and f"data.fast_transforms={str(fast).lower()}" in lines[0]
    assert ("RandZoomd" in lines[0]) == fast
    # the faster classes are the MONAI classes of the same name, same arguments
    for name, cls in FAST_TRANSFORMS.items():
        assert issubclass(cls, getattr(mt, name)) and cls.__name__ == name


def test_a_transform_without_a_faster_class_is_monais():
    flip = {"_target_": "monai.transforms.RandFlipd", "keys": ["image"], "prob": 1.0}
    assert type(vt.instantiate_transform(flip, fast=True)) is mt.RandFlipd
    assert vt.fast_class(mt.RandFlipd) is mt.RandFlipd
    # a class named explicitly is built as named, whatever the switch
    zoom = {"_target_": "vesselfm.data.transforms.RandZoomd", "keys": ["image"]}
    assert type(vt.instantiate_transform(zoom, fast=False)) is vt.RandZoomd


FAST_KWARGS = {
    "RandZoomd": {**ZOOM, "min_zoom": 1.0, "max_zoom": 1.3},
    "RandAffined": {**AFFINE, "shear_range": [0.4, 0.4, 0.4]},
    "RandGaussianSmoothd": {"keys": ["image"], "sigma_x": (0.0, 0.5), "sigma_y": (0.0, 0.5)},
    "RandGaussianNoised": {"keys": ["image"], "mean": 0.3, "std": 0.01},
    "RandHistogramShiftd": {"keys": ["image"], "num_control_points": (5, 10)},
}


# whether the image comes out a plain torch.Tensor (not a MetaTensor): (applied, skipped)
PLAIN_OUTPUT = {
    "RandZoomd": (True, True),
    "RandAffined": (True, True),
    "RandGaussianSmoothd": (True, False),
    "RandGaussianNoised": (False, False),
    "RandHistogramShiftd": (False, False),
}


@pytest.mark.parametrize("name", sorted(FAST_TRANSFORMS))
def test_each_fast_class_decides_as_monai_with_the_documented_output_types(sample, name):
    """The docstring's claims common to all five: the same decision to apply on every call
    (the same draws of the transform's random state; RandGaussianNoised's later draws differ,
    its decisions do not), the image in float32, plain tensors where the docstring says so
    (MONAI: always MetaTensor)."""
    assert set(FAST_KWARGS) == set(FAST_TRANSFORMS)
    ours, ref = _pair(name, 3, prob=0.5, **FAST_KWARGS[name])
    decisions = []
    for _ in range(8):
        a = ours({k: v.clone() for k, v in sample.items()})
        b = ref({k: v.clone() for k, v in sample.items()})
        decisions.append(ours._do_transform)
        assert ours._do_transform == ref._do_transform
        assert a["image"].dtype == b["image"].dtype == torch.float32
        plain = PLAIN_OUTPUT[name][0 if ours._do_transform else 1]
        assert (type(a["image"]) is torch.Tensor) == plain
        assert isinstance(b["image"], MetaTensor)
    assert True in decisions and False in decisions


def test_lazy_mode_runs_monai_code(sample):
    t = vt.RandAffined(prob=1.0, shear_range=[0.4, 0.4, 0.4], lazy=True, **AFFINE)
    out = t({k: v.clone() for k, v in sample.items()})
    assert out["image"].pending_operations  # MONAI's lazy path: nothing resampled yet


def test_the_patch_crop_and_pad_run_only_where_the_size_differs(sample):
    t = train_transforms(False, (32, 40, 24))
    out = t({k: v.clone() for k, v in sample.items()})  # (40, 36, 24): crop X, pad Y
    assert out["image"].shape == out["label"].shape == (1, 32, 40, 24)
    np.testing.assert_array_equal(
        out["image"][0, :, 2:38].numpy(), sample["image"][0, 4:36].numpy()
    )
    assert float(out["image"][0, :, :2].abs().sum()) == 0.0
    same_size = train_transforms(False, SHAPE)
    fit = same_size.transforms[0]
    fit.crop = fit.pad = None  # not called where the sizes already match
    same = same_size({k: v.clone() for k, v in sample.items()})
    assert torch.equal(same["image"], sample["image"]) and torch.equal(
        same["label"], sample["label"]
    )
