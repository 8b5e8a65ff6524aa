"""NRRD and MetaImage (``.nrrd``, ``.mha``, ``.mhd``): read, written like the input, across formats.

The ITK files are written here with SimpleITK directly (LPS direction, spacing and origin set
explicitly from the NIfTI's affine), never by vesselfm's writer, so that a slip in our LPS↔RAS
conversion cannot cancel itself out.
"""

from __future__ import annotations

import builtins
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk  # the formats extra, part of dev: a missing one fails here
from synthetic import save_nifti, tube_phantom

from vesselfm.io import (
    VolumeError,
    find_inputs,
    find_labels,
    output_format_for,
    read_volume,
    read_volume_bytes,
    write_like,
)

ITK_EXTENSIONS = (".nrrd", ".mha", ".mhd")
LPS = np.diag([-1.0, -1.0, 1.0])


def _oblique_affine() -> np.ndarray:
    """x flipped, rotated 20° about z and 12° about x, anisotropic voxels, an offset origin."""
    a, b = np.deg2rad(20.0), np.deg2rad(12.0)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([-0.75, 0.625, 1.25])
    affine[:3, 3] = (40.5, -12.25, -80.0)
    return affine


def _itk_image(array: np.ndarray, affine_ras: np.ndarray):
    """A SimpleITK image of ``array`` (i, j, k) whose geometry is ``affine_ras``, set by hand."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))
    matrix = LPS @ affine_ras[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (matrix / spacing).ravel()])
    image.SetOrigin([float(v) for v in LPS @ affine_ras[:3, 3]])
    return image


@pytest.fixture()
def phantom(tmp_path: Path) -> dict[str, Path]:
    """The same tube phantom as ``.nii.gz``, ``.nrrd``, ``.mha`` and ``.mhd`` (+ ``.raw``)."""
    image, _ = tube_phantom((24, 20, 16))
    nii = save_nifti(tmp_path / "ct.nii.gz", image, _oblique_affine())
    affine = nib.load(nii).affine  # as stored (float32 sform), so all files share one grid
    files = {".nii.gz": nii}
    for ext in ITK_EXTENSIONS:
        files[ext] = tmp_path / f"ct{ext}"
        sitk.WriteImage(_itk_image(image, affine), str(files[ext]))
    return files


@pytest.mark.parametrize("ext", ITK_EXTENSIONS)
def test_itk_files_read_as_the_nifti(phantom: dict[str, Path], ext: str) -> None:
    nii = read_volume(phantom[".nii.gz"])
    vol = read_volume(phantom[ext])
    assert vol.format == {".nrrd": "nrrd", ".mha": "mha", ".mhd": "mha"}[ext]
    assert vol.array.dtype == np.int16 and vol.shape == nii.shape == (24, 20, 16)
    np.testing.assert_array_equal(vol.array, nii.array)
    np.testing.assert_allclose(vol.affine, nii.affine, atol=1e-6, rtol=0)
    assert vol.spacing == pytest.approx((0.75, 0.625, 1.25), abs=1e-6)


@pytest.mark.parametrize("ext", ITK_EXTENSIONS)
def test_world_coordinates_are_itk_physical_points_in_ras(
    phantom: dict[str, Path], ext: str
) -> None:
    vol = read_volume(phantom[ext])
    image = sitk.ReadImage(str(phantom[ext]))
    for index in [(0, 0, 0), (23, 0, 0), (0, 19, 0), (0, 0, 15), (7, 13, 5), (23, 19, 15)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        ras = vol.affine @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], LPS @ lps, atol=1e-6, rtol=0)
        # and the voxel holds the same value in both (array order (i, j, k) = ITK index)
        assert vol.array[index] == image[index]


def test_an_itk_conversion_of_the_nifti_reads_as_the_nifti(
    phantom: dict[str, Path], tmp_path: Path
) -> None:
    """ITK's own NIfTI reader (it converts RAS to LPS itself) agrees with ours."""
    converted = tmp_path / "itk_converted.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(phantom[".nii.gz"])), str(converted))
    nii, vol = read_volume(phantom[".nii.gz"]), read_volume(converted)
    np.testing.assert_array_equal(vol.array, nii.array)
    np.testing.assert_allclose(vol.affine, nii.affine, atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    ("ext", "out_ext"), [(".nrrd", ".nrrd"), (".mha", ".mha"), (".mhd", ".mha"), (".nrrd", ".mha")]
)
def test_write_like_keeps_the_itk_geometry_exactly(
    phantom: dict[str, Path], tmp_path: Path, ext: str, out_ext: str
) -> None:
    vol = read_volume(phantom[ext])
    mask = (vol.array > 100).astype(np.uint8)
    assert 0 < mask.sum() < mask.size
    out = write_like(mask, vol, tmp_path / f"ct_pred{out_ext}")
    src, back = sitk.ReadImage(str(phantom[ext])), sitk.ReadImage(str(out))
    assert back.GetOrigin() == src.GetOrigin()
    assert back.GetSpacing() == src.GetSpacing()
    assert back.GetDirection() == src.GetDirection()
    assert back.GetPixelIDTypeAsString() == "8-bit unsigned integer"
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back).transpose(2, 1, 0), mask)
    assert not list(tmp_path.glob(".*.tmp*"))  # written atomically, nothing left behind


def _mask_world_ras_nib(path: Path) -> np.ndarray:
    img = nib.load(path)
    idx = np.argwhere(np.asarray(img.dataobj) > 0)
    return nib.affines.apply_affine(img.affine, idx)


def _mask_world_ras_itk(path: Path) -> np.ndarray:
    image = sitk.ReadImage(str(path))
    idx = np.argwhere(sitk.GetArrayFromImage(image).transpose(2, 1, 0) > 0)
    return np.array(
        [LPS @ image.TransformIndexToPhysicalPoint(tuple(int(v) for v in i)) for i in idx]
    )


def test_cross_format_outputs_lie_on_the_input_voxels(
    phantom: dict[str, Path], tmp_path: Path
) -> None:
    # NRRD input -> NIfTI output: the mask's voxels at the NRRD's world positions
    nrrd = read_volume(phantom[".nrrd"])
    mask = (nrrd.array > 100).astype(np.uint8)
    as_nifti = write_like(mask, nrrd, tmp_path / "from_nrrd_pred.nii.gz")
    nrrd_mask = write_like(mask, nrrd, tmp_path / "same_pred.nrrd")
    expected = _mask_world_ras_itk(nrrd_mask)
    assert len(expected) == mask.sum()
    np.testing.assert_allclose(_mask_world_ras_nib(as_nifti), expected, atol=1e-4, rtol=0)
    # NIfTI input -> NRRD and MHA outputs
    nii = read_volume(phantom[".nii.gz"])
    nifti_mask = write_like(mask, nii, tmp_path / "same_pred.nii.gz")
    for ext in (".nrrd", ".mha"):
        out = write_like(mask, nii, tmp_path / f"from_nifti_pred{ext}")
        np.testing.assert_allclose(
            _mask_world_ras_itk(out), _mask_world_ras_nib(nifti_mask), atol=1e-4, rtol=0
        )
        np.testing.assert_array_equal(read_volume(out).array, mask)


def test_the_sidecar_of_a_mhd_is_not_a_volume(phantom: dict[str, Path], tmp_path: Path) -> None:
    assert (tmp_path / "ct.raw").exists()
    (phantom[".nrrd"]).rename(tmp_path / "ct.label.nrrd")
    found = find_inputs(tmp_path)
    assert [p.name for p in found] == ["ct.mha", "ct.mhd", "ct.nii.gz"]
    assert {k: p.name for k, p in find_labels(tmp_path, exclude=found).items()} == {
        "ct": "ct.label.nrrd"
    }


def test_read_from_bytes(phantom: dict[str, Path]) -> None:
    vol = read_volume_bytes(phantom[".nrrd"].read_bytes(), "a.zip::x/ct.NRRD")
    np.testing.assert_array_equal(vol.array, read_volume(phantom[".nrrd"]).array)
    with pytest.raises(VolumeError, match=r"^a\.zip::ct\.mhd: .*extract the archive"):
        read_volume_bytes(phantom[".mhd"].read_bytes(), "a.zip::ct.mhd")


@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_a_truncated_nrrd_is_one_line_naming_the_file(
    phantom: dict[str, Path], tmp_path: Path, compressed: bool, keep: float
) -> None:
    whole = tmp_path / "whole.nrrd"
    sitk.WriteImage(sitk.ReadImage(str(phantom[".nrrd"])), str(whole), compressed)
    data = whole.read_bytes()
    cut = tmp_path / "cut.nrrd"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(VolumeError) as info:
        read_volume(cut)
    message = str(info.value)
    assert message.startswith(f"{cut}: unreadable or truncated") and "\n" not in message


def test_without_simpleitk_one_line_names_the_extra(
    phantom: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_sitk(name: str, *args, **kwargs):
        if name == "SimpleITK":
            raise ImportError("No module named 'SimpleITK'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "SimpleITK")
    monkeypatch.setattr(builtins, "__import__", no_sitk)
    with pytest.raises(VolumeError) as info:
        read_volume(phantom[".mha"])
    message = str(info.value)
    assert message.startswith(str(phantom[".mha"]))
    assert 'pip install "vesselfm[formats]"' in message and "\n" not in message
    read_volume(phantom[".nii.gz"])  # NIfTI needs no SimpleITK


def test_output_format_defaults_to_the_input_format() -> None:
    assert output_format_for("a.nii") == "nifti"
    assert output_format_for("a.NRRD") == "nrrd"
    assert output_format_for("a.mhd") == "mha"
    assert output_format_for("a.mha", "nifti") == "nifti"
    with pytest.raises(
        ValueError,
        match=r"^output_format must be one of nifti\|nrrd\|mha\|seg\.nrrd\|dicom_seg .*'dicom'",
    ):
        output_format_for("a.nii", "dicom")


def test_evaluate_and_visualise_take_itk_files(tmp_path: Path) -> None:
    """An MHA prediction scored against an NRRD label (evaluate's pairing and grid check), and
    drawn by visualise: the same voxels as the NIfTI of the same mask."""
    from vesselfm.metrics.folders import evaluate_folders
    from vesselfm.viz import visualise_case

    _, mask = tube_phantom((24, 20, 16))
    affine = nib.load(save_nifti(tmp_path / "ref.nii.gz", mask, _oblique_affine())).affine
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    sitk.WriteImage(_itk_image(mask, affine), str(tmp_path / "pred" / "ct_pred.mha"))
    sitk.WriteImage(_itk_image(mask, affine), str(tmp_path / "gt" / "ct.label.nrrd"))
    rows = evaluate_folders(
        pred=tmp_path / "pred", gt=tmp_path / "gt", output=tmp_path / "eval"
    ).rows
    assert [row["case"] for row in rows] == ["ct"]
    assert rows[0]["dice"] == pytest.approx(1.0) and rows[0]["betti_0_error"] == 0

    written = visualise_case(
        tmp_path / "pred" / "ct_pred.mha", tmp_path / "viz", html=False, png=False
    )
    reference = visualise_case(tmp_path / "ref.nii.gz", tmp_path / "viz_ref", html=False, png=False)
    import trimesh

    got = trimesh.load(written["pred_stl"], file_type="stl")
    want = trimesh.load(reference["pred_stl"], file_type="stl")
    assert got.volume == pytest.approx(want.volume, rel=1e-6)
    np.testing.assert_allclose(got.bounds, want.bounds, atol=1e-4)
