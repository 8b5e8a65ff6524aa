"""One phantom case in memory: the grid and every random draw from the case seed, in order
(grid and anatomy, trees, Hounsfield values, lung vessels, plaques, noise), composed from
:mod:`.anatomy`, :mod:`.trees` and :mod:`.realism`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from vesselfm.data.phantom.anatomy import (
    Tissue,
    _Anatomy,
    _hounsfield,
    _paint_lung_vessels,
    _render_anatomy,
    _sample_anatomy,
)
from vesselfm.data.phantom.geometry import _ball, _Grid
from vesselfm.data.phantom.realism import _add_streaks, _finish_image
from vesselfm.data.phantom.style import STYLE_STREAM, check_style, randomise, to_int16
from vesselfm.data.phantom.trees import _build_label, _calcifications, _Context

if TYPE_CHECKING:
    from vesselfm.data.phantom.trees import _Branch, _Variants

MIN_SIDE = 32
# The field of view (mm) the anatomy is drawn for; a larger or smaller one scales it.
_REFERENCE_FOV_MM = np.array([200.0, 200.0, 130.0])


@dataclass
class Phantom:
    """One synthetic coronary CTA case.

    Attributes:
        image: int16 Hounsfield units, shape ``(X, Y, Z)`` in NIfTI voxel order.
        label: uint8 0/1 coronary lumen, same shape.
        affine: 4x4 float64 voxel -> RAS+ mm; ``diag(-sx, -sy, sz)`` plus an offset, every entry
            exactly representable in float32 so it survives a NIfTI round trip unchanged.
        spacing: ``(sx, sy, sz)`` voxel sizes in mm, the column norms of ``affine[:3, :3]``.
        case_id: the case name (``"1"`` for ``1.img.nii.gz``).
        tissue: uint8 ``Tissue`` codes before blur and noise, same shape (ground truth for
            tests and figures); with ``style="randomised"`` the CT anatomy's, without the
            extra trees, distractors and context the style adds.
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    case_id: str
    tissue: np.ndarray | None = field(default=None, repr=False)
    # the coronary branches as drawn (mm from the field of view's centre), for the ImageCAS-X
    # segment map, centrelines and stenosis records (:mod:`.imagecasx`)
    branches: list[_Branch] | None = field(default=None, repr=False)


def _f32(x: float, quantum: float) -> float:
    """Round ``x`` to a multiple of ``quantum`` (a power of two), exact in float32."""
    value = float(np.float32(round(x / quantum) * quantum))
    assert value == float(np.float64(np.float32(value)))
    return value


def _check_shape(shape: Sequence[int]) -> tuple[int, int, int]:
    values = list(shape) if isinstance(shape, Sequence) and not isinstance(shape, str) else None
    if (
        values is None
        or len(values) != 3
        or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in values)
        or min(values) < MIN_SIDE
    ):
        raise ValueError(
            f"shape must be 3 integers >= {MIN_SIDE} (X, Y, Z voxels), got {shape!r}; "
            "e.g. shape=[512,512,256] (ImageCAS) or shape=[96,96,64]"
        )
    return int(values[0]), int(values[1]), int(values[2])


def _check_seed(seed: int, key: str = "seed") -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{key} must be a non-negative integer, got {seed!r}")
    return int(seed)


def _check_count(value: int | None, key: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{key} must be a non-negative integer or null (random), got {value!r}")
    return int(value)


def _case_setup(
    shape: tuple[int, int, int],
    seed: int,
    spacing: Sequence[float] | None,
    stenoses: int | None,
    variants: _Variants | None = None,
) -> tuple[_Grid, _Anatomy, _Context, np.ndarray]:
    """Draw the grid, the anatomy and the tree-building context of one case."""
    rng = np.random.default_rng([seed, 0])
    drawn = np.array([rng.uniform(0.30, 0.45)] * 2 + [rng.uniform(0.5, 0.625)])
    if spacing is not None:
        if len(spacing) != 3 or not all(
            isinstance(h, (int, float)) and 0.05 <= h <= 10 for h in spacing
        ):
            raise ValueError(
                f"spacing must be 3 voxel sizes in mm within [0.05, 10], got {spacing!r}"
            )
        drawn = np.asarray(spacing, dtype=float)
    sp = np.array([_f32(h, 2.0**-14) for h in drawn])
    grid = _Grid.make(shape, sp)
    scale = float(np.min(np.asarray(shape) * sp / _REFERENCE_FOV_MM))
    # Any point of a centreline lies within half a voxel diagonal of a voxel centre, so tubes at
    # least that thick are 26-connected; keep some slack. Tubes whose surfaces are more than a
    # voxel diagonal apart can never touch (26-adjacent centres are at most a diagonal apart).
    diagonal = float(np.linalg.norm(sp))
    r_floor = 0.6 * diagonal
    trunk_mm = max(2.5 * scale, r_floor * 1.6)
    anat = _sample_anatomy(rng, scale, min_root_radius=2.5 * trunk_mm)
    origin = np.array(
        [
            _f32(sp[0] * (shape[0] - 1) / 2 + rng.uniform(-20, 20), 2.0**-6),
            _f32(sp[1] * (shape[1] - 1) / 2 + rng.uniform(-40, 10), 2.0**-6),
            _f32(rng.uniform(-260.0, -120.0), 2.0**-6),
        ]
    )
    ctx = _Context(
        heart=anat.heart,
        root_center=anat.root_center,
        root_radius=anat.root_radius,
        half_extent=(np.asarray(shape) - 1) / 2.0 * sp,
        spacing=sp,
        scale=scale,
        r_floor=r_floor,
        margin=1.15 * diagonal,
        gap=0.3 * scale,
        step=min(0.5 * r_floor, 0.5),
        phi=anat.phi,
        t_av=anat.t_av,
        t_root=anat.t_root,
        stenoses=stenoses,
        variants=variants,
    )
    return grid, anat, ctx, origin


def generate_phantom(
    shape: tuple[int, int, int] = (512, 512, 256),
    seed: int = 0,
    *,
    spacing: tuple[float, float, float] | None = None,
    noise_std: float | None = None,
    stenoses: int | None = None,
    calcifications: int | None = None,
    streaks: bool = False,
    coronary_variants: bool = False,
    case_id: str | None = None,
    style: str = "ct",
) -> Phantom:
    """Generate one synthetic coronary CTA case in memory.

    The same ``shape`` and ``seed`` (and options) always give the same arrays.

    Args:
        shape: ``(X, Y, Z)`` voxels, each >= 32. ImageCAS is 512 x 512 x 206-275.
        seed: non-negative integer; every random choice derives from it.
        spacing: ``(sx, sy, sz)`` mm; default random, 0.30-0.45 in-plane, 0.50-0.625 between
            slices. The anatomy is scaled to the field of view ``shape * spacing``.
        noise_std: image noise standard deviation in HU; default random in [20, 40].
        stenoses: number of focal narrowings (30-70 %) on LAD/LCx/RCA; default random 0-2.
        calcifications: number of calcified plaques (800-1200 HU, not labelled); default
            random 0-3.
        streaks: add faint streak artefacts through the heart.
        coronary_variants: draw the anatomy ImageCAS-X labels (left-, co- and right-dominant
            trees, a ramus intermedius) and 20-90 % stenoses recorded as rendered (see
            :mod:`.imagecasx`); off, a seed gives the same case as before these existed.
        case_id: stored in the result; default ``"phantom-<seed>"``.
        style: ``"ct"`` (CT Hounsfield units, as above) or ``"randomised"``: the same anatomy
            and coronaries rendered with a random appearance and extra labelled/unlabelled tubes
            (:mod:`.style`, drawn from its own stream; ``"ct"`` output does not change).

    Returns:
        A ``Phantom``: ``image`` int16 HU ``(X, Y, Z)``, ``label`` uint8 0/1, ``affine``
        (voxel -> RAS+ mm), ``spacing``, ``case_id`` and the noise-free ``tissue`` map.

    Raises:
        ValueError: a bad shape, seed or option.
    """
    shape = _check_shape(shape)
    seed = _check_seed(seed)
    check_style(style)
    stenoses = _check_count(stenoses, "stenoses")
    calcifications = _check_count(calcifications, "calcifications")
    if noise_std is not None and not (
        isinstance(noise_std, (int, float)) and 0 <= noise_std <= 500
    ):
        raise ValueError(
            f"noise_std must be a number of HU in [0, 500] or null (random), got {noise_std!r}"
        )

    variants = None
    if coronary_variants:  # their own stream: the other draws of the seed stay as they are
        from vesselfm.data.phantom.trees import _Variants

        vrng = np.random.default_rng([seed, 6])
        dominance = str(vrng.choice(["right", "left", "co"], p=[0.5, 0.25, 0.25]))
        variants = _Variants(dominance=dominance, ramus=bool(vrng.random() < 0.5), rng=vrng)
    grid, anat, ctx, origin = _case_setup(shape, seed, spacing, stenoses, variants)
    branches, label_box, depth, lumen = _build_label(grid, ctx, seed)

    # --- tissues and intensities ---
    hu = _hounsfield(np.random.default_rng([seed, 2]))
    max_radius = max(float(b.radii.max()) for b in branches)
    # The epicardial fat is thick enough to hold the vessels running over the heart.
    fat_layer = max(anat.fat_layer, 2 * max_radius + ctx.gap + 2 * float(grid.spacing.max()))
    canvas = _render_anatomy(grid, anat, hu, fat_layer)
    _paint_lung_vessels(canvas, grid, anat, np.random.default_rng([seed, 5]))

    # Vessels: partial-volume blend of the lumen over whatever they cross, then the label. The
    # voxels on the label's edge (depth ~ 0) are mostly lumen, as an annotator would draw it.
    background = canvas.image.copy() if style == "randomised" else None
    occ = np.clip(depth / float(grid.spacing.mean()) + 0.75, 0.0, 1.0)
    view = canvas.image[label_box]
    view += occ * (np.float32(hu["lumen"]) - view)
    canvas.tissue[label_box][lumen] = Tissue.LUMEN
    label = np.zeros(shape, dtype=np.uint8)
    label[label_box] = lumen

    lesion_rng = np.random.default_rng([seed, 4])
    n_calc = calcifications if calcifications is not None else int(lesion_rng.integers(0, 4))
    for center, radius in _calcifications(branches, n_calc, grid, ctx, lesion_rng):
        box = grid.box(center - radius, center + radius)
        if box is not None:
            canvas.paint(
                box, _ball(grid, box, center, radius) & (label[box] == 0), Tissue.CALCIUM, "calcium"
            )

    noise_rng = np.random.default_rng([seed, 3])
    sigma_vox = [noise_rng.uniform(0.4, 0.65)] * 2 + [noise_rng.uniform(0.4, 0.6)]
    target_std = noise_std if noise_std is not None else noise_rng.uniform(20.0, 40.0)
    if streaks:
        _add_streaks(canvas.image, grid, anat.heart.center, noise_rng)
    if background is not None:
        styled, label, _ = randomise(
            background, label, grid.spacing, np.random.default_rng([seed, STYLE_STREAM])
        )
        image = to_int16(styled)
    else:
        image = _finish_image(canvas.image, sigma_vox, float(target_std), noise_rng)

    sp = grid.spacing
    affine = np.diag([-sp[0], -sp[1], sp[2], 1.0])
    affine[:3, 3] = origin
    return Phantom(
        image=image,
        label=label,
        affine=affine,
        spacing=(float(sp[0]), float(sp[1]), float(sp[2])),
        case_id=case_id if case_id is not None else f"phantom-{seed}",
        tissue=canvas.tissue,
        branches=branches,
    )
