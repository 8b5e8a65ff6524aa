"""Ranking metrics over every voxel: ROC AUC and average precision (area under the PR curve).

Both are computed from counts of vessel / background voxels per distinct probability value,
never by sorting the whole volume:

1. The vessel voxels (few) are read exactly.
2. One pass over the volume, in slabs, histograms every voxel's float32 value by its top 24 bits
   (value bins of relative width 2**-15), and keeps the exact values of the voxels that fall into
   a bin holding a vessel voxel.
3. A bin without vessel voxels holds only background: its voxels rank the same way against every
   vessel voxel, so the bin is one group. Every bin with a vessel voxel is resolved into its exact
   float32 values.

The result is the exact Mann-Whitney ROC AUC (ties count one half, as in scikit-learn's
``roc_auc_score``) and the exact step-wise average precision of scikit-learn's
``average_precision_score`` (tied scores form one threshold), for float32 probabilities. float64
input is rounded to float32 first (values that differ only beyond float32 precision tie).

Undefined cases: with no vessel voxel or no background voxel there is only one class, and both
metrics are ``None`` (scikit-learn raises). A binary mask has no ranking to speak of; the caller
(:func:`vesselfm.metrics.compute_metrics`) reports ``None`` for it unless probabilities are given.
"""

from __future__ import annotations

import numpy as np

CURVE_METRICS: tuple[str, ...] = ("roc_auc", "pr_auc_ap")

_ONE_BITS = 0x3F800000  # float32 1.0: in [0, 1], the IEEE bit pattern orders like the value
_NEG_ZERO_BITS = 0x80000000
_SHIFT = 8  # coarse bins: top 24 bits of the float32 -> relative width 2**-15
_N_COARSE = (_ONE_BITS >> _SHIFT) + 1
_SLAB_VOXELS = 1 << 23  # voxels per slab of the volume pass (32 MiB of float32)
_HEAVY_BIN = 1 << 16  # bins with more voxels are resolved by counting, not sorting


def _float32_bits(values: np.ndarray, what: str = "prob") -> np.ndarray:
    """float32 bit patterns (uint32, C-contiguous) of probabilities, checked to lie in [0, 1].

    ``-0.0`` becomes ``+0.0``; NaN or anything outside [0, 1] raises ``ValueError``.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    if bits.size and int(bits.max()) > _ONE_BITS:
        neg_zero = bits == _NEG_ZERO_BITS
        if neg_zero.any():
            bits = bits.copy()
            bits[neg_zero] = 0
        if bits.size and int(bits.max()) > _ONE_BITS:
            f = bits.view(np.float32)
            raise ValueError(
                f"{what}: expected probabilities in [0, 1], got values in "
                f"[{np.nanmin(f):.4g}, {np.nanmax(f):.4g}]"
                f"{' and NaN' if np.isnan(f).any() else ''}; apply a sigmoid/softmax first"
            )
    return bits


def _distinct_counts(bits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values of a uint32 array and their counts, counting (not sorting) the
    voxels of very full coarse bins, such as a background of exact zeros."""
    if bits.size == 0:
        return np.empty(0, np.uint32), np.empty(0, np.int64)
    coarse = bits >> _SHIFT
    bin_ids, bin_sizes = np.unique(coarse, return_counts=True)
    heavy_ids = bin_ids[bin_sizes > _HEAVY_BIN]
    if heavy_ids.size == 0:
        vals, counts = np.unique(bits, return_counts=True)
        return vals, counts.astype(np.int64)
    heavy_lut = np.zeros(_N_COARSE, dtype=bool)
    heavy_lut[heavy_ids] = True
    is_heavy = heavy_lut[coarse]
    light_vals, light_counts = np.unique(bits[~is_heavy], return_counts=True)
    # Within a heavy bin the low 8 bits enumerate its values: count them with bincount.
    rank = np.searchsorted(heavy_ids, coarse[is_heavy]).astype(np.int64)
    fine = np.bincount(rank << _SHIFT | (bits[is_heavy] & 0xFF), minlength=heavy_ids.size << _SHIFT)
    nz = np.flatnonzero(fine)
    heavy_vals = (heavy_ids[nz >> _SHIFT] << _SHIFT | (nz & 0xFF)).astype(np.uint32)
    vals = np.concatenate([light_vals, heavy_vals])
    counts = np.concatenate([light_counts.astype(np.int64), fine[nz]])
    order = np.argsort(vals, kind="stable")
    return vals[order], counts[order]


def ranked_counts(
    prob: np.ndarray, label: np.ndarray, pos_scores: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Vessel and background voxel counts per group of equal-ranking scores, by ascending score.

    Two voxels are in one group when their float32 probabilities are equal, or when they are
    both background and no vessel voxel lies between them: groups never change ROC AUC or
    average precision.

    Args:
        prob: probabilities in [0, 1], shape ``(X, Y, Z)``; float32 is read without a copy.
        label: boolean label, same shape.
        pos_scores: ``prob`` at the label's voxels, if already gathered (any order).

    Returns:
        ``(n_pos, n_neg)``: int64 arrays of equal length, ordered by ascending score.

    Raises:
        ValueError: for shape mismatches, NaN, or values outside [0, 1].
    """
    if prob.shape != label.shape:
        raise ValueError(
            f"prob and label must have the same shape, got {prob.shape} and {label.shape}"
        )
    if pos_scores is None:
        pos_scores = prob[np.asarray(label, dtype=bool)]
    pos_bits = _float32_bits(pos_scores)
    pos_vals, pos_counts = _distinct_counts(pos_bits)
    pos_bins = np.zeros(_N_COARSE, dtype=bool)
    pos_bins[pos_vals >> _SHIFT] = True

    # One pass over the volume: coarse histogram of all voxels + exact values in vessel bins.
    coarse_hist = np.zeros(_N_COARSE, dtype=np.int64)
    gathered: list[np.ndarray] = []
    flat = prob.reshape(-1) if prob.flags.c_contiguous else None
    n_rows = prob.shape[0]
    rows_per_slab = max(1, _SLAB_VOXELS // max(1, prob[0].size))
    shifted = np.empty(min(prob.size, rows_per_slab * max(1, prob[0].size)), dtype=np.uint32)
    for r0 in range(0, n_rows, rows_per_slab):
        r1 = min(r0 + rows_per_slab, n_rows)
        slab = flat[r0 * prob[0].size : r1 * prob[0].size] if flat is not None else prob[r0:r1]
        bits = _float32_bits(slab).reshape(-1)
        coarse = shifted[: bits.size]
        np.right_shift(bits, _SHIFT, out=coarse)
        coarse_hist += np.bincount(coarse, minlength=_N_COARSE)
        hit = pos_bins[coarse]
        if hit.any():
            gathered.append(bits[hit])

    # Bins with vessel voxels: exact values; the background there = all - vessel, value by value.
    all_vals, all_counts = _distinct_counts(
        np.concatenate(gathered) if gathered else np.empty(0, np.uint32)
    )
    pos_at = np.zeros(all_vals.size, dtype=np.int64)
    pos_at[np.searchsorted(all_vals, pos_vals)] = pos_counts
    neg_at = all_counts - pos_at
    # Bins without vessel voxels: one background group each.
    coarse_hist[pos_bins] = 0
    neg_bins = np.flatnonzero(coarse_hist)

    keys = np.concatenate([neg_bins.astype(np.uint32) << _SHIFT, all_vals])
    n_pos = np.concatenate([np.zeros(neg_bins.size, np.int64), pos_at])
    n_neg = np.concatenate([coarse_hist[neg_bins], neg_at])
    order = np.argsort(keys, kind="stable")
    return n_pos[order], n_neg[order]


def roc_auc_from_counts(n_pos: np.ndarray, n_neg: np.ndarray) -> float | None:
    """ROC AUC (Mann-Whitney, ties count one half) from counts per score group.

    Args:
        n_pos: vessel voxels per group, by ascending score.
        n_neg: background voxels per group, same order.

    Returns:
        The area in [0, 1], or ``None`` when either class is absent.
    """
    n_pos = np.asarray(n_pos, dtype=np.int64)
    n_neg = np.asarray(n_neg, dtype=np.int64)
    p, n = int(n_pos.sum()), int(n_neg.sum())
    if p == 0 or n == 0:
        return None
    neg_below = np.cumsum(n_neg) - n_neg
    # 2 * (pairs ranked right) + (tied pairs), in exact integers (float64 for the dot product
    # would round above 2**53; Python ints do not).
    twice_wins = 2 * int(np.dot(n_pos, neg_below)) + int(np.dot(n_pos, n_neg))
    return twice_wins / (2 * p * n)


def average_precision_from_counts(n_pos: np.ndarray, n_neg: np.ndarray) -> float | None:
    """Average precision, sum over thresholds of (recall step) x precision, as scikit-learn's
    ``average_precision_score`` (no interpolation; tied scores are one threshold).

    Args:
        n_pos: vessel voxels per group, by ascending score.
        n_neg: background voxels per group, same order.

    Returns:
        AP in [0, 1], or ``None`` when either class is absent.
    """
    n_pos = np.asarray(n_pos, dtype=np.int64)
    n_neg = np.asarray(n_neg, dtype=np.int64)
    p, n = int(n_pos.sum()), int(n_neg.sum())
    if p == 0 or n == 0:
        return None
    tp = np.cumsum(n_pos[::-1])
    fp = np.cumsum(n_neg[::-1])
    step = n_pos[::-1] > 0
    precision = tp[step] / (tp[step] + fp[step])
    return float(np.dot(n_pos[::-1][step], precision) / p)


def roc_auc(prob: np.ndarray, label: np.ndarray) -> float | None:
    """ROC AUC of voxel probabilities against a binary label (``None`` with one class only)."""
    return roc_auc_from_counts(*ranked_counts(prob, np.asarray(label, dtype=bool)))


def pr_auc_ap(prob: np.ndarray, label: np.ndarray) -> float | None:
    """Average precision of voxel probabilities against a binary label (``None`` with one class
    only)."""
    return average_precision_from_counts(*ranked_counts(prob, np.asarray(label, dtype=bool)))
