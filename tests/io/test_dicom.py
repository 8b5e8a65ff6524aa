"""DICOM CT series as input: geometry against the slices' own positions, the series and phase
choice, what is skipped and what stops with one line."""

from __future__ import annotations

import logging
import sys
import zipfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import EnhancedCTImageStorage, JPEG2000Lossless, RLELossless, generate_uid
from synthetic import (
    AXIAL,
    LPS_TO_RAS,
    OBLIQUE,
    analytic_hu,
    analytic_image,
    lps_affine,
    save_nifti,
    series_affine,
    tube_phantom,
    write_series,
)

from vesselfm.io import find_inputs, format_of, read_volume, unique_case_ids
from vesselfm.io.dicom import selection
from vesselfm.io.names import case_id
from vesselfm.io.volume import VolumeError
from vesselfm.utils.errors import UserError


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


def test_missing_slice_stops_with_one_line_naming_the_fix(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    write_series(tmp_path / "gap", phantom, skip=(4,))
    with pytest.raises(VolumeError) as err:
        read_volume(tmp_path / "gap")
    message = str(err.value)
    assert "\n" not in message and "not evenly spaced" in message and "gap" in message
    assert "2.5 mm after slice 3" in message and "dicom.resample=true" in message


def _world(vol) -> np.ndarray:
    """LPS mm of every voxel of a volume read, ``(X, Y, Z, 3)``."""
    lps = LPS_TO_RAS @ vol.affine
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in vol.shape), indexing="ij"), axis=-1)
    return grid @ lps[:3, :3].T + lps[:3, 3]


def _check_on_phantom(vol, source_affine: np.ndarray, shape, centre, radius) -> int:
    """Every voxel of ``vol`` inside the source stack holds the analytic phantom's HU at its
    world position (1 HU: the source's int16 rounding), away from the ball's surface (linear
    interpolation blurs it); returns how many voxels were checked."""
    world = _world(vol)
    # the voxel's fractional index in the source stack, from the tags' affine
    index = (world - source_affine[:3, 3]) @ np.linalg.inv(source_affine[:3, :3]).T
    inside = np.all((index > -1e-6) & (index < np.asarray(shape) - 1 + 1e-6), axis=-1)
    outside = np.any((index < -0.01) | (index > np.asarray(shape) - 1 + 0.01), axis=-1)
    reach = np.linalg.norm(source_affine[:3, :3], axis=0).sum()  # a stencil's extent, mm
    far = np.abs(np.linalg.norm(world - np.asarray(centre), axis=-1) - radius) > reach
    checked = inside & far
    want = analytic_hu(world[checked], centre, radius)
    np.testing.assert_allclose(vol.array[checked], want, atol=1.0, rtol=0)
    # outside the data: the series' minimum, never made-up tissue
    assert (vol.array[outside] == vol.array.min()).all()
    return int(checked.sum())


def test_gap_with_resample_is_a_regular_grid_on_the_phantom(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shape = (24, 20, 12)
    affine = series_affine(AXIAL)
    centre = (affine @ [11.5, 9.5, 5.5, 1])[:3]
    image = analytic_image(affine, shape, centre, radius=3.0)
    write_series(tmp_path / "gap", image, skip=(4, 8))
    with selection(resample=True), caplog.at_level(logging.WARNING):
        vol = read_volume(tmp_path / "gap")
    # the median step (1.25 mm) over the full extent: the two missing slices come back
    assert vol.shape == shape and vol.array.dtype == np.float32
    np.testing.assert_allclose(vol.affine, LPS_TO_RAS @ affine, atol=1e-4)
    assert _check_on_phantom(vol, affine, shape, centre, 3.0) > 0.5 * vol.array.size
    for k in (0, 3, 5, 11):  # source slices are kept as they are
        np.testing.assert_array_equal(vol.array[:, :, k], image[:, :, k])
    assert vol.native.resampled.startswith("the slices are not evenly spaced")
    assert len(vol.native.sources) == 10
    assert any("resampled onto a regular grid" in r.getMessage() for r in caplog.records)


def test_tilted_gantry_is_always_resampled_onto_an_orthogonal_grid_on_the_phantom(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    shape = (24, 20, 12)
    tilted = series_affine(OBLIQUE, tilt=20.0)
    centre = (tilted @ [11.5, 9.5, 5.5, 1])[:3]
    image = analytic_image(tilted, shape, centre)
    write_series(tmp_path / "tilt", image, orientation=OBLIQUE, tilt=20.0)
    with caplog.at_level(logging.WARNING):
        vol = read_volume(tmp_path / "tilt")
    lps = LPS_TO_RAS @ vol.affine
    # orthogonal: in-plane axes of the slices, the slice step along their normal
    np.testing.assert_allclose(lps[:3, :3], lps_affine(OBLIQUE)[:3, :3], atol=1e-4)
    # covering the data: 11 steps of 1.25 tan(20) mm = 5.0 mm along the columns, 0.6 mm rows
    assert vol.shape == (24, 20 + 9, 12)
    assert _check_on_phantom(vol, tilted, shape, centre, 4.0) > 0.3 * vol.array.size
    assert "gantry tilt of 20.00 degrees" in vol.native.resampled
    assert any("gantry tilt of 20.00" in r.getMessage() for r in caplog.records)


def test_default_phase_is_the_most_complete_then_the_closest_to_75(
    tmp_path: Path, phantom: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    uid = generate_uid()
    write_series(tmp_path / "p", phantom, series=uid, phase=40, prefix="a")
    write_series(tmp_path / "p", phantom + 5, series=uid, phase=75, prefix="b")
    write_series(tmp_path / "p", phantom + 9, series=uid, phase=80, prefix="c", skip=(0, 11))
    with caplog.at_level(logging.INFO):
        vol = read_volume(tmp_path / "p")
    np.testing.assert_array_equal(vol.array, phantom + 5)  # 40 and 75 are complete: 75
    assert vol.native.phase == 75
    line = [r.getMessage() for r in caplog.records if "cardiac phases" in r.getMessage()]
    assert len(line) == 1 and "3 cardiac phases" in line[0] and "reading phase 75" in line[0]
    assert "40 (12 positions), 75 (12 positions), 80 (10 positions)" in line[0]
    np.testing.assert_array_equal(read_volume(tmp_path / "p", phase=40).array, phantom)
    with pytest.raises(VolumeError, match=r"no phase 50; the phases are 40, 75, 80"):
        read_volume(tmp_path / "p", phase=50)
    # the phase closest to 75 % covers less: the complete one wins
    uid = generate_uid()
    write_series(tmp_path / "q", phantom, series=uid, phase=40, prefix="a")
    write_series(tmp_path / "q", phantom + 5, series=uid, phase=75, prefix="b", skip=(6,))
    np.testing.assert_array_equal(read_volume(tmp_path / "q").array, phantom)


def test_phases_by_trigger_time_default_to_the_earliest_complete_one(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    uid = generate_uid()
    write_series(tmp_path / "t", phantom + 2, series=uid, trigger_time=150, prefix="a", skip=(3,))
    write_series(tmp_path / "t", phantom + 5, series=uid, trigger_time=600, prefix="b")
    write_series(tmp_path / "t", phantom, series=uid, trigger_time=300, prefix="c")
    vol = read_volume(tmp_path / "t")
    assert vol.native.phase == 300
    np.testing.assert_array_equal(vol.array, phantom)
    np.testing.assert_array_equal(read_volume(tmp_path / "t", phase=600).array, phantom + 5)


def test_slices_at_one_position_without_phase_tags_stop(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    uid = generate_uid()
    write_series(tmp_path / "p", phantom, series=uid, prefix="a")
    write_series(tmp_path / "p", phantom, series=uid, prefix="b")
    with pytest.raises(VolumeError) as err:
        read_volume(tmp_path / "p")
    assert "\n" not in str(err.value) and "no phase tags" in str(err.value)


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


def test_cohort_folder_is_one_case_per_study_each_read_exactly(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    root = tmp_path / "cohort"
    write_series(root / "x", phantom, study="1.2.3.100", patient="P001", date="20260101")
    # another patient, twice on one day: the UIDs' last digits tell those two apart
    write_series(root / "y", phantom + 3, study="1.2.3.200", patient="P 2", date="20260102")
    write_series(root / "y" / "z", phantom + 6, study="1.2.3.300", patient="P 2", date="20260102")
    found = find_inputs(root)
    keys = ["P-2_20260102_123200", "P-2_20260102_123300", "P001_20260101"]  # sorted
    assert found == [tmp_path / f"cohort::{key}" for key in keys]
    assert list(unique_case_ids(found).values()) == [f"cohort_{key}" for key in keys]
    assert all(format_of(p) == "dicom" for p in found)
    for path, offset, study in zip(found, (3, 6, 0), ("200", "300", "100"), strict=True):
        vol = read_volume(path)
        np.testing.assert_array_equal(vol.array, phantom + offset)
        assert vol.native.study_uid == f"1.2.3.{study}"
    with pytest.raises(VolumeError, match=r"no study 'P9_20260101'; the studies are P-2_"):
        read_volume(tmp_path / "cohort::P9_20260101")
    # the same as a zip: cohort.zip::<key>, ids cohort_<key>
    archive = tmp_path / "cohort.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for f in sorted(root.rglob("*.dcm")):
            z.write(f, str(f.relative_to(root)))
    zipped = find_inputs(archive)
    assert zipped == [tmp_path / f"cohort.zip::{key}" for key in keys]
    assert case_id(zipped[1]) == "cohort_P-2_20260102_123300"
    np.testing.assert_array_equal(read_volume(zipped[1]).array, phantom + 6)


def test_enhanced_ct_reads_as_the_single_frame_series_it_was_made_from(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    write_series(tmp_path / "single", phantom, orientation=OBLIQUE)
    legacy = [pydicom.dcmread(f) for f in sorted((tmp_path / "single").iterdir())]
    enhanced = LegacyConvertedEnhancedCTImage(
        legacy,
        series_instance_uid=generate_uid(),
        series_number=5,
        sop_instance_uid=generate_uid(),
        instance_number=1,
    )
    (tmp_path / "multi").mkdir()
    enhanced.save_as(tmp_path / "multi" / "ct.dcm")
    single, multi = read_volume(tmp_path / "single"), read_volume(tmp_path / "multi")
    np.testing.assert_array_equal(multi.array, phantom)  # rescaled to HU as the slices are
    np.testing.assert_allclose(multi.affine, single.affine, atol=1e-6)
    header = multi.native
    assert [ds.SOPInstanceUID for ds in header.sources] == [enhanced.SOPInstanceUID]
    assert "PixelData" not in header.sources[0]
    assert set(header.sop_instance_uids) == {enhanced.SOPInstanceUID}
    frames = header.sources[0].PerFrameFunctionalGroupsSequence
    assert sorted(header.frame_numbers) == list(range(1, len(frames) + 1))
    for k, number in enumerate(header.frame_numbers):  # frame of slice k: slice k's position
        position = frames[number - 1].PlanePositionSequence[0].ImagePositionPatient
        want = single.native.sources[k].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], [float(v) for v in want])
    # the same frames as an Enhanced CT Image Storage object are read the same way
    enhanced.SOPClassUID = enhanced.file_meta.MediaStorageSOPClassUID = EnhancedCTImageStorage
    (tmp_path / "enhanced").mkdir()
    enhanced.save_as(tmp_path / "enhanced" / "ct.dcm")
    again = read_volume(tmp_path / "enhanced")
    assert again.native.sources[0].SOPClassUID == EnhancedCTImageStorage
    np.testing.assert_array_equal(again.array, phantom)


# RLE: pydicom's own decoder; JPEG 2000: the pylibjpeg-openjpeg plugin of the formats extra
# (openjpeg encodes no image under 32 x 32)
@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless])
def test_compressed_series_decode_to_the_phantom(tmp_path: Path, syntax: str) -> None:
    image = tube_phantom(shape=(32, 32, 4))[0]
    write_series(tmp_path / "c", image, transfer_syntax=syntax)
    assert pydicom.dcmread(next((tmp_path / "c").iterdir())).file_meta.TransferSyntaxUID == syntax
    np.testing.assert_array_equal(read_volume(tmp_path / "c").array, image)


def test_bad_dicom_inputs_stop_with_one_line_naming_the_file_and_the_fix(
    tmp_path: Path, phantom: np.ndarray
) -> None:
    def one_line(err: pytest.ExceptionInfo, *parts: str) -> None:
        assert "\n" not in str(err.value), str(err.value)
        for part in parts:
            assert part in str(err.value), str(err.value)

    # a single 2D image: as input= one file, or a folder of one slice
    write_series(tmp_path / "one", phantom[:, :, :1])
    single = next((tmp_path / "one").iterdir())
    with pytest.raises(UserError) as err:
        find_inputs(single)
    one_line(err, str(single), "one DICOM file", "give the folder or .zip")
    with pytest.raises(VolumeError) as err:
        read_volume(tmp_path / "one")
    one_line(err, single.name, "one image slice", "give the folder or .zip")
    # a truncated slice: named, with the fix
    write_series(tmp_path / "cut", phantom)
    cut = sorted((tmp_path / "cut").iterdir())[5]
    cut.write_bytes(cut.read_bytes()[:-200])
    with pytest.raises(VolumeError) as err:
        read_volume(tmp_path / "cut")
    one_line(err, str(cut), "truncated or corrupt", "re-export")
    # an empty folder; a folder of DICOM files none of which is an image
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError) as err:
        find_inputs(tmp_path / "empty")
    one_line(err, "empty: the folder holds no scans", "DICOM")
    report = tmp_path / "sr" / "report.dcm"
    report.parent.mkdir()
    ds = pydicom.dcmread(single)
    del ds.PixelData, ds.Rows, ds.Columns
    ds.save_as(report)
    with pytest.raises(VolumeError) as err:
        find_inputs(tmp_path / "sr")
    one_line(err, "sr: no DICOM image series found", "give the folder or .zip of a CT series")


def test_glob_matches_dicom_folders_and_zips_and_output_folders_inside_are_not_read(
    tmp_path: Path, phantom: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    write_series(tmp_path / "in" / "a", phantom)
    write_series(tmp_path / "zipped", phantom + 1)
    with zipfile.ZipFile(tmp_path / "in" / "b.zip", "w") as z:
        for f in (tmp_path / "zipped").iterdir():
            z.write(f, f.name)
    with zipfile.ZipFile(tmp_path / "in" / "notes.zip", "w") as z:
        z.writestr("notes.txt", "not dicom")
    save_nifti(tmp_path / "in" / "c.nii.gz", phantom)
    spec = str(tmp_path / "in" / "*")
    want = [tmp_path / "in" / name for name in ("c.nii.gz", "a", "b.zip")]
    assert find_inputs(spec) == want
    np.testing.assert_array_equal(read_volume(want[2]).array, phantom + 1)
    # the default output folder of a DICOM folder is inside it: never read as input
    outputs = tmp_path / "in" / "a" / "vesselfm_pred"
    save_nifti(outputs / "a_pred.nii.gz", phantom)
    (outputs / ".vesselfm-outputs.json").write_text("{}")
    with caplog.at_level(logging.WARNING):
        np.testing.assert_array_equal(read_volume(want[1]).array, phantom)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@pytest.mark.parametrize(
    ("getter", "module", "purpose"),
    [
        ("pydicom_module", "pydicom", "reading DICOM"),
        ("highdicom_module", "highdicom", "DICOM-SEG"),
    ],
)
def test_a_missing_dicom_library_is_one_line_naming_the_extra(
    monkeypatch: pytest.MonkeyPatch, getter: str, module: str, purpose: str
) -> None:
    import vesselfm.io.dicom as dicom
    import vesselfm.io.dicom_seg as dicom_seg

    monkeypatch.setitem(sys.modules, module, None)  # import raises ImportError, as when absent
    get = getattr(dicom if getter == "pydicom_module" else dicom_seg, getter)
    with pytest.raises(VolumeError) as err:
        get("/data/ct")
    assert str(err.value) == (
        f"/data/ct: {purpose} needs {module}, which is not installed; "
        'pip install "vesselfm[formats]"'
    )
