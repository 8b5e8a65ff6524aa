"""Domain randomisation of a phantom's appearance (``style=randomised``), after vesselFM's D_drand.

The vessel geometry stays exact; only what the scanner would make of it is drawn at random, so a
model trained on it has to learn "tubular tree" rather than "our CT generator". One call of
:func:`randomise` draws a :class:`StyleParams` (every factor below, within :data:`TRAIN_RANGES`)
and renders a new image from a background image and the label:

- **intensities and contrast**: a random piecewise-linear (not necessarily monotone) map of the
  background's intensities (kept as is with probability ``keep_mapping``), then the vessel
  intensity set to the median of a shell around the vessels plus ``vessel_contrast`` (in units of
  the background's 1-99 % range): darker than the surroundings, barely brighter, or much brighter;
- **background textures**: a smooth random field, a fine noise texture, and unlabelled
  distractors: unbranched, nearly straight tubes, mostly of the opposite contrast sign (kept two
  voxels clear of the vessels), so that a branching tree of the vessels' contrast is a vessel;
- **context**: ellipsoids of fat, soft tissue, fluid or air near the field of view's centre;
- **partial volume**: the vessel occupies a Gaussian-softened fraction of its edge voxels;
- **resolution and anisotropy**: the image is box-averaged by a factor per axis and upsampled
  back (thick slices, coarse in-plane sampling);
- **blur/PSF** (Gaussian per axis), **bias field** (smooth multiplicative), **noise** (Gaussian,
  optionally correlated by a blur), **streaks and rings** (in the axial planes);
- **vessel calibre and tortuosity beyond the coronary range**: extra labelled tube trees with
  trunk radii and tortuosity drawn from wider ranges (their voxels are added to the label, which
  is still exactly the rasterised geometry);
- **each factor on its own** (``factor_probability`` < 1): every factor of
  :data:`GATED_FACTORS` is drawn with that probability and otherwise left out;
- **a background unrelated to any anatomy** (``synthetic_background`` > 0): the scan's anatomy
  replaced by random ellipsoid blobs before everything above, as D_drand's random backgrounds.

Randomness comes only from the generator passed in (the phantom uses its own stream
``(seed, STYLE_STREAM)``), so the CT style draws are untouched. The output intensities are
arbitrary units around [0, 1]: ``prepare`` and ``infer`` normalise by percentiles anyway.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> image = rng.normal(size=(24, 20, 12)).astype(np.float32)
    >>> label = np.zeros((24, 20, 12), np.uint8); label[10:13, 8:11, :] = 1
    >>> out, lab, params = randomise(image, label, (0.4, 0.4, 0.5), rng)
    >>> out.shape, bool((lab >= label).all())
    ((24, 20, 12), True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace

import numpy as np
from scipy import ndimage

from vesselfm.data.phantom.geometry import _Grid, _segment_depth, _unit

STYLES = ("ct", "randomised")
STYLE_PER = ("case", "patch")
# The phantom's random stream for the style: (seed, STYLE_STREAM), disjoint from streams 0-5.
STYLE_STREAM = 0x57F1

# Every factor's training range: (low, high) for numbers drawn uniformly (counts: integers,
# inclusive), probabilities as single numbers. Units: "range" = the background's 1-99 %
# intensity range (the image is mapped to [0, 1] on it), "vox" = voxels, "mm" = millimetres.
TRAIN_RANGES: dict[str, tuple[float, float] | float] = {
    "keep_mapping": 0.25,  # probability of keeping the background's own intensity order
    "mapping_points": (2, 5),  # inner control points of the random intensity map
    "vessel_contrast": (-0.6, 0.9),  # range; < 0 darker than the surroundings
    "min_contrast": 0.15,  # range, smallest |vessel contrast| (barely brighter/darker)
    "dark_probability": 0.3,  # probability of a vessel darker than its surroundings
    "smooth_texture": (0.0, 0.25),  # range, amplitude of a smooth field
    "smooth_scale": (4.0, 12.0),  # vox, its correlation length
    "noise_texture": (0.0, 0.15),  # range, amplitude of a fine texture
    "texture_scale": (0.7, 2.0),  # vox
    "distractors": (0, 6),  # unlabelled tubes
    "distractor_radius": (0.3, 2.0),  # mm
    "distractor_same_sign": 0.3,  # probability of the vessels' contrast sign (else opposite)
    "context": (0, 4),  # ellipsoids of fat / soft tissue / fluid / air
    "context_radius": (3.0, 15.0),  # mm, semi-axes
    "extra_vessels": (1, 3),  # labelled tube trees beyond the coronary range
    "extra_radius": (0.4, 2.4),  # mm, trunk radius of an extra tree
    "extra_tortuosity": (0.0, 0.7),  # radians of direction change per step (random walk)
    "partial_volume": (0.3, 0.8),  # vox, Gaussian softening of the vessel fraction
    "downsample_xy": (1.0, 2.0),  # in-plane resolution loss (box average), factor
    "downsample_z": (1.0, 2.5),  # through-plane resolution loss, factor
    "blur": (0.0, 1.2),  # vox, PSF sigma per axis
    "bias": (0.0, 0.35),  # log-amplitude of the multiplicative bias field
    "noise": (0.0, 0.12),  # range, noise standard deviation
    "noise_to_contrast": 0.35,  # the noise sigma stays below this share of |vessel contrast|
    "noise_correlation": (0.0, 1.0),  # vox, blur sigma applied to the noise
    "streak_probability": 0.3,
    "streaks": (0.0, 0.08),  # range, amplitude of streaks in the axial planes
    "ring_probability": 0.2,
    "rings": (0.0, 0.06),  # range, amplitude of rings about an axial centre
    "ring_period": (2.0, 6.0),  # vox
    # probability that each optional factor of GATED_FACTORS is drawn at all (else it is left
    # out: identity): styles then span "the CT look with one or two changes" to "everything
    # changed", not only the latter
    "factor_probability": 1.0,
    # probability that the scan's own anatomy is replaced by a random background of ellipsoid
    # blobs (vesselFM's D_drand draws vessels over backgrounds unrelated to any anatomy): the
    # model cannot then learn where vessels lie in our phantom's heart, only what a vessel is
    "synthetic_background": 0.0,
    "background_blobs": (2, 10),  # ellipsoids of the random background
    "blob_radius": (0.1, 0.6),  # their semi-axes, share of the field of view
}
# The factors "factor_probability" switches off (each on its own): their value when left out.
GATED_FACTORS: dict[str, object] = {
    "smooth_texture": 0.0, "noise_texture": 0.0, "distractors": 0, "context": (),
    "downsample": (1.0, 1.0, 1.0), "blur": (0.0, 0.0, 0.0), "bias": 0.0, "noise": 0.0,
}  # fmt: skip
CONTEXT_KINDS = ("fat", "soft_tissue", "fluid", "air")
# Where each context kind sits in the [0, 1] range before the random map (air darkest).
_CONTEXT_LEVELS = {"air": (0.0, 0.05), "fat": (0.1, 0.3), "soft_tissue": (0.35, 0.55),
                   "fluid": (0.45, 0.7)}  # fmt: skip


@dataclass(frozen=True)
class StyleParams:
    """One draw of every factor (see :data:`TRAIN_RANGES` for units and ranges)."""

    mapping: tuple[tuple[float, ...], tuple[float, ...]] | None  # (x, y) control points; None: kept
    vessel_contrast: float
    smooth_texture: float
    smooth_scale: float
    noise_texture: float
    texture_scale: float
    distractors: int
    distractor_radius: tuple[float, ...]
    distractor_sign: tuple[float, ...]  # +1: the vessels' contrast sign, -1: the opposite
    context: tuple[str, ...]
    context_radius: tuple[float, ...]
    extra_vessels: int
    extra_radius: tuple[float, ...]
    extra_tortuosity: tuple[float, ...]
    partial_volume: float
    downsample: tuple[float, float, float]
    blur: tuple[float, float, float]
    bias: float
    noise: float
    noise_correlation: float
    streaks: float  # 0: none
    rings: float  # 0: none
    ring_period: float
    # ellipsoids of a random background replacing the scan's anatomy; 0: the anatomy is kept
    background_blobs: int = 0

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


def _u(rng: np.random.Generator, ranges: Mapping[str, object], key: str) -> float:
    lo, hi = ranges[key]  # type: ignore[misc]
    return float(rng.uniform(lo, hi))


def _n(rng: np.random.Generator, ranges: Mapping[str, object], key: str) -> int:
    lo, hi = ranges[key]  # type: ignore[misc]
    return int(rng.integers(int(lo), int(hi) + 1))


def _contrast(rng: np.random.Generator, r: Mapping[str, object]) -> float:
    """Vessel contrast: darker with ``dark_probability``, else brighter, and at least
    ``min_contrast`` either way (an invisible vessel with a label teaches only noise)."""
    lo, hi = r["vessel_contrast"]  # type: ignore[misc]
    floor = float(r["min_contrast"])  # type: ignore[arg-type]
    dark = lo < -floor and (hi <= floor or rng.random() < float(r["dark_probability"]))  # type: ignore[arg-type]
    return float(rng.uniform(lo, -floor) if dark else rng.uniform(floor, hi))


def draw_style(rng: np.random.Generator, ranges: Mapping[str, object] | None = None) -> StyleParams:
    """Draw every factor of one style from ``ranges`` (default :data:`TRAIN_RANGES`).

    Args:
        rng: the style's own generator.
        ranges: factor -> ``(low, high)`` or a probability; missing keys take the training range.

    Returns:
        The drawn :class:`StyleParams`.
    """
    r = {**TRAIN_RANGES, **(ranges or {})}
    mapping = None
    if rng.random() >= float(r["keep_mapping"]):  # type: ignore[arg-type]
        k = _n(rng, r, "mapping_points")
        xs = (0.0, *sorted(float(x) for x in rng.uniform(0.05, 0.95, k)), 1.0)
        mapping = (xs, tuple(float(y) for y in rng.uniform(0.0, 1.0, k + 2)))
    n_dis = _n(rng, r, "distractors")
    n_ctx = _n(rng, r, "context")
    n_extra = _n(rng, r, "extra_vessels")
    streak = _u(rng, r, "streaks") if rng.random() < float(r["streak_probability"]) else 0.0  # type: ignore[arg-type]
    ring = _u(rng, r, "rings") if rng.random() < float(r["ring_probability"]) else 0.0  # type: ignore[arg-type]
    dxy = _u(rng, r, "downsample_xy")
    contrast = _contrast(rng, r)
    # the noise range, its top capped at noise_to_contrast x |contrast|
    noise_lo, noise_hi = r["noise"]  # type: ignore[misc]
    noise_hi = min(float(noise_hi), float(r["noise_to_contrast"]) * abs(contrast))  # type: ignore[arg-type]
    noise = float(rng.uniform(min(float(noise_lo), noise_hi), noise_hi))
    params = StyleParams(
        mapping=mapping,
        vessel_contrast=contrast,
        smooth_texture=_u(rng, r, "smooth_texture"),
        smooth_scale=_u(rng, r, "smooth_scale"),
        noise_texture=_u(rng, r, "noise_texture"),
        texture_scale=_u(rng, r, "texture_scale"),
        distractors=n_dis,
        distractor_radius=tuple(_u(rng, r, "distractor_radius") for _ in range(n_dis)),
        distractor_sign=tuple(
            1.0 if rng.random() < float(r["distractor_same_sign"]) else -1.0  # type: ignore[arg-type]
            for _ in range(n_dis)
        ),
        context=tuple(str(rng.choice(CONTEXT_KINDS)) for _ in range(n_ctx)),
        context_radius=tuple(_u(rng, r, "context_radius") for _ in range(n_ctx)),
        extra_vessels=n_extra,
        extra_radius=tuple(_u(rng, r, "extra_radius") for _ in range(n_extra)),
        extra_tortuosity=tuple(_u(rng, r, "extra_tortuosity") for _ in range(n_extra)),
        partial_volume=_u(rng, r, "partial_volume"),
        downsample=(dxy, dxy, _u(rng, r, "downsample_z")),
        blur=tuple(_u(rng, r, "blur") for _ in range(3)),  # type: ignore[arg-type]
        bias=_u(rng, r, "bias"),
        noise=noise,
        noise_correlation=_u(rng, r, "noise_correlation"),
        streaks=streak,
        rings=ring,
        ring_period=_u(rng, r, "ring_period"),
    )
    if rng.random() < float(r["synthetic_background"]):  # type: ignore[arg-type]
        params = replace(params, background_blobs=_n(rng, r, "background_blobs"))
    keep = float(r["factor_probability"])  # type: ignore[arg-type]
    if keep >= 1.0:
        return params
    off = {k: v for k, v in GATED_FACTORS.items() if rng.random() >= keep}
    if "distractors" in off:
        off.update(distractor_radius=(), distractor_sign=())
    if "context" in off:
        off.update(context_radius=())
    return replace(params, **off)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- geometry
def tube_tree(
    shape: Sequence[int],
    spacing: Sequence[float],
    rng: np.random.Generator,
    trunk_radius: float,
    tortuosity: float,
    *,
    start: np.ndarray | None = None,
    direction: np.ndarray | None = None,
    generations: int = 3,
    min_radius: float | None = None,
) -> np.ndarray:
    """Rasterise a random branching tube tree: boolean ``(X, Y, Z)`` mask of the lumen.

    A random walk of capsules from ``start`` (default: a random voxel-space point in the inner
    half) whose direction turns by up to ``tortuosity`` radians per step; each segment forks into
    two children with radius 0.75 of the parent's, for ``generations`` generations. The mask is
    exactly the union of the capsules (voxel centres with depth >= 0), the radius floored at
    0.6 voxel diagonals so that the tubes stay 26-connected.

    Args:
        shape: ``(X, Y, Z)`` voxels.
        spacing: voxel size in mm.
        rng: random generator.
        trunk_radius: radius of the first segment, mm.
        tortuosity: radians of random turn per step.
        start: first point, mm from the volume's centre.
        direction: first direction (unit vector).
        generations: branching depth.
        min_radius: radius floor in mm (default 0.6 voxel diagonal).

    Returns:
        Boolean mask of the tree.
    """
    grid = _Grid.make(shape, np.asarray(spacing, dtype=float))
    sp = grid.spacing
    half = (np.asarray(shape) - 1) / 2.0 * sp
    floor = min_radius if min_radius is not None else 0.6 * float(np.linalg.norm(sp))
    mask = np.zeros(tuple(shape), dtype=bool)
    a0 = start if start is not None else rng.uniform(-0.5, 0.5, 3) * half
    d0 = direction if direction is not None else _unit(rng.normal(size=3))
    step = max(4.0 * float(sp.mean()), 1.5 * trunk_radius)
    fov = float(np.min(half)) * 2
    stack = [(np.asarray(a0, float), _unit(np.asarray(d0, float)), trunk_radius, 0)]
    while stack:
        a, d, r, gen = stack.pop()
        length = rng.uniform(0.3, 0.6) * fov * (0.8**gen)
        n = max(1, int(length / step))
        for _ in range(n):
            d = _unit(d + tortuosity * rng.normal(size=3))
            b = a + d * step
            ra = max(r, floor)
            box, depth = _segment_depth(grid, a, b, ra, ra, 2.0 * sp)
            if box is not None:
                mask[box] |= depth >= 0
            a = b
            if np.any(np.abs(a) > half * 1.3):
                break
        if gen < generations and np.all(np.abs(a) <= half):
            for turn in (-1.0, 1.0):
                side = _unit(np.cross(d, rng.normal(size=3)))
                stack.append((a, _unit(d + turn * rng.uniform(0.4, 0.9) * side), 0.75 * r, gen + 1))
    return mask


# --------------------------------------------------------------------------- image
def _unit_range(image: np.ndarray) -> np.ndarray:
    lo, hi = np.percentile(image, [1.0, 99.0])
    if hi - lo < 1e-6:
        hi = lo + 1.0
    return ((image - lo) / (hi - lo)).astype(np.float32)


def _linear_matrix(n_out: int, n_in: int) -> np.ndarray:
    """``(n_out, n_in)`` linear interpolation between ``n_in`` samples spread over the same extent
    (cell centres, edges clamped)."""
    pos = (np.arange(n_out) + 0.5) * n_in / n_out - 0.5
    lo = np.clip(np.floor(pos).astype(int), 0, n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    w = np.clip(pos - lo, 0.0, 1.0)
    m = np.zeros((n_out, n_in), dtype=np.float32)
    m[np.arange(n_out), lo] += 1.0 - w
    m[np.arange(n_out), hi] += w
    return m


def _along_axes(volume: np.ndarray, matrices: Sequence[np.ndarray | None]) -> np.ndarray:
    """Apply ``matrices[k]`` (``(n_out, n_in)``) along axis ``k`` (``None``: leave the axis)."""
    out = volume
    for axis, m in enumerate(matrices):
        if m is not None:
            out = np.moveaxis(np.tensordot(m, out, axes=([1], [axis])), 0, axis)
    return np.ascontiguousarray(out, dtype=np.float32)


def _smooth_field(shape: Sequence[int], scale: float, rng: np.random.Generator) -> np.ndarray:
    """Zero-mean, unit-max random field with correlation length ``scale`` voxels (a coarse
    random grid, linearly interpolated: cheap)."""
    coarse = tuple(max(2, int(math.ceil(s / scale)) + 1) for s in shape)
    field = rng.standard_normal(coarse).astype(np.float32)
    up = _along_axes(field, [_linear_matrix(s, c) for s, c in zip(shape, coarse, strict=True)])
    up -= up.mean()
    return up / (np.abs(up).max() + 1e-6)


def _blob_background(
    grid: _Grid, n: int, rng: np.random.Generator, radius: tuple[float, float]
) -> np.ndarray:
    """A background unrelated to any anatomy: a random level, then ``n`` axis-aligned ellipsoids
    (semi-axes ``radius`` x the field of view) of random levels in [0, 1], later ones over
    earlier ones."""
    shape = tuple(int(len(a)) for a in grid.axes)
    img = np.full(shape, rng.uniform(0.0, 1.0), dtype=np.float32)
    fov = np.asarray(shape, float) * grid.spacing
    x, y, z = grid.coords(tuple(slice(None) for _ in range(3)))  # type: ignore[arg-type]
    for _ in range(int(n)):
        centre = rng.uniform(-0.5, 0.5, 3) * fov
        axes = rng.uniform(*radius, 3) * fov
        inside = ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + (
            (z - centre[2]) / axes[2]
        ) ** 2 <= 1.0
        img[inside] = rng.uniform(0.0, 1.0)
    return img


def _resolution(image: np.ndarray, factors: Sequence[float]) -> np.ndarray:
    """Average blocks of ``factors`` voxels per axis and interpolate back (linear): the
    resolution of a coarser grid on the same one."""
    mats: list[np.ndarray | None] = []
    for n, f in zip(image.shape, factors, strict=True):
        if f < 1.05:
            mats.append(None)
            continue
        m = max(2, int(round(n / f)))
        down = np.zeros((m, n), dtype=np.float32)
        down[(np.arange(n) * m) // n, np.arange(n)] = 1.0
        down /= down.sum(axis=1, keepdims=True)
        mats.append(_linear_matrix(n, m) @ down)
    if all(m is None for m in mats):
        return image
    return _along_axes(image, mats)


def _axial_artefacts(
    shape: Sequence[int], params: StyleParams, rng: np.random.Generator
) -> np.ndarray:
    X, Y, Z = shape
    u = np.arange(X, dtype=np.float32)[:, None] - rng.uniform(0.3, 0.7) * X
    v = np.arange(Y, dtype=np.float32)[None, :] - rng.uniform(0.3, 0.7) * Y
    pattern = np.zeros((X, Y), dtype=np.float32)
    if params.streaks > 0:
        for _ in range(int(rng.integers(2, 6))):
            angle = rng.uniform(0, math.pi)
            d = -u * math.sin(angle) + v * math.cos(angle)
            pattern += params.streaks * rng.choice([-1.0, 1.0]) * np.exp(-(d**2) / 2.0)
    if params.rings > 0:
        radius = np.sqrt(u**2 + v**2)
        pattern += params.rings * np.sin(2 * math.pi * radius / params.ring_period)
    return np.broadcast_to(pattern[:, :, None], (X, Y, Z))


def randomise(
    background: np.ndarray,
    label: np.ndarray,
    spacing: Sequence[float],
    rng: np.random.Generator,
    ranges: Mapping[str, object] | None = None,
    params: StyleParams | None = None,
) -> tuple[np.ndarray, np.ndarray, StyleParams]:
    """Render one randomised image of the vessels in ``label`` over ``background``.

    Args:
        background: ``(X, Y, Z)`` intensities without (or with) the vessels: the phantom's
            noise-free tissue image in HU, or a normalised training patch.
        label: ``(X, Y, Z)`` 0/1 vessel label.
        spacing: voxel size in mm.
        rng: the style's own generator (draws the factors, then the pixels).
        ranges: factor ranges (default :data:`TRAIN_RANGES`).
        params: use these factors instead of drawing them.

    Returns:
        ``(image float32, label uint8, params)``: the label is ``label`` plus the extra vessel
        trees (exact rasterisations); the image is in arbitrary units around [0, 1].
    """
    if background.shape != label.shape or background.ndim != 3:
        raise ValueError(
            f"background and label must be the same 3D shape, got {background.shape} and {label.shape}"
        )
    params = params if params is not None else draw_style(rng, ranges)
    shape = background.shape
    label = np.asarray(label).astype(np.uint8, copy=True)
    for radius, tort in zip(params.extra_radius, params.extra_tortuosity, strict=True):
        label |= tube_tree(shape, spacing, rng, radius, tort, generations=2).astype(np.uint8)
    vessel = label.astype(bool)

    # --- background: intensity map, context, textures, distractors ---
    sp = np.asarray(spacing, dtype=float)
    grid = _Grid.make(shape, sp)
    half = (np.asarray(shape) - 1) / 2.0 * sp
    if params.background_blobs:
        blob_radius = {**TRAIN_RANGES, **(ranges or {})}["blob_radius"]
        img = _blob_background(grid, params.background_blobs, rng, blob_radius)  # type: ignore[arg-type]
    else:
        img = np.clip(_unit_range(background), -0.2, 1.2)
    for kind, radius in zip(params.context, params.context_radius, strict=True):
        centre = rng.uniform(-0.6, 0.6, 3) * half
        axes = radius * rng.uniform(0.6, 1.4, 3)
        box = grid.box(centre - axes, centre + axes)
        if box is None:
            continue
        x, y, z = grid.coords(box)
        inside = ((x - centre[0]) / axes[0]) ** 2 + ((y - centre[1]) / axes[1]) ** 2 + (
            (z - centre[2]) / axes[2]
        ) ** 2 <= 1.0
        img[box][inside] = rng.uniform(*_CONTEXT_LEVELS[kind])
    if params.mapping is not None:
        xs, ys = params.mapping
        img = np.interp(img, xs, ys).astype(np.float32)
    if params.smooth_texture > 0:
        img += params.smooth_texture * _smooth_field(shape, params.smooth_scale, rng)
    if params.noise_texture > 0:
        tex = ndimage.gaussian_filter(
            rng.standard_normal(shape).astype(np.float32), params.texture_scale
        )
        img += params.noise_texture * tex / (np.abs(tex).max() + 1e-6)
    near = ndimage.binary_dilation(vessel, iterations=2) if vessel.any() else vessel
    shell = near & ~vessel
    around = float(np.median(img[shell])) if shell.any() else float(np.median(img))
    vessel_value = around + params.vessel_contrast
    for radius, sign in zip(params.distractor_radius, params.distractor_sign, strict=True):
        # unbranched and nearly straight: a branching tree of the vessels' contrast is a vessel
        tube = tube_tree(shape, spacing, rng, radius, float(rng.uniform(0.0, 0.3)), generations=0)
        tube &= ~near
        img[tube] = around + sign * params.vessel_contrast * rng.uniform(0.6, 1.2)

    # --- vessels with partial volume ---
    if vessel.any():
        # on the vessels' bounding box, padded beyond the Gaussian's reach (0 elsewhere)
        box = tuple(
            slice(max(sl.start - 4, 0), sl.stop + 4)
            for sl in ndimage.find_objects(vessel.astype(np.uint8))[0]
        )
        frac = ndimage.gaussian_filter(vessel[box].astype(np.float32), params.partial_volume)
        frac = np.maximum(frac, 0.75 * vessel[box])  # labelled voxels are mostly lumen
        img[box] += frac * (np.float32(vessel_value) - img[box])

    # --- acquisition: resolution, PSF, bias, noise, streaks and rings ---
    img = _resolution(img, params.downsample)
    if max(params.blur) > 0.05:
        img = ndimage.gaussian_filter(img, params.blur)
    if params.bias > 0:
        img = img * np.exp(params.bias * _smooth_field(shape, 0.5 * min(shape), rng))
    if params.noise > 0:
        noise = rng.standard_normal(shape).astype(np.float32)
        if params.noise_correlation > 0.05:
            noise = ndimage.gaussian_filter(noise, params.noise_correlation)
            noise /= noise.std() + 1e-6
        img += params.noise * noise
    if params.streaks > 0 or params.rings > 0:
        img = img + _axial_artefacts(shape, params, rng)
    return img.astype(np.float32, copy=False), label, params


def to_int16(image: np.ndarray) -> np.ndarray:
    """A randomised image (around [0, 1]) as int16 for NIfTI: x 1000, rounded, clipped."""
    return np.clip(np.rint(image * 1000.0), -32768, 32767).astype(np.int16)


def check_style(style: str, key: str = "style") -> str:
    """``style`` if it is one of :data:`STYLES`, else a ``ValueError`` listing them."""
    if style not in STYLES:
        raise ValueError(f"{key} must be one of {list(STYLES)}, got {style!r}")
    return style


__all__ = [
    "CONTEXT_KINDS",
    "GATED_FACTORS",
    "STYLES",
    "STYLE_PER",
    "STYLE_STREAM",
    "TRAIN_RANGES",
    "StyleParams",
    "check_style",
    "draw_style",
    "randomise",
    "to_int16",
    "tube_tree",
]
