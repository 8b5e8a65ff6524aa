"""scripts/ood_ceiling.py and the thick-slice re-sampling it shares with the ``thick_slices``
family: what an exact-label oracle keeps of the vessels through the family's slabs."""

from __future__ import annotations

import numpy as np
import pytest
from script_loader import load_script

from vesselfm.data.phantom.ood import generate_ood_case, thick_slices


@pytest.fixture(scope="module")
def ceiling():
    return load_script("ood_ceiling")


def test_thick_slices_of_factor_one_or_of_a_z_constant_volume_change_nothing():
    rng = np.random.default_rng(0)
    volume = rng.normal(size=(6, 5, 12)).astype(np.float32)
    np.testing.assert_array_equal(thick_slices(volume, 1.0), volume)
    column = np.repeat(volume[:, :, :1], 12, axis=2)
    np.testing.assert_allclose(thick_slices(column, 3.3), column, rtol=1e-6)


@pytest.mark.parametrize(("shape", "factor"), [((4, 4, 1), 2.0), ((4, 4, 8), 0.5), ((4, 8), 2.0)])
def test_thick_slices_refuses_what_has_no_slabs(shape, factor):
    with pytest.raises(ValueError, match="thick_slices needs"):
        thick_slices(np.zeros(shape, np.float32), factor)


def test_an_in_plane_vessel_is_spread_over_its_slab_at_a_fraction_of_its_contrast():
    volume = np.zeros((8, 8, 30), np.float32)
    volume[:, 4, 13] = 1.0  # a one-voxel line within one slice
    out = thick_slices(volume, 3.0)
    profile = out[3, 4]
    assert profile.max() <= 1.0 / 3.0 + 1e-6  # the slab's mean, at best
    assert (profile > 0).sum() >= 3  # smeared over more slices than it had
    assert np.isclose(profile.sum(), 1.0, atol=0.35)  # about its mass, moved, not lost


def test_the_family_image_is_its_phantom_seen_through_those_slabs():
    from vesselfm.data.phantom.generate import generate_phantom
    from vesselfm.data.phantom.ood import OOD_FAMILIES, _case_rng

    case = generate_ood_case("thick_slices", (40, 40, 36), seed=0, index=0)
    rng = _case_rng("thick_slices", 0, 0)
    phantom = generate_phantom((40, 40, 36), int(rng.integers(2**31)))
    lo, hi = OOD_FAMILIES["thick_slices"]["range"]
    assert lo <= case.held_out_value <= hi
    expected = np.rint(thick_slices(phantom.image, case.held_out_value)).astype(np.int16)
    np.testing.assert_array_equal(case.image, expected)
    np.testing.assert_array_equal(case.label, phantom.label)


def test_the_oracle_loses_vessels_to_the_slabs_and_its_best_threshold_beats_one_half(
    ceiling, capsys
):
    rows = ceiling.main(["--cases", "2", "--shape", "48", "48", "40"])
    out = capsys.readouterr().out
    assert "| mean | | best |" in out
    assert len(rows) == 4
    for half, best in zip(rows[::2], rows[1::2], strict=True):
        assert half["threshold"] == "0.5" and str(best["threshold"]).startswith("best (")
        assert half["case"] == best["case"] and 3.0 <= best["factor"] <= 3.5
        assert best["dice"] >= half["dice"]
        # slabs of 3-3.5 slices cost even the exact label part of its vessels
        assert 0.2 < best["dice"] < 0.98


def test_bad_case_count_is_refused(ceiling):
    with pytest.raises(SystemExit):
        ceiling.main(["--cases", "0"])
