"""DICOM CT series as input: geometry against the slices' own positions, the series and phase
choice, what is skipped and what stops with one line."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid
from synthetic import LPS_TO_RAS, OBLIQUE, lps_affine, save_nifti, tube_phantom, write_series

from vesselfm.io import find_inputs, read_volume
from vesselfm.io.dicom import selection
from vesselfm.io.names import case_id
from vesselfm.io.volume import VolumeError


@pytest.fixture()
def phantom() -> np.ndarray:
    return tube_phantom(shape=(24, 20, 12))[0]


def test_volume_is_the_phantom_in_hu_and_voxels_lie_at_the_slices_positions(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    write_series(tmp_path / "study", phantom, orientation=OBLIQUE)
    vol = read_volume(tmp_path / "study")
    assert vol.format == "dicom" and vol.array.dtype == np.int16
    np.testing.assert_array_equal(vol.array, phantom)
    np.testing.assert_allclose(vol.affine, LPS_TO_RAS @ lps_affine(OBLIQUE), atol=1e-4)
    # every slice's own IPP/IOP/PixelSpacing against the voxel's world position
    lps = LPS_TO_RAS @ vol.affine
    for f in sorted((tmp_path / "study").iterdir()):
        ds = pydicom.dcmread(f)
        k = int(ds.InstanceNumber) - 1
        row, col = (
            np.asarray(ds.ImageOrientationPatient[:3]),
            np.asarray(ds.ImageOrientationPatient[3:]),
        )
        for i, j in ((0, 0), (5, 0), (0, 7), (23, 19)):
            want = (
                np.asarray(ds.ImagePositionPatient, float)
                + i * float(ds.PixelSpacing[1]) * row
                + j * float(ds.PixelSpacing[0]) * col
            )
            np.testing.assert_allclose((lps @ [i, j, k, 1])[:3], want, atol=1e-3)
            assert vol.array[i, j, k] == int(ds.pixel_array[j, i]) - 1024


def test_same_phantom_as_nifti_and_dicom_gives_the_same_volume(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    write_series(tmp_path / "dcm", phantom)
    nifti = read_volume(save_nifti(tmp_path / "a.nii.gz", phantom, LPS_TO_RAS @ lps_affine()))
    dicom = read_volume(tmp_path / "dcm")
    np.testing.assert_array_equal(dicom.array, nifti.array)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-4, rtol=0)


def test_localizer_and_junk_are_skipped_with_a_warning(
    tmp_path: Path, phantom: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    write_series(tmp_path / "s", phantom)
    write_series(tmp_path / "s", phantom[:, :, :1], number=9, image_type=("ORIGINAL", "LOCALIZER"))
    (tmp_path / "s" / "notes.txt").write_text("not dicom")
    with caplog.at_level(logging.WARNING):
        vol = read_volume(tmp_path / "s")
    assert vol.shape == phantom.shape
    warning = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "left out 2 file(s)" in warning[0]
    assert "1 localizer" in warning[0] and "1 not DICOM" in warning[0]


def test_most_slices_wins_and_series_picks_another(tmp_path: Path, phantom: np.ndarray) -> None:
    write_series(tmp_path / "s", phantom, number=2)
    small = write_series(tmp_path / "s", phantom[:, :, :5] + 7, number=3)
    assert read_volume(tmp_path / "s").shape == phantom.shape
    for key in (small, "3"):
        picked = read_volume(tmp_path / "s", series=key)
        np.testing.assert_array_equal(picked.array, phantom[:, :, :5] + 7)
    with selection(series="3"):
        assert read_volume(tmp_path / "s").shape == (24, 20, 5)
    with pytest.raises(VolumeError, match=r"no series '4'"):
        read_volume(tmp_path / "s", series="4")


def test_missing_slice_stops_with_one_line(tmp_path: Path, phantom: np.ndarray) -> None:
    write_series(tmp_path / "gap", phantom, skip=(4,))
    with pytest.raises(VolumeError) as err:
        read_volume(tmp_path / "gap")
    message = str(err.value)
    assert "\n" not in message and "not evenly spaced" in message and "gap" in message


def test_two_phases_stop_listing_them_and_phase_picks_one(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    uid = generate_uid()
    write_series(tmp_path / "p", phantom, series=uid, phase=40, prefix="a")
    write_series(tmp_path / "p", phantom + 5, series=uid, phase=75, prefix="b")
    with pytest.raises(VolumeError) as err:
        read_volume(tmp_path / "p")
    assert "\n" not in str(err.value) and "phases 40, 75" in str(err.value)
    np.testing.assert_array_equal(read_volume(tmp_path / "p", phase=75).array, phantom + 5)
    np.testing.assert_array_equal(read_volume(tmp_path / "p", phase=40).array, phantom)


def test_zip_is_one_case_named_after_it(tmp_path: Path, phantom: np.ndarray) -> None:
    write_series(tmp_path / "s", phantom)
    archive = tmp_path / "study7.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in (tmp_path / "s").iterdir():
            z.write(f, f"DICOM/{f.name}")
    np.testing.assert_array_equal(read_volume(archive).array, phantom)
    assert find_inputs(archive) == [archive] and case_id(archive) == "study7"


def test_dicom_folder_is_one_case_a_nifti_folder_stays_many(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    write_series(tmp_path / "pat1" / "a" / "b", phantom)
    assert find_inputs(tmp_path / "pat1") == [tmp_path / "pat1"]
    assert case_id(tmp_path / "pat1") == "pat1"
    save_nifti(tmp_path / "nii" / "x.nii.gz", phantom)
    save_nifti(tmp_path / "nii" / "y.nii.gz", phantom)
    assert [p.name for p in find_inputs(tmp_path / "nii")] == ["x.nii.gz", "y.nii.gz"]


def test_empty_folder_and_no_image_series_stop_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(VolumeError, match="no DICOM image series"):
        read_volume(tmp_path / "empty")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.txt").write_text("x")
    with pytest.raises(VolumeError) as err:
        read_volume(tmp_path / "junk")
    assert "\n" not in str(err.value) and "no DICOM image series" in str(err.value)


def test_several_studies_stop_with_one_line(tmp_path: Path, phantom: np.ndarray) -> None:
    write_series(tmp_path / "s", phantom, study="1.2.3.1")
    write_series(tmp_path / "s", phantom, study="1.2.3.2", number=2)
    with pytest.raises(VolumeError, match="holds 2 studies"):
        read_volume(tmp_path / "s")
