"""Meshes: volume, closedness, outward normals and millimetre coordinates through the affine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import trimesh
from synthetic import ANISO_AFFINE as AFFINE

from vesselfm.utils.outputs import RECORD_NAME
from vesselfm.viz import apply_affine, load_stl, mask_to_mesh, mask_to_stl, mesh_volume, save_stl

SHAPE = (56, 48, 40)
VOXEL_MM3 = abs(np.linalg.det(AFFINE[:3, :3]))
# det > 0 (identity-like, anisotropic) and det < 0 (one flipped axis), with translations.
AFFINES = {
    "positive": np.diag([0.45, 0.45, 0.6, 1.0])
    + np.array([[0, 0, 0, -50.0], [0, 0, 0, 80.0], [0, 0, 0, -200.0], [0, 0, 0, 0]]),
    "flipped": AFFINE,
    "oblique": np.array(
        [
            [0.0, -0.5, 0.0, 10.0],
            [0.4 * np.cos(0.3), 0.0, -0.8 * np.sin(0.3), 5.0],
            [0.4 * np.sin(0.3), 0.0, 0.8 * np.cos(0.3), 0.0],
            [0, 0, 0, 1.0],
        ]
    ),
}


@pytest.mark.parametrize("name", list(AFFINES))
def test_sphere_volume_matches_voxel_volume_and_faces_point_outward(name: str, make_sphere) -> None:
    affine = AFFINES[name]
    mask = make_sphere(SHAPE, (25, 22, 18), 9)
    vertices, faces = mask_to_mesh(mask, affine)
    expected = mask.sum() * abs(np.linalg.det(affine[:3, :3]))
    volume = mesh_volume(vertices, faces)
    assert volume > 0, "faces must be wound outward (positive enclosed volume)"
    assert volume == pytest.approx(expected, rel=0.02)
    surface = trimesh.Trimesh(vertices, faces, process=True)
    assert surface.is_watertight
    assert surface.is_winding_consistent
    # outward: the normal of the face farthest along +x points along +x
    top = np.argmax(surface.triangles_center[:, 0])
    assert surface.face_normals[top][0] > 0.5


def test_tube_tree_volume_within_a_few_percent(tree: np.ndarray) -> None:
    mask = tree
    vertices, faces = mask_to_mesh(mask, AFFINE)
    assert mesh_volume(vertices, faces) == pytest.approx(mask.sum() * VOXEL_MM3, rel=0.05)


def test_blob_centroid_is_affine_of_voxel_centroid() -> None:
    # an off-centre, anisotropic ellipsoid: centroid errors from a wrong axis order or offset show
    grid = np.indices(SHAPE, dtype=np.float64)
    centre = np.array([12.3, 30.0, 25.5])
    radii = np.array([6.0, 4.0, 8.0])
    mask = (((grid - centre[:, None, None, None]) / radii[:, None, None, None]) ** 2).sum(0) <= 1
    vertices, faces = mask_to_mesh(mask, AFFINE)
    mesh_centroid = trimesh.Trimesh(vertices, faces).center_mass
    voxel_centroid = apply_affine(AFFINE, np.argwhere(mask).mean(axis=0)[None])[0]
    np.testing.assert_allclose(
        mesh_centroid, voxel_centroid, atol=0.02
    )  # mm; voxels are 0.4-0.8 mm
    # and the mesh sits inside the mask's box in mm, not at the voxel indices
    lo, hi = vertices.min(0), vertices.max(0)
    corners = apply_affine(AFFINE, np.argwhere(mask)[[0, -1]])
    assert np.all(lo <= corners.min(0) + 0.5) and np.all(hi >= corners.max(0) - 0.5)
    assert np.all(hi < 200)  # scanner z is around 100-130 mm here, voxel z 17-34


def test_mask_touching_the_border_gives_a_closed_surface() -> None:
    mask = np.zeros((20, 20, 12), bool)
    mask[5:12, 4:9, :] = True  # runs through both z faces of the volume
    mask[0:3, 0:3, 0:3] = True  # a corner block
    vertices, faces = mask_to_mesh(mask, np.eye(4))
    surface = trimesh.Trimesh(vertices, faces)
    assert surface.is_watertight
    assert surface.body_count == 2
    assert mesh_volume(vertices, faces) == pytest.approx(mask.sum(), rel=0.05)


@pytest.mark.parametrize("step_size", [2, 3])
def test_coarser_step_has_fewer_faces_and_stays_closed(step_size: int, make_sphere) -> None:
    mask = make_sphere(SHAPE, (28, 24, 20), 12)
    _, fine = mask_to_mesh(mask, AFFINE)
    vertices, faces = mask_to_mesh(mask, AFFINE, step_size=step_size)
    assert len(faces) < len(fine) / (step_size**2) * 1.5
    assert trimesh.Trimesh(vertices, faces).is_watertight
    assert mesh_volume(vertices, faces) == pytest.approx(mask.sum() * VOXEL_MM3, rel=0.15)


def test_smoothing_keeps_volume_and_reduces_roughness(make_sphere) -> None:
    mask = make_sphere(SHAPE, (28, 24, 20), 12)
    raw_v, faces = mask_to_mesh(mask, np.eye(4))
    smooth_v, smooth_f = mask_to_mesh(mask, np.eye(4), smooth_iterations=10)
    np.testing.assert_array_equal(faces, smooth_f)
    assert mesh_volume(smooth_v, faces) == pytest.approx(mask.sum(), rel=0.02)
    centre = np.array([28, 24, 20])
    # distance to the centre varies less on the smoothed sphere
    assert (
        np.linalg.norm(smooth_v - centre, axis=1).std()
        < 0.8 * np.linalg.norm(raw_v - centre, axis=1).std()
    )


def test_stl_reads_back_with_numpy_stl_and_trimesh(tmp_path: Path, tree: np.ndarray) -> None:
    mask = tree
    vertices, faces = mask_to_mesh(mask, AFFINE)
    path = mask_to_stl(mask, AFFINE, tmp_path / "sub" / "tree.stl")
    assert path == tmp_path / "sub" / "tree.stl"
    assert path.read_bytes()[:5] != b"solid"  # binary, not ASCII
    assert path.stat().st_size == 84 + 50 * len(faces)
    # the mesh and the output record naming it; no temporary left behind
    assert sorted(path.parent.iterdir()) == [path.parent / RECORD_NAME, path]

    back_v, back_f = load_stl(path)
    assert len(back_f) == len(faces)
    assert mesh_volume(back_v, back_f) == pytest.approx(mesh_volume(vertices, faces), rel=1e-5)

    surface = trimesh.load(path, file_type="stl")
    assert surface.is_watertight
    assert surface.volume == pytest.approx(mask.sum() * VOXEL_MM3, rel=0.05)
    np.testing.assert_allclose(surface.bounds, [vertices.min(0), vertices.max(0)], atol=1e-3)


def test_empty_mask_gives_an_empty_but_valid_stl(tmp_path: Path) -> None:
    vertices, faces = mask_to_mesh(np.zeros((8, 8, 8), np.uint8), np.eye(4))
    assert vertices.shape == (0, 3) and faces.shape == (0, 3)
    path = save_stl(vertices, faces, tmp_path / "empty.stl")
    assert path.stat().st_size == 84
    back_v, back_f = load_stl(path)
    assert len(back_f) == 0


def test_bad_inputs_raise_and_write_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="3D"):
        mask_to_mesh(np.ones((4, 4)), np.eye(4))
    with pytest.raises(ValueError, match="4x4"):
        mask_to_mesh(np.ones((4, 4, 4)), np.eye(3))
    with pytest.raises(ValueError, match="step_size"):
        mask_to_mesh(np.ones((4, 4, 4)), np.eye(4), step_size=0)
    with pytest.raises(ValueError, match="faces index"):
        save_stl(np.zeros((3, 3)), np.array([[0, 1, 5]]), tmp_path / "bad.stl")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="missing.stl"):
        load_stl(tmp_path / "missing.stl")
