"""style=randomised: CT output unchanged, exact labels, factor draws within their ranges, and the
out-of-distribution families."""

from __future__ import annotations

import hashlib
from dataclasses import fields

import numpy as np
import pytest

from vesselfm.data.phantom import generate_phantom, label_topology
from vesselfm.data.phantom.ood import OOD_FAMILIES, generate_ood_case
from vesselfm.data.phantom.style import (
    CONTEXT_KINDS,
    GATED_FACTORS,
    TRAIN_RANGES,
    StyleParams,
    draw_style,
    randomise,
    tube_tree,
)

# sha256 of image + label + affine bytes, recorded from main (e548eda) before styles existed
CT_DIGESTS = {
    ((40, 36, 32), 5): "216207e3ecb13de38a4461e7f276f69f097c72df96c54df66bd6b46364e371d0",
    ((48, 48, 32), 11): "e46e61e7c495a609e5d6d99b5fccb3e9dc22ce40b8367f7b8ebc3d4ef56cd54f",
}
SHAPE = (40, 36, 32)


def _digest(ph) -> str:
    return hashlib.sha256(ph.image.tobytes() + ph.label.tobytes() + ph.affine.tobytes()).hexdigest()


@pytest.mark.parametrize(("shape", "seed"), list(CT_DIGESTS))
def test_ct_style_is_byte_identical_to_before_styles_existed(shape, seed):
    assert (
        _digest(generate_phantom(shape, seed=seed, streaks=True, style="ct"))
        == CT_DIGESTS[(shape, seed)]
    )


def test_randomised_phantom_keeps_the_coronaries_and_only_adds_labelled_trees():
    ct = generate_phantom(SHAPE, seed=5)
    styled = generate_phantom(SHAPE, seed=5, style="randomised")
    assert styled.image.dtype == np.int16 and styled.image.shape == SHAPE
    assert not np.array_equal(styled.image, ct.image)
    assert np.array_equal(styled.affine, ct.affine)
    # every coronary voxel stays labelled; extra voxels are only the added trees
    assert np.all(styled.label[ct.label == 1] == 1)
    assert set(np.unique(styled.label).tolist()) <= {0, 1}
    # deterministic from the seed
    assert _digest(generate_phantom(SHAPE, seed=5, style="randomised")) == _digest(styled)


def test_randomised_label_is_exactly_the_input_label_plus_the_drawn_trees():
    shape, spacing = (24, 20, 12), (0.5, 0.5, 0.6)
    rng = np.random.default_rng(0)
    background = rng.normal(100.0, 10.0, shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[10:13, 8:11, 2:10] = 1
    ranges = {"extra_vessels": (2, 2)}
    # randomise draws the factors, then the trees, from the generator it is given
    ref = np.random.default_rng(42)
    params = draw_style(ref, {**TRAIN_RANGES, **ranges})
    expected = label.astype(bool).copy()
    for radius, tort in zip(params.extra_radius, params.extra_tortuosity, strict=True):
        expected |= tube_tree(shape, spacing, ref, radius, tort, generations=2)
    image, out, drawn = randomise(background, label, spacing, np.random.default_rng(42), ranges)
    assert drawn == params and drawn.extra_vessels == 2
    assert np.array_equal(out.astype(bool), expected)
    assert out.sum() > label.sum()
    assert image.shape == shape and np.isfinite(image).all()
    # no extra trees: the label comes back unchanged
    _, same, _ = randomise(
        background, label, spacing, np.random.default_rng(1), {"extra_vessels": (0, 0)}
    )
    assert np.array_equal(same, label)


def test_a_straight_tube_is_the_voxels_within_its_radius_of_the_axis():
    shape, spacing, radius = (40, 20, 20), (0.5, 0.5, 0.5), 1.2
    mask = tube_tree(
        shape, spacing, np.random.default_rng(0), radius, 0.0,
        start=np.array([-6.0, 0.0, 0.0]), direction=np.array([1.0, 0.0, 0.0]), generations=0,
    )  # fmt: skip
    axes = [(np.arange(n) - (n - 1) / 2.0) * h for n, h in zip(shape, spacing, strict=True)]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    r2 = y**2 + z**2
    assert mask.any() and not mask[r2 > radius**2 + 1e-6].any()
    # between the start and 3 mm on, every voxel within the radius is inside
    span = (x >= -6.0) & (x <= -3.0)
    assert mask[span & (r2 <= radius**2 - 1e-6)].all()


def test_every_factor_draw_lies_in_its_documented_range():
    draws = [draw_style(np.random.default_rng(s)) for s in range(300)]
    r = TRAIN_RANGES

    def within(values, key):
        lo, hi = r[key]
        values = list(values)
        assert values and min(values) >= lo and max(values) <= hi, key

    flat = {f.name: [getattr(d, f.name) for d in draws] for f in fields(StyleParams)}
    for key in ("vessel_contrast", "smooth_texture", "smooth_scale", "noise_texture",
                "texture_scale", "partial_volume", "bias", "noise", "noise_correlation",
                "ring_period", "distractors", "extra_vessels"):  # fmt: skip
        within(flat[key], key)
    within([v for d in draws for v in d.distractor_radius], "distractor_radius")
    signs = np.array([v for d in draws for v in d.distractor_sign])
    assert set(signs.tolist()) == {-1.0, 1.0} and 0.2 < np.mean(signs > 0) < 0.4  # same sign 0.3
    within([len(d.context) for d in draws], "context")
    within([v for d in draws for v in d.context_radius], "context_radius")
    within([v for d in draws for v in d.extra_radius], "extra_radius")
    within([v for d in draws for v in d.extra_tortuosity], "extra_tortuosity")
    within([v for d in draws for v in d.blur], "blur")
    within([d.downsample[0] for d in draws], "downsample_xy")
    within([d.downsample[2] for d in draws], "downsample_z")
    within([d.streaks for d in draws if d.streaks], "streaks")
    within([d.rings for d in draws if d.rings], "rings")
    assert {k for d in draws for k in d.context} == set(CONTEXT_KINDS)
    # darker, barely brighter and much brighter vessels all occur, none invisible
    contrast = np.array(flat["vessel_contrast"])
    assert np.abs(contrast).min() >= r["min_contrast"] == 0.15
    assert (contrast < -0.3).any() and ((contrast > 0) & (contrast < 0.2)).any()
    assert (contrast > 0.5).any()
    assert 0.2 < np.mean(contrast < 0) < 0.4  # dark_probability 0.3
    # the noise stays below 0.35 |contrast| (and within its range)
    assert (np.array(flat["noise"]) <= 0.35 * np.abs(contrast) + 1e-9).all()
    # probabilities: kept intensity map ~0.25, streaks ~0.3, rings ~0.2 (300 draws, wide bounds)
    assert 0.15 < np.mean([d.mapping is None for d in draws]) < 0.35
    assert 0.2 < np.mean([d.streaks > 0 for d in draws]) < 0.4
    assert 0.1 < np.mean([d.rings > 0 for d in draws]) < 0.3
    for d in draws:
        if d.mapping is not None:
            xs, ys = d.mapping
            assert xs[0] == 0.0 and xs[-1] == 1.0 and list(xs) == sorted(xs)
            assert 2 <= len(xs) - 2 <= 5 and min(ys) >= 0.0 and max(ys) <= 1.0


def test_factor_probability_leaves_each_gated_factor_out_on_its_own():
    def draws(p):
        return [draw_style(np.random.default_rng(s), {"factor_probability": p}) for s in range(300)]

    # 0: every gated factor at its identity value; the vessel contrast and trees are still drawn
    for d in draws(0.0):
        assert all(getattr(d, k) == v for k, v in GATED_FACTORS.items())
        assert d.distractor_radius == () and d.context == ()
        assert abs(d.vessel_contrast) >= TRAIN_RANGES["min_contrast"] and d.extra_vessels >= 1
    # 0.5: each factor is present in about half of the draws, independently of the others
    half = draws(0.5)
    on = {k: np.array([getattr(d, k) != v for d in half]) for k, v in GATED_FACTORS.items()}
    for k in ("smooth_texture", "noise_texture", "bias", "blur"):  # drawn > 0 almost surely
        assert 0.4 < on[k].mean() < 0.6, k
    both = np.mean(on["blur"] & on["bias"])
    assert 0.15 < both < 0.35  # about 0.5 x 0.5
    # 1 (the default): nothing is left out beyond the ranges' own zeros
    assert np.mean([d.smooth_texture > 0 for d in draws(1.0)]) > 0.95


def test_a_synthetic_background_replaces_the_anatomy_but_keeps_the_label():
    shape, spacing = (32, 28, 24), (0.5, 0.5, 0.6)
    label = np.zeros(shape, np.uint8)
    label[14:17, 12:15, 3:21] = 1
    ranges = {"synthetic_background": 1.0, "extra_vessels": (0, 0)}
    a = np.random.default_rng(0).normal(0.0, 1.0, shape).astype(np.float32)
    b = np.linspace(-500.0, 900.0, a.size, dtype=np.float32).reshape(shape)
    img_a, lab_a, pa = randomise(a, label, spacing, np.random.default_rng(7), ranges)
    img_b, lab_b, pb = randomise(b, label, spacing, np.random.default_rng(7), ranges)
    lo, hi = TRAIN_RANGES["background_blobs"]
    assert pa == pb and lo <= pa.background_blobs <= hi
    # the image no longer depends on the scan's background, only on the draws and the label
    assert (
        np.array_equal(img_a, img_b)
        and np.array_equal(lab_a, label)
        and np.array_equal(lab_b, label)
    )
    # the vessel still differs from its surroundings by the drawn contrast's sign
    from scipy import ndimage

    shell = ndimage.binary_dilation(label, iterations=3) & ~ndimage.binary_dilation(label)
    core = ndimage.binary_erosion(label.astype(bool))
    diff = float(np.median(img_a[core]) - np.median(img_a[shell]))
    assert np.sign(diff) == np.sign(pa.vessel_contrast)
    # blob_radius from the ranges given shapes the blobs
    small = {**ranges, "blob_radius": (0.05, 0.08)}
    img_s, _, ps = randomise(a, label, spacing, np.random.default_rng(7), small)
    assert ps == pa and not np.array_equal(img_s, img_a)
    # off by default: the anatomy is kept
    assert all(draw_style(np.random.default_rng(s)).background_blobs == 0 for s in range(50))
    img_c, _, pc = randomise(a, label, spacing, np.random.default_rng(7), {"extra_vessels": (0, 0)})
    img_d, _, _ = randomise(b, label, spacing, np.random.default_rng(7), {"extra_vessels": (0, 0)})
    assert pc.background_blobs == 0 and not np.array_equal(img_c, img_d)


def test_a_bad_style_is_refused_with_the_allowed_values():
    with pytest.raises(ValueError, match=r"style must be one of \['ct', 'randomised'\]"):
        generate_phantom(SHAPE, seed=0, style="mri")


@pytest.mark.parametrize("family", list(OOD_FAMILIES))
def test_ood_families_are_deterministic_and_hold_their_factor_out_of_training(family):
    spec = OOD_FAMILIES[family]
    lo, hi = spec["range"]
    train_lo, train_hi = spec["train_range"]
    assert hi < train_lo or lo > train_hi  # the ranges are disjoint
    shape = (36, 36, 32)
    a = generate_ood_case(family, shape, seed=0, index=1)
    b = generate_ood_case(family, shape, seed=0, index=1)
    c = generate_ood_case(family, shape, seed=0, index=2)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert not np.array_equal(a.image, c.image)
    for case in (a, c):
        assert lo <= case.held_out_value <= hi
        assert not train_lo <= case.held_out_value <= train_hi
        assert case.image.shape == case.label.shape == shape and case.label.any()


def test_pool_trees_family_has_trees_in_soft_tissue_near_a_pool_with_air_around():
    case = generate_ood_case("pool_trees", (48, 48, 40), seed=0, index=0)
    img, lab = case.image.astype(float), case.label.astype(bool)
    # air around the body: the volume's corners columns are about -1000 HU (noise 25-45 HU)
    assert np.mean(img[:3, :3, :]) < -900 and np.mean(img[-3:, -3:, :]) < -900
    # a contrast pool (>= 250 HU after blur) that is not labelled, and soft tissue around it
    pool = (img > 250) & ~lab
    assert pool.sum() > 200
    body = img[lab.shape[0] // 2 - 2 : lab.shape[0] // 2 + 2, :, :]
    assert np.any((body > 0) & (body < 120))
    b0, b1, b2 = label_topology(case.label)
    assert 1 <= b0 <= 6 and b2 == 0


def test_dark_vessels_are_darker_than_their_surroundings():
    from scipy import ndimage

    case = generate_ood_case("dark_vessels", (48, 48, 40), seed=0, index=0)
    lab = case.label.astype(bool)
    core = ndimage.binary_erosion(lab) if ndimage.binary_erosion(lab).any() else lab
    shell = ndimage.binary_dilation(lab, iterations=3) & ~ndimage.binary_dilation(lab)
    assert np.median(case.image[core]) < np.median(case.image[shell])
