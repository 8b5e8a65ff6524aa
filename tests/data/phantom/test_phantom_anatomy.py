"""The phantom's tissues: Hounsfield ranges, a lumen as bright as blood, calcium never labelled."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from vesselfm.data.phantom import (
    Tissue,
)

SMALL = (48, 48, 40)


def _core(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=iterations)


@pytest.mark.parametrize(
    ("tissue", "lo", "hi"),
    [
        (Tissue.AIR, -1024, -900),
        (Tissue.LUNG, -900, -700),
        (Tissue.FAT, -150, -50),
        (Tissue.SOFT_TISSUE, 0, 100),
        (Tissue.MYOCARDIUM, 60, 160),
        (Tissue.BLOOD, 300, 500),
    ],
)
def test_tissue_hounsfield_ranges(case128, tissue, lo, hi):
    core = _core(case128.tissue == tissue)
    assert core.sum() > 100, tissue
    assert lo <= np.median(case128.image[core]) <= hi


def test_lumen_is_as_bright_as_blood_and_brighter_than_myocardium(case128):
    lumen = case128.label.astype(bool)
    assert np.array_equal(lumen, case128.tissue == Tissue.LUMEN)
    centre = _core(lumen, 1)
    assert centre.sum() > 20
    assert 250 <= np.median(case128.image[centre]) <= 450
    myocardium = np.median(case128.image[_core(case128.tissue == Tissue.MYOCARDIUM)])
    assert np.median(case128.image[lumen]) > myocardium + 100


def test_calcium_is_bright_and_never_labelled(case128):
    calcium = case128.tissue == Tissue.CALCIUM
    assert calcium.any()
    assert not case128.label[calcium].any()
    assert np.percentile(case128.image[calcium], 90) > 600
    # The calcified plaques sit on the vessels.
    near = ndimage.binary_dilation(case128.label.astype(bool), iterations=3)
    assert (calcium & near).sum() > 0.5 * calcium.sum()
