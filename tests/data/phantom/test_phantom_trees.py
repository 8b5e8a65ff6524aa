"""The phantom's coronary label: two trees without loops or cavities, for every shape and seed.

Topology is checked from the arrays alone, by computations that share nothing with the
generator's construction: connected components (scipy), the Euler characteristic (skimage)
and, on small cases, persistent homology of the cubical complex (gudhi).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.measure import euler_number

from vesselfm.data.phantom import (
    generate_phantom,
    label_topology,
)

SMALL = (48, 48, 40)


def betti_scipy_skimage(mask: np.ndarray) -> tuple[int, int, int]:
    """(b0, b1, b2): foreground 26-connected, background 6-connected, b1 = b0 + b2 - chi."""
    mask = mask.astype(bool)
    crop = np.pad(mask[ndimage.find_objects(mask.astype(np.uint8))[0]], 1)
    _, b0 = ndimage.label(crop, structure=np.ones((3, 3, 3)))
    _, n_background = ndimage.label(~crop, structure=ndimage.generate_binary_structure(3, 1))
    b2 = n_background - 1
    chi = euler_number(crop, connectivity=3)
    return b0, b0 + b2 - chi, b2


def betti_gudhi(mask: np.ndarray) -> tuple[int, int, int]:
    """(b0, b1, b2) of the union of the closed foreground voxels (persistent homology)."""
    gudhi = pytest.importorskip("gudhi")
    mask = mask.astype(bool)
    crop = np.pad(mask[ndimage.find_objects(mask.astype(np.uint8))[0]], 1)
    complex_ = gudhi.CubicalComplex(top_dimensional_cells=np.where(crop, 0.0, 1.0))
    complex_.compute_persistence()
    betti = list(complex_.persistent_betti_numbers(0.0, 0.0)) + [0, 0, 0]
    return betti[0], betti[1], betti[2]


@pytest.mark.parametrize(
    "shape", [(32, 32, 32), (48, 48, 48), (64, 64, 48), (96, 80, 64), (40, 96, 64), (128, 128, 96)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_has_two_trees_without_loops_or_cavities(shape, seed):
    ph = generate_phantom(shape, seed=seed)
    assert ph.label.shape == shape
    assert betti_scipy_skimage(ph.label) == (2, 0, 0)
    # Nothing is cut by the volume's faces: the trees were kept inside.
    for axis in range(3):
        assert not np.take(ph.label, [0, -1], axis=axis).any()


@pytest.mark.parametrize("seed", [5, 11])
def test_topology_agrees_with_persistent_homology(seed):
    ph = generate_phantom((64, 64, 48), seed=seed)
    assert betti_gudhi(ph.label) == (2, 0, 0)


def test_label_topology_helper_on_known_shapes():
    ring = np.zeros((9, 9, 3), bool)
    ring[1:8, 1:8, 1] = True
    ring[3:6, 3:6, 1] = False
    hollow = np.zeros((7, 7, 7), bool)
    hollow[1:6, 1:6, 1:6] = True
    hollow[3, 3, 3] = False
    corners = np.zeros((4, 4, 4), bool)
    corners[1, 1, 1] = corners[2, 2, 2] = True  # 26-connected through a corner
    assert label_topology(ring) == (1, 1, 0)
    assert label_topology(hollow) == (1, 0, 1)
    assert label_topology(corners) == (1, 0, 0)
    assert label_topology(np.zeros((5, 5, 5), bool)) == (0, 0, 0)
    for mask in (ring, hollow, corners):
        assert label_topology(mask) == betti_gudhi(mask) == betti_scipy_skimage(mask)
