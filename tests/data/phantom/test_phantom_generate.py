"""One phantom case: options, a scanner-like grid and affine, dtypes, the same arrays for a seed."""

from __future__ import annotations

import nibabel as nib
import numpy as np
from scipy import ndimage

from vesselfm.data.phantom import (
    Tissue,
    generate_phantom,
)

SMALL = (48, 48, 40)


def _core(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=iterations)


def test_options_control_noise_and_lesions():
    quiet = generate_phantom((64, 64, 48), seed=4, noise_std=0, calcifications=0)
    noisy = generate_phantom((64, 64, 48), seed=4, noise_std=35, calcifications=0)
    fat = _core(quiet.tissue == Tissue.FAT, 3)
    assert quiet.image[fat].std() < 2
    assert 30 <= noisy.image[fat].std() <= 40
    assert not (quiet.tissue == Tissue.CALCIUM).any()
    # Noise and lesions do not move the anatomy.
    assert np.array_equal(quiet.label, noisy.label)
    streaky = generate_phantom((64, 64, 48), seed=4, noise_std=0, calcifications=0, streaks=True)
    assert np.array_equal(streaky.label, quiet.label)
    assert np.abs(streaky.image.astype(int) - quiet.image).max() > 5


def test_affine_is_scanner_like(case128):
    affine, sx, sy, sz = case128.affine, *case128.spacing
    assert affine.dtype == np.float64 and affine.shape == (4, 4)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")  # in-plane axes flipped, as scanners write
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), case128.spacing)
    assert 0.30 <= sx == sy <= 0.45 and 0.5 <= sz <= 0.625
    assert np.array_equal(affine.astype(np.float32).astype(np.float64), affine)


def test_spacing_option():
    ph = generate_phantom(SMALL, seed=1, spacing=(0.5, 0.5, 1.0))
    assert ph.spacing == (0.5, 0.5, 1.0)
    assert np.allclose(np.abs(np.diag(ph.affine)[:3]), (0.5, 0.5, 1.0))


def test_types_and_shapes():
    ph = generate_phantom(SMALL, seed=0)
    assert ph.image.dtype == np.int16 and ph.label.dtype == np.uint8
    assert ph.image.shape == ph.label.shape == ph.tissue.shape == SMALL
    assert set(np.unique(ph.label)) == {0, 1}
    assert ph.case_id == "phantom-0"


def test_same_seed_same_arrays_other_seed_other_arrays():
    a, b, c = (generate_phantom(SMALL, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.affine, b.affine)
    assert not np.array_equal(a.label, c.label)
