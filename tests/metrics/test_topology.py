"""clDice and Betti numbers: constructed shapes, empty masks, and an independent homology
computation (gudhi's cubical complex) on random shapes."""

from __future__ import annotations

import gudhi
import numpy as np
import pytest
from scipy import ndimage as ndi
from skimage.measure import euler_number
from skimage.morphology import skeletonize

from vesselfm.metrics import betti_numbers, cldice, compute_metrics, euler_characteristic, skeleton


def gudhi_betti(mask: np.ndarray) -> tuple[int, int, int]:
    """Betti numbers of the union of closed foreground voxels, by persistent homology.

    Top-dimensional cells are the voxels (0 foreground, 1 background); gudhi gives every lower
    cell the minimum of the voxels containing it, so the sublevel set at 0 is exactly the union of
    closed foreground cubes: 26-connected foreground, 6-connected background.
    """
    cc = gudhi.CubicalComplex(top_dimensional_cells=np.where(mask, 0.0, 1.0))
    cc.compute_persistence()
    betti = list(cc.persistent_betti_numbers(0.0, 0.0)) + [0, 0, 0]
    return betti[0], betti[1], betti[2]


def _grid(n: int) -> np.ndarray:
    return np.stack(np.meshgrid(*(np.arange(n),) * 3, indexing="ij"), axis=-1).astype(float)


def solid_torus(n: int = 24, big: float = 7.0, small: float = 2.5) -> np.ndarray:
    g = _grid(n) - (n - 1) / 2
    ring = np.hypot(g[..., 0], g[..., 1]) - big
    return np.hypot(ring, g[..., 2]) <= small


def hollow_sphere(n: int = 20, outer: float = 8.0, inner: float = 5.0) -> np.ndarray:
    r = np.linalg.norm(_grid(n) - (n - 1) / 2, axis=-1)
    return (r <= outer) & (r > inner)


def two_blobs(n: int = 20) -> np.ndarray:
    g = _grid(n)
    return (np.linalg.norm(g - (5, 5, 5), axis=-1) <= 3) | (
        np.linalg.norm(g - (14, 14, 14), axis=-1) <= 3
    )


def corner_touching_voxels() -> np.ndarray:
    m = np.zeros((4, 4, 4), bool)
    m[1, 1, 1] = m[2, 2, 2] = True  # share only a vertex: one 26-connected component
    return m


def shell_with_edge_leak() -> np.ndarray:
    """A hollow cube whose wall lost an edge voxel: the hole meets the cavity only along an edge,
    so with a 6-connected background the cavity is still closed."""
    m = np.zeros((7, 7, 7), bool)
    m[1:6, 1:6, 1:6] = True
    m[2:5, 2:5, 2:5] = False
    m[1, 1, 2] = False  # edge-adjacent to cavity voxel (2, 2, 2)
    return m


def shell_with_face_hole() -> np.ndarray:
    m = shell_with_edge_leak()
    m[1, 1, 2] = True
    m[1, 3, 3] = False  # face-adjacent to the cavity: it opens
    return m


@pytest.mark.parametrize(
    ("name", "mask", "expected"),
    [
        ("solid torus", solid_torus(), (1, 1, 0)),
        ("hollow sphere", hollow_sphere(), (1, 0, 1)),
        ("two blobs", two_blobs(), (2, 0, 0)),
        ("corner-touching voxels", corner_touching_voxels(), (1, 0, 0)),
        ("shell with an edge leak", shell_with_edge_leak(), (1, 0, 1)),
        ("shell with a face hole", shell_with_face_hole(), (1, 0, 0)),
        ("single voxel", np.pad(np.ones((1, 1, 1), bool), 2), (1, 0, 0)),
        ("empty", np.zeros((5, 5, 5), bool), (0, 0, 0)),
    ],
)
def test_constructed_shapes(name, mask, expected):
    assert betti_numbers(mask) == expected, name
    if mask.any():
        assert gudhi_betti(mask) == expected, name


@pytest.fixture(params=["sparse", "dense"])
def component_search(request, monkeypatch):
    """Run a test with both ways of finding 26-connected components: the neighbour graph of the
    foreground voxels, and ``ndimage.label`` over the bounding box."""
    import vesselfm.metrics._voxels as voxels

    monkeypatch.setattr(voxels, "_DENSE_FILL", 2.0 if request.param == "sparse" else 0.0)
    return request.param


@pytest.mark.parametrize("seed", range(9))
def test_random_shapes_match_gudhi(seed, component_search):
    rng = np.random.default_rng(seed)
    shape = (18, 20, 16)
    if seed % 3 == 0:
        mask = ndi.gaussian_filter(rng.random(shape), 1.0) > 0.52  # blobby, with tunnels
    elif seed % 3 == 1:
        mask = rng.random(shape) < 0.35  # dense salt: many components, loops, cavities
    else:  # sparse speckle around a hollow blob: the sparse component search
        mask = rng.random(shape) < 0.03
        mask[4:11, 5:12, 4:11] = np.pad(np.zeros((3, 3, 3), bool), 2, constant_values=True)
    mask[0, :, :] |= rng.random(shape[1:]) < 0.5  # touches the border too
    assert betti_numbers(mask) == gudhi_betti(mask)
    assert euler_characteristic(mask) == euler_number(np.pad(mask, 1), connectivity=3)


def test_betti_in_compute_metrics_is_of_the_prediction(tree):
    got = compute_metrics(tree.extra_blob, tree.label)
    assert (got["betti_0"], got["betti_1"], got["betti_2"]) == (2, 0, 0)
    assert got["betti_0_error"] == 1
    torus = solid_torus(48, big=12.0, small=3.0)
    got = compute_metrics(torus, tree.label)
    assert (got["betti_0"], got["betti_1"], got["betti_0_error"], got["betti_1_error"]) == (
        1,
        1,
        0,
        1,
    )


@pytest.mark.parametrize("seed", range(4))
def test_skeleton_per_component_equals_whole_volume_skeleton(seed, component_search):
    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.random((30, 28, 26)), 1.5) > 0.53
    mask[-1, 5:15, 5:15] = True  # touching the volume border
    if seed % 2:  # speckle: components of 1, 2, ... voxels, some 2 voxels from each other
        mask |= rng.random(mask.shape) < 0.02
    skel, box = skeleton(mask)
    np.testing.assert_array_equal(skel, skeletonize(mask)[box])


def test_intact_tube_has_cldice_one(tree):
    assert cldice(tree.label, tree.label) == 1.0
    assert cldice(tree.trunk, tree.trunk) == 1.0


def test_cut_tube(tree):
    got = compute_metrics(
        tree.cut, tree.label, metrics=("cldice", "betti_0_error", "betti_1_error")
    )
    assert got["betti_0_error"] == 1
    assert got["betti_1_error"] == 0
    assert 0.9 < got["cldice"] < 1.0


def test_cldice_hand_computed_on_a_line():
    label = np.zeros((3, 3, 22), bool)
    label[1, 1, 1:21] = True  # a one-voxel line is its own skeleton: 20 voxels
    pred = label.copy()
    pred[1, 1, 8:12] = False  # 4-voxel gap: Tprec = 1, Tsens = 16/20
    tsens = 16 / 20
    assert cldice(pred, label) == pytest.approx(2 * tsens / (1 + tsens))


@pytest.mark.parametrize(
    ("pred_on", "label_on", "expected"), [(0, 0, 1.0), (1, 0, 0.0), (0, 1, 0.0)]
)
def test_cldice_empty_policy(pred_on, label_on, expected):
    pred = np.zeros((7, 7, 7), bool)
    label = np.zeros_like(pred)
    pred[2:5, 2:5, 1:6] = bool(pred_on)
    label[2:5, 2:5, 1:6] = bool(label_on)
    assert cldice(pred, label) == expected
    assert compute_metrics(pred, label, metrics=("cldice",))["cldice"] == expected


def test_cldice_is_undefined_when_thinning_removes_a_mask():
    # scikit-image's thinning deletes a 2x2xN bar entirely: Tprec is 0/0
    bar = np.zeros((6, 6, 8), bool)
    bar[2:4, 2:4, 1:7] = True
    assert not skeletonize(bar).any()
    thick = np.zeros_like(bar)
    thick[1:4, 1:4, 1:7] = True
    assert cldice(bar, thick) is None
    assert compute_metrics(bar, thick, metrics=("cldice",)) == {"cldice": None}


def test_empty_masks_have_zero_betti_numbers():
    empty = np.zeros((5, 5, 5), bool)
    got = compute_metrics(
        empty, empty, metrics=("betti_0", "betti_1", "betti_2", "betti_0_error", "betti_1_error")
    )
    assert got == {"betti_0": 0, "betti_1": 0, "betti_2": 0, "betti_0_error": 0, "betti_1_error": 0}
