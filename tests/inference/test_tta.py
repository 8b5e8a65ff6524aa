"""Test-time augmentation: flips invert exactly, members and merging."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import IdentityNet

from vesselfm.inference import SlidingWindowPredictor, TTAConfig
from vesselfm.inference.tta import LogitMerger, augmentations, normalize_flips


def test_normalize_flips() -> None:
    assert normalize_flips([]) == ()
    assert normalize_flips("all") == ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))
    assert normalize_flips([[1, 0], [2], 2, [0, 1]]) == ((0, 1), (2,))
    for bad in ([[3]], [[]], [[0, 0]], "some"):
        with pytest.raises(ValueError, match="inference.tta.flips"):
            normalize_flips(bad)


def test_config_rejects_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValueError, match="allowed"):
        TTAConfig.from_mapping({"flip": "all"})
    with pytest.raises(ValueError, match="merge"):
        TTAConfig.from_mapping({"merge": "median"})
    with pytest.raises(ValueError, match="scales"):
        TTAConfig.from_mapping({"scales": [0.0]})
    assert len(TTAConfig.from_mapping({"flips": "all", "scales": [1.0, 1.5]})) == 16
    assert not TTAConfig().enabled


def test_each_flip_changes_the_input_and_its_inverse_restores_it() -> None:
    x = torch.rand(1, 1, 12, 10, 8)
    members = list(augmentations(x.shape[2:], TTAConfig(flips="all")))
    assert len(members) == 8
    for aug in members[1:]:
        assert not torch.equal(aug.forward(x), x), aug.name
        assert torch.equal(aug.inverse(aug.forward(x)), x), aug.name


@pytest.mark.parametrize("merge", ["mean", "max"])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_identity_network_with_flips_returns_its_input(merge: str, mode: str) -> None:
    x = torch.rand(1, 1, 40, 36, 20) * 6 - 3
    plain = SlidingWindowPredictor(IdentityNet(), roi_size=16, overlap=0.5, mode=mode)
    flipped = SlidingWindowPredictor(
        IdentityNet(), roi_size=16, overlap=0.5, mode=mode, tta={"flips": "all", "merge": merge}
    )
    expected = torch.sigmoid(x)
    torch.testing.assert_close(plain.predict_volume(x), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(flipped.predict_volume(x), expected, atol=1e-6, rtol=0)


def test_scales_resample_back_to_the_input_grid() -> None:
    x = torch.linspace(-2, 2, 24)[:, None, None].expand(24, 20, 16)[None, None].contiguous()
    predictor = SlidingWindowPredictor(IdentityNet(), roi_size=16, tta={"scales": [1.0, 1.5, 0.75]})
    out = predictor.predict_volume(x)
    assert out.shape == x.shape
    # a linear ramp survives trilinear zoom and back, away from the borders
    torch.testing.assert_close(
        out[..., 3:-3, :, :], torch.sigmoid(x)[..., 3:-3, :, :], atol=2e-2, rtol=0
    )


def test_invert_applies_above_the_mean_threshold() -> None:
    bright = torch.full((1, 1, 16, 16, 16), 0.8)
    predictor = SlidingWindowPredictor(
        IdentityNet(), roi_size=16, tta={"invert": True, "invert_mean_thresh": 0.5}
    )
    torch.testing.assert_close(predictor.predict_volume(bright), torch.sigmoid(1 - bright))
    dark = torch.full((1, 1, 16, 16, 16), 0.2)
    torch.testing.assert_close(predictor.predict_volume(dark), torch.sigmoid(dark))


def test_merger() -> None:
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([3.0, -4.0])
    for mode, expected in (("mean", [2.0, -3.0]), ("max", [3.0, -2.0])):
        merger = LogitMerger(mode)
        merger.add(a)
        merger.add(b)
        torch.testing.assert_close(merger.result(), torch.tensor(expected))
    assert torch.equal(a, torch.tensor([1.0, -2.0]))  # inputs untouched
