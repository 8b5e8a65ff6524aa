"""Fixtures for the metric tests: a vessel tree and damaged copies (``synthetic.Tree``), NIfTI files.

Small (48³) and built from exact tube geometry, so the effect of each damage is known: a cut
trunk has two components, a missing branch lowers recall only, an extra blob adds a component.
"""

from __future__ import annotations

import numpy as np
import pytest
from synthetic import FLIPPED_AFFINE, Tree, save_nifti


@pytest.fixture(scope="session")
def tree() -> Tree:
    return Tree()


@pytest.fixture()
def write_nifti():
    """``write_nifti(path, array, affine=FLIPPED_AFFINE)``: save a NIfTI file (parents created)."""
    return save_nifti


@pytest.fixture()
def affine() -> np.ndarray:
    """The affine ``write_nifti`` uses by default (a copy)."""
    return FLIPPED_AFFINE.copy()
