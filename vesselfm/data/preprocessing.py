"""Preprocessing shared by ``prepare``, training and ``infer``: one resampling, one normalisation.

A model trained on data made by ``python -m vesselfm.prepare`` must see the same voxels at
inference time, so both call these functions with the same :class:`PreprocessConfig` (stored in
the prepared set's manifest and in the checkpoints).

Volumes are NumPy arrays in NIfTI voxel order ``(X, Y, Z)``; ``Z`` is the slice axis.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vesselfm.utils.config import checked_fields


@dataclass(frozen=True)
class PreprocessConfig:
    """How a scan is brought to the network's grid and intensity range.

    Attributes:
        in_plane_size: resample X and Y to this many voxels, keep Z (vesselFM's ImageCAS choice:
            256). Ignored when ``target_spacing`` is set. ``None`` with no spacing: keep the grid.
        target_spacing: resample to this voxel size in mm ``(sx, sy, sz)`` instead.
        lower, upper: intensity percentiles mapped to ``b_min`` and ``b_max`` (vesselFM: 1, 99).
        b_min, b_max: output intensity range.
        clip: clip intensities to ``[b_min, b_max]``.
        ignore_below: take the percentiles over the voxels above this intensity only (in the
            scan's units; e.g. ``-500`` on CT: the body, not the air around it and in the lungs,
            as nnU-Net computes its CT statistics over the foreground); those below it are then
            clipped to ``b_min`` like any other. ``None`` (vesselFM's): every voxel. A scan with
            under 1 % of its voxels above it uses every voxel.
    """

    in_plane_size: int | None = 256
    target_spacing: tuple[float, float, float] | None = None
    lower: float = 1.0
    upper: float = 99.0
    b_min: float = 0.0
    b_max: float = 1.0
    clip: bool = True
    ignore_below: float | None = None

    def __post_init__(self) -> None:
        if self.in_plane_size is not None and int(self.in_plane_size) < 8:
            raise ValueError(
                f"preprocess.in_plane_size must be >= 8 or null, got {self.in_plane_size}"
            )
        if self.target_spacing is not None:
            spacing = tuple(float(s) for s in self.target_spacing)
            if len(spacing) != 3 or min(spacing) <= 0:
                raise ValueError(
                    f"preprocess.target_spacing must be 3 positive mm values or null, got {self.target_spacing}"
                )
            object.__setattr__(self, "target_spacing", spacing)
        if self.ignore_below is not None:
            try:
                object.__setattr__(self, "ignore_below", float(self.ignore_below))
            except (TypeError, ValueError):
                raise ValueError(
                    f"preprocess.ignore_below must be a number (e.g. -500 for CT) or null, got {self.ignore_below!r}"
                ) from None
        if not 0 <= self.lower < self.upper <= 100:
            raise ValueError(
                f"preprocess.lower/upper must satisfy 0 <= lower < upper <= 100, got {self.lower}, {self.upper}"
            )

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | None) -> PreprocessConfig:
        """Build from a config mapping; unknown keys raise, listing the allowed ones."""
        cfg = checked_fields(cls, cfg, "preprocess")
        if cfg.get("target_spacing") is not None:
            cfg["target_spacing"] = tuple(cfg["target_spacing"])
        return cls(**cfg)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["target_spacing"] is not None:
            d["target_spacing"] = list(d["target_spacing"])
        if d["ignore_below"] is None:
            # unset, it is left out: the manifests, checkpoints and cohort settings written
            # before it existed stay equal to today's
            del d["ignore_below"]
        return d


def target_shape(
    shape: Sequence[int], spacing: Sequence[float], config: PreprocessConfig
) -> tuple[int, int, int]:
    """The prepared grid's shape for a scan of ``shape`` voxels of ``spacing`` mm."""
    shape = tuple(int(s) for s in shape)
    if config.target_spacing is not None:
        return tuple(
            max(1, int(round(n * s / t)))
            for n, s, t in zip(shape, spacing, config.target_spacing, strict=True)
        )
    if config.in_plane_size is not None:
        return (int(config.in_plane_size), int(config.in_plane_size), shape[2])
    return shape


def resampled_affine(
    affine: np.ndarray, shape: Sequence[int], new_shape: Sequence[int]
) -> np.ndarray:
    """Affine of the same field of view sampled on ``new_shape`` voxels (voxel centres, not corners)."""
    scale = np.asarray(shape, dtype=np.float64) / np.asarray(new_shape, dtype=np.float64)
    step = np.eye(4)
    step[:3, :3] = np.diag(scale)
    step[:3, 3] = (scale - 1.0) / 2.0
    return np.asarray(affine, dtype=np.float64) @ step


def _memory_order(x: torch.Tensor) -> tuple[int, ...]:
    """The permutation that lists ``x``'s axes from the largest stride to the smallest: a
    Fortran-ordered NIfTI array (X fastest) becomes C-contiguous, so pooling reads it in order
    instead of copying it into C order first."""
    return tuple(sorted(range(x.ndim), key=lambda d: (-x.stride(d), d)))


def c_order(volume: np.ndarray) -> np.ndarray:
    """``volume`` (3D) as a C-contiguous array: the same one when it already is, else a copy.

    A Fortran-ordered volume (a NIfTI array: X fastest) is reordered in two cache-friendly
    steps (per-slice 2D transposes, then one transpose of the slice index against the rest),
    about 2x faster than ``np.ascontiguousarray``."""
    volume = np.asarray(volume)
    if (
        volume.flags.c_contiguous
        or volume.ndim != 3
        or not volume.flags.f_contiguous
        or not volume.dtype.isnative  # torch takes native byte order only
    ):
        return np.ascontiguousarray(volume)
    x, y, z = volume.shape
    zyx = torch.from_numpy(volume.transpose(2, 1, 0))  # C-contiguous view, axes (Z, Y, X)
    zxy = zyx.transpose(1, 2).contiguous()
    return zxy.reshape(z, x * y).t().contiguous().view(x, y, z).numpy()


def _integer_factors(src: Sequence[int], shape: Sequence[int]) -> tuple[int, ...] | None:
    """Per-axis shrink factors when every axis shrinks by a whole number (or is kept), else ``None``."""
    if any(s < t or s % t for s, t in zip(src, shape, strict=True)):
        return None
    return tuple(s // t for s, t in zip(src, shape, strict=True))


# Integer volumes whose block sums stay exact in float32 (|sum| < 2**24): 16-bit values, blocks
# of up to 256 voxels.
_EXACT_BLOCK_DTYPES = (torch.bool, torch.uint8, torch.int8, torch.int16)


def _block_mean(x: torch.Tensor, factors: Sequence[int]) -> torch.Tensor:
    """Mean over non-overlapping blocks of ``factors`` voxels of a contiguous 3D integer volume
    (float32): one strided add per block row, the integer input converted on the fly. The sums
    are exact, so the result equals ``avg_pool3d`` (the same sum, divided by the block size)."""
    out = x
    for dim, k in enumerate(factors):
        if k == 1:
            continue
        shape = list(out.shape)
        blocks = out.view(*shape[:dim], shape[dim] // k, k, *shape[dim + 1 :])
        acc = blocks.select(dim + 1, 0).to(torch.float32)
        for j in range(1, k):
            acc += blocks.select(dim + 1, j)
        out = acc
    return out.div_(math.prod(factors))


def _resample(volume: np.ndarray | torch.Tensor, shape: Sequence[int]) -> torch.Tensor:
    """Resample a float volume: area averaging on shrinking axes (anti-aliased), trilinear on growing ones."""
    x = torch.as_tensor(volume)
    shape = tuple(int(s) for s in shape)
    if tuple(x.shape) == shape:
        return x.to(torch.float32)
    perm = _memory_order(x)
    inverse = tuple(perm.index(d) for d in range(len(perm)))
    x = x.permute(perm)
    src = tuple(x.shape)
    target = tuple(shape[d] for d in perm)
    shrink = tuple(min(s, t) for s, t in zip(src, target, strict=True))
    factors = _integer_factors(src, shrink) if shrink != src else None
    if factors is not None and x.dtype in _EXACT_BLOCK_DTYPES and math.prod(factors) <= 256:
        # Each output voxel is the mean of the input voxels it covers: the anti-aliasing that
        # skimage.transform.resize(anti_aliasing=True) approximates with a blur. Whole-number
        # factors on integers (CT in HU, labels): exact block sums, without a float copy of the
        # whole scan first (about 2x faster than avg_pool3d, the same values).
        x = _block_mean(x.contiguous(), factors)[None, None]
    else:
        x = x.to(torch.float32)[None, None]
        if shrink != src:
            # With whole-number factors avg_pool3d is mode="area" (the same windows, ~2x faster).
            x = (
                F.avg_pool3d(x, factors)
                if factors is not None
                else F.interpolate(x, size=shrink, mode="area")
            )
    if shrink != target:
        x = F.interpolate(x, size=target, mode="trilinear", align_corners=False)
    return x[0, 0].permute(inverse)


def resample_image(volume: np.ndarray | torch.Tensor, shape: Sequence[int]) -> np.ndarray:
    """Resample an intensity volume to ``shape`` (float32)."""
    return _resample(volume, shape).numpy()


def resample_probabilities(prob: np.ndarray | torch.Tensor, shape: Sequence[int]) -> np.ndarray:
    """Resample a probability map to ``shape`` (float32 in [0, 1]), e.g. back to the scan's grid."""
    return _resample(prob, shape).clamp_(0.0, 1.0).numpy()


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every nonzero voxel of a 3D ``mask`` (one slice per axis),
    ``None`` if empty. One pass over the volume, then one over the (X, Y) box."""
    mask = np.asarray(mask)
    plane = mask.any(axis=2)
    xs = np.flatnonzero(plane.any(axis=1))
    if xs.size == 0:
        return None
    ys = np.flatnonzero(plane.any(axis=0))
    zs = np.flatnonzero(mask[xs[0] : xs[-1] + 1, ys[0] : ys[-1] + 1].any(axis=(0, 1)))
    return tuple(slice(int(v[0]), int(v[-1]) + 1) for v in (xs, ys, zs))


def resample_label(
    label: np.ndarray | torch.Tensor, shape: Sequence[int], threshold: float = 0.5
) -> np.ndarray:
    """Resample a binary label to ``shape`` (uint8 0/1).

    The label is resampled as a fraction (area / trilinear) and thresholded, which keeps vessel
    boundaries where nearest-neighbour would alias them. A lower ``threshold`` keeps thin vessels
    that cover less than half of a coarse voxel.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"label threshold must be in (0, 1), got {threshold}")
    binary = np.asarray(label)
    if binary.dtype != np.bool_:
        binary = binary > 0
    shape = tuple(int(s) for s in shape)
    factors = _integer_factors(binary.shape, shape)
    if factors is None:
        return (_resample(torch.as_tensor(binary), shape) >= threshold).numpy().astype(np.uint8)
    # Whole-number shrink factors: every output voxel averages its own block of input voxels, so
    # only the blocks around the vessels need computing (a few % of a CTA); the rest is 0.
    out = np.zeros(shape, dtype=np.uint8)
    box = bounding_box(binary)
    if box is None:
        return out
    coarse = tuple(slice(b.start // f, -(-b.stop // f)) for b, f in zip(box, factors, strict=True))
    fine = tuple(slice(c.start * f, c.stop * f) for c, f in zip(coarse, factors, strict=True))
    block = binary[fine]
    out[coarse] = (
        _resample(torch.as_tensor(block), [c.stop - c.start for c in coarse]) >= threshold
    ).numpy()
    return out


def intensity_range(volume: np.ndarray, config: PreprocessConfig) -> tuple[float, float]:
    """The ``(lower, upper)`` percentiles of ``volume`` (of its voxels above ``ignore_below``
    when set), the values mapped to ``b_min``/``b_max``."""
    # ravel(order="K"): the values in memory order, a view for C- and Fortran-ordered arrays
    # alike (percentiles do not depend on the order; a C-order flatten would copy a NIfTI array).
    values = np.asarray(volume).ravel(order="K")
    if config.ignore_below is not None:
        kept = values[values > config.ignore_below]
        if kept.size >= 0.01 * values.size and kept.size > 0:
            values = kept
    lo, hi = np.percentile(values, [config.lower, config.upper])
    return float(lo), float(hi)


def normalize_intensity(
    volume: np.ndarray | torch.Tensor,
    value_range: tuple[float, float],
    config: PreprocessConfig,
    copy: bool = True,
) -> np.ndarray | torch.Tensor:
    """Map ``value_range`` linearly onto ``[b_min, b_max]`` (and clip), as MONAI's
    ``ScaleIntensityRangePercentiles`` does, with the percentiles given (computed once per scan).

    Returns float32, NumPy or torch as given; ``copy=False`` works in place on a float32
    NumPy array.
    """
    lo, hi = value_range
    scale = (config.b_max - config.b_min) / (hi - lo) if hi > lo else 0.0
    # One float32 copy, then in place: (v - lo) * scale + b_min, each step rounded to float32.
    if isinstance(volume, torch.Tensor):
        out = volume.to(torch.float32, copy=True).sub_(lo).mul_(scale).add_(config.b_min)
        return out.clamp_(config.b_min, config.b_max) if config.clip else out
    out = np.array(volume, dtype=np.float32) if copy else np.asarray(volume, dtype=np.float32)
    out -= np.float32(lo)
    out *= np.float32(scale)
    out += np.float32(config.b_min)
    if config.clip:
        np.clip(out, config.b_min, config.b_max, out=out)
    return out
