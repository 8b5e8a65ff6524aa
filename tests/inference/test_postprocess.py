"""Connected-component post-processing: minimum size (voxels, mm³), K largest, connectivity."""

from __future__ import annotations

import numpy as np
import pytest

from vesselfm.inference import PostprocessConfig, filter_components, postprocess_mask


def _blobs() -> np.ndarray:
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[1, 1, 1] = 1  # 1 voxel
    mask[5:7, 5:7, 5:7] = 1  # 8 voxels
    mask[10:13, 10:13, 10:13] = 1  # 27 voxels
    mask[15:19, 15:19, 15:19] = 1  # 64 voxels
    return mask


def test_min_size_in_voxels() -> None:
    out = filter_components(_blobs(), min_size=8)
    assert out.dtype == np.uint8
    assert out.sum() == 8 + 27 + 64
    assert out[1, 1, 1] == 0


def test_keep_largest() -> None:
    assert filter_components(_blobs(), keep_largest=1).sum() == 64
    assert filter_components(_blobs(), keep_largest=2).sum() == 64 + 27
    assert filter_components(_blobs(), min_size=30, keep_largest=3).sum() == 64


def test_min_size_in_mm3_uses_the_spacing() -> None:
    cfg = PostprocessConfig(min_size=10.0, unit="mm3")
    # 0.5 mm isotropic: 27 voxels = 3.375 mm³, 64 voxels = 8 mm³ -> all removed
    assert postprocess_mask(_blobs(), cfg, spacing=(0.5, 0.5, 0.5)).sum() == 0
    # 1 x 1 x 2 mm: 8 voxels = 16 mm³ kept, 1 voxel = 2 mm³ dropped
    assert postprocess_mask(_blobs(), cfg, spacing=(1.0, 1.0, 2.0)).sum() == 8 + 27 + 64


@pytest.mark.parametrize(("connectivity", "components"), [(1, 2), (2, 2), (3, 1)])
def test_connectivity(connectivity: int, components: int) -> None:
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[1, 1, 1] = 1
    mask[2, 2, 2] = 1  # touches (1,1,1) only at a corner
    kept = filter_components(mask, keep_largest=1, connectivity=connectivity).sum()
    assert kept == (1 if components == 2 else 2)


def test_off_by_default_and_validation() -> None:
    assert not PostprocessConfig().enabled
    np.testing.assert_array_equal(postprocess_mask(_blobs(), PostprocessConfig()), _blobs())
    for bad in (
        {"unit": "ml"},
        {"min_size": -1},
        {"keep_largest": 0},
        {"connectivity": 4},
        {"size": 3},
    ):
        with pytest.raises(ValueError, match="inference.postprocess"):
            PostprocessConfig.from_mapping(bad)


def test_empty_mask() -> None:
    assert filter_components(np.zeros((4, 4, 4)), min_size=5, keep_largest=1).sum() == 0
