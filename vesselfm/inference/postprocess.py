"""Post-processing of binary vessel masks: drop small connected components, keep the K largest.

Both run on one labelling (``scipy.ndimage.label``) at the scan's native resolution, so sizes in
mm³ use the scan's own voxel volume. Off by default.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from vesselfm.utils.config import checked_fields

log = logging.getLogger(__name__)

SIZE_UNITS = ("voxels", "mm3")


@dataclass(frozen=True)
class PostprocessConfig:
    """How a thresholded mask is cleaned.

    Attributes:
        min_size: components smaller than this are removed (0: off). vesselFM uses 1000 voxels.
        unit: ``"voxels"`` or ``"mm3"`` (physical volume, using the scan's spacing).
        keep_largest: keep only the K largest components (``None``: all).
        connectivity: 1, 2 or 3 (6-, 18- or 26-connected neighbours; vesselFM: 3).
    """

    min_size: float = 0
    unit: str = "voxels"
    keep_largest: int | None = None
    connectivity: int = 3

    def __post_init__(self) -> None:
        if self.unit not in SIZE_UNITS:
            raise ValueError(
                f"inference.postprocess.unit must be one of {SIZE_UNITS}, got {self.unit!r}"
            )
        if float(self.min_size) < 0:
            raise ValueError(f"inference.postprocess.min_size must be >= 0, got {self.min_size}")
        if self.keep_largest is not None and int(self.keep_largest) < 1:
            raise ValueError(
                f"inference.postprocess.keep_largest must be >= 1 or null, got {self.keep_largest}"
            )
        if int(self.connectivity) not in (1, 2, 3):
            raise ValueError(
                f"inference.postprocess.connectivity must be 1, 2 or 3, got {self.connectivity}"
            )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | PostprocessConfig | None) -> PostprocessConfig:
        """Build from the ``inference.postprocess`` config; unknown keys raise, listing the allowed ones."""
        if isinstance(cfg, PostprocessConfig):
            return cfg
        return cls(**checked_fields(cls, cfg, "inference.postprocess"))

    @property
    def enabled(self) -> bool:
        return float(self.min_size) > 0 or self.keep_largest is not None


def filter_components(
    mask: np.ndarray,
    min_size: float = 0,
    keep_largest: int | None = None,
    connectivity: int = 3,
    voxel_volume: float = 1.0,
) -> np.ndarray:
    """Remove connected components of a binary mask by size and rank.

    Args:
        mask: binary ``(X, Y, Z)`` array.
        min_size: minimum component size, in units of ``voxel_volume`` (voxels when 1).
        keep_largest: keep at most this many of the largest components (``None``: all).
        connectivity: 1, 2 or 3 (6, 18, 26 neighbours).
        voxel_volume: size of one voxel in the unit of ``min_size`` (e.g. mm³).

    Returns:
        A uint8 0/1 mask of the same shape.
    """
    mask = np.asarray(mask) > 0
    if min_size <= 0 and keep_largest is None:
        return mask.astype(np.uint8)
    structure = ndimage.generate_binary_structure(3, int(connectivity))
    labels, n = ndimage.label(mask, structure=structure)
    if n == 0:
        return mask.astype(np.uint8)
    sizes = np.bincount(labels.ravel(), minlength=n + 1).astype(np.float64) * float(voxel_volume)
    sizes[0] = 0
    keep = sizes >= float(min_size)
    keep[0] = False
    if keep_largest is not None and int(keep.sum()) > int(keep_largest):
        ranked = np.argsort(-np.where(keep, sizes, -1.0), kind="stable")
        keep[:] = False
        keep[ranked[: int(keep_largest)]] = True
        keep[0] = False
    removed = n - int(keep.sum())
    if removed:
        log.debug("post-processing removed %d of %d components", removed, n)
    return keep[labels].astype(np.uint8)


def postprocess_mask(
    mask: np.ndarray, config: PostprocessConfig, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> np.ndarray:
    """Apply ``config`` to a binary mask of a scan with voxel ``spacing`` (mm)."""
    if not config.enabled:
        return (np.asarray(mask) > 0).astype(np.uint8)
    voxel_volume = float(np.prod(spacing)) if config.unit == "mm3" else 1.0
    return filter_components(
        mask,
        min_size=float(config.min_size),
        keep_largest=None if config.keep_largest is None else int(config.keep_largest),
        connectivity=int(config.connectivity),
        voxel_volume=voxel_volume,
    )
