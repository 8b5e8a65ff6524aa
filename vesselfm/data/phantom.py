"""Synthetic coronary CT angiography phantoms with exact ground truth, in the ImageCAS layout.

A phantom is a contrast-enhanced cardiac CT volume (int16 Hounsfield units) and the label of its
coronary lumen (uint8 0/1), on a scanner-like grid: anisotropic spacing (0.30-0.45 mm in-plane,
0.50-0.625 mm between slices) and an affine whose in-plane axes are flipped as scanners write them
(voxel ``i`` runs towards the patient's left, ``j`` towards posterior, ``k`` towards superior).

What is inside (everything randomised per case from the seed):

- a thorax: air outside the body, subcutaneous fat, chest-wall muscle, sternum and spine,
  lungs (about -850 HU) with contrast-filled pulmonary vessels (bright tubes that are not
  coronaries), mediastinal fat and, at the bottom, the liver under the diaphragm;
- a heart: myocardium (about 100 HU) around contrast-filled chambers, the aortic root, the
  ascending and descending aorta (300-500 HU), all wrapped in epicardial fat;
- two coronary trees leaving the aortic root and running over the heart surface in the fat:
  the left (main stem, LAD with diagonals, LCx with obtuse marginals) and the right (RCA with
  marginals, posterior descending and posterolateral branches). Radii taper from 2-2.5 mm to
  below 1 mm; paths are curved and tortuous; optional stenoses and calcified plaques
  (over 600 HU, never labelled). The lumen is 250-450 HU, close to the blood pool, so the
  vessels are told apart by shape and context, not by a threshold;
- CT realism: partial-volume edges, a Gaussian point-spread function, correlated noise of
  20-40 HU and, optionally, streaks.

The label is exactly the coronary lumen: two 26-connected components, no loops, no cavities
(Betti numbers 2, 0, 0). Branches are kept apart from each other, from the aortic root and from
the volume's faces while they are built, and the finished label is checked; a case that fails
the check is rebuilt from the next sub-seed, so every returned phantom satisfies it.

At shapes smaller than ImageCAS (e.g. 64 voxels per side) the voxel spacing stays scanner-like
and the anatomy is scaled down to fit the field of view; vessel radii are floored at about one
voxel so that the thinnest branch stays connected.

Example:
    >>> from vesselfm.data.phantom import generate_phantom
    >>> ph = generate_phantom(shape=(64, 64, 48), seed=3)
    >>> ph.image.dtype, ph.label.dtype, ph.image.shape
    (dtype('int16'), dtype('uint8'), (64, 64, 48))
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.interpolate import PchipInterpolator
from scipy.spatial import cKDTree

from vesselfm.utils.errors import UserError
from vesselfm.utils.io import atomic_path

log = logging.getLogger(__name__)

__all__ = [
    "IMAGECAS_FOLDER_SIZE",
    "Phantom",
    "Tissue",
    "case_paths",
    "case_seed",
    "generate_phantom",
    "label_topology",
    "save_phantom",
    "write_phantom_dataset",
]

IMAGECAS_FOLDER_SIZE = 200
MIN_SIDE = 32
# The field of view (mm) the anatomy is drawn for; a larger or smaller one scales it.
_REFERENCE_FOV_MM = np.array([200.0, 200.0, 130.0])
_MAX_ATTEMPTS = 12


class Tissue(enum.IntEnum):
    """Tissue classes of ``Phantom.tissue`` (uint8 codes)."""

    AIR = 0
    LUNG = 1
    FAT = 2
    SOFT_TISSUE = 3
    BONE = 4
    CORTICAL_BONE = 5
    MYOCARDIUM = 6
    BLOOD = 7
    LUMEN = 8
    CALCIUM = 9


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
            tests and figures).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, float, float]
    case_id: str
    tissue: np.ndarray | None = field(default=None, repr=False)


# --------------------------------------------------------------------------------------------
# Topology
# --------------------------------------------------------------------------------------------


def label_topology(label: np.ndarray) -> tuple[int, int, int]:
    """Betti numbers ``(b0, b1, b2)`` of a binary 3D mask (TopCoW convention).

    Foreground 26-connected, background 6-connected; ``b2`` counts cavities (background
    components not reaching the border) and ``b1 = b0 + b2 - chi`` with ``chi`` the Euler
    characteristic of the foreground (skimage, connectivity 3). Computed on the mask's bounding
    box, padded by one voxel, so it is cheap for sparse masks.

    Args:
        label: binary array ``(X, Y, Z)``.

    Returns:
        ``(b0, b1, b2)``; ``(0, 0, 0)`` for an empty mask.
    """
    from skimage.measure import euler_number

    mask = np.asarray(label).astype(bool, copy=False)
    if mask.ndim != 3:
        raise ValueError(f"label must be 3D, got shape {mask.shape}")
    if not mask.any():
        return 0, 0, 0
    box = ndimage.find_objects(mask.astype(np.uint8))[0]
    crop = np.pad(mask[box], 1)
    _, b0 = ndimage.label(crop, structure=np.ones((3, 3, 3), dtype=bool))
    _, n_background = ndimage.label(~crop)
    b2 = n_background - 1
    chi = int(euler_number(crop, connectivity=3))
    return int(b0), int(b0 + b2 - chi), int(b2)


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _rotation(axis: np.ndarray, angle: float) -> np.ndarray:
    """Rodrigues rotation matrix about ``axis`` by ``angle`` radians."""
    k = _unit(np.asarray(axis, dtype=float))
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + math.sin(angle) * kx + (1 - math.cos(angle)) * kx @ kx


@dataclass
class _Heart:
    """An ellipsoidal heart: ``center`` (mm), semi-axes ``(L, A, B)`` along the columns of ``rot``.

    Column 0 is the long axis from base to apex; column 1 points anteriorly. Points on the
    surface are addressed by ``t`` in [-1, 1] along the long axis (base to apex) and an azimuth
    ``phi`` (radians) measured from column 1 towards column 2.
    """

    center: np.ndarray
    axes: np.ndarray
    rot: np.ndarray

    def surface(
        self, t: np.ndarray, phi: np.ndarray, lift: np.ndarray | float = 0.0
    ) -> tuple[np.ndarray, np.ndarray]:
        """Points ``(n, 3)`` mm on the surface lifted by ``lift`` mm along the outer normals."""
        L, A, B = self.axes
        t = np.clip(np.asarray(t, dtype=float), -0.999, 0.999)
        rho = np.sqrt(1.0 - t**2)
        local = np.stack([L * t, A * rho * np.cos(phi), B * rho * np.sin(phi)], axis=-1)
        normal = _unit(np.stack([t / L, rho * np.cos(phi) / A, rho * np.sin(phi) / B], axis=-1))
        points = (
            self.center + (local + np.asarray(lift, dtype=float)[..., None] * normal) @ self.rot.T
        )
        return points, normal @ self.rot.T

    def tangents(self, t: np.ndarray, phi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Surface derivatives ``dP/dt`` and ``dP/dphi`` (mm per unit), each ``(n, 3)``."""
        L, A, B = self.axes
        t = np.clip(t, -0.999, 0.999)
        rho = np.sqrt(1.0 - t**2)
        d_t = np.stack(
            [np.full_like(t, L), -A * t / rho * np.cos(phi), -B * t / rho * np.sin(phi)], -1
        )
        d_phi = np.stack([np.zeros_like(t), -A * rho * np.sin(phi), B * rho * np.cos(phi)], -1)
        return d_t @ self.rot.T, d_phi @ self.rot.T

    def local(self, x: np.ndarray) -> np.ndarray:
        """World mm ``(..., 3)`` -> heart-frame mm ``(..., 3)``."""
        return (x - self.center) @ self.rot


@dataclass
class _Branch:
    """A coronary branch: centreline ``points`` (n, 3) mm, lumen ``radii`` (n,) mm."""

    name: str
    tree: int
    parent: int | None
    junction: np.ndarray | None
    params: np.ndarray  # (n, 2): (t, phi) on the heart surface
    r_ref: np.ndarray  # (n,) radius in reference-anatomy mm, before scaling and flooring
    points: np.ndarray
    radii: np.ndarray
    arclength: np.ndarray


@dataclass
class _Context:
    """Everything the tree builder needs to know about the case."""

    heart: _Heart
    root_center: np.ndarray
    root_radius: float
    half_extent: np.ndarray  # mm from the FOV centre to the outermost voxel centre, per axis
    spacing: np.ndarray
    scale: float
    r_floor: float
    margin: float
    gap: float
    step: float
    phi: dict[str, float]
    t_av: float
    t_root: float
    stenoses: int | None


def _radius_mm(r_ref: np.ndarray, ctx: _Context) -> np.ndarray:
    """Scale reference radii to the case, floored so thin branches stay connected."""
    floor = ctx.r_floor * np.clip(r_ref / 1.2, 1.0, 1.6)
    return np.maximum(r_ref * ctx.scale, floor)


def _path_params(controls: Sequence[tuple[float, float]], heart: _Heart, n: int) -> np.ndarray:
    """A smooth (t, phi) path through ``controls`` (PCHIP), ``n`` samples."""
    c = np.asarray(controls, dtype=float)
    L, A, _ = heart.axes
    rho = np.sqrt(np.clip(1 - c[:, 0] ** 2, 0.05, 1))
    seg = np.hypot(L * np.diff(c[:, 0]), A * 0.5 * (rho[1:] + rho[:-1]) * np.diff(c[:, 1]))
    chord = np.concatenate([[0.0], np.cumsum(np.maximum(seg, 1e-6))])
    if len(c) == 2:
        u = np.linspace(0, 1, n)[:, None]
        return c[0] * (1 - u) + c[1] * u
    return PchipInterpolator(chord, c, axis=0)(np.linspace(0, chord[-1], n))


def _build_branch(
    name: str,
    tree: int,
    controls: Sequence[tuple[float, float]],
    r_ref_start: float,
    r_ref_end: float,
    ctx: _Context,
    rng: np.random.Generator,
    parent: int | None = None,
    junction: np.ndarray | None = None,
    tortuosity: float = 1.0,
    origin: np.ndarray | None = None,
) -> _Branch:
    """Turn a (t, phi) control path into a tortuous, lifted, tapered centreline.

    A trunk gets an ``origin`` (the aortic root's centre): a straight lead-in from there to the
    path's start, cut where it leaves the root. The label thus starts at the ostium with a
    clean cross-section, never with the slivers a tube cut by a sphere leaves on a grid.
    """
    heart = ctx.heart
    dense = _path_params(controls, heart, 400)
    surf, _ = heart.surface(dense[:, 0], dense[:, 1])
    s_dense = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(surf, axis=0), axis=1))])
    length = s_dense[-1]
    n = max(int(math.ceil(length / ctx.step)) + 1, 4)
    s = np.linspace(0.0, length, n)
    params = np.stack([np.interp(s, s_dense, dense[:, k]) for k in range(2)], axis=1)

    # Tortuosity: sinusoids in the surface's tangent plane, perpendicular to the path, faded in
    # from the branch origin so the branch leaves its parent smoothly. The amplitude is capped
    # so the bend radius stays well above the tube radius.
    r_ref = r_ref_start + (r_ref_end - r_ref_start) * (s / max(length, 1e-6)) ** 0.8
    radii = _radius_mm(r_ref, ctx)
    offset = np.zeros(n)
    for _ in range(2):
        wavelength = rng.uniform(18.0, 40.0) * ctx.scale
        amplitude = tortuosity * rng.uniform(0.5, 2.0) * ctx.scale
        amplitude = min(amplitude, wavelength**2 / (4 * math.pi**2 * 4.0 * float(radii.max())))
        offset += amplitude * np.sin(2 * math.pi * s / wavelength + rng.uniform(0, 2 * math.pi))
    fade = np.clip(s / max(10.0 * ctx.scale, 4 * float(radii[0])), 0, 1)
    offset *= fade * fade * (3 - 2 * fade)
    d_t, d_phi = heart.tangents(params[:, 0], params[:, 1])
    _, normal = heart.surface(params[:, 0], params[:, 1])
    grad = np.gradient(params, axis=0)
    tangent = d_t * grad[:, :1] + d_phi * grad[:, 1:]
    binormal = _unit(np.cross(normal, tangent))
    g11 = np.einsum("ij,ij->i", d_t, d_t)
    g12 = np.einsum("ij,ij->i", d_t, d_phi)
    g22 = np.einsum("ij,ij->i", d_phi, d_phi)
    b1 = np.einsum("ij,ij->i", d_t, binormal) * offset
    b2 = np.einsum("ij,ij->i", d_phi, binormal) * offset
    det = g11 * g22 - g12**2
    params = params + np.stack([(g22 * b1 - g12 * b2) / det, (g11 * b2 - g12 * b1) / det], axis=1)
    params[:, 0] = np.clip(params[:, 0], -0.97, 0.97)

    points, _ = heart.surface(params[:, 0], params[:, 1], radii + ctx.gap)
    if junction is not None:
        points[0] = junction
    if origin is not None:
        m = max(int(math.ceil(np.linalg.norm(points[0] - origin) / ctx.step)), 1)
        u = np.linspace(0.0, 1.0, m, endpoint=False)[:, None]
        points = np.concatenate([origin + u * (points[0] - origin), points])
        params = np.concatenate([np.repeat(params[:1], m, axis=0), params])
        r_ref = np.concatenate([np.full(m, r_ref[0]), r_ref])
        radii = np.concatenate([np.full(m, radii[0]), radii])
        out = np.flatnonzero(np.linalg.norm(points - ctx.root_center, axis=1) >= ctx.root_radius)
        k = int(out[0]) if len(out) else len(points) - 1
        points, params, r_ref, radii = points[k:], params[k:], r_ref[k:], radii[k:]
    arclength = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(points, axis=0), axis=1))])
    return _Branch(name, tree, parent, junction, params, r_ref, points, radii, arclength)


def _apply_stenosis(branch: _Branch, ctx: _Context, rng: np.random.Generator) -> None:
    """Narrow the lumen locally (30-70 %) at a random position in the proximal two thirds."""
    s = branch.arclength
    s0 = rng.uniform(0.2, 0.65) * s[-1]
    width = max(3.0 * float(np.interp(s0, s, branch.radii)), 2.0 * ctx.r_floor)
    severity = rng.uniform(0.3, 0.7)
    branch.r_ref = branch.r_ref * (1 - severity * np.exp(-(((s - s0) / width) ** 2)))
    branch.radii = _radius_mm(branch.r_ref, ctx)


def _first_violation(cand: _Branch, branches: list[_Branch], ctx: _Context) -> int:
    """Index of the first centreline point that breaks a spacing rule (``len`` if none).

    Rules: the tube stays one voxel inside the volume; a trunk (starting at the aortic root's
    surface) never re-enters the root, a side branch stays clear of it; every tube keeps
    ``margin`` mm of background from every other tube (of either tree), except right at the
    junction it shares with its parent or a sibling.
    """
    p, r = cand.points, cand.radii
    n = len(p)
    inside = np.all(np.abs(p) + r[:, None] <= ctx.half_extent - ctx.spacing, axis=1)
    bad = ~inside

    d_root = np.linalg.norm(p - ctx.root_center, axis=1)
    if cand.parent is None:
        bad |= d_root < ctx.root_radius * (1 - 1e-9)
    else:
        bad |= d_root < ctx.root_radius + r + 0.5 * ctx.margin

    if branches:
        q = np.concatenate([b.points for b in branches])
        rq = np.concatenate([b.radii for b in branches])
        sq = np.concatenate([b.arclength for b in branches])
        owner = np.concatenate([np.full(len(b.points), k) for k, b in enumerate(branches)])
        # Near its junction a branch overlaps its parent and its siblings: pairs of points that
        # are both within ``zone`` (arc length) of the junction are not checked. Beyond it, a
        # branch leaving at over ~40 degrees is clear, a shallower one is cut short.
        s_junction, zone = 0.0, 0.0
        if cand.parent is not None and cand.junction is not None:
            parent = branches[cand.parent]
            kj = int(np.argmin(np.linalg.norm(parent.points - cand.junction, axis=1)))
            s_junction = float(parent.arclength[kj])
            zone = 1.5 * (float(r[0]) + float(parent.radii[kj]) + ctx.margin)
        tree = cKDTree(q)
        reach = r + float(rq.max()) + ctx.margin
        for i, neighbours in enumerate(tree.query_ball_point(p, reach)):
            if not neighbours or bad[i]:
                continue
            nb = np.asarray(neighbours)
            close = np.linalg.norm(q[nb] - p[i], axis=1) < r[i] + rq[nb] + ctx.margin
            for j in nb[close]:
                other = branches[owner[j]]
                if cand.arclength[i] < zone:
                    if owner[j] == cand.parent and abs(sq[j] - s_junction) < zone:
                        continue
                    sibling = (
                        other.parent == cand.parent
                        and other.junction is not None
                        and np.array_equal(other.junction, cand.junction)
                    )
                    if sibling and sq[j] < zone:
                        continue
                bad[i] = True
                break
    hits = np.flatnonzero(bad)
    return int(hits[0]) if len(hits) else n


def _truncate(branch: _Branch, k: int) -> _Branch:
    return _Branch(
        branch.name,
        branch.tree,
        branch.parent,
        branch.junction,
        branch.params[:k],
        branch.r_ref[:k],
        branch.points[:k],
        branch.radii[:k],
        branch.arclength[:k],
    )


def _plan_trees(
    ctx: _Context, rng: np.random.Generator, side_branches: bool
) -> list[_Branch] | None:
    """Lay out both coronary trees; ``None`` if a main vessel cannot be placed."""
    ph = ctx.phi
    t_av, t_r = ctx.t_av, ctx.t_root
    deg = math.pi / 180
    branches: list[_Branch] = []

    def add(branch: _Branch, required_fraction: float | None) -> int | None:
        k = _first_violation(branch, branches, ctx)
        # A side branch must reach past the junction zone where it is not checked.
        r0 = float(branch.radii[0])
        min_len = r0 if required_fraction is not None else 2.0 * (2 * r0 + ctx.margin) + 2 * r0
        if required_fraction is not None and k < required_fraction * len(branch.points):
            log.debug("%s kept only %d of %d points", branch.name, k, len(branch.points))
            return -1
        if k < 3 or branch.arclength[k - 1] < min_len:
            return None
        branches.append(_truncate(branch, k))
        return len(branches) - 1

    def child(parent: int, index: int) -> tuple[np.ndarray, np.ndarray, float]:
        b = branches[parent]
        j = int(np.clip(index, 1, len(b.points) - 2))
        return b.params[j], b.points[j], float(b.r_ref[j])

    def nearest(parent: int, phi: float, stop: int | None = None) -> int:
        return int(np.argmin(np.abs(branches[parent].params[:stop, 1] - phi)))

    # Left tree: main stem -> LAD and LCx, leaving each other at a wide angle.
    # Ostia on opposite sides of the root (left and right coronary sinuses).
    d0 = 0.8 * ctx.root_radius / (float(ctx.heart.axes[1]) * math.sqrt(1 - t_r**2))
    r_lm = rng.uniform(2.0, 2.5)
    # The main stem must leave the aortic root and still show a stretch of its own before it
    # divides; on small grids (thick floored radii, small heart) that moves the
    # atrioventricular groove towards the apex.
    r_lm_mm = float(_radius_mm(np.array([r_lm]), ctx)[0])
    stem = ctx.root_radius + r_lm_mm + max(6.0 * ctx.scale, 2 * r_lm_mm + ctx.margin)
    t_av = min(max(t_av, t_r + 1.15 * stem / float(ctx.heart.axes[0])), 0.0)
    phi_bif = ph["aiv"] + rng.uniform(2, 10) * deg
    t_mid = t_r + 0.55 * (t_av - t_r)
    lm = _build_branch(
        "LM", 0, [(t_r, ph["root"] - d0), (t_mid, 0.5 * (ph["root"] + phi_bif) - 4 * deg), (t_av, phi_bif)],
        r_lm, 0.92 * r_lm, ctx, rng, tortuosity=0.3, origin=ctx.root_center,
    )  # fmt: skip
    i_lm = add(lm, 0.999)
    if i_lm is None or i_lm < 0:
        return None
    bif = branches[i_lm]
    p_bif, x_bif, r_bif = bif.params[-1], bif.points[-1], float(bif.r_ref[-1])
    t_end = rng.uniform(0.82, 0.93)
    lad = _build_branch(
        "LAD", 0,
        [tuple(p_bif), (t_av + 0.15, phi_bif - 2 * deg), (0.45, ph["aiv"] + rng.uniform(-6, 6) * deg),
         (t_end, ph["aiv"] + rng.uniform(-15, 15) * deg)],
        0.85 * r_bif, rng.uniform(0.7, 0.95), ctx, rng, parent=i_lm, junction=x_bif,
    )  # fmt: skip
    i_lad = add(lad, 0.6)
    sweep = rng.uniform(90, 140) * deg
    lcx = _build_branch(
        "LCx", 0,
        [tuple(p_bif), (t_av - 0.01, phi_bif - 0.35 * sweep),
         (t_av + rng.uniform(-0.02, 0.05), phi_bif - sweep),
         (t_av + 0.25, phi_bif - sweep - 12 * deg)],
        0.75 * r_bif, rng.uniform(0.7, 0.9), ctx, rng, parent=i_lm, junction=x_bif,
    )  # fmt: skip
    i_lcx = add(lcx, 0.5)

    # Right tree: RCA round the right atrioventricular groove to the crux, then down as the PDA.
    r_rca = rng.uniform(1.8, 2.4)
    crux = ph["piv"] - 5 * deg
    rca = _build_branch(
        "RCA", 1,
        [(t_r, ph["root"] + d0), (t_mid, ph["root"] + d0 + 12 * deg), (t_av, ph["rv"] - 5 * deg),
         (t_av + 0.02, ph["rv"] + 45 * deg), (t_av + 0.03, crux),
         (t_av + 0.15, ph["piv"]), (rng.uniform(0.55, 0.8), ph["piv"] + rng.uniform(-8, 8) * deg)],
        r_rca, rng.uniform(0.7, 0.9), ctx, rng, tortuosity=0.8, origin=ctx.root_center,
    )  # fmt: skip
    i_rca = add(rca, 0.6)
    if any(i is None or i < 0 for i in (i_lad, i_lcx, i_rca)):
        return None

    mains = [i_lad, i_lcx, i_rca]
    for _ in range(ctx.stenoses if ctx.stenoses is not None else int(rng.integers(0, 3))):
        _apply_stenosis(branches[mains[int(rng.integers(0, 3))]], ctx, rng)

    if not side_branches:
        return branches

    # Side branches, in random order; each leaves its parent at 60-90 degrees and is dropped or
    # cut short where it would crowd another tube.
    n_lad, n_lcx = len(branches[i_lad].points), len(branches[i_lcx].points)
    k_crux = nearest(i_rca, crux)
    candidates: list[tuple[str, int, int]] = []
    for _ in range(int(rng.integers(1, 4))):
        candidates.append(("D", i_lad, int(rng.uniform(0.12, 0.55) * n_lad)))
    for _ in range(int(rng.integers(1, 4))):
        candidates.append(("OM", i_lcx, int(rng.uniform(0.3, 0.85) * n_lcx)))
    for _ in range(int(rng.integers(1, 3))):
        candidates.append(
            ("AM", i_rca, nearest(i_rca, ph["rv"] + rng.uniform(5, 40) * deg, k_crux))
        )
    candidates.append(("PL", i_rca, k_crux))
    if rng.random() < 0.5:
        candidates.append(("CB", i_rca, int(rng.uniform(0.08, 0.15) * k_crux)))
    for k in rng.permutation(len(candidates)):
        kind, parent, index = candidates[k]
        (tj, pj), xj, rj = child(parent, index)
        if kind == "D":
            dphi = -rng.uniform(35, 60) * deg
            dt = rng.uniform(0.25, 0.45)
            controls = [(tj, pj), (tj + 0.3 * dt, pj + 0.5 * dphi), (min(tj + dt, 0.93), pj + dphi)]
        elif kind == "OM":
            dt = rng.uniform(0.45, 0.75)
            controls = [
                (tj, pj),
                (tj + 0.3 * dt, pj - 4 * deg),
                (min(tj + dt, 0.9), pj - rng.uniform(5, 25) * deg),
            ]
        elif kind == "AM":
            dt = rng.uniform(0.4, 0.65)
            controls = [
                (tj, pj),
                (tj + 0.35 * dt, pj + 3 * deg),
                (min(tj + dt, 0.9), pj + rng.uniform(-10, 15) * deg),
            ]
        elif kind == "PL":
            controls = [
                (tj, pj),
                (tj - 0.01, pj + 25 * deg),
                (tj + rng.uniform(0.2, 0.4), pj + rng.uniform(45, 65) * deg),
            ]
        else:  # conus branch towards the right ventricular outflow
            controls = [(tj, pj), (tj + 0.1, pj - 12 * deg), (tj + 0.3, pj - 35 * deg)]
        cand = _build_branch(
            kind, branches[parent].tree, controls, rng.uniform(0.55, 0.7) * rj, rng.uniform(0.6, 0.85),
            ctx, rng, parent=parent, junction=xj,
        )  # fmt: skip
        add(cand, None)
    return branches


# --------------------------------------------------------------------------------------------
# Rasterisation
# --------------------------------------------------------------------------------------------


@dataclass
class _Grid:
    """Voxel-centre coordinates (mm) per axis, from the centre of the field of view.

    Axis 0 runs towards the patient's left, axis 1 towards posterior, axis 2 towards superior.
    """

    axes: tuple[np.ndarray, np.ndarray, np.ndarray]
    spacing: np.ndarray

    @classmethod
    def make(cls, shape: Sequence[int], spacing: np.ndarray) -> _Grid:
        axes = tuple(
            ((np.arange(n) - (n - 1) / 2.0) * float(h)).astype(np.float32)
            for n, h in zip(shape, spacing, strict=True)
        )
        return cls(axes, np.asarray(spacing, dtype=float))  # type: ignore[arg-type]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(len(a) for a in self.axes)  # type: ignore[return-value]

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices of the voxels whose centres may lie in ``[lo, hi]`` mm (None if empty)."""
        out = []
        for a, h, lo_k, hi_k in zip(self.axes, self.spacing, lo, hi, strict=True):
            i0 = max(int(math.floor((lo_k - a[0]) / h)), 0)
            i1 = min(int(math.ceil((hi_k - a[0]) / h)) + 1, len(a))
            if i1 <= i0:
                return None
            out.append(slice(i0, i1))
        return tuple(out)  # type: ignore[return-value]

    def coords(self, box: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Broadcastable coordinate arrays ``(n,1,1), (1,n,1), (1,1,n)`` for ``box``."""
        x, y, z = (a[s] for a, s in zip(self.axes, box, strict=True))
        return x[:, None, None], y[None, :, None], z[None, None, :]


def _offset_box(box: tuple[slice, ...], outer: tuple[slice, ...]) -> tuple[slice, ...]:
    return tuple(
        slice(b.start - o.start, b.stop - o.start) for b, o in zip(box, outer, strict=True)
    )


def _segment_depth(
    grid: _Grid, a: np.ndarray, b: np.ndarray, ra: float, rb: float, pad: np.ndarray
) -> tuple[tuple[slice, ...] | None, np.ndarray | None]:
    """Signed depth (mm, positive inside) of a capsule from ``a`` to ``b`` (radius ``ra`` to
    ``rb``), on the capsule's own bounding box (``None`` if off the grid)."""
    rmax = max(ra, rb)
    box = grid.box(np.minimum(a, b) - rmax - pad, np.maximum(a, b) + rmax + pad)
    if box is None:
        return None, None
    x, y, z = grid.coords(box)
    ab = (b - a).astype(np.float32)
    dx, dy, dz = x - float(a[0]), y - float(a[1]), z - float(a[2])
    inv = 1.0 / max(float(ab @ ab), 1e-12)
    t = np.clip((dx * float(ab[0]) + dy * float(ab[1]) + dz * float(ab[2])) * inv, 0, 1)
    d = np.sqrt(
        (dx - t * float(ab[0])) ** 2 + (dy - t * float(ab[1])) ** 2 + (dz - t * float(ab[2])) ** 2
    )
    return box, ra + t * (rb - ra) - d


def _tube_margin(branches: list[_Branch], grid: _Grid) -> tuple[tuple[slice, ...], np.ndarray]:
    """Signed depth (mm, positive inside) of the union of the tubes, on their bounding box.

    Each centreline segment is a capsule whose radius is interpolated along it; its depth
    ``r(t) - distance`` is computed only inside the segment's own bounding box.
    """
    pts = np.concatenate([b.points for b in branches])
    rad = np.concatenate([b.radii for b in branches])
    pad = 2.0 * grid.spacing
    outer = grid.box((pts - rad[:, None]).min(0) - 2 * pad, (pts + rad[:, None]).max(0) + 2 * pad)
    assert outer is not None
    depth = np.full(tuple(s.stop - s.start for s in outer), -1e3, dtype=np.float32)
    for b in branches:
        for k in range(len(b.points) - 1):
            box, seg = _segment_depth(
                grid, b.points[k], b.points[k + 1], float(b.radii[k]), float(b.radii[k + 1]), pad
            )
            if box is not None:
                view = depth[_offset_box(box, outer)]
                np.maximum(view, seg, out=view)
    return outer, depth


def _ellipsoid_value(
    grid: _Grid, box: tuple[slice, ...], center: np.ndarray, rot: np.ndarray, axes: np.ndarray
) -> np.ndarray:
    """``sum((local_i / axes_i)^2)`` (float32) on ``box``: <= 1 inside the rotated ellipsoid."""
    x, y, z = grid.coords(box)
    cx, cy, cz = (float(c) for c in center)
    out: np.ndarray | None = None
    for i in range(3):
        a, b, c = (float(v) for v in rot[:, i] / axes[i])
        term = (x - cx) * a + (y - cy) * b  # (nx, ny, 1): cheap
        term = term + (z - cz) * c
        np.square(term, out=term)
        if out is None:
            out = term
        else:
            out += term
    assert out is not None
    return out


def _ellipsoid_box(
    grid: _Grid, center: np.ndarray, rot: np.ndarray, axes: np.ndarray
) -> tuple[slice, ...] | None:
    half = np.sqrt(((rot * axes[None, :]) ** 2).sum(axis=1))
    return grid.box(center - half, center + half)


def _hounsfield(rng: np.random.Generator) -> dict[str, float]:
    """Per-case Hounsfield values of the tissues (and of their variants)."""
    blood = rng.uniform(340.0, 480.0)
    return {
        "air": -1000.0,
        "lung": rng.uniform(-880.0, -800.0),
        "fat": rng.uniform(-115.0, -80.0),
        "muscle": rng.uniform(35.0, 60.0),
        "liver": rng.uniform(55.0, 80.0),
        "csf": rng.uniform(5.0, 20.0),
        "bone": rng.uniform(180.0, 300.0),
        "cortex": rng.uniform(750.0, 1100.0),
        "myocardium": rng.uniform(85.0, 130.0),
        "blood": blood,
        "blood_right": max(310.0, blood * rng.uniform(0.72, 0.95)),
        "lumen": float(np.clip(blood * rng.uniform(0.82, 0.97), 280.0, 430.0)),
        "calcium": rng.uniform(800.0, 1200.0),
    }


@dataclass
class _Anatomy:
    """Sampled, scaled anatomy (mm in the grid frame) of one case."""

    heart: _Heart
    lv: tuple[np.ndarray, np.ndarray]  # centre, semi-axes in the heart frame
    rv: tuple[np.ndarray, np.ndarray]
    atria: tuple[np.ndarray, np.ndarray]
    root_center: np.ndarray
    root_radius: float
    ascending: tuple[np.ndarray, np.ndarray, float]  # start, direction, radius
    fat_layer: float
    body: dict[str, float]
    phi: dict[str, float]
    t_av: float
    t_root: float


def _sample_anatomy(rng: np.random.Generator, scale: float, min_root_radius: float) -> _Anatomy:
    """Draw the thorax and heart of one case (reference anatomy scaled by ``scale``).

    ``min_root_radius`` (mm) keeps the aortic root wide enough for both ostia when the
    coronary radii are floored on a small grid.
    """
    s = scale
    jitter = lambda a: rng.uniform(-a, a)  # noqa: E731
    # Heart: long axis from base (right, posterior, superior) to apex (left, anterior, inferior).
    long_axis = _unit(np.array([0.58 + jitter(0.1), -0.45 + jitter(0.1), -0.62 + jitter(0.1)]))
    anterior = np.array([0.0, -1.0, 0.0])
    e2 = _unit(anterior - (anterior @ long_axis) * long_axis)
    rot = np.stack([long_axis, e2, np.cross(long_axis, e2)], axis=1)
    spin = _rotation(long_axis, jitter(0.2))
    rot = spin @ rot
    axes = np.array([58.0, 44.0, 37.0]) * rng.uniform(0.9, 1.08) * s
    center = np.array([6.0 + jitter(6), -6.0 + jitter(6), -3.0 + jitter(5)]) * s
    heart = _Heart(center, axes, rot)

    # Azimuths on the heart surface: the right ventricle faces anterior-right, the LV the
    # opposite side; the interventricular grooves lie between them.
    right = np.array([-1.0, 0.0, 0.0])
    phi_right = math.atan2(right @ rot[:, 2], right @ rot[:, 1])
    phi_rv = 0.5 * phi_right + jitter(0.1)
    phi = {
        "rv": phi_rv,
        "lv": phi_rv + math.pi,
        "aiv": phi_rv - math.pi / 2,
        "piv": phi_rv + math.pi / 2,
        "root": phi_rv - math.radians(40) + jitter(0.1),
    }
    t_av = -0.45 + jitter(0.05)
    t_root = -0.8 + jitter(0.04)

    A = axes[1]
    # LV and RV centres in the heart frame, offset towards their azimuths.
    lv_c = np.array(
        [0.08 * axes[0], 0.2 * A * math.cos(phi["lv"]), 0.2 * axes[2] * math.sin(phi["lv"])]
    )
    rv_c = np.array(
        [-0.05 * axes[0], 0.42 * A * math.cos(phi_rv), 0.42 * axes[2] * math.sin(phi_rv)]
    )
    lv = (lv_c, np.array([0.66, 0.47, 0.5]) * axes)
    rv = (rv_c, np.array([0.55, 0.3, 0.42]) * axes)
    atria = (np.array([-0.72 * axes[0], 0.0, 0.0]), np.array([0.3, 0.5, 0.52]) * axes)

    root_radius = max(rng.uniform(12.0, 15.0) * s, min_root_radius)
    surf, normal = heart.surface(np.array([t_root]), np.array([phi["root"]]))
    root_center = surf[0] + 0.25 * root_radius * normal[0]
    up = _unit(np.array([-0.15 + jitter(0.1), -0.1 + jitter(0.1), 1.0]))
    ascending = (root_center + 0.3 * root_radius * up, up, 0.9 * root_radius)

    body = {
        "cu": (-25.0 + jitter(8)) * s,
        "cv": (30.0 + jitter(6)) * s,
        "au": rng.uniform(150.0, 170.0) * s,
        "av": rng.uniform(112.0, 125.0) * s,
        "fat": rng.uniform(8.0, 18.0) * s,
        "muscle": rng.uniform(8.0, 14.0) * s,
        "spine_u": (-12.0 + jitter(5)) * s,
        "spine_v": 80.0 * s,
        "spine_r": rng.uniform(15.0, 19.0) * s,
        "aorta_u": (16.0 + jitter(4)) * s,
        "aorta_v": (50.0 + jitter(4)) * s,
        "aorta_r": rng.uniform(10.0, 13.0) * s,
        "dome_u": (-45.0 + jitter(10)) * s,
        "dome_v": (5.0 + jitter(10)) * s,
        "dome_w": center[2] - (42.0 + jitter(6)) * s,
        "dome_k": rng.uniform(0.008, 0.014) / s,
        "disc_period": rng.uniform(24.0, 28.0) * s,
        "disc_phase": rng.uniform(0.0, 1.0),
    }
    return _Anatomy(
        heart, lv, rv, atria, root_center, root_radius, ascending,
        fat_layer=rng.uniform(4.0, 7.0) * s, body=body, phi=phi, t_av=t_av, t_root=t_root,
    )  # fmt: skip


class _Canvas:
    """The tissue map (uint8 ``Tissue`` codes) and the noise-free image (float32 HU), painted
    together so that tissue variants (right-heart blood, liver, CSF) keep their own HU."""

    def __init__(self, tissue: np.ndarray, image: np.ndarray, hu: dict[str, float]) -> None:
        self.tissue, self.image, self.hu = tissue, image, hu

    def paint(
        self, box: tuple[slice, ...] | None, mask: np.ndarray, tissue: Tissue, hu: str
    ) -> None:
        sel = () if box is None else box
        self.tissue[sel][mask] = tissue
        self.image[sel][mask] = self.hu[hu]


_PLANE_TISSUES = {
    "air": Tissue.AIR, "lung": Tissue.LUNG, "fat": Tissue.FAT, "muscle": Tissue.SOFT_TISSUE,
    "liver": Tissue.SOFT_TISSUE, "csf": Tissue.SOFT_TISSUE, "bone": Tissue.BONE,
    "cortex": Tissue.CORTICAL_BONE, "blood": Tissue.BLOOD,
}  # fmt: skip


def _render_anatomy(grid: _Grid, anat: _Anatomy, hu: dict[str, float], fat_layer: float) -> _Canvas:
    """Paint the thorax and the heart (no coronaries) on the grid."""
    X, Y, Z = grid.shape
    b = anat.body
    s = anat.heart.axes[0] / 58.0  # anatomy scale, close enough for the small parts
    u, v = grid.axes[0][:, None], grid.axes[1][None, :]

    def ellipse(cu: float, cv: float, au: float, av: float) -> np.ndarray:
        return ((u - cu) / au) ** 2 + ((v - cv) / av) ** 2 <= 1.0

    # --- an axial template (names of _PLANE_TISSUES), extruded along z ---
    names = list(_PLANE_TISSUES)
    plane = np.zeros((X, Y), dtype=np.uint8)

    def put(mask: np.ndarray, name: str) -> None:
        plane[mask] = names.index(name)

    put(ellipse(b["cu"], b["cv"], b["au"], b["av"]), "fat")
    inner_u, inner_v = b["au"] - b["fat"], b["av"] - b["fat"]
    put(ellipse(b["cu"], b["cv"], inner_u, inner_v), "muscle")
    cav_u, cav_v = inner_u - b["muscle"], inner_v - b["muscle"]
    cavity = ellipse(b["cu"], b["cv"], cav_u, cav_v)
    put(cavity, "lung")
    put(cavity & ellipse(b["cu"] + 18.0 * s, b["cv"] - 30.0 * s, 30.0 * s, 70.0 * s), "fat")
    su, sv, sr = b["spine_u"], b["spine_v"], b["spine_r"]
    body = plane != names.index("air")
    put(ellipse(su, sv + 0.6 * sr, 2.4 * sr, 2.0 * sr) & body, "muscle")
    put(ellipse(b["aorta_u"], b["aorta_v"], b["aorta_r"] + 3 * s, b["aorta_r"] + 3 * s), "fat")
    put(ellipse(b["aorta_u"], b["aorta_v"], b["aorta_r"], b["aorta_r"]), "blood")
    sternum_v = b["cv"] - cav_v - 0.5 * b["muscle"]
    put(ellipse(b["cu"] + 12 * s, sternum_v, 14.0 * s, 6.0 * s), "cortex")
    put(ellipse(b["cu"] + 12 * s, sternum_v, 11.5 * s, 3.5 * s), "bone")
    vertebra = ellipse(su, sv, sr, 0.9 * sr) & body
    spongy = ellipse(su, sv, sr - 2.0 * s, 0.9 * sr - 2.0 * s) & body
    canal = ellipse(su, sv + 1.55 * sr, 0.5 * sr, 0.45 * sr) & body
    put((vertebra | ellipse(su, sv + 1.55 * sr, 0.75 * sr, 0.7 * sr)) & body, "cortex")
    put(spongy, "bone")
    put(canal, "csf")

    lut_tissue = np.array([_PLANE_TISSUES[n] for n in names], dtype=np.uint8)
    lut_hu = np.array([hu[n] for n in names], dtype=np.float32)
    canvas = _Canvas(
        np.repeat(lut_tissue[plane][:, :, None], Z, axis=2),
        np.repeat(lut_hu[plane][:, :, None], Z, axis=2),
        hu,
    )

    # Intervertebral discs: soft tissue in the vertebral body every few centimetres.
    zz = grid.axes[2]
    disc = ((zz / b["disc_period"] + b["disc_phase"]) % 1.0) < 0.2
    for k in np.flatnonzero(disc):
        canvas.paint(
            (slice(None), slice(None), slice(k, k + 1)),
            (vertebra | spongy)[:, :, None],
            Tissue.SOFT_TISSUE,
            "muscle",
        )

    # Diaphragm: below a dome, the cavity holds the liver (right) and the upper abdomen (left).
    dome = b["dome_w"] - b["dome_k"] * ((u - b["dome_u"]) ** 2 + (v - b["dome_v"]) ** 2)
    k1 = int(np.searchsorted(zz, dome.max(), side="right"))
    if k1 > 0:
        box = (slice(None), slice(None), slice(0, k1))
        t = canvas.tissue[box]
        soft = (zz[None, None, :k1] < dome[:, :, None]) & ((t == Tissue.LUNG) | (t == Tissue.FAT))
        right = (u < b["dome_u"] + 40 * s)[:, :, None]
        canvas.paint(box, soft & right, Tissue.SOFT_TISSUE, "liver")
        canvas.paint(box, soft & ~right, Tissue.SOFT_TISSUE, "muscle")

    # Ascending aorta, wrapped in fat where it crosses the lungs.
    start, up, radius = anat.ascending
    top = start + up * ((grid.axes[2][-1] - start[2]) / up[2] + radius)
    box = grid.box(
        np.minimum(start, top) - radius - fat_layer, np.maximum(start, top) + radius + fat_layer
    )
    if box is not None:
        x, y, z = grid.coords(box)
        dx, dy, dz = x - float(start[0]), y - float(start[1]), z - float(start[2])
        along = dx * float(up[0]) + dy * float(up[1]) + dz * float(up[2])
        dist2 = dx * dx + dy * dy + dz * dz - along * along
        t = canvas.tissue[box]
        wrap = (dist2 <= (radius + fat_layer) ** 2) & (along > 0)
        canvas.paint(
            box, wrap & ((t == Tissue.LUNG) | (t == Tissue.SOFT_TISSUE)), Tissue.FAT, "fat"
        )
        canvas.paint(box, (dist2 <= radius**2) & (along > 0), Tissue.BLOOD, "blood")

    # Heart: epicardial fat, myocardium, then the chambers, each in its own bounding box.
    heart = anat.heart
    outer_axes = heart.axes + fat_layer
    box = _ellipsoid_box(grid, heart.center, heart.rot, outer_axes)
    if box is not None:
        canvas.paint(
            box,
            _ellipsoid_value(grid, box, heart.center, heart.rot, outer_axes) <= 1,
            Tissue.FAT,
            "fat",
        )
    box = _ellipsoid_box(grid, heart.center, heart.rot, heart.axes)
    if box is not None:
        canvas.paint(
            box,
            _ellipsoid_value(grid, box, heart.center, heart.rot, heart.axes) <= 1,
            Tissue.MYOCARDIUM,
            "myocardium",
        )
    world = lambda c: heart.center + heart.rot @ c  # noqa: E731
    lv_c, lv_a = world(anat.lv[0]), anat.lv[1]
    rv_c, rv_a = world(anat.rv[0]), anat.rv[1]
    septum = 0.14 * heart.axes[1]
    box = _ellipsoid_box(grid, rv_c, heart.rot, rv_a)
    if box is not None:
        in_rv = _ellipsoid_value(grid, box, rv_c, heart.rot, rv_a) <= 1
        in_rv &= _ellipsoid_value(grid, box, lv_c, heart.rot, lv_a + septum) > 1
        canvas.paint(box, in_rv, Tissue.BLOOD, "blood_right")
    for c, a in ((lv_c, lv_a), (world(anat.atria[0]), anat.atria[1])):
        box = _ellipsoid_box(grid, c, heart.rot, a)
        if box is not None:
            canvas.paint(
                box, _ellipsoid_value(grid, box, c, heart.rot, a) <= 1, Tissue.BLOOD, "blood"
            )

    # Aortic root (sinuses of Valsalva).
    rc, rr = anat.root_center, anat.root_radius
    box = grid.box(rc - rr, rc + rr)
    if box is not None:
        canvas.paint(box, _ball(grid, box, rc, rr), Tissue.BLOOD, "blood")
    return canvas


def _paint_lung_vessels(
    canvas: _Canvas, grid: _Grid, anat: _Anatomy, rng: np.random.Generator
) -> None:
    """Contrast-filled pulmonary vessel trees branching out from both hila (not labelled).

    They are bright tubes like the coronaries, which keeps a model from learning "bright and
    thin means coronary".
    """
    s = anat.heart.axes[0] / 58.0
    floor = 0.6 * float(np.linalg.norm(grid.spacing))
    pad = 2.0 * grid.spacing
    hu = np.float32(canvas.hu["blood_right"] * rng.uniform(0.8, 1.0))
    base = anat.heart.center + np.array([0.0, 25.0 * s, 25.0 * s])
    stack = []
    for side in (-1.0, 1.0):
        start = base + np.array(
            [side * rng.uniform(40, 55) * s, rng.uniform(-8, 8) * s, rng.uniform(-10, 10) * s]
        )
        for _ in range(3):
            d = _unit(np.array([side, rng.uniform(-0.5, 0.7), rng.uniform(-1.0, 1.0)]))
            stack.append((start, d, rng.uniform(3.0, 4.5) * s, rng.uniform(25, 40) * s, 0))
    while stack:
        a, d, r, length, gen = stack.pop()
        b = a + d * length
        r_end = 0.75 * r
        box, depth = _segment_depth(grid, a, b, max(r, floor), max(r_end, floor), pad)
        if box is not None:
            lung = canvas.tissue[box] == Tissue.LUNG
            occ = np.clip(depth / float(grid.spacing.mean()) + 0.5, 0.0, 1.0) * lung
            view = canvas.image[box]
            view += occ * (hu - view)
            canvas.tissue[box][lung & (occ >= 0.5)] = Tissue.BLOOD
        if gen < 4:
            for turn in (-1.0, 1.0):
                nd = _unit(
                    d + turn * rng.uniform(0.3, 0.7) * _unit(np.cross(d, rng.normal(size=3)))
                )
                stack.append((b, nd, r_end, 0.75 * length, gen + 1))


def _ball(grid: _Grid, box: tuple[slice, ...], center: np.ndarray, radius: float) -> np.ndarray:
    x, y, z = grid.coords(box)
    cx, cy, cz = (float(c) for c in center)
    return (x - cx) ** 2 + (y - cy) ** 2 + (z - cz) ** 2 <= radius * radius


def _calcifications(
    branches: list[_Branch], count: int, grid: _Grid, ctx: _Context, rng: np.random.Generator
) -> list[tuple[np.ndarray, float]]:
    """Spherical plaques in the wall of the main vessels: ``(centre mm, radius mm)``."""
    mains = [b for b in branches if b.name in ("LAD", "LCx", "RCA")] or branches
    out = []
    for _ in range(count):
        b = mains[int(rng.integers(0, len(mains)))]
        n = len(b.points)
        k = min(int(rng.uniform(0.1, 0.65) * n), n - 2)
        tangent = _unit(b.points[k + 1] - b.points[k])
        side = _unit(np.cross(tangent, rng.normal(size=3)))
        radius = max(rng.uniform(0.8, 1.6) * ctx.scale, 1.3 * float(grid.spacing.max()))
        out.append((b.points[k] + side * (b.radii[k] + 0.4 * radius), radius))
    return out


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


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


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
    )
    return grid, anat, ctx, origin


def _build_label(
    grid: _Grid, ctx: _Context, seed: int
) -> tuple[list[_Branch], tuple[slice, ...], np.ndarray, np.ndarray]:
    """Plan the trees and rasterise them until the label has Betti numbers (2, 0, 0).

    Returns:
        ``(branches, box, depth, lumen)``: the tubes' bounding box in the grid, their signed
        depth (mm) and the label (bool) on that box.
    """
    for attempt in range(_MAX_ATTEMPTS):
        branches = _plan_trees(
            ctx, np.random.default_rng([seed, 1, attempt]), attempt < _MAX_ATTEMPTS - 2
        )
        if branches is None:
            log.debug("seed %d attempt %d: a main vessel did not fit", seed, attempt)
            continue
        box, depth = _tube_margin(branches, grid)
        lumen = depth >= 0
        topo = label_topology(lumen)
        if topo == (2, 0, 0):
            return branches, box, depth, lumen
        log.debug(
            "seed %d attempt %d: label Betti numbers %s, rebuilding the trees", seed, attempt, topo
        )
    raise RuntimeError(
        f"could not build coronary trees with Betti numbers (2, 0, 0) on a {grid.shape} grid, seed {seed}"
    )


def generate_phantom(
    shape: tuple[int, int, int] = (512, 512, 256),
    seed: int = 0,
    *,
    spacing: tuple[float, float, float] | None = None,
    noise_std: float | None = None,
    stenoses: int | None = None,
    calcifications: int | None = None,
    streaks: bool = False,
    case_id: str | None = None,
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
        case_id: stored in the result; default ``"phantom-<seed>"``.

    Returns:
        A ``Phantom``: ``image`` int16 HU ``(X, Y, Z)``, ``label`` uint8 0/1, ``affine``
        (voxel -> RAS+ mm), ``spacing``, ``case_id`` and the noise-free ``tissue`` map.

    Raises:
        ValueError: a bad shape, seed or option.
    """
    shape = _check_shape(shape)
    seed = _check_seed(seed)
    stenoses = _check_count(stenoses, "stenoses")
    calcifications = _check_count(calcifications, "calcifications")
    if noise_std is not None and not (
        isinstance(noise_std, (int, float)) and 0 <= noise_std <= 500
    ):
        raise ValueError(
            f"noise_std must be a number of HU in [0, 500] or null (random), got {noise_std!r}"
        )

    grid, anat, ctx, origin = _case_setup(shape, seed, spacing, stenoses)
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
    )


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


def case_seed(seed: int, index: int) -> int:
    """The seed of case ``index`` in a dataset written with ``seed`` (independent of ``n``)."""
    return int(
        np.random.SeedSequence([_check_seed(seed), _check_seed(index, "index")]).generate_state(1)[
            0
        ]
    )


def case_paths(output: str | Path, index: int) -> tuple[Path, Path]:
    """``<output>/<lo>-<hi>/<index>.img.nii.gz`` and ``.label.nii.gz`` (ImageCAS folders of 200)."""
    lo = (index - 1) // IMAGECAS_FOLDER_SIZE * IMAGECAS_FOLDER_SIZE + 1
    folder = Path(output) / f"{lo}-{lo + IMAGECAS_FOLDER_SIZE - 1}"
    return folder / f"{index}.img.nii.gz", folder / f"{index}.label.nii.gz"


def _nifti(data: np.ndarray, affine: np.ndarray, description: str):  # -> nib.Nifti1Image
    import nibabel as nib

    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = description.encode()[:79]
    return img


def save_phantom(phantom: Phantom, image_path: str | Path, label_path: str | Path) -> None:
    """Write ``phantom`` as two NIfTI files (int16 image, uint8 label), each atomically.

    Both carry the same affine as qform and sform (code 1, scanner), ``scl_slope`` 1 and
    ``scl_inter`` 0. gzip output is deterministic (no timestamp, no file name).
    """
    import nibabel as nib

    for path, data, what in (
        (image_path, phantom.image.astype(np.int16, copy=False), "image HU"),
        (label_path, phantom.label.astype(np.uint8, copy=False), "coronary lumen"),
    ):
        with atomic_path(path) as tmp:
            nib.save(
                _nifti(data, phantom.affine, f"vesselfm phantom {phantom.case_id} {what}"), tmp
            )


def write_phantom_dataset(
    output: str | Path,
    n: int,
    shape: tuple[int, int, int] = (512, 512, 256),
    seed: int = 0,
    start_index: int = 1,
    progress: bool = True,
    overwrite: bool = False,
    **options: object,
) -> list[tuple[Path, Path]]:
    """Write cases ``start_index .. start_index + n - 1`` in the ImageCAS layout.

    ``<output>/1-200/1.img.nii.gz`` and ``1.label.nii.gz``, ..., ``<output>/201-400/201...``.
    Case ``i`` is ``generate_phantom(shape, case_seed(seed, i), **options)``, so it is the same
    whatever ``n`` is. Every file is written atomically and recorded as ours
    (:mod:`vesselfm.utils.outputs`): phantoms written earlier are replaced, but a folder holding
    files vesselfm did not write (real scans, say) is refused before anything is written.

    Args:
        output: the dataset folder (created).
        n: number of cases, >= 1.
        shape: ``(X, Y, Z)`` voxels of every case.
        seed: dataset seed.
        start_index: index of the first case, >= 1.
        progress: show a tqdm progress bar.
        overwrite: write even where ``output`` holds files vesselfm did not write (those with
            the names of the phantoms are replaced).
        **options: passed to ``generate_phantom`` (``spacing``, ``noise_std``, ``stenoses``,
            ``calcifications``, ``streaks``).

    Returns:
        ``[(image_path, label_path), ...]`` in case order.

    Raises:
        ValueError: a bad ``n``, ``start_index``, shape, seed or option.
        UserError: ``output`` holds files vesselfm did not write, and not ``overwrite``.
    """
    from tqdm.auto import tqdm

    from vesselfm.utils.outputs import foreign_files_in

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be a positive number of cases, got {n!r}; e.g. n=10")
    if (
        isinstance(start_index, bool)
        or not isinstance(start_index, (int, np.integer))
        or start_index < 1
    ):
        raise ValueError(f"start_index must be an integer >= 1, got {start_index!r}")
    allowed = {"spacing", "noise_std", "stenoses", "calcifications", "streaks"}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise ValueError(f"unknown phantom option(s) {unknown}; allowed: {sorted(allowed)}")
    shape = _check_shape(shape)
    seed = _check_seed(seed)
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise UserError(f"output={output} is a file; give a folder for the phantom dataset")
    # a generator never writes into someone else's data: checked before the first file
    foreign = [] if overwrite else foreign_files_in(output)
    if foreign:
        raise UserError(
            f"output={output} holds {len(foreign)} file(s) vesselfm did not write (e.g. "
            f"{foreign[0]}); write the phantoms into an empty or new folder, or pass overwrite=true"
        )

    paths = []
    for index in tqdm(
        range(start_index, start_index + n), desc="phantoms", unit="case", disable=not progress
    ):
        phantom = generate_phantom(shape, case_seed(seed, index), case_id=str(index), **options)  # type: ignore[arg-type]
        image_path, label_path = case_paths(output, index)
        save_phantom(phantom, image_path, label_path)
        paths.append((image_path, label_path))
    log.info("wrote %d phantom case(s) of shape %s to %s", n, shape, output)
    return paths
