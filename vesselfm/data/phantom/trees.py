"""The coronary trees: centrelines on the heart surface with tapered radii, tortuosity and
stenoses, laid out so tubes keep apart; their rasterisation into the label, checked to have
Betti numbers (2, 0, 0); and the calcified plaques in the vessel walls."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.interpolate import PchipInterpolator
from scipy.spatial import cKDTree

from vesselfm.data.phantom.anatomy import _Heart
from vesselfm.data.phantom.geometry import _Grid, _offset_box, _segment_depth, _unit

log = logging.getLogger(__name__)


_MAX_ATTEMPTS = 12


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
    # ImageCAS-X phantoms only: the points from this index on form another named segment (the
    # PDA after the crux), and the planted stenoses as rendered (see ``_plant_stenosis``)
    distal: tuple[int, str] | None = None
    lesions: list[dict[str, float]] = field(default_factory=list)


@dataclass
class _Variants:
    """Anatomical variants of ImageCAS-X phantoms, drawn from their own random stream so the
    ImageCAS phantoms (``variants=None``) stay what they were for a seed.

    ``dominance`` is ``right`` (the RCA gives the PDA and the posterolateral branch), ``left``
    (the LCx reaches the crux and gives both) or ``co`` (RCA gives the PDA, LCx a
    posterolateral branch); ``ramus`` adds an intermediate artery at the left main's division.
    """

    dominance: str
    ramus: bool
    rng: np.random.Generator


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
    variants: _Variants | None = None


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


def _plant_stenosis(
    branch: _Branch, ctx: _Context, rng: np.random.Generator, degrees: np.random.Generator
) -> None:
    """ImageCAS-X phantoms: narrow the drawn lumen by 20-90 % in the proximal two thirds and
    record the lesion as rendered.

    The narrowing acts on the drawn radii, floored only where a thinner tube could break up on
    the grid (half a voxel diagonal). The degree is drawn first, then placed where the vessel is
    wide enough to show it (thin distal stretches cannot); where no point is, it is capped at
    what the widest point allows. So the rendered degree (the largest diameter reduction against
    the healthy radius) is the recorded one. A branch too thin for a 20 % narrowing gets none.
    ``length_mm`` is the stretch narrowed by at least half the degree.
    """
    s, healthy = branch.arclength, branch.radii
    floor = ctx.r_floor * 0.87  # r_floor is 0.6 of a voxel diagonal
    room = 1.0 - floor / healthy  # the largest degree each point can show
    span = (s >= 0.1 * s[-1]) & (s <= 0.65 * s[-1])
    if not np.any(span & (room >= 0.2)):
        return
    target = degrees.uniform(0.2, 0.9)
    fits = np.flatnonzero(span & (room >= target))
    if len(fits) == 0:
        fits = np.flatnonzero(span & (room >= 0.2))
        fits = fits[room[fits] >= room[fits].max() - 1e-9]
    k0 = int(fits[int(rng.integers(len(fits)))])
    severity = min(target, float(room[k0]))
    width = max(3.0 * float(healthy[k0]), 2.0 * ctx.r_floor)
    narrowed = healthy * (1 - severity * np.exp(-(((s - s[k0]) / width) ** 2)))
    branch.radii = np.maximum(narrowed, np.minimum(healthy, floor))
    reduction = 1.0 - branch.radii / healthy
    k = int(np.argmax(reduction))
    degree = float(reduction[k])
    lo = hi = k
    while lo > 0 and reduction[lo - 1] >= degree / 2:
        lo -= 1
    while hi < len(s) - 1 and reduction[hi + 1] >= degree / 2:
        hi += 1
    branch.lesions.append({"index": k, "degree": degree, "length_mm": float(s[hi] - s[lo])})


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
            # the ramus leaves a trifurcation: three tubes part later than two
            spread = 3.0 if cand.name == "IM" else 1.5
            zone = spread * (float(r[0]) + float(parent.radii[kj]) + ctx.margin)
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
    variants = ctx.variants
    dominance = variants.dominance if variants is not None else "right"
    # ImageCAS-X variants: the LCx runs on towards the crux (phi decreasing from the anterior
    # interventricular groove round the left side), to it and down as the PDA when left-dominant
    piv_left = ph["piv"] - 2 * math.pi
    crux_left = piv_left + 5 * deg
    if dominance == "left":
        full = phi_bif - crux_left
        lcx_controls = [
            tuple(p_bif), (t_av - 0.01, phi_bif - 0.3 * full),
            (t_av + rng.uniform(-0.02, 0.03), phi_bif - 0.65 * full), (t_av + 0.03, crux_left),
            (t_av + 0.15, piv_left), (rng.uniform(0.55, 0.8), piv_left + rng.uniform(-8, 8) * deg),
        ]  # fmt: skip
    else:
        if dominance == "co":
            sweep = variants.rng.uniform(0.8, 0.88) * (phi_bif - crux_left)  # type: ignore[union-attr]
        lcx_controls = [
            tuple(p_bif), (t_av - 0.01, phi_bif - 0.35 * sweep),
            (t_av + rng.uniform(-0.02, 0.05), phi_bif - sweep),
            (t_av + 0.25, phi_bif - sweep - 12 * deg),
        ]  # fmt: skip
    lcx = _build_branch(
        "LCx", 0, lcx_controls,
        0.75 * r_bif, rng.uniform(0.7, 0.9), ctx, rng, parent=i_lm, junction=x_bif,
    )  # fmt: skip
    i_lcx = add(lcx, 0.5)
    if i_lcx is not None and i_lcx >= 0 and dominance != "right":
        # left: the LCx beyond the crux is the PDA; co: beyond its turn down, a posterolateral
        phi_lcx = branches[i_lcx].params[:, 1]
        edge = crux_left if dominance == "left" else phi_bif - sweep + 2 * deg
        beyond = np.flatnonzero(phi_lcx <= edge)
        if len(beyond) and 3 <= beyond[0] < len(phi_lcx) - 2:
            branches[i_lcx].distal = (int(beyond[0]), "L-PDA" if dominance == "left" else "LPL")

    # Right tree: RCA round the right atrioventricular groove to the crux, then down as the PDA.
    r_rca = rng.uniform(1.8, 2.4)
    crux = ph["piv"] - 5 * deg
    if dominance == "left":  # a short RCA that ends past the acute margin
        rca_controls = [
            (t_r, ph["root"] + d0), (t_mid, ph["root"] + d0 + 12 * deg), (t_av, ph["rv"] - 5 * deg),
            (t_av + 0.02, ph["rv"] + 45 * deg), (t_av + 0.12, ph["rv"] + 55 * deg),
        ]  # fmt: skip
    else:
        rca_controls = [
            (t_r, ph["root"] + d0), (t_mid, ph["root"] + d0 + 12 * deg), (t_av, ph["rv"] - 5 * deg),
            (t_av + 0.02, ph["rv"] + 45 * deg), (t_av + 0.03, crux),
            (t_av + 0.15, ph["piv"]), (rng.uniform(0.55, 0.8), ph["piv"] + rng.uniform(-8, 8) * deg),
        ]  # fmt: skip
    rca = _build_branch(
        "RCA", 1, rca_controls,
        r_rca, rng.uniform(0.7, 0.9), ctx, rng, tortuosity=0.8, origin=ctx.root_center,
    )  # fmt: skip
    i_rca = add(rca, 0.6)
    if any(i is None or i < 0 for i in (i_lad, i_lcx, i_rca)):
        return None
    if variants is not None and dominance != "left":
        beyond = np.flatnonzero(branches[i_rca].params[:, 1] >= crux)
        if len(beyond) and 3 <= beyond[0] < len(branches[i_rca].points) - 2:
            branches[i_rca].distal = (int(beyond[0]), "R-PDA")
    if variants is not None and variants.ramus:
        im = _build_branch(
            "IM", 0,
            [tuple(p_bif), (t_av + 0.15, phi_bif - 18 * deg), (min(t_av + 0.45, 0.85), phi_bif - 28 * deg)],
            0.65 * r_bif, rng.uniform(0.6, 0.8), ctx, rng, parent=i_lm, junction=x_bif,
        )  # fmt: skip
        add(im, None)

    mains = [i_lad, i_lcx, i_rca]
    count = ctx.stenoses if ctx.stenoses is not None else int(rng.integers(0, 3))
    if variants is None:
        for _ in range(count):
            _apply_stenosis(branches[mains[int(rng.integers(0, 3))]], ctx, rng)
    else:  # at most one lesion per main vessel, so each is recorded as rendered
        for j in rng.permutation(3)[:count]:
            _plant_stenosis(branches[mains[int(j)]], ctx, rng, variants.rng)

    if not side_branches:
        return branches

    # Side branches, in random order; each leaves its parent at 60-90 degrees and is dropped or
    # cut short where it would crowd another tube.
    n_lad, n_lcx = len(branches[i_lad].points), len(branches[i_lcx].points)
    if branches[i_lcx].distal is not None:  # marginals leave the LCx before the crux
        n_lcx = branches[i_lcx].distal[0]
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
    if dominance == "right":
        candidates.append(("PL", i_rca, k_crux))
    elif dominance == "left":
        k_pl = nearest(i_lcx, crux_left + variants.rng.uniform(12, 25) * deg, n_lcx)  # type: ignore[union-attr]
        candidates.append(("LPL", i_lcx, k_pl))
    if rng.random() < 0.5:
        candidates.append(("CB", i_rca, int(rng.uniform(0.08, 0.15) * k_crux)))
    for k in rng.permutation(len(candidates)):
        kind, parent, index = candidates[k]
        (tj, pj), xj, rj = child(parent, index)
        if kind == "D":
            dphi = -rng.uniform(35, 60) * deg
            dt = rng.uniform(0.25, 0.45)
            controls = [(tj, pj), (tj + 0.3 * dt, pj + 0.5 * dphi), (min(tj + dt, 0.93), pj + dphi)]
        elif kind in ("OM", "LPL"):
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
