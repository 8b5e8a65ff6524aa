"""One mask → centreline trees, named branches, lumen profiles, stenoses and CAD-RADS.

:func:`analyse_mask` works on arrays (any grid: the affine carries spacing, flips and
obliquity); :func:`analyse_file` reads a mask (and an optional segment map) with the case-file
layer. The result is the JSON contract of ``<case>_analysis.json`` (:mod:`vesselfm.analysis`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from vesselfm.analysis.occlusion import join_occlusions
from vesselfm.analysis.stenosis import cad_rads, excluded_samples, find_lesions, grade

NOTICE = "automated, not a diagnosis"
EXTRA = "analysis"


def require_extra() -> None:
    """Raise one line naming the extra when networkx (the graph library) is missing."""
    try:
        import networkx  # noqa: F401
    except ImportError as err:
        raise RuntimeError(
            f"vesselfm.analyse needs networkx: pip install 'vesselfm[{EXTRA}]'"
        ) from err


@dataclass(frozen=True)
class AnalysisSettings:
    """Knobs of the analysis (``configs/analyse.yaml`` holds the same with comments).

    Attributes:
        step_mm: centreline sample spacing.
        smooth_mm: Gaussian smoothing of the voxel centreline (sigma, mm of arc).
        min_volume_mm3: connected components smaller than this are not analysed.
        spur_factor, min_branch_mm: spur pruning (terminal edges shorter than
            ``max(min_branch_mm, spur_factor * radius at the junction)``).
        ostium_window_mm: the root is the end thickest over this length.
        window_mm, detect_percent, edge_percent, min_degree_percent, min_reference_mm,
        merge_gap_mm, average_mm, shoulder:
            stenosis detection (:func:`vesselfm.analysis.stenosis.find_lesions`).
        junction_factor: samples within this many radii of a branch point or vessel end are
            neither lesion nor reference.
        occlusion_gap_mm, occlusion_angle_deg: a tree whose end lies within this gap of a
            branch end of another, in line with it within this angle, is the distal piece of a
            total occlusion (:mod:`vesselfm.analysis.occlusion`); ``occlusion_gap_mm=0`` turns
            it off.
    """

    step_mm: float = 0.5
    smooth_mm: float = 1.0
    min_volume_mm3: float = 5.0
    spur_factor: float = 1.5
    min_branch_mm: float = 2.0
    ostium_window_mm: float = 5.0
    window_mm: float = 10.0
    detect_percent: float = 15.0
    edge_percent: float = 8.0
    min_degree_percent: float = 20.0
    min_reference_mm: float = 1.5
    merge_gap_mm: float = 2.0
    average_mm: float = 1.5
    shoulder: float = 0.5
    junction_factor: float = 2.0
    occlusion_gap_mm: float = 20.0
    occlusion_angle_deg: float = 45.0

    def __post_init__(self) -> None:
        for key, value in self.__dict__.items():
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"analysis.{key} must be a finite number >= 0, got {value!r}")
        if self.step_mm <= 0:
            raise ValueError(f"analysis.step_mm must be > 0, got {self.step_mm}")


@dataclass
class _Branch:
    tree: int
    local: int
    parent: int | None  # local id in its tree
    children: list[int]
    points: np.ndarray  # (N, 3) world mm
    arc: np.ndarray  # (N,) from the ostium
    radius: np.ndarray
    diameter: np.ndarray
    codes: np.ndarray | None = None
    name: str = "side branch"
    confidence: float = 0.5
    continues: bool = False
    side: str = "left"
    id: int = -1
    extra: dict[str, Any] = field(default_factory=dict)
    occluded_mm: float = 0.0  # the gap before this branch (a piece beyond a total occlusion)


def _crop(mask: np.ndarray, margin: int = 3) -> tuple[tuple[slice, ...], np.ndarray]:
    box = ndi.find_objects(mask.astype(np.uint8))[0]
    box = tuple(
        slice(max(s.start - margin, 0), min(s.stop + margin, n))
        for s, n in zip(box, mask.shape, strict=True)
    )
    return box, np.array([s.start for s in box])


def _polyline(voxels: np.ndarray, affine: np.ndarray, step_mm: float, smooth_mm: float):
    """World points of a voxel path, smoothed and resampled every ``step_mm``; ``(points, arc)``."""
    pts = voxels @ affine[:3, :3].T + affine[:3, 3]
    if len(pts) >= 3 and smooth_mm > 0:
        steps = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        sigma = smooth_mm / max(float(steps.mean()), 1e-6)
        smooth = ndi.gaussian_filter1d(pts, sigma, axis=0, mode="nearest")
        smooth[0], smooth[-1] = pts[0], pts[-1]
        pts = smooth
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    length = float(arc[-1])
    n = max(2, int(np.ceil(length / step_mm)) + 1)
    s = np.linspace(0.0, length, n)
    out = np.stack([np.interp(s, arc, pts[:, k]) for k in range(3)], axis=1)
    return out, s


def _extend_to_surface(
    voxels: np.ndarray,
    mask: np.ndarray,
    affine: np.ndarray,
    trim_mm: float = 1.5,
    back_mm: float = 5.0,
) -> np.ndarray:
    """``voxels`` carried on to the end of the vessel: thinning stops about a radius short of a
    vessel's end (its ostium, its tip) and curls towards the rim of a flat end, so the last
    ``trim_mm`` of the path are dropped and the path goes on, in its direction over the
    ``back_mm`` before, to the last point inside ``mask``."""
    if len(voxels) < 3:
        return voxels
    inv = np.linalg.inv(affine)
    world = voxels @ affine[:3, :3].T + affine[:3, 3]
    steps = np.linalg.norm(np.diff(world, axis=0), axis=1)
    back = np.concatenate([[0.0], np.cumsum(steps[::-1])])[::-1]  # distance to the path's end
    if back[0] > trim_mm + 1.0:
        keep = back >= trim_mm
        keep[: np.flatnonzero(keep)[-1] + 1] = True
        voxels, world, back = voxels[keep], world[keep], back[keep] - back[keep][-1]
    k = int(np.clip(np.searchsorted(-back, -back_mm), 0, len(world) - 2))
    direction = world[-1] - world[k]
    norm = float(np.linalg.norm(direction))
    if norm == 0:
        return voxels
    direction /= norm
    step = 0.25 * float(np.min(np.linalg.norm(affine[:3, :3], axis=0)))
    shape = np.array(mask.shape)
    extra = []
    for i in range(1, 400):
        p = world[-1] + i * step * direction
        v = p @ inv[:3, :3].T + inv[:3, 3]
        idx = np.rint(v).astype(int)
        if np.any(idx < 0) or np.any(idx >= shape) or not mask[tuple(idx)]:
            break
        if i % 4 == 0:
            extra.append(v)
    return np.vstack([voxels, *extra]) if extra else voxels


def _branch(seg, t, sub, sub_affine, sub_float, inscribed, seg_sub, spacing, cfg) -> _Branch:
    """One centreline segment as a :class:`_Branch`: carried on to the vessel's ends, smoothed,
    resampled, re-centred, with its radii, diameters and segment codes (arc from its start)."""
    from vesselfm.analysis.lumen import cross_section_diameter

    voxels = seg.voxels.astype(float)
    if seg.parent is None:  # the ostium
        voxels = _extend_to_surface(voxels[::-1], sub, sub_affine)[::-1]
    if not seg.children:  # a vessel's end
        voxels = _extend_to_surface(voxels, sub, sub_affine)
    pts, _ = _polyline(voxels, sub_affine, cfg.step_mm, cfg.smooth_mm)
    # thinning on voxels leaves the centreline up to a voxel off the lumen's centre (more where
    # it was carried on to an end): move each point to its cross-section's centroid, twice,
    # except where the section holds a side branch (the centroid then lies far off, towards it)
    for _ in range(2):
        radius = inscribed(pts)
        tangents = np.gradient(pts, axis=0)
        diameter, shift = cross_section_diameter(
            sub_float, sub_affine, pts, tangents, radius, spacing
        )
        limit = np.maximum(max(spacing), 0.75 * radius)
        pts = pts + np.where((np.linalg.norm(shift, axis=1) <= limit)[:, None], shift, 0.0)
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
    codes = None
    if seg_sub is not None:
        inv = np.linalg.inv(sub_affine)
        vox = pts @ inv[:3, :3].T + inv[:3, 3]
        idx = np.clip(np.rint(vox).astype(int), 0, np.array(sub.shape) - 1)
        codes = seg_sub[tuple(idx.T)]
    return _Branch(
        t, seg.id, seg.parent, list(seg.children), pts, s, inscribed(pts), diameter, codes
    )


def _merge_occlusions(all_branches: list[list[_Branch]], joins) -> list[list[_Branch]]:
    """Each distal piece's branches appended to the tree it continues, its root branch a child
    of the occluded branch, its arcs carried on across the gap; the pieces' own trees dropped."""
    distal = {j.distal for j in joins}
    # a piece may itself be upstream of another: merge the most distal ones first
    pending = list(joins)
    while pending:
        ready = [j for j in pending if not any(k.upstream == j.distal for k in pending)]
        for j in ready:
            up, piece = all_branches[j.upstream], all_branches[j.distal]
            end = up[j.segment]
            gap = float(np.linalg.norm(piece[0].points[0] - end.points[-1]))
            base = len(up)
            shift = float(end.arc[-1]) + gap
            for b in piece:
                b.tree = j.upstream
                b.local += base
                b.parent = j.segment if b.parent is None else b.parent + base
                b.children = [c + base for c in b.children]
                b.arc = b.arc + shift
            piece[0].occluded_mm = gap
            end.children.append(piece[0].local)
            up.extend(piece)
        pending = [j for j in pending if j not in ready]
    return [branches for t, branches in enumerate(all_branches) if t not in distal]


def _apply_names(branches: list[_Branch], naming, side: str) -> None:
    """Copy a :class:`~vesselfm.analysis.naming.Naming` (and the tree's side) onto its branches."""
    for i, b in enumerate(branches):
        b.name, b.confidence, b.continues, b.side = (
            naming.name[i],
            naming.confidence[i],
            naming.continues[i],
            side,
        )


def _chain_profile(chain: list[_Branch]) -> tuple[np.ndarray, ...]:
    """One vessel's samples along its chain of branches (a branch's first sample is its parent's
    last, so it is dropped, except beyond an occlusion): ``(points, arc, radius, diameter, owner
    branch id)``."""
    parts = []
    for k, c in enumerate(chain):
        first = 0 if k == 0 or c.occluded_mm > 0 else 1
        ids = np.full(len(c.arc), c.id)
        parts.append(tuple(x[first:] for x in (c.points, c.arc, c.radius, c.diameter, ids)))
    return tuple(np.concatenate(column) for column in zip(*parts, strict=True))


def _occlusion(before: _Branch, after: _Branch, cfg: AnalysisSettings) -> dict[str, Any] | None:
    """The stenosis record of the total occlusion between ``before`` (the occluded branch) and
    ``after`` (the distal piece's root branch): 100 %, as long as the gap, at its middle; the
    reference is the median diameter of the healthy vessel within ``window_mm`` on both sides
    (beyond ``junction_factor`` radii of the caps). ``None`` under ``min_reference_mm``."""
    healthy = []
    for b, end in ((before, float(before.arc[-1])), (after, float(after.arc[0]))):
        away = np.abs(b.arc - end)
        skip = max(1.5, cfg.junction_factor * float(b.radius.max()))
        near = (away >= skip) & (away <= skip + cfg.window_mm)
        healthy.append(b.diameter[near] if near.any() else b.diameter)
    reference = float(np.median(np.concatenate(healthy)))
    if reference < cfg.min_reference_mm:
        return None
    middle = 0.5 * (before.points[-1] + after.points[0])
    return {
        "branch": before.name,
        "branch_id": before.id,
        "tree": before.side,
        "position_mm": [round(float(v), 3) for v in middle],
        "arc_mm": round(float(before.arc[-1]) + 0.5 * after.occluded_mm, 2),
        "degree_percent": 100.0,
        "length_mm": round(after.occluded_mm, 2),
        "grade": grade(100.0),
        "minimal_diameter_mm": 0.0,
        "reference_diameter_mm": round(reference, 3),
        "occlusion": True,
    }


def analyse_mask(
    mask: np.ndarray,
    affine: np.ndarray,
    case: str = "case",
    segments: np.ndarray | None = None,
    settings: AnalysisSettings | None = None,
) -> dict[str, Any]:
    """Analyse one coronary mask.

    Args:
        mask: ``(X, Y, Z)``, non-zero is lumen.
        affine: 4×4 voxel-to-world (RAS mm) matrix.
        case: the case id written into the result.
        segments: optional segment label map on the same grid (ImageCAS-X codes 1-14) for the
            branch names.
        settings: :class:`AnalysisSettings` (defaults when ``None``).

    Returns:
        The ``<case>_analysis.json`` dict; its ``"_samples"`` key (left out of the JSON) holds
        the per-sample rows of ``<case>_branches.csv``.
    """
    require_extra()
    from vesselfm.analysis.centreline import centreline_trees, end_thickness
    from vesselfm.analysis.lumen import InscribedRadius, distance_mm
    from vesselfm.analysis.naming import (
        BranchInfo,
        name_by_anatomy,
        name_by_segments,
        subtree_lengths,
        tree_sides,
    )
    from vesselfm.io.frames import spacing_from_affine

    cfg = settings or AnalysisSettings()
    affine = np.asarray(affine, dtype=float)
    spacing = tuple(float(s) for s in spacing_from_affine(affine))
    binary = np.asarray(mask) != 0
    result: dict[str, Any] = {
        "case": str(case),
        "spacing_mm": [round(s, 6) for s in spacing],
        "cad_rads": "N",
        "cad_rads_note": NOTICE,
        "naming": "segments" if segments is not None else "anatomy",
        "loops": [],
        "branches": [],
        "stenoses": [],
        "_samples": [],
    }
    if not binary.any():
        return result
    box, origin = _crop(binary)
    sub = np.ascontiguousarray(binary[box])
    shift = np.eye(4)
    shift[:3, 3] = origin
    sub_affine = affine @ shift
    seg_sub = None if segments is None else np.asarray(segments)[box]
    dist = distance_mm(sub, spacing)
    inscribed = InscribedRadius(sub, sub_affine)
    sub_float = sub.astype(np.float32)  # sampled by every cross-section
    trees = centreline_trees(
        sub,
        spacing,
        dist,
        min_volume_mm3=cfg.min_volume_mm3,
        spur_factor=cfg.spur_factor,
        min_branch_mm=cfg.min_branch_mm,
        ostium_window_mm=cfg.ostium_window_mm,
    )
    if not trees:
        return result

    trees, joins = join_occlusions(
        trees,
        sub_affine,
        cfg.occlusion_gap_mm,
        cfg.occlusion_angle_deg,
        lambda tree, node: end_thickness(tree, node, dist, spacing, cfg.ostium_window_mm),
    )
    all_branches: list[list[_Branch]] = []
    for t, tree in enumerate(trees):
        all_branches.append(
            [
                _branch(seg, t, sub, sub_affine, sub_float, inscribed, seg_sub, spacing, cfg)
                for seg in tree.segments
            ]
        )
        for branch in all_branches[-1]:  # arc from the ostium: parents come first
            if branch.parent is not None:
                branch.arc += all_branches[-1][branch.parent].arc[-1]
        for p in tree.loop_voxels:
            world = sub_affine[:3, :3] @ np.asarray(p, dtype=float) + sub_affine[:3, 3]
            result["loops"].append({"tree": t, "position_mm": [round(float(v), 3) for v in world]})
    all_branches = _merge_occlusions(all_branches, joins)

    infos = []
    for branches in all_branches:
        info = [BranchInfo(b.parent, b.children, b.points, b.radius, 0.0) for b in branches]
        for b, total in zip(info, subtree_lengths(info), strict=True):
            b.subtree_mm = total
        infos.append(info)
    if segments is not None:
        for branches, info in zip(all_branches, infos, strict=True):
            naming, side = name_by_segments(info, [b.codes for b in branches])
            _apply_names(branches, naming, side)
    else:
        sides = tree_sides(
            [info[0].points_mm[0] for info in infos],
            [info[0].subtree_mm for info in infos],
            [len(info[0].children) >= 2 for info in infos],
        )
        for t, (branches, info) in enumerate(zip(all_branches, infos, strict=True)):
            side, conf = sides[t]
            if t < 2:
                naming = name_by_anatomy(info, side, conf)
            else:
                naming = name_by_anatomy(info, "right", 0.3)
                naming.name = ["side branch"] * len(info)
            _apply_names(branches, naming, side)

    # global ids: trees in order, parents first
    flat: list[_Branch] = []
    for branches in all_branches:
        base = len(flat)
        for b in branches:
            b.id = base + b.local
            flat.append(b)
    by_tree = {(b.tree, b.local): b for b in flat}

    def parent_of(b: _Branch) -> _Branch | None:
        return None if b.parent is None else by_tree[(b.tree, b.parent)]

    # vessels: chains of branches each continuing its parent
    chains: list[list[_Branch]] = []
    for b in flat:
        if b.continues and parent_of(b) is not None:
            continue
        chain = [b]
        while True:
            nxt = [
                by_tree[(b.tree, c)] for c in chain[-1].children if by_tree[(b.tree, c)].continues
            ]
            if not nxt:
                break
            chain.append(nxt[0])
        chains.append(chain)

    graded: list[tuple[str, float]] = []
    for chain in chains:
        pts, arc, rad, dia, owner = _chain_profile(chain)
        junctions = [float(c.arc[0]) for c in chain] + [float(c.arc[-1]) for c in chain[:-1]]
        # the vessel's far end: a blind tip (its cap), or the branch point where it divides
        ends = [float(arc[-1])]
        skip = excluded_samples(arc, rad, junctions, ends, factor=cfg.junction_factor)
        for lesion in find_lesions(
            arc,
            dia,
            skip,
            window_mm=cfg.window_mm,
            detect_percent=cfg.detect_percent,
            edge_percent=cfg.edge_percent,
            min_degree_percent=cfg.min_degree_percent,
            min_reference_mm=cfg.min_reference_mm,
            merge_gap_mm=cfg.merge_gap_mm,
            average_mm=cfg.average_mm,
            shoulder=cfg.shoulder,
        ):
            where = flat[int(owner[lesion.index])]
            degree = round(lesion.degree_percent, 1)
            result["stenoses"].append(
                {
                    "branch": where.name,
                    "branch_id": where.id,
                    "tree": where.side,
                    "position_mm": [round(float(v), 3) for v in pts[lesion.index]],
                    "arc_mm": round(float(arc[lesion.index]), 2),
                    "degree_percent": degree,
                    "length_mm": round(float(arc[lesion.end] - arc[lesion.start]), 2),
                    "grade": grade(degree),
                    "minimal_diameter_mm": round(lesion.minimal_mm, 3),
                    "reference_diameter_mm": round(lesion.reference_mm, 3),
                }
            )
            graded.append((where.name, degree))
    for b in flat:
        if b.occluded_mm > 0:
            occlusion = _occlusion(parent_of(b), b, cfg)
            if occlusion is not None:
                result["stenoses"].append(occlusion)
                graded.append((occlusion["branch"], 100.0))
    result["stenoses"].sort(key=lambda s: (s["branch_id"], s["arc_mm"]))
    result["cad_rads"] = cad_rads(graded)

    for b in flat:
        parent = parent_of(b)
        length = float(np.linalg.norm(np.diff(b.points, axis=0), axis=1).sum())
        result["branches"].append(
            {
                "id": b.id,
                "parent_id": None if parent is None else parent.id,
                "name": b.name,
                "confidence": round(float(b.confidence), 3),
                "tree": b.side,
                "parent": None if parent is None else parent.name,
                "length_mm": round(length, 3),
                "arc_start_mm": round(float(b.arc[0]), 3),
                "points_mm": np.round(b.points, 3).tolist(),
                "radius_mm": np.round(b.radius, 3).tolist(),
                "diameter_mm": np.round(b.diameter, 3).tolist(),
            }
        )
        for k in range(len(b.arc)):
            result["_samples"].append(
                (
                    b.id,
                    b.name,
                    float(b.arc[k]),
                    *map(float, b.points[k]),
                    float(b.radius[k]),
                    float(b.diameter[k]),
                )
            )
    return result


def analyse_file(
    mask: str | os.PathLike[str],
    case: str,
    segments: str | os.PathLike[str] | None = None,
    settings: AnalysisSettings | None = None,
    keep_mask: bool = False,
) -> dict[str, Any]:
    """:func:`analyse_mask` of a mask file (any format :func:`vesselfm.io.read_volume` reads);
    with ``keep_mask`` the result's private ``"_mask"`` holds ``(array, affine)`` (for the 3D
    view).

    Raises:
        VolumeError: the mask or the segment map cannot be read, or they are not on one grid.
    """
    from vesselfm.io import check_same_grid, read_volume

    vol = read_volume(mask)
    seg = None
    if segments is not None:
        seg_vol = read_volume(segments)
        check_same_grid(seg_vol, vol, hint="give the segment map of this mask (segments=)")
        seg = np.asarray(seg_vol.array)
    result = analyse_mask(vol.array, vol.affine, case=case, segments=seg, settings=settings)
    if keep_mask:
        result["_mask"] = (vol.array, vol.affine)
    return result
