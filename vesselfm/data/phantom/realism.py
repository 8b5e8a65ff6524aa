"""CT realism: the point-spread blur, correlated noise, rounding to int16 HU, and streaks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from vesselfm.data.phantom.geometry import _Grid


def _gaussian_weights(sigma: float, truncate: float = 4.0) -> np.ndarray:
    """The discrete Gaussian kernel of ``scipy.ndimage.gaussian_filter1d``."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=float)
    w = np.exp(-0.5 * (x / sigma) ** 2)
    return w / w.sum()


def _blur_axis(src: np.ndarray, weights: np.ndarray, axis: int) -> np.ndarray:
    """Correlate ``src`` with symmetric ``weights`` along ``axis`` ('nearest' edges).

    Shifted whole-array multiply-adds: on a C-ordered volume this is several times faster than
    ``scipy.ndimage.correlate1d`` along the slow axes, and gives the same result.
    """
    r = len(weights) // 2
    n = src.shape[axis]

    def at(lo: int, hi: int) -> tuple[slice, ...]:
        return (slice(None),) * axis + (slice(lo, hi),)

    out = src * np.float32(weights[r])
    for off in range(1, r + 1):
        w = np.float32(weights[r + off])
        m = min(off, n)
        if off < n:
            out[at(off, n)] += w * src[at(0, n - off)]
            out[at(0, n - off)] += w * src[at(off, n)]
        out[at(0, m)] += w * src[at(0, 1)]
        out[at(n - m, n)] += w * src[at(n - 1, n)]
    return out


def _finish_image(
    image: np.ndarray, sigma: Sequence[float], noise_std: float, rng: np.random.Generator
) -> np.ndarray:
    """Add correlated noise and the point-spread blur; return rounded, clipped int16 HU.

    White noise is added first and blurred with the image, so the noise has CT-like texture;
    its strength is set so that its standard deviation after the blur is ``noise_std`` HU.
    Works in slabs along z so that the temporaries stay small.
    """
    X, Y, Z = image.shape
    weights = [_gaussian_weights(s) for s in sigma]
    chunk = max(1, 4_000_000 // (X * Y))
    if noise_std > 0:
        gain = float(np.prod([np.sqrt((w**2).sum()) for w in weights]))
        pre = np.float32(noise_std / gain)
        for z0 in range(0, Z, chunk):
            slab = rng.standard_normal((X, Y, min(chunk, Z - z0)), dtype=np.float32)
            slab *= pre
            image[:, :, z0 : z0 + chunk] += slab
    ndimage.correlate1d(image, weights[2].astype(np.float32), axis=2, output=image, mode="nearest")
    out = np.empty(image.shape, dtype=np.int16)
    for z0 in range(0, Z, chunk):
        slab = np.ascontiguousarray(image[:, :, z0 : z0 + chunk])
        slab = _blur_axis(_blur_axis(slab, weights[0], 0), weights[1], 1)
        np.rint(slab, out=slab)
        np.clip(slab, -1024, 3071, out=slab)
        out[:, :, z0 : z0 + chunk] = slab
    return out


def _add_streaks(
    image: np.ndarray, grid: _Grid, center: np.ndarray, rng: np.random.Generator
) -> None:
    """Add faint bright/dark line pairs through ``center`` in every slice, varying along z."""
    u, v = grid.axes[0][:, None], grid.axes[1][None, :]
    width = 1.2 * float(grid.spacing[:2].mean())
    pattern = np.zeros(image.shape[:2], dtype=np.float32)
    for _ in range(int(rng.integers(3, 7))):
        angle = rng.uniform(0, math.pi)
        d = -(u - center[0]) * math.sin(angle) + (v - center[1]) * math.cos(angle)
        amp = rng.uniform(15.0, 40.0)
        pattern += amp * (
            np.exp(-((d - width) ** 2) / (2 * width**2))
            - np.exp(-((d + width) ** 2) / (2 * width**2))
        )
    zmod = ndimage.gaussian_filter1d(rng.standard_normal(image.shape[2]), 3.0, mode="wrap")
    zmod = (zmod / (np.abs(zmod).max() + 1e-6)).astype(np.float32)
    image += pattern[:, :, None] * zmod[None, None, :]
