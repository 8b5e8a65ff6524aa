"""Synthetic vessel trees for the metric tests: a trunk with one side branch, and damaged copies.

Small (48³) and built from exact tube geometry, so the effect of each damage is known: a cut
trunk has two components, a missing branch lowers recall only, an extra blob adds a component.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (48, 48, 48)
SPACING = (0.4, 0.4, 0.5)
# Scanner-like affine: flipped in-plane axes, anisotropic spacing, an offset.
AFFINE = np.array(
    [
        [-SPACING[0], 0.0, 0.0, 10.0],
        [0.0, -SPACING[1], 0.0, 20.0],
        [0.0, 0.0, SPACING[2], -30.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def tube(shape: tuple[int, int, int], p0, p1, radius: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius`` of the segment ``p0``-``p1`` (voxel units)."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(
        float
    )
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t = np.clip(((grid - p0) @ d) / (d @ d), 0.0, 1.0)
    closest = p0 + t[..., None] * d
    return np.linalg.norm(grid - closest, axis=-1) <= radius


def ball(shape: tuple[int, int, int], centre, radius: float) -> np.ndarray:
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(
        float
    )
    return np.linalg.norm(grid - np.asarray(centre, float), axis=-1) <= radius


class Tree:
    """A vessel tree label and its damaged predictions (all boolean, shape ``SHAPE``)."""

    def __init__(self, shape: tuple[int, int, int] = SHAPE) -> None:
        self.trunk = tube(shape, (24, 24, 4), (24, 24, 43), 2.5)
        self.branch = tube(shape, (24, 24, 24), (38, 30, 36), 1.8)
        self.label = self.trunk | self.branch
        self.cut = self.label.copy()
        self.cut[:, :, 12:14] = False  # below the branch point: splits the trunk in two
        self.no_branch = self.trunk.copy()
        self.blob = ball(shape, (8, 38, 10), 3.0)
        self.extra_blob = self.label | self.blob

    def prob(self, mask: np.ndarray, seed: int = 0) -> np.ndarray:
        """A float32 probability map whose 0.5-threshold is exactly ``mask``."""
        rng = np.random.default_rng(seed)
        p = np.where(mask, rng.uniform(0.55, 1.0, mask.shape), rng.uniform(0.0, 0.45, mask.shape))
        return p.astype(np.float32)


@pytest.fixture(scope="session")
def tree() -> Tree:
    return Tree()


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.header.set_zooms(tuple(float(np.linalg.norm(affine[:3, i])) for i in range(3)))
    nib.save(img, str(path))
    return path


@pytest.fixture()
def write_nifti():
    """``write_nifti(path, array, affine=AFFINE)``: save a NIfTI file (parents created)."""
    return save_nifti


@pytest.fixture()
def affine() -> np.ndarray:
    """The affine ``write_nifti`` uses by default (a copy)."""
    return AFFINE.copy()
