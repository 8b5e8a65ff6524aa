"""Scoring an analysis against ground truth: centrelines (Rotterdam), names, radii, stenoses.

Centrelines follow the Rotterdam coronary centreline framework (Schaap et al., Medical Image
Analysis 13(5), 2009, "Standardized evaluation methodology and reference database for evaluating
coronary artery centerline extraction algorithms"): every reference point and every found point
is a true positive (TPR, TPM) when its corresponding point on the other centreline lies within
the reference radius there, else a false negative (FN) or false positive (FP); lengths are
measured along the centrelines.

- ``cl_ov`` = (|TPM| + |TPR|) / (|TPM| + |TPR| + |FN| + |FP|);
- ``cl_of`` (overlap until the first error) = |TPR before the first FN| / |reference|, from the
  ostium along each main vessel (LAD, LCx, RCA: the ostium to the segment's most distal point),
  averaged over the vessels the reference has;
- ``cl_ot`` = OV on the clinically relevant part: reference points up to the most distal point
  of diameter >= 1.5 mm on their path (radius >= 0.75 mm at or beyond them), and the found points
  corresponding to them;
- ``cl_ai_mm`` = the mean distance of the connections whose reference point is inside the vessel
  (the TPR and TPM connections), length-weighted.

Simplification (documented in the README): the framework scores one vessel at a time with an
ordered one-to-one correspondence along it; a tree has no single order, so a point's
correspondent here is the nearest point of the other tree (both densified to 0.1 mm), OV/OT/AI
are over the whole tree (both sides), and only OF is per vessel. Reference radii are the maximum
inscribed radius of the ground-truth mask at the reference points (its distance transform,
evaluated exactly: :class:`~vesselfm.analysis.lumen.InscribedRadius`).

``branch_name_accuracy`` is the length fraction of the found true-positive points whose branch
name is their reference point's segment name (``Other`` = ``side branch``); ``main_names_correct``
the fraction of LM/LAD/LCx/RCA in the reference that are named right (more than half of the
segment's covered length carries its name); ``radius_mae_mm`` the mean absolute radius error
over the found true-positive points. Stenoses: a found lesion matches a true one on the same
tree within 5 mm; ``stenosis_sensitivity`` is the fraction of true >= 50 % lesions with a found
>= 50 % lesion matching, ``stenosis_ppv`` the fraction of found >= 50 % lesions with a true
>= 50 % one matching; ``stenosis_degree_mae`` the mean |degree error| over lesion pairs matched
one to one (nearest first, any degree); ``cad_rads_exact`` 1 when the found CAD-RADS is the one
the true lesions give (:func:`~vesselfm.analysis.stenosis.cad_rads`), else 0.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

#: the columns :func:`score_analysis` fills (NaN where undefined)
COLUMNS = (
    "cl_ov",
    "cl_of",
    "cl_ot",
    "cl_ai_mm",
    "branch_name_accuracy",
    "main_names_correct",
    "radius_mae_mm",
    "stenosis_sensitivity",
    "stenosis_ppv",
    "stenosis_degree_mae",
    "cad_rads_exact",
)
MATCH_MM = 5.0
SIGNIFICANT_PERCENT = 50.0
CLINICAL_RADIUS_MM = 0.75
MAIN_VESSELS = ("LAD", "LCx", "RCA")
MAIN_NAMES = ("LM", "LAD", "LCx", "RCA")
_DENSE_MM = 0.1


def _name(name: Any) -> str:
    text = str(name)
    return "side branch" if text in ("Other", "side branch", "") else text


def _weights(points: np.ndarray, lines: Sequence[np.ndarray], n: int) -> np.ndarray:
    """Each point's share of the centreline length (half of each segment it ends)."""
    w = np.zeros(n)
    for ids in lines:
        if len(ids) < 2:
            continue
        seg = np.linalg.norm(np.diff(points[ids], axis=0), axis=1)
        np.add.at(w, ids[:-1], seg / 2)
        np.add.at(w, ids[1:], seg / 2)
    return w


def _dense(points: np.ndarray, lines: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Points every <= 0.1 mm along the lines, and the nearest original point of each."""
    out, owner = [points], [np.arange(len(points))]
    for ids in lines:
        for a, b in zip(ids[:-1], ids[1:], strict=True):
            p, q = points[a], points[b]
            k = int(np.ceil(np.linalg.norm(q - p) / _DENSE_MM))
            if k < 2:
                continue
            t = np.arange(1, k) / k
            out.append(p + t[:, None] * (q - p))
            owner.append(np.where(t < 0.5, a, b))
    return np.concatenate(out), np.concatenate(owner)


class _Tree:
    """Points, per-point length weights and polylines of one centreline set (world RAS mm)."""

    def __init__(self, points: np.ndarray, lines: list[np.ndarray]) -> None:
        from scipy.spatial import cKDTree

        self.points = np.asarray(points, dtype=float).reshape(-1, 3)
        self.lines = lines
        self.weight = _weights(self.points, lines, len(self.points))
        dense, self.owner = _dense(self.points, lines)
        self.kd = cKDTree(dense) if len(dense) else None

    def nearest(self, query: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distance to this centreline and the nearest original point of each query point."""
        if self.kd is None or len(query) == 0:
            return np.full(len(query), np.inf), np.zeros(len(query), dtype=int)
        d, i = self.kd.query(query)
        return d, self.owner[i]


def reference_tree(centerlines: Mapping[str, Any]) -> dict[str, Any]:
    """The ground truth's centrelines ``{side: Centerlines}`` (LPS) as one RAS point set with
    names, sides, polylines and the main-vessel paths from each ostium."""
    import networkx as nx

    from vesselfm.io.centerlines import lps_to_ras

    pts, names, sides, lines, paths, relevant_of = [], [], [], [], [], []
    offset = 0
    for side, c in sorted(centerlines.items()):
        p = lps_to_ras(np.asarray(c.points_lps, dtype=float))
        n = len(p)
        seg = c.point_data.get("segment_name")
        codes = c.point_data.get("segment_label")
        if seg is None and codes is not None:
            from vesselfm.data.imagecasx import SEGMENTS

            seg = [SEGMENTS.get(int(k), "Other") for k in codes]
        names += [_name(s) for s in seg] if seg is not None else ["side branch"] * n
        sides += [side] * n
        graph = nx.Graph()
        graph.add_nodes_from(range(n))
        for ids in c.lines:
            ids = np.asarray(ids, dtype=int)
            lines.append(ids + offset)
            for a, b in zip(ids[:-1], ids[1:], strict=True):
                graph.add_edge(int(a), int(b), weight=float(np.linalg.norm(p[a] - p[b])))
        starts = np.flatnonzero(np.asarray(c.point_data.get("start_points", np.zeros(n))) != 0)
        root = int(starts[0]) if len(starts) else 0
        pred, dist = nx.dijkstra_predecessor_and_distance(graph, root)
        side_names = names[offset:]
        for vessel in MAIN_VESSELS:
            ends = [i for i in dist if side_names[i] == vessel]
            if ends:
                far = max(ends, key=lambda i: dist[i])
                paths.append(np.asarray(nx.shortest_path(graph, root, far), dtype=int) + offset)
        # nodes from the most distal back: the predecessor of a relevant node is relevant
        relevant_of.append((offset, sorted(dist, key=lambda i: -dist[i]), pred))
        pts.append(p)
        offset += n
    points = np.concatenate(pts) if pts else np.zeros((0, 3))
    return {
        "points": points,
        "names": np.asarray(names, dtype=object),
        "sides": np.asarray(sides, dtype=object),
        "lines": lines,
        "paths": paths,
        "_order": relevant_of,
    }


def _clinical(ref: dict[str, Any], radius: np.ndarray) -> np.ndarray:
    """Reference points up to the most distal point of radius >= 0.75 mm on their path."""
    relevant = radius >= CLINICAL_RADIUS_MM
    for offset, order, pred in ref["_order"]:
        for node in order:
            if relevant[node + offset]:
                for parent in pred.get(node, []):
                    relevant[parent + offset] = True
    return relevant


def _method_tree(result: Mapping[str, Any]) -> tuple[_Tree, np.ndarray, np.ndarray, np.ndarray]:
    pts, radius, names, sides, lines = [], [], [], [], []
    offset = 0
    for b in result.get("branches", []):
        p = np.asarray(b["points_mm"], dtype=float).reshape(-1, 3)
        pts.append(p)
        radius.append(np.asarray(b["radius_mm"], dtype=float))
        names += [_name(b["name"])] * len(p)
        sides += [b["tree"]] * len(p)
        lines.append(np.arange(len(p)) + offset)
        offset += len(p)
    points = np.concatenate(pts) if pts else np.zeros((0, 3))
    tree = _Tree(points, lines)
    return (
        tree,
        np.concatenate(radius) if radius else np.zeros(0),
        np.asarray(names, dtype=object),
        np.asarray(sides, dtype=object),
    )


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den > 0 else float("nan")


def centreline_scores(
    result: Mapping[str, Any], centerlines: Mapping[str, Any], reference_radius
) -> dict[str, float]:
    """``cl_*``, ``branch_name_accuracy``, ``main_names_correct`` and ``radius_mae_mm`` of an
    analysis ``result`` against the reference ``centerlines``.

    Args:
        result: :func:`~vesselfm.analysis.pipeline.analyse_mask`'s dict (or its JSON).
        centerlines: ``{side: Centerlines}`` (LPS mm, ImageCAS-X).
        reference_radius: callable, ``(N, 3)`` RAS points -> ``(N,)`` radii in mm (the ground
            truth's inscribed radius).
    """
    ref = reference_tree(centerlines)
    rtree = _Tree(ref["points"], ref["lines"])
    r_ref = np.asarray(reference_radius(rtree.points), dtype=float)
    mtree, r_m, m_names, _ = _method_tree(result)
    d_r, near_m = mtree.nearest(rtree.points)
    d_m, near_r = rtree.nearest(mtree.points)
    tpr = d_r <= r_ref
    tpm = d_m <= r_ref[near_r] if len(mtree.points) else np.zeros(0, bool)
    wr, wm = rtree.weight, mtree.weight
    out = {c: float("nan") for c in COLUMNS[:7]}
    out["cl_ov"] = _ratio(wm[tpm].sum() + wr[tpr].sum(), wm.sum() + wr.sum())
    clinical = _clinical(ref, r_ref)
    m_clinical = clinical[near_r] if len(mtree.points) else np.zeros(0, bool)
    out["cl_ot"] = _ratio(
        wm[tpm & m_clinical].sum() + wr[tpr & clinical].sum(),
        wm[m_clinical].sum() + wr[clinical].sum(),
    )
    firsts = []
    for path in ref["paths"]:
        seg = np.r_[0.0, np.linalg.norm(np.diff(rtree.points[path], axis=0), axis=1)]
        miss = np.flatnonzero(~tpr[path])
        stop = int(miss[0]) if len(miss) else len(path)
        firsts.append(_ratio(seg[:stop].sum(), seg.sum()))
    if firsts:
        out["cl_of"] = float(np.nanmean(firsts))
    w_ai = np.r_[wr[tpr], wm[tpm]]
    if w_ai.sum() > 0:
        out["cl_ai_mm"] = float(np.average(np.r_[d_r[tpr], d_m[tpm]], weights=w_ai))
    if tpm.any() and wm[tpm].sum() > 0:
        same = m_names[tpm] == ref["names"][near_r[tpm]]
        out["branch_name_accuracy"] = float(np.average(same, weights=wm[tpm]))
        err = np.abs(r_m[tpm] - r_ref[near_r[tpm]])
        out["radius_mae_mm"] = float(np.average(err, weights=wm[tpm]))
    present = [n for n in MAIN_NAMES if (ref["names"] == n).any()]
    if present:
        ok = []
        for name in present:
            sel = (ref["names"] == name) & tpr
            if not sel.any() or wr[sel].sum() == 0:
                ok.append(False)
                continue
            ok.append(np.average(m_names[near_m[sel]] == name, weights=wr[sel]) > 0.5)
        out["main_names_correct"] = float(np.mean(ok))
    return out


def lesion_pairs(true: Sequence[Mapping[str, Any]], found: Sequence[Mapping[str, Any]]):
    """``(i, j, distance)`` of lesions on the same tree within 5 mm, nearest first."""
    pairs = []
    for i, t in enumerate(true):
        for j, f in enumerate(found):
            if str(t.get("tree")) != str(f.get("tree")):
                continue
            d = float(np.linalg.norm(np.subtract(t["position_mm"], f["position_mm"])))
            if d <= MATCH_MM:
                pairs.append((d, i, j))
    return sorted(pairs)


def stenosis_scores(
    result: Mapping[str, Any], true: Sequence[Mapping[str, Any]]
) -> dict[str, float]:
    """``stenosis_*`` and ``cad_rads_exact`` of an analysis ``result`` against the true lesions
    (records with ``tree``, ``position_mm`` (RAS), ``degree_percent``, ``branch``)."""
    from vesselfm.analysis.stenosis import cad_rads

    found = list(result.get("stenoses", []))
    true = list(true)
    sig_t = [t for t in true if float(t["degree_percent"]) >= SIGNIFICANT_PERCENT]
    sig_f = [f for f in found if float(f["degree_percent"]) >= SIGNIFICANT_PERCENT]
    sig = lesion_pairs(sig_t, sig_f)
    out = {
        "stenosis_sensitivity": _ratio(len({i for _, i, _ in sig}), len(sig_t)),
        "stenosis_ppv": _ratio(len({j for _, _, j in sig}), len(sig_f)),
        "stenosis_degree_mae": float("nan"),
    }
    used_t, used_f, errors = set(), set(), []
    for _, i, j in lesion_pairs(true, found):
        if i in used_t or j in used_f:
            continue
        used_t.add(i)
        used_f.add(j)
        errors.append(abs(float(true[i]["degree_percent"]) - float(found[j]["degree_percent"])))
    if errors:
        out["stenosis_degree_mae"] = float(np.mean(errors))
    expected = cad_rads([(str(t["branch"]), float(t["degree_percent"])) for t in true])
    out["cad_rads_exact"] = float(str(result.get("cad_rads")) == expected)
    return out


def score_analysis(
    result: Mapping[str, Any],
    label: np.ndarray,
    affine: np.ndarray,
    centerlines: Mapping[str, Any] | None = None,
    stenoses: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, float]:
    """Every column of :data:`COLUMNS` for one case (NaN where its ground truth is not given).

    Args:
        result: the analysis of the mask being scored.
        label: the ground-truth mask (non-zero is lumen): the reference radii.
        affine: its voxel-to-world (RAS mm) matrix.
        centerlines: the reference centrelines ``{side: Centerlines}``, or ``None``.
        stenoses: the true lesions, or ``None``.
    """
    from vesselfm.analysis.lumen import InscribedRadius

    out = {c: float("nan") for c in COLUMNS}
    if centerlines:
        out.update(centreline_scores(result, centerlines, InscribedRadius(label != 0, affine)))
    if stenoses is not None:
        out.update(stenosis_scores(result, stenoses))
    return out
