"""Total occlusions: a vessel piece beyond a gap in the mask, joined back to the tree it continues.

A total occlusion (100 %) cuts a vessel: in the mask the part beyond it is a separate connected
component, so it becomes a tree of its own. A tree is taken for such a **distal piece** when one
of its ends lies within ``max_gap_mm`` of a branch end of another tree and in line with it: the
upstream end points at the piece (the gap's direction within ``max_angle_deg`` of the end's
course) and the piece's end points back (the same). The piece is then rooted at that end (its
proximal end). Ends pair up nearest first; an end takes part in one join and a piece has one
upstream tree. Where the ostium rule (the thick end) rooted a vessel of even calibre at its
occluded end, the larger piece is the upstream one and is rooted again at its thickest other end. Unrelated components (a vessel running
alongside, a blob of noise) fail the direction rule.

End positions and courses are read off the voxel centreline, which thinning leaves about a
radius short of each end, so the gap between them is a little longer than the gap in the mask;
the analysis measures the reported length between the centrelines carried on to the surface.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from vesselfm.analysis.centreline import Tree, reroot


@dataclass(frozen=True)
class Join:
    """A distal piece beyond an occlusion.

    Attributes:
        upstream: index of the tree the occluded vessel comes from.
        segment: the upstream tree's segment that ends at the occlusion.
        distal: index of the distal piece's tree (rooted at its proximal end).
    """

    upstream: int
    segment: int
    distal: int


@dataclass(frozen=True)
class _End:
    tree: int
    node: int
    is_root: bool
    position: np.ndarray  # world mm
    direction: np.ndarray  # unit, outwards (the vessel's course at its end)


def end_course(
    world: np.ndarray, skip_mm: float = 1.0, span_mm: float = 4.0
) -> tuple[np.ndarray, np.ndarray]:
    """``(position, unit direction)`` of a path's last point, ``world`` ``(N, 3)`` ordered towards
    the end: the course over ``span_mm`` before the last ``skip_mm`` (where thinning curls)."""
    steps = np.linalg.norm(np.diff(world, axis=0), axis=1)
    back = np.concatenate([[0.0], np.cumsum(steps[::-1])])[::-1]  # distance to the end
    near = int(np.flatnonzero(back >= min(skip_mm, 0.3 * back[0]))[-1])
    far = int(np.flatnonzero(back >= min(back[near] + span_mm, back[0]))[-1])
    direction = world[-1] - world[far] if near == far else world[near] - world[far]
    norm = float(np.linalg.norm(direction))
    return world[-1], (direction / norm if norm > 0 else direction)


def _ends(t: int, tree: Tree, affine: np.ndarray) -> list[_End]:
    out = []
    for seg in tree.segments:
        if seg.parent is None:  # the ostium: the root segment's first voxel
            vox, node, is_root = seg.voxels[::-1], tree.root, True
        elif not seg.children:
            vox, node, is_root = seg.voxels, seg.end_node, False
        else:
            continue
        if len(vox) < 2:
            continue
        pos, direction = end_course(vox @ affine[:3, :3].T + affine[:3, 3])
        out.append(_End(t, node, is_root, pos, direction))
        if seg.parent is None and not seg.children and len(seg.voxels) >= 2:
            vox = seg.voxels  # a lone tube: its far end too
            pos, direction = end_course(vox @ affine[:3, :3].T + affine[:3, 3])
            out.append(_End(t, seg.end_node, False, pos, direction))
    return out


def join_occlusions(
    trees: list[Tree],
    affine: np.ndarray,
    max_gap_mm: float = 20.0,
    max_angle_deg: float = 45.0,
    radius_at: Callable[[Tree, int], float] | None = None,
) -> tuple[list[Tree], list[Join]]:
    """Find distal pieces beyond occlusions among ``trees`` (largest first).

    Args:
        trees: the centreline trees of one mask (:func:`~vesselfm.analysis.centreline.centreline_trees`).
        affine: voxel-to-world matrix of the voxel indices the trees hold.
        max_gap_mm: the largest gap between two end points (of the voxel centrelines).
        max_angle_deg: the largest angle between each end's course and the gap.
        radius_at: ``(tree, end node) -> mm``, the vessel's calibre at an end, to root again a
            tree whose ostium turns out to be an occluded end (``None``: such pairs are left).

    Returns:
        ``(trees, joins)``: the trees, distal pieces rooted at their proximal end, and one
        :class:`Join` per occlusion, in the order found.
    """
    if len(trees) < 2 or max_gap_mm <= 0:
        return trees, []
    cos = float(np.cos(np.radians(max_angle_deg)))
    ends = [_ends(t, tree, affine) for t, tree in enumerate(trees)]
    pairs = []
    for a in range(len(trees)):
        for b in range(a + 1, len(trees)):
            for ea in ends[a]:
                for eb in ends[b]:
                    gap = eb.position - ea.position
                    dist = float(np.linalg.norm(gap))
                    if dist > max_gap_mm:
                        continue
                    u = gap / dist if dist > 0 else -ea.direction
                    if float(ea.direction @ u) >= cos and float(eb.direction @ -u) >= cos:
                        pairs.append((dist, ea, eb))
    pairs.sort(key=lambda p: p[0])
    upstream_of: dict[int, tuple[int, int]] = {}  # distal tree -> (upstream tree, its end node)
    root_of: dict[int, int] = {}  # tree -> its new root node
    used: set[tuple[int, int]] = set()
    for _, ea, eb in pairs:
        if (ea.tree, ea.node) in used or (eb.tree, eb.node) in used:
            continue
        # the upstream piece is the one whose end here is a branch end; both or neither: the
        # larger tree (the ostium rule may root a vessel of even calibre at its occluded end)
        if ea.is_root != eb.is_root:
            up, down = (eb, ea) if ea.is_root else (ea, eb)
        else:
            up, down = (ea, eb) if ea.tree < eb.tree else (eb, ea)
        if down.tree in upstream_of or (down.tree in root_of and root_of[down.tree] != down.node):
            continue
        chain, cycle = up.tree, False
        while chain in upstream_of:  # no cycles: the distal piece is not upstream of itself
            chain = upstream_of[chain][0]
            cycle |= chain == down.tree
        if cycle:
            continue
        if up.is_root:  # the upstream tree's ostium is its thickest other end
            if up.tree in root_of or up.tree in upstream_of:
                continue
            others = [e for e in ends[up.tree] if e.node != up.node]
            if not others or radius_at is None:
                continue
            best = max(others, key=lambda e: radius_at(trees[up.tree], e.node))
            root_of[up.tree] = best.node
            used.add((up.tree, best.node))
        upstream_of[down.tree] = (up.tree, up.node)
        root_of[down.tree] = down.node
        used |= {(up.tree, up.node), (down.tree, down.node)}
    trees = [reroot(tree, root_of[t]) if t in root_of else tree for t, tree in enumerate(trees)]
    joins = []
    for down, (up, node) in upstream_of.items():
        seg = next(
            (s.id for s in trees[up].segments if s.end_node == node and not s.children), None
        )
        if seg is not None:
            joins.append(Join(up, seg, down))
    return trees, joins
