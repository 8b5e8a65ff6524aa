"""Centreline trees of a vessel mask: skeleton → graph → ordered branch polylines in voxels.

One connected component of the mask is one tree. Its voxel skeleton (scikit-image's 3D
thinning, Lee et al. 1994) becomes a graph whose nodes are the skeleton's end voxels and its
junction clusters (26-connected voxels with three or more skeleton neighbours), and whose edges
are the voxel paths between them (networkx). Spurs (short terminal edges that thinning grows
from bumps of a thick tube) are pruned by a length/radius rule; the root is the ostium (the
thick end); loops (the graph's independent cycles) are counted and cut by a shortest-path tree
from the root, so every branch has one parent.

skan does the skeleton → graph step as a library; it is not used because it pulls in numba,
whose first compilation costs more than the whole analysis of a small mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

_OFFSETS = np.array(
    [
        (i, j, k)
        for i in (-1, 0, 1)
        for j in (-1, 0, 1)
        for k in (-1, 0, 1)
        if (i, j, k) != (0, 0, 0)
    ]
)


@dataclass
class Segment:
    """One branch of a centreline tree, between two nodes (ostium, junction or end).

    Attributes:
        id: index in the tree's list, parents before children.
        parent: the upstream segment's ``id``, ``None`` for the root segment.
        voxels: ``(N, 3)`` voxel indices of the mask's grid, ordered away from the ostium.
        children: ids of the downstream segments.
        end_node: the graph node at the segment's downstream end.
    """

    id: int
    parent: int | None
    voxels: np.ndarray
    children: list[int] = field(default_factory=list)
    end_node: int = -1


@dataclass
class Tree:
    """A centreline tree: its segments (root first), its number of loops and where they were cut.

    Attributes:
        segments: parents before children; ``segments[0]`` starts at the ostium.
        loops: independent cycles of the skeleton graph (0 for a true tree).
        loop_voxels: one voxel index per cut loop (where an edge was left out of the tree).
        component: the label of the tree's connected component.
        root: the graph node of the ostium.
        graph, points: the pruned skeleton graph and its voxels (to root the tree elsewhere,
            :func:`reroot`).
    """

    segments: list[Segment]
    loops: int
    loop_voxels: list[np.ndarray]
    component: int
    root: int = -1
    graph: Any = None
    points: np.ndarray | None = None


def _neighbours(skel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Skeleton voxels ``(n, 3)`` and their 26-neighbours as indices into it (``-1``: none)."""
    points = np.argwhere(skel)
    index = np.full(np.array(skel.shape) + 2, -1, dtype=np.int64)
    index[tuple((points + 1).T)] = np.arange(len(points))
    nbrs = np.stack([index[tuple((points + 1 + off).T)] for off in _OFFSETS], axis=1)
    return points, nbrs


def skeleton_graph(skel: np.ndarray, lengths_mm: np.ndarray):
    """The graph of a voxel skeleton.

    Args:
        skel: boolean skeleton ``(X, Y, Z)`` of one connected component.
        lengths_mm: ``(3,)`` voxel spacing in mm, for edge lengths.

    Returns:
        ``(graph, points)``: a networkx ``MultiGraph`` whose nodes carry ``voxels`` (indices
        into ``points``) and whose edges carry ``path`` (indices into ``points``, from the
        edge's ``u`` to its ``v``) and ``length`` (mm); ``points`` are the skeleton voxels.
    """
    import networkx as nx

    points, nbrs = _neighbours(skel)
    degree = (nbrs >= 0).sum(axis=1)
    is_node = degree != 2
    # junction voxels that touch each other form one node
    junction = np.zeros(skel.shape, dtype=bool)
    junction[tuple(points[degree >= 3].T)] = True
    labels, _ = ndi.label(junction, structure=np.ones((3, 3, 3)))
    node_of = np.full(len(points), -1, dtype=np.int64)
    jl = labels[tuple(points.T)]
    next_id = int(labels.max())
    node_of[jl > 0] = jl[jl > 0] - 1
    for i in np.flatnonzero(is_node & (jl == 0)):
        node_of[i] = next_id
        next_id += 1
    graph = nx.MultiGraph()
    for n in range(next_id):
        graph.add_node(n, voxels=[])
    for i in np.flatnonzero(node_of >= 0):
        graph.nodes[int(node_of[i])]["voxels"].append(int(i))
    graph.remove_nodes_from([n for n in range(next_id) if not graph.nodes[n]["voxels"]])

    def step_mm(a: int, b: int) -> float:
        return float(np.linalg.norm((points[a] - points[b]) * lengths_mm))

    seen: set[tuple[int, int]] = set()
    for start in np.flatnonzero(node_of >= 0):
        for first in nbrs[start]:
            if first < 0 or node_of[first] == node_of[start]:
                continue
            if (int(start), int(first)) in seen:
                continue
            path = [int(start), int(first)]
            prev, cur = int(start), int(first)
            while node_of[cur] < 0:
                nxt = [int(x) for x in nbrs[cur] if x >= 0 and x != prev]
                if not nxt:
                    break
                prev, cur = cur, nxt[0]
                path.append(cur)
                if len(path) > len(points) + 1:  # a closed ring of degree-2 voxels
                    break
            if node_of[path[-1]] < 0:
                continue
            seen.add((path[0], path[1]))
            seen.add((path[-1], path[-2]))
            length = sum(step_mm(a, b) for a, b in zip(path[:-1], path[1:], strict=True))
            graph.add_edge(int(node_of[path[0]]), int(node_of[path[-1]]), path=path, length=length)
    return graph, points


def _edge_path(graph, u: int, v: int, key: int) -> list[int]:
    """The edge's voxel path oriented from ``u`` to ``v``."""
    data = graph.edges[u, v, key]
    path = data["path"]
    return path if data["from"] == u else path[::-1]


def _orient(graph) -> None:
    for u, v, _key, data in graph.edges(keys=True, data=True):
        # networkx may store (u, v) in either order: fix "from" by the path's first voxel
        first = data["path"][0]
        data["from"] = u if first in graph.nodes[u]["voxels"] else v


def _merge_degree_two(graph, keep: set[int]) -> None:
    """Join the two edges of every node of degree 2 (a pruned spur's junction) into one."""
    changed = True
    while changed:
        changed = False
        for n in list(graph.nodes):
            if n in keep or graph.degree(n) != 2:
                continue
            edges = list(graph.edges(n, keys=True))
            if len(edges) != 2 or edges[0][1] == n or edges[1][1] == n:
                continue
            (_, a, ka), (_, b, kb) = edges
            pa = _edge_path(graph, a, n, ka)
            pb = _edge_path(graph, n, b, kb)
            length = graph.edges[a, n, ka]["length"] + graph.edges[n, b, kb]["length"]
            graph.remove_node(n)
            graph.add_edge(a, b, path=pa + pb[1:], length=length, **{"from": a})
            changed = True


def prune_spurs(graph, radius_at, spur_factor: float, min_length_mm: float) -> int:
    """Remove terminal edges shorter than ``max(min_length_mm, spur_factor * r)`` (``r`` the
    inscribed radius at their junction), shortest first, one at a time, joining the edges left
    at a junction of degree 2. Returns the number removed."""
    removed = 0
    while True:
        best = None
        for u, v, key, data in graph.edges(keys=True, data=True):
            if u == v:
                continue
            du, dv = graph.degree(u), graph.degree(v)
            if (du == 1) == (dv == 1):  # not terminal, or an isolated edge (a lone tube)
                continue
            junction = u if du > 1 else v
            limit = max(min_length_mm, spur_factor * radius_at(junction))
            if data["length"] < limit and (best is None or data["length"] < best[0]):
                best = (data["length"], u, v, key, v if junction == u else u)
        if best is None:
            return removed
        _, u, v, key, leaf = best
        graph.remove_edge(u, v, key)
        graph.remove_node(leaf)
        _merge_degree_two(graph, keep=set())
        removed += 1


def build_tree(
    graph,
    points: np.ndarray,
    root: int,
    component: int,
) -> Tree:
    """Orient the graph away from ``root`` as a tree of :class:`Segment`.

    Loops are cut where a shortest-path tree from the root leaves an edge out.
    """
    import networkx as nx

    loops = (
        graph.number_of_edges() - graph.number_of_nodes() + nx.number_connected_components(graph)
    )
    dist, _ = nx.single_source_dijkstra(graph, root, weight="length")
    # the edge into each node along shortest paths
    into: dict[int, tuple[int, int, int]] = {}
    for u, v, key, data in graph.edges(keys=True, data=True):
        for a, b in ((u, v), (v, u)):
            if a == b or a not in dist or b not in dist:
                continue
            if abs(dist[a] + data["length"] - dist[b]) < 1e-6 and b not in into and b != root:
                into[b] = (a, b, key)
    tree_edges = {(min(a, b), max(a, b), k) for a, b, k in into.values()}
    loop_voxels = [
        points[graph.edges[u, v, k]["path"][len(graph.edges[u, v, k]["path"]) // 2]]
        for u, v, k in graph.edges(keys=True)
        if (min(u, v), max(u, v), k) not in tree_edges
    ]
    children: dict[int, list[int]] = {}
    for a, b, _ in into.values():
        children.setdefault(a, []).append(b)
    segments: list[Segment] = []

    def visit(node: int, parent_seg: int | None) -> None:
        # downstream nodes in a fixed order (by the first voxel's index) for reproducible ids
        for child in sorted(children.get(node, [])):
            a, b, key = into[child]
            path = _edge_path(graph, a, b, key)
            seg = Segment(id=len(segments), parent=parent_seg, voxels=points[path], end_node=b)
            segments.append(seg)
            if parent_seg is not None:
                segments[parent_seg].children.append(seg.id)
            visit(child, seg.id)

    visit(root, None)
    return Tree(
        segments=segments,
        loops=int(loops),
        loop_voxels=loop_voxels,
        component=component,
        root=root,
        graph=graph,
        points=points,
    )


def reroot(tree: Tree, node: int) -> Tree:
    """``tree`` rooted at another of its graph's nodes (an end: the proximal end of a vessel
    piece beyond an occlusion)."""
    if node == tree.root:
        return tree
    return build_tree(tree.graph, tree.points, node, tree.component)


def centreline_trees(
    mask: np.ndarray,
    spacing: tuple[float, float, float],
    radius: np.ndarray,
    min_volume_mm3: float = 5.0,
    spur_factor: float = 1.5,
    min_branch_mm: float = 2.0,
    ostium_window_mm: float = 5.0,
) -> list[Tree]:
    """Centreline trees of every connected component of ``mask`` large enough to analyse.

    Args:
        mask: boolean ``(X, Y, Z)``.
        spacing: voxel size in mm per axis.
        radius: inscribed radius in mm per voxel (the distance transform), ``mask``'s shape.
        min_volume_mm3: components smaller than this are left out (noise, calcium islands).
        spur_factor: a terminal edge shorter than this times the radius at its junction is a
            spur of the thinning, not a branch.
        min_branch_mm: terminal edges shorter than this are spurs whatever the radius.
        ostium_window_mm: the root is the end whose terminal edge is thickest over this length
            from the end (the ostium: the proximal, thickest end of a coronary tree).

    Returns:
        Trees, largest component first.
    """
    from skimage.morphology import skeletonize

    lengths = np.asarray(spacing, dtype=float)
    labels, n = ndi.label(mask, structure=np.ones((3, 3, 3)))
    if n == 0:
        return []
    sizes = np.bincount(labels.ravel())[1:] * float(np.prod(lengths))
    boxes = ndi.find_objects(labels)
    trees: list[Tree] = []
    for comp in np.argsort(-sizes, kind="stable"):
        if sizes[comp] < min_volume_mm3:
            continue
        box = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in boxes[comp])
        origin = np.array([s.start for s in box])
        sub = labels[box] == comp + 1
        skel = skeletonize(sub).astype(bool)
        if skel.sum() < 2:
            continue
        graph, points = skeleton_graph(skel, lengths)
        points = points + origin
        if graph.number_of_edges() == 0:
            continue
        # the largest component of the skeleton graph (thinning keeps one piece per component,
        # but be safe)
        import networkx as nx

        keep = max(nx.connected_components(graph), key=lambda c: len(c))
        graph = graph.subgraph(keep).copy()
        _orient(graph)
        r_vox = radius[tuple(points.T)]

        def radius_at(node: int, graph=graph, r_vox=r_vox) -> float:
            return float(r_vox[graph.nodes[node]["voxels"]].max())

        prune_spurs(graph, radius_at, spur_factor, min_branch_mm)
        root = _ostium(graph, points, r_vox, lengths, ostium_window_mm)
        tree = build_tree(graph, points, root, int(comp + 1))
        if tree.segments:  # a component whose skeleton is one closed ring has no branch
            trees.append(tree)
    return trees


def _end_thickness(graph, points, r_vox, lengths, node: int, window_mm: float) -> float:
    """Median radius over the first ``window_mm`` of the terminal edge at end ``node``."""
    (u, v, key) = next(iter(graph.edges(node, keys=True)))
    path = _edge_path(graph, node, v if u == node else u, key)
    steps = np.linalg.norm(np.diff(points[path], axis=0) * lengths, axis=1)
    arc = np.concatenate([[0.0], np.cumsum(steps)])
    near = np.asarray(path)[arc <= window_mm]
    return float(np.median(r_vox[near]))


def end_thickness(
    tree: Tree, node: int, radius: np.ndarray, spacing, window_mm: float = 5.0
) -> float:
    """The ostium rule's measure at an end of ``tree``: the median inscribed radius (``radius``,
    the distance map in mm) over ``window_mm`` of the vessel from that end."""
    r_vox = radius[tuple(tree.points.T)]
    lengths = np.asarray(spacing, dtype=float)
    return _end_thickness(tree.graph, tree.points, r_vox, lengths, node, window_mm)


def _ostium(graph, points, r_vox, lengths, window_mm: float) -> int:
    """The end node whose terminal edge is thickest (median radius) over ``window_mm``."""
    ends = [n for n in graph.nodes if graph.degree(n) == 1]
    if not ends:  # a ring: any node
        return min(graph.nodes)
    best, best_r = ends[0], -1.0
    for n in sorted(ends):
        r = _end_thickness(graph, points, r_vox, lengths, n, window_mm)
        if r > best_r + 1e-9:
            best, best_r = n, r
    return best
