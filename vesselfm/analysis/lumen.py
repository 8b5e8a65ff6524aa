"""Lumen size along a centreline: the inscribed radius and the area-equivalent diameter.

Both are measured in scanner millimetres on the mask's own (possibly anisotropic, flipped) grid:
points travel through the affine, never through voxel counts.

- The **inscribed radius** is the distance (mm) from the centreline point to the nearest
  background voxel centre (:class:`InscribedRadius`). On voxelised tubes of radius 1.2-2 mm,
  axial or oblique, it is within 0.1 mm of the true radius (tests/analysis), so no half-voxel
  correction is applied. The distance transform (:func:`distance_mm`, voxel centres only) serves
  the skeleton's pruning and the choice of the ostium.
- The **area-equivalent diameter** ``2 * sqrt(A / pi)`` of the cross-section ``A`` perpendicular to
  the centreline: the mask is sampled (trilinear, threshold 0.5) on a square grid in the plane
  through the point, normal to the local tangent, and ``A`` is the area of the piece of lumen
  that holds the point (a neighbouring vessel cut by the same plane does not count).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi


def distance_mm(mask: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Euclidean distance transform of ``mask`` in mm (float32), by ``edt`` when installed (several
    times faster than SciPy's), else by SciPy."""
    try:
        import edt
    except ImportError:
        return ndi.distance_transform_edt(mask, sampling=spacing).astype(np.float32)
    return edt.edt(
        np.ascontiguousarray(mask, dtype=np.uint8), anisotropy=tuple(spacing), parallel=1
    )


class InscribedRadius:
    """Radius of the largest ball centred at a point that holds no background voxel centre.

    Exact at any point (a KD-tree of the background voxels that touch the lumen, in world mm),
    unlike the distance transform interpolated between voxel centres, which cuts the ridge of
    the distance map short by up to half a voxel on vessels oblique to the grid.

    Args:
        mask: boolean lumen ``(X, Y, Z)``.
        affine: its voxel-to-world (RAS mm) matrix.
    """

    def __init__(self, mask: np.ndarray, affine: np.ndarray) -> None:
        from scipy.spatial import cKDTree

        padded = np.pad(mask, 1)
        shell = ndi.binary_dilation(padded, structure=np.ones((3, 3, 3))) & ~padded
        vox = np.argwhere(shell).astype(float) - 1.0
        self.tree = cKDTree(vox @ affine[:3, :3].T + affine[:3, 3])

    def __call__(self, points_mm: np.ndarray) -> np.ndarray:
        """``(N,)`` radii in mm at world points ``(N, 3)``."""
        if len(points_mm) == 0:
            return np.zeros(0)
        return self.tree.query(np.asarray(points_mm, dtype=float))[0]


def _plane_basis(tangent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two unit vectors ``(N, 3)`` orthogonal to each tangent and to each other."""
    t = tangent / np.maximum(np.linalg.norm(tangent, axis=1, keepdims=True), 1e-12)
    helper = np.where(np.abs(t[:, :1]) < 0.9, [[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]])
    u = np.cross(t, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(t, u)
    return u, v


def cross_section_diameter(
    mask: np.ndarray,
    affine: np.ndarray,
    points_mm: np.ndarray,
    tangents: np.ndarray,
    radius_mm: np.ndarray,
    spacing: tuple[float, float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Area-equivalent diameter (mm) of the lumen cross-section at each centreline point.

    Args:
        mask: the lumen, ``(X, Y, Z)``, 0/1; pass it as float32 to spare a copy per call.
        affine: 4×4 voxel-to-world (RAS mm) matrix of ``mask``.
        points_mm: ``(N, 3)`` centreline points, world mm.
        tangents: ``(N, 3)`` centreline directions, world frame.
        radius_mm: ``(N,)`` inscribed radius, to size each plane (3 radii plus 2 voxels each side).
        spacing: voxel size in mm (the plane's sampling step is half the smallest).

    Returns:
        ``(diameters, shifts)``: ``(N,)`` diameters in mm, and ``(N, 3)`` world vectors from each
        point to the centroid of its cross-section (to re-centre a thinning's centreline).
    """
    if len(points_mm) == 0:
        return np.zeros(0), np.zeros((0, 3))
    step = 0.5 * float(min(spacing))
    inv = np.linalg.inv(affine)
    volume = np.asarray(mask, dtype=np.float32)
    u, v = _plane_basis(tangents)
    out = np.zeros(len(points_mm))
    shift = np.zeros((len(points_mm), 3))
    # 4-connected within each plane, never across planes
    within = np.zeros((3, 3, 3), dtype=bool)
    within[1] = ndi.generate_binary_structure(2, 1)
    # planes in chunks of similar size: 3 radii plus 2 voxels each side of the point
    half = 3.0 * np.asarray(radius_mm, dtype=float) + 2.0 * float(max(spacing))
    order = np.argsort(half)
    for chunk in np.array_split(order, max(1, int(np.ceil(len(order) / 256)))):
        if len(chunk) == 0:
            continue
        m = int(np.ceil(float(half[chunk].max()) / step))
        grid = np.arange(-m, m + 1) * step
        gu, gv = np.meshgrid(grid, grid, indexing="ij")
        world = (
            points_mm[chunk, None, None, :]
            + gu[None, :, :, None] * u[chunk, None, None, :]
            + gv[None, :, :, None] * v[chunk, None, None, :]
        )
        vox = world.reshape(-1, 3) @ inv[:3, :3].T + inv[:3, 3]
        values = ndi.map_coordinates(volume, vox.T, order=1, mode="constant", cval=0.0)
        labels, count = ndi.label(values.reshape(len(chunk), 2 * m + 1, 2 * m + 1) >= 0.5, within)
        lab = labels[:, m, m].copy()
        for k in np.flatnonzero(lab == 0):
            # the point fell just outside (a voxel-thin vessel): the nearest piece of lumen
            ii, jj = np.nonzero(labels[k])
            if len(ii):
                nearest = np.argmin((ii - m) ** 2 + (jj - m) ** 2)
                lab[k] = labels[k, ii[nearest], jj[nearest]]
        flat = labels.ravel()
        counts = np.bincount(flat, minlength=count + 1).astype(float)
        ii, jj = np.indices((2 * m + 1, 2 * m + 1))
        sum_i = np.bincount(
            flat, weights=np.broadcast_to(ii, labels.shape).ravel(), minlength=count + 1
        )
        sum_j = np.bincount(
            flat, weights=np.broadcast_to(jj, labels.shape).ravel(), minlength=count + 1
        )
        n = np.where(lab > 0, counts[lab], 0.0)
        out[chunk] = 2.0 * np.sqrt(n * step * step / np.pi)
        safe = np.maximum(n, 1.0)
        cu = np.where(n > 0, (sum_i[lab] / safe - m) * step, 0.0)
        cv = np.where(n > 0, (sum_j[lab] / safe - m) * step, 0.0)
        shift[chunk] = cu[:, None] * u[chunk] + cv[:, None] * v[chunk]
    return out, shift
