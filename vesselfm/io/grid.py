"""The one check that two volumes lie on the same voxel grid (nothing in vesselfm resamples to pair files)."""

from __future__ import annotations

import numpy as np

from vesselfm.io.volume import Volume, VolumeError

#: largest difference, in mm, allowed between two affines of "the same grid"
AFFINE_ATOL_MM = 1e-3


class GridError(VolumeError):
    """Two files that should share a voxel grid do not; the message names both."""


def check_same_grid(
    volume: Volume, reference: Volume, atol: float = AFFINE_ATOL_MM, hint: str = ""
) -> None:
    """Refuse ``volume`` unless it has ``reference``'s shape and, within ``atol`` mm, its affine.

    Args:
        volume: the file checked (named first in the message).
        reference: the file whose grid it must be on.
        atol: the largest absolute difference allowed between any two entries of the 4×4
            affines (mm).
        hint: what to do about it, appended to the message (default: give files on the same grid).

    Raises:
        GridError: one line naming both files and the difference.
    """
    hint = hint or "give files on the same voxel grid (nothing is resampled)"
    if volume.shape != reference.shape:
        raise GridError(
            f"{volume.where}: shape {volume.shape} differs from {reference.name}'s "
            f"{reference.shape}; {hint}"
        )
    diff = float(np.abs(volume.affine - reference.affine).max())
    if not diff <= atol:
        raise GridError(
            f"{volume.where}: affine differs from {reference.name}'s by up to {diff:.4g} mm "
            f"(tolerance {atol:g} mm); {hint}"
        )
