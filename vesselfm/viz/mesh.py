"""Surface meshes of binary masks, in scanner millimetres, and binary STL files.

Marching cubes (scikit-image) runs on the mask's bounding box in voxel index space; the vertices
are then mapped through the NIfTI affine, so a mesh lands where the scan is in the scanner's
(RAS+) coordinates and opens aligned with the image in 3D Slicer, ParaView or MeshLab. The mask
is padded with background so every surface is closed, and the faces are wound so the normals
point outward whatever the affine's handedness.

Example:
    >>> vertices, faces = mask_to_mesh(label, affine)  # doctest: +SKIP
    >>> mask_to_stl(label, affine, "out/1_gt.stl")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from vesselfm.utils.io import atomic_path

log = logging.getLogger(__name__)

# Taubin's lambda/mu pair: a shrinking Laplacian step followed by an inflating one, so light
# smoothing removes the voxel staircase without shrinking thin vessels.
TAUBIN_LAMBDA = 0.5
TAUBIN_MU = -0.53


def _check_mask_affine(mask: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mask = np.asarray(mask)
    affine = np.asarray(affine, dtype=np.float64)
    if mask.ndim != 3:
        raise ValueError(
            f"mask must be a 3D array (X, Y, Z), got shape {mask.shape}; squeeze channel axes first"
        )
    if affine.shape != (4, 4):
        raise ValueError(
            f"affine must be a 4x4 matrix (voxel index -> mm), got shape {affine.shape}"
        )
    if abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ValueError("affine is singular (zero voxel size); pass the NIfTI image's affine")
    return mask, affine


def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """The smallest box holding every nonzero voxel, or ``None`` for an empty mask.

    Args:
        mask: array of any dimension; nonzero is foreground.

    Returns:
        One ``slice`` per axis, or ``None`` when the mask is empty.
    """
    mask = np.asarray(mask)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        hits = np.flatnonzero(np.any(mask, axis=other))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map ``(N, 3)`` voxel indices to ``(N, 3)`` scanner coordinates in mm."""
    affine = np.asarray(affine, dtype=np.float64)
    return np.asarray(points, dtype=np.float64) @ affine[:3, :3].T + affine[:3, 3]


def mesh_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume enclosed by a closed triangle mesh (divergence theorem).

    Args:
        vertices: ``(V, 3)`` coordinates (mm gives mm³).
        faces: ``(F, 3)`` vertex indices.

    Returns:
        The volume; positive when the faces are wound counter-clockwise seen from outside
        (outward normals), negative when they face inward.
    """
    if len(faces) == 0:
        return 0.0
    tri = np.asarray(vertices, dtype=np.float64)[np.asarray(faces)]
    return float(np.einsum("ij,ij->", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])) / 6.0)


def _taubin_smooth(vertices: np.ndarray, faces: np.ndarray, iterations: int) -> np.ndarray:
    """Taubin (lambda/mu) smoothing with the uniform Laplacian; keeps the volume nearly unchanged."""
    from scipy import sparse

    n = len(vertices)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    edges = np.concatenate([edges, edges[:, ::-1]])
    adjacency = sparse.coo_matrix(
        (np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n)
    ).tocsr()
    adjacency.data[:] = 1.0  # duplicate edges (shared by two faces) count once
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    degree[degree == 0] = 1.0
    average = sparse.diags(1.0 / degree) @ adjacency
    out = np.asarray(vertices, dtype=np.float64).copy()
    for _ in range(int(iterations)):
        out += TAUBIN_LAMBDA * (average @ out - out)
        out += TAUBIN_MU * (average @ out - out)
    return out


def mask_to_mesh(
    mask: np.ndarray,
    affine: np.ndarray,
    step_size: int = 1,
    smooth_iterations: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Triangulate a binary mask's surface in scanner coordinates (mm).

    Marching cubes (``skimage.measure.marching_cubes`` at level 0.5) runs on the mask's bounding
    box padded with background, so the surface is closed even where the mask touches the
    volume's border. Vertices are mapped through ``affine``; faces are wound so that the normals
    point outward (the enclosed signed volume is positive), also for affines with axis flips.

    Args:
        mask: ``(X, Y, Z)`` array in NIfTI voxel order; nonzero voxels are foreground.
        affine: ``(4, 4)`` voxel-index-to-scanner (mm) matrix, as ``nibabel`` gives it.
        step_size: marching-cubes step in voxels; 2 gives about 4x fewer faces (coarser, faster).
        smooth_iterations: Taubin smoothing passes (0: none; 5-10 removes the voxel staircase
            and keeps the volume within about a per cent).

    Returns:
        ``(vertices, faces)``: ``(V, 3)`` float64 coordinates in mm and ``(F, 3)`` int64 vertex
        indices. Both are empty (``(0, 3)``) for an empty mask.

    Raises:
        ValueError: ``mask`` is not 3D, ``affine`` is not an invertible 4x4 matrix, or
            ``step_size`` < 1.
    """
    from skimage import measure

    mask, affine = _check_mask_affine(mask, affine)
    step_size = int(step_size)
    if step_size < 1:
        raise ValueError(f"step_size must be an integer >= 1, got {step_size}")
    if smooth_iterations < 0:
        raise ValueError(f"smooth_iterations must be >= 0, got {smooth_iterations}")
    box = bounding_box(mask)
    if box is None:
        log.warning("mask is empty: no surface to triangulate")
        return np.zeros((0, 3), np.float64), np.zeros((0, 3), np.int64)

    # One background voxel before the box and step_size after it, so the strided marching-cubes
    # grid always samples background beyond the last foreground voxel: a closed surface.
    crop = np.pad(np.asarray(mask[box] != 0, dtype=np.float32), [(1, step_size)] * 3)
    verts, faces, _, _ = measure.marching_cubes(
        crop, level=0.5, step_size=step_size, allow_degenerate=False
    )
    verts = verts.astype(np.float64) + np.array([s.start - 1 for s in box], dtype=np.float64)
    faces = faces.astype(np.int64)
    if smooth_iterations:
        verts = _taubin_smooth(verts, faces, smooth_iterations)
    verts = apply_affine(affine, verts)
    if mesh_volume(verts, faces) < 0:
        # skimage's winding depends on its gradient convention and the affine may flip axes
        # (det < 0): orient by the enclosed volume, which is right for every closed surface.
        faces = faces[:, ::-1].copy()
    log.debug("mesh: %d vertices, %d faces (step %d)", len(verts), len(faces), step_size)
    return verts, faces


def save_stl(vertices: np.ndarray, faces: np.ndarray, path: str | os.PathLike[str]) -> Path:
    """Write a triangle mesh as a binary STL file (atomically).

    STL carries no unit; the coordinates are written as given (mm from :func:`mask_to_mesh`).

    Args:
        vertices: ``(V, 3)`` coordinates.
        faces: ``(F, 3)`` vertex indices; may be empty (a valid STL with no triangles).
        path: target file; parent folders are created.

    Returns:
        The path written.
    """
    from stl import Mode
    from stl import mesh as stl_mesh

    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise ValueError(
            f"faces index vertices 0..{len(vertices) - 1}, got indices {faces.min()}..{faces.max()}"
        )
    data = np.zeros(len(faces), dtype=stl_mesh.Mesh.dtype)
    data["vectors"] = vertices[faces]
    surface = stl_mesh.Mesh(data, calculate_normals=True, remove_empty_areas=False)
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        surface.save(path.stem, fh=fh, mode=Mode.BINARY, update_normals=False)
    log.info("wrote %s (%d triangles)", path, len(faces))
    return path


def load_stl(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read an STL file back as an indexed mesh (shared vertices merged).

    Args:
        path: an ASCII or binary STL file.

    Returns:
        ``(vertices, faces)``: ``(V, 3)`` float64 and ``(F, 3)`` int64.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    from stl import mesh as stl_mesh

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"STL file not found: {path}")
    vectors = stl_mesh.Mesh.from_file(str(path)).vectors.reshape(-1, 3)
    vertices, inverse = np.unique(vectors, axis=0, return_inverse=True)
    return vertices.astype(np.float64), inverse.reshape(-1, 3).astype(np.int64)


def mask_to_stl(
    mask: np.ndarray,
    affine: np.ndarray,
    path: str | os.PathLike[str],
    step_size: int = 1,
    smooth_iterations: int = 0,
) -> Path:
    """Triangulate a mask (:func:`mask_to_mesh`) and write it as binary STL (:func:`save_stl`).

    Args:
        mask: ``(X, Y, Z)`` array; nonzero voxels are foreground.
        affine: ``(4, 4)`` voxel-to-mm matrix.
        path: target ``.stl`` file.
        step_size: marching-cubes step in voxels.
        smooth_iterations: Taubin smoothing passes.

    Returns:
        The path written.
    """
    vertices, faces = mask_to_mesh(
        mask, affine, step_size=step_size, smooth_iterations=smooth_iterations
    )
    return save_stl(vertices, faces, path)


def segment_stl_path(path: str | os.PathLike[str], name: str) -> Path:
    """``<case>_pred_<name>.stl`` beside ``<case>_pred.stl``: a segment's own mesh (``R-PDA`` ->
    ``R_PDA``)."""
    path = Path(path)
    return path.with_name(f"{path.stem}_{name.replace('-', '_')}{path.suffix}")
