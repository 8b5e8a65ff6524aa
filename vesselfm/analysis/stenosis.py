"""Stenoses along a vessel's diameter profile, their CAD-RADS 2.0 grade, and the patient's category.

A stenosis is a stretch where the area-equivalent diameter falls below a **reference diameter**
fitted to the healthy vessel around it:

1. a first reference at every sample is a line fitted to the diameters within ``window_mm``,
   raised by the 75th percentile of its residuals (tapering is followed; a lesion shorter than
   half the window hardly pulls it down);
2. a lesion candidate is a run of samples more than ``detect_percent`` below it; it extends to
   where the diameter comes back within ``edge_percent`` of the reference;
3. the reference of each lesion is a straight line (tapering) fitted to the healthy samples
   within ``window_mm`` before and after it (their median where there is too little healthy
   vessel for a line), leaving out other lesions, the ends of the vessel and the neighbourhood of branch
   points, where the cross-section holds part of the side branch;
4. the degree is ``100 * (1 - d_min / d_ref)`` at the point of minimal lumen.

Vessels whose reference diameter is under ``min_reference_mm`` (1.5 mm, CAD-RADS) are not graded.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

#: CAD-RADS 2.0 stenosis bands (the ``grade`` of a stenosis), lower bound inclusive
GRADES: tuple[tuple[float, str], ...] = (
    (100.0, "100"),
    (70.0, "70-99"),
    (50.0, "50-69"),
    (25.0, "25-49"),
    (1.0, "1-24"),
)
#: the minimal lumen is averaged over at most this fraction of its lesion's length
AVERAGE_FRACTION = 0.15
#: the values ``cad_rads`` may take
CAD_RADS: tuple[str, ...] = ("0", "1", "2", "3", "4A", "4B", "5", "N")
#: which of the three main vessels each branch name's territory belongs to (three-vessel disease)
TERRITORY: dict[str, str] = {
    "LAD": "LAD",
    "D1": "LAD",
    "D2": "LAD",
    "LCx": "LCx",
    "OM1": "LCx",
    "OM2": "LCx",
    "L-PDA": "LCx",
    "L-PLA": "LCx",
    "RCA": "RCA",
    "R-PDA": "RCA",
    "R-PLA": "RCA",
}


@dataclass(frozen=True)
class Lesion:
    """A stenosis on one profile (indices into the profile's samples).

    Attributes:
        index: the sample of minimal lumen.
        start, end: first and last sample of the lesion.
        degree_percent: diameter reduction against the reference, 0-100.
        reference_mm: the reference diameter at ``index``.
        minimal_mm: the (averaged) diameter at ``index``.
    """

    index: int
    start: int
    end: int
    degree_percent: float
    reference_mm: float
    minimal_mm: float = float("nan")


def grade(degree_percent: float) -> str | None:
    """The CAD-RADS 2.0 band of a stenosis degree (``None`` under 1 %).

    >>> grade(50.0), grade(49.9), grade(100.0)
    ('50-69', '25-49', '100')
    """
    for lower, name in GRADES:
        if degree_percent >= lower:
            return name
    return None


def cad_rads(stenoses: Iterable[tuple[str, float]], diagnostic: bool = True) -> str:
    """The per-patient CAD-RADS 2.0 stenosis category (automated, not a diagnosis).

    Args:
        stenoses: ``(branch name, degree %)`` of every graded stenosis.
        diagnostic: ``False`` when the mask could not be analysed (no vessel tree): ``"N"``.

    Returns:
        ``"0"`` (none), ``"1"`` (1-24 %), ``"2"`` (25-49 %), ``"3"`` (50-69 %), ``"4A"`` (70-99 %
        in one or two vessels), ``"4B"`` (left main > 50 %, or >= 70 % in all three of the LAD,
        LCx and RCA territories), ``"5"`` (a total occlusion, 100 %), ``"N"`` (non-diagnostic).
    """
    if not diagnostic:
        return "N"
    stenoses = [(str(name), float(deg)) for name, deg in stenoses if float(deg) >= 1.0]
    if not stenoses:
        return "0"
    worst = max(deg for _, deg in stenoses)
    if worst >= 100.0:
        return "5"
    left_main = any(name == "LM" and deg > 50.0 for name, deg in stenoses)
    severe = {TERRITORY[name] for name, deg in stenoses if deg >= 70.0 and name in TERRITORY}
    if left_main or severe == {"LAD", "LCx", "RCA"}:
        return "4B"
    if worst >= 70.0:
        return "4A"
    if worst >= 50.0:
        return "3"
    if worst >= 25.0:
        return "2"
    return "1"


def _runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """``(start, end)`` inclusive of each run of ``True``."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    d = np.diff(padded)
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1, strict=True))


def _upper_line(s: np.ndarray, d: np.ndarray, at: float) -> float:
    """A line through the samples, raised by the 75th percentile of its residuals, at ``at``:
    follows tapering, and lesions (negative residuals) hardly pull it down."""
    if np.ptp(s) <= 0:
        return float(np.percentile(d, 75))
    slope, icpt = np.polyfit(s, d, 1)
    return float(slope * at + icpt + np.percentile(d - (slope * s + icpt), 75))


def _reference_line(s: np.ndarray, d: np.ndarray, at: float, min_side_mm: float) -> float | None:
    """The healthy vessel's diameter at ``at``: a line fitted to the samples where there are
    ``min_side_mm`` of them on both sides (or twice that on one side), else their median."""
    if len(s) < 3:
        return None
    before, after = s < at, s > at
    span_b = np.ptp(s[before]) if before.sum() > 1 else 0.0
    span_a = np.ptp(s[after]) if after.sum() > 1 else 0.0
    if (span_b >= min_side_mm and span_a >= min_side_mm) or max(span_a, span_b) >= 2 * min_side_mm:
        slope, icpt = np.polyfit(s, d, 1)
        return float(slope * at + icpt)
    return float(np.median(d))


def find_lesions(
    arc_mm: np.ndarray,
    diameter_mm: np.ndarray,
    excluded: np.ndarray,
    window_mm: float = 10.0,
    detect_percent: float = 15.0,
    edge_percent: float = 8.0,
    min_degree_percent: float = 20.0,
    min_reference_mm: float = 1.5,
    min_side_mm: float = 2.0,
    merge_gap_mm: float = 2.0,
    average_mm: float = 0.0,
    shoulder: float = 0.0,
) -> list[Lesion]:
    """Stenoses on one diameter profile.

    Args:
        arc_mm: ``(N,)`` increasing arc length of the samples.
        diameter_mm: ``(N,)`` area-equivalent diameters.
        excluded: ``(N,)`` samples that may be neither lesion nor reference (the vessel's blind
            end, branch points).
        window_mm: healthy vessel looked at on each side of a lesion.
        detect_percent: a lesion starts where the diameter is this far below the first reference.
        edge_percent: a lesion ends where the diameter is back within this of the reference.
        min_degree_percent: lesions of a smaller degree are not reported.
        min_reference_mm: lesions where the reference diameter is smaller are not graded.
        min_side_mm: healthy vessel needed on both sides for a tapering (linear) reference.
        merge_gap_mm: lesions closer than this are one (a lesion's uneven shoulder, or tandem
            narrowings read as one).
        average_mm: the minimal lumen is the smallest of the diameters averaged over this
            length of vessel (a running mean; at most 15 % of the lesion's length, so a
            short lesion is not smeared): one cross-section's area carries the aliasing of the
            voxel grid, and the smallest of many noisy diameters is biased low.
        shoulder: the reference leaves out, beyond each end of a lesion, this fraction of the
            lesion's length (the narrowing tapers off past where it is back within
            ``edge_percent``), unless fewer than 3 healthy samples would be left.

    Returns:
        Lesions in arc order.
    """
    s = np.asarray(arc_mm, dtype=float)
    d = np.asarray(diameter_mm, dtype=float)
    ok = ~np.asarray(excluded, dtype=bool)
    n = len(s)
    if n < 3 or ok.sum() < 3:
        return []
    ref0 = np.full(n, np.nan)
    for i in range(n):
        near = ok & (np.abs(s - s[i]) <= window_mm)
        if near.sum() >= 3:
            ref0[i] = _upper_line(s[near], d[near], s[i])
    valid = ok & np.isfinite(ref0)
    low = valid & (d < (1 - detect_percent / 100) * np.nan_to_num(ref0, nan=0.0))
    edge = np.isfinite(ref0) & (d < (1 - edge_percent / 100) * np.nan_to_num(ref0, nan=0.0))
    extents: list[tuple[int, int]] = []
    for a, b in _runs(low):
        while a > 0 and edge[a - 1] and ok[a - 1]:
            a -= 1
        while b < n - 1 and edge[b + 1] and ok[b + 1]:
            b += 1
        if extents and s[a] - s[extents[-1][1]] <= merge_gap_mm:
            extents[-1] = (extents[-1][0], max(b, extents[-1][1]))
        else:
            extents.append((a, b))
    lesion_mask = np.zeros(n, dtype=bool)
    shoulders = np.zeros(n, dtype=bool)
    for a, b in extents:
        lesion_mask[a : b + 1] = True
        margin = shoulder * float(s[b] - s[a])
        shoulders |= (s >= s[a] - margin) & (s <= s[b] + margin)
    healthy = ok & ~lesion_mask
    lesions = []
    for a, b in extents:
        # the minimal lumen: the diameters averaged over at most AVERAGE_FRACTION of the lesion
        mean = running_mean(s, d, min(average_mm, AVERAGE_FRACTION * float(s[b] - s[a])))
        i = a + int(np.argmin(mean[a : b + 1]))
        around = healthy & (s >= s[a] - window_mm) & (s <= s[b] + window_mm)
        # without the shoulders where that leaves healthy vessel (else with them)
        near = around & ~shoulders if (around & ~shoulders).sum() >= 3 else around
        ref = _reference_line(s[near], d[near], s[i], min_side_mm)
        if ref is None or ref < min_reference_mm:
            continue
        degree = float(np.clip(100.0 * (1.0 - mean[i] / ref), 0.0, 100.0))
        if degree < min_degree_percent:
            continue
        lesions.append(Lesion(i, a, b, degree, float(ref), float(mean[i])))
    return lesions


def running_mean(arc_mm: np.ndarray, values: np.ndarray, length_mm: float) -> np.ndarray:
    """``values`` averaged over the samples within ``length_mm / 2`` of each (arc in mm);
    unchanged for ``length_mm`` 0."""
    if length_mm <= 0 or len(values) < 2:
        return values
    s = np.asarray(arc_mm, dtype=float)
    lo = np.searchsorted(s, s - length_mm / 2, side="left")
    hi = np.searchsorted(s, s + length_mm / 2, side="right")
    total = np.concatenate([[0.0], np.cumsum(values)])
    return (total[hi] - total[lo]) / (hi - lo)


def excluded_samples(
    arc_mm: np.ndarray,
    radius_mm: np.ndarray,
    junctions_mm: Sequence[float],
    ends_mm: Sequence[float],
    factor: float = 2.0,
    min_mm: float = 1.5,
) -> np.ndarray:
    """Samples near a branch point or an end of the vessel: within ``max(min_mm, factor * r)`` of
    it, ``r`` the largest inscribed radius near it."""
    s = np.asarray(arc_mm, dtype=float)
    r = np.asarray(radius_mm, dtype=float)
    out = np.zeros(len(s), dtype=bool)
    for at in list(junctions_mm) + list(ends_mm):
        near = np.abs(s - at) <= 2.0 * max(min_mm, factor * float(r.max() if len(r) else 0))
        rr = float(r[near].max()) if near.any() else 0.0
        out |= np.abs(s - at) <= max(min_mm, factor * rr)
    return out
