"""Branch names: from a segment label map (ImageCAS-X codes) when given, else by anatomy.

**Segment map**: each branch takes the code most of its centreline samples lie on; its
confidence is that majority's fraction. Codes 1-8, 12, 13 are the left tree, 9-11 the right.

**Anatomy** (world frame RAS: +x is the patient's right, +y anterior): of the two largest trees
the one whose ostium lies further to the patient's left is the left tree. In the left tree the
root branch is the left main (LM); of the two largest branches leaving it the one running more
anteriorly is the LAD, the other the LCx, a third one the intermediate (IM). In the right tree the
trunk is the RCA. A vessel continues, past each branch point, into its thickest child. The first two
sizeable side branches of the LAD are D1, D2, of the LCx OM1, OM2; every other branch is a
"side branch". Confidences are rule-of-thumb: 0.8 for the main vessels when both trees are
found, less with one tree, 0.4 for D/OM (septal branches leave the LAD too), 0.5 for "side
branch".
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np

from vesselfm.io.terminology import SEGMENTS

#: ImageCAS-X segment codes -> the names analysis gives (14 "Other" is a "side branch")
SEGMENT_CODES: dict[int, str] = {**SEGMENTS, 14: "side branch"}
RIGHT_CODES = frozenset({9, 10, 11})
#: every name a branch can have
NAMES: tuple[str, ...] = tuple(SEGMENT_CODES.values())


@dataclass
class BranchInfo:
    """What naming needs of one branch (segment) of a tree."""

    parent: int | None
    children: list[int]
    points_mm: np.ndarray  # (N, 3) world RAS
    radius_mm: np.ndarray  # (N,) inscribed
    subtree_mm: float  # centreline length of the branch and everything downstream


@dataclass
class Naming:
    """Per branch: ``name``, ``confidence`` (0-1), and ``continues``: whether the branch is its
    parent's vessel going on (``False`` where a new vessel starts)."""

    name: list[str]
    confidence: list[float]
    continues: list[bool]


def subtree_lengths(branches: list[BranchInfo]) -> list[float]:
    """Centreline length (mm) of each branch plus all downstream of it (parents come first)."""
    own = [float(np.linalg.norm(np.diff(b.points_mm, axis=0), axis=1).sum()) for b in branches]
    total = list(own)
    for i in range(len(branches) - 1, -1, -1):
        p = branches[i].parent
        if p is not None:
            total[p] += total[i]
    return total


def _size(b: BranchInfo) -> float:
    # skip the stretch next to the branch point, where the radius belongs to the junction
    r = b.radius_mm
    k = min(len(r) - 1, max(1, len(r) // 4))
    return float(np.median(r[k:])) if len(r) else 0.0


def _thickest(branches: list[BranchInfo], ids: list[int]) -> int | None:
    if not ids:
        return None
    return max(ids, key=lambda c: (_size(branches[c]), branches[c].subtree_mm))


def name_by_segments(branches: list[BranchInfo], codes: list[np.ndarray]) -> tuple[Naming, str]:
    """Names from the segment codes under each branch's samples; returns ``(naming, side)``."""
    names, conf = [], []
    right = left = 0
    for c in codes:
        c = np.asarray(c, dtype=int)
        c = c[(c > 0) & (c <= 14)]
        if len(c) == 0:
            names.append("side branch")
            conf.append(0.0)
            continue
        code, count = Counter(c.tolist()).most_common(1)[0]
        names.append(SEGMENT_CODES[code])
        conf.append(count / len(c))
        right += int(np.isin(c, list(RIGHT_CODES)).sum())
        left += int((~np.isin(c, list(RIGHT_CODES))).sum())
    continues = [False] * len(branches)
    for i, b in enumerate(branches):
        same = [c for c in b.children if names[c] == names[i]]
        best = _thickest(branches, same)
        if best is not None:
            continues[best] = True
    return Naming(names, conf, continues), ("right" if right > left else "left")


def _follow(
    branches: list[BranchInfo], start: int, naming: Naming, name: str, conf: float
) -> list[int]:
    """Name ``start`` and its thickest descendants ``name``; returns the vessel's branch ids."""
    chain = [start]
    naming.name[start], naming.confidence[start] = name, conf
    cur = start
    while True:
        nxt = _thickest(branches, branches[cur].children)
        if nxt is None:
            return chain
        naming.name[nxt], naming.confidence[nxt] = name, conf
        naming.continues[nxt] = True
        chain.append(nxt)
        cur = nxt


def _side_branches(
    branches: list[BranchInfo], chain: list[int], naming: Naming, labels: tuple[str, ...]
) -> None:
    """Name the vessels leaving ``chain`` (in order along it): ``labels`` for the first sizeable
    ones, "side branch" for the rest; recursively their own side branches "side branch"."""
    in_chain = set(chain)
    order = [c for i in chain for c in branches[i].children if c not in in_chain]
    k = 0
    for c in order:
        sizeable = branches[c].subtree_mm >= 10.0 and 2 * _size(branches[c]) >= 1.0
        if sizeable and k < len(labels):
            sub = _follow(branches, c, naming, labels[k], 0.4)
            k += 1
        else:
            sub = _follow(branches, c, naming, "side branch", 0.5)
        _side_branches(branches, sub, naming, ())


def name_by_anatomy(branches: list[BranchInfo], side: str, side_confidence: float) -> Naming:
    """Names of one tree's branches by the anatomical rules above (``side``: left|right)."""
    n = len(branches)
    naming = Naming(["side branch"] * n, [0.5] * n, [False] * n)
    if n == 0:
        return naming
    if side == "right":
        chain = _follow(branches, 0, naming, "RCA", side_confidence)
        _side_branches(branches, chain, naming, ())
        return naming
    root = branches[0]
    naming.name[0], naming.confidence[0] = "LM", side_confidence
    kids = sorted(root.children, key=lambda c: -branches[c].subtree_mm)
    if not kids:
        return naming
    if len(kids) == 1:
        chain = _follow(branches, kids[0], naming, "LAD", 0.3)
        _side_branches(branches, chain, naming, ("D1", "D2"))
        return naming
    junction = root.points_mm[-1]

    def course(c: int) -> np.ndarray:
        pts = [branches[c].points_mm]
        stack = list(branches[c].children)
        while stack:
            j = stack.pop()
            pts.append(branches[j].points_mm)
            stack.extend(branches[j].children)
        v = np.concatenate(pts).mean(axis=0) - junction
        return v / max(float(np.linalg.norm(v)), 1e-9)

    a, b = kids[0], kids[1]
    ya, yb = course(a)[1], course(b)[1]
    lad, lcx = (a, b) if ya >= yb else (b, a)
    margin = min(1.0, abs(ya - yb))
    conf = round(side_confidence * (0.6 + 0.4 * margin), 3)
    chain = _follow(branches, lad, naming, "LAD", conf)
    _side_branches(branches, chain, naming, ("D1", "D2"))
    chain = _follow(branches, lcx, naming, "LCx", conf)
    _side_branches(branches, chain, naming, ("OM1", "OM2"))
    for k, c in enumerate(kids[2:]):
        sizeable = branches[c].subtree_mm >= 10.0
        sub = _follow(branches, c, naming, "IM" if k == 0 and sizeable else "side branch", 0.4)
        _side_branches(branches, sub, naming, ())
    return naming


def tree_sides(
    ostia_mm: list[np.ndarray], lengths_mm: list[float], bifurcates: list[bool]
) -> list[tuple[str, float]]:
    """``(side, confidence)`` of each tree (trees sorted largest first).

    Two or more trees: of the two largest, the ostium further to the patient's left (smaller
    RAS x) is the left tree (confidence 0.8, 0.6 when the left one is the smaller tree); further
    trees take the side of the nearer main ostium (confidence 0.3). One tree: left when its root
    branch divides, else right (confidence 0.4).
    """
    if not ostia_mm:
        return []
    if len(ostia_mm) == 1:
        return [("left", 0.4) if bifurcates[0] else ("right", 0.4)]
    x0, x1 = float(ostia_mm[0][0]), float(ostia_mm[1][0])
    left_first = x0 <= x1
    conf = 0.8 if (left_first == (lengths_mm[0] >= lengths_mm[1])) else 0.6
    out = [("left", conf), ("right", conf)] if left_first else [("right", conf), ("left", conf)]
    mains = {out[0][0]: ostia_mm[0], out[1][0]: ostia_mm[1]}
    for p in ostia_mm[2:]:
        side = min(mains, key=lambda s: float(np.linalg.norm(np.asarray(p) - mains[s])))
        out.append((side, 0.3))
    return out
