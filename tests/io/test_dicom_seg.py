"""DICOM-SEG output (highdicom) over a DICOM CT series, read back with highdicom and pydicom;
the ``.seg.nrrd`` of the same series (pynrrd); evaluate on SEG predictions."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import highdicom as hd
import nrrd
import numpy as np
import pydicom
import pytest
from synthetic import OBLIQUE, tube_phantom, write_series

from vesselfm import __version__
from vesselfm.io import (
    Volume,
    VolumeError,
    case_id,
    check_output_formats,
    find_outputs,
    is_volume_file,
    output_formats_for,
    output_paths,
    read_volume,
    role_of,
    write_like,
    write_volume,
)
from vesselfm.io.dicom_seg import source_frames

SHAPE = (24, 20, 12)
LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
PATIENT_STUDY_TAGS = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "AccessionNumber",
    "FrameOfReferenceUID",
)


def _mask() -> np.ndarray:
    """The phantom's label with the first 3 and last 3 slices empty (frames to omit)."""
    _, label = tube_phantom(shape=SHAPE)
    label[:, :, :3] = 0
    label[:, :, 9:] = 0
    return label


@pytest.fixture()
def oblique(tmp_path: Path) -> tuple[Volume, dict[str, pydicom.Dataset]]:
    """An oblique CT series read by vesselfm, and its files read by pydicom, by SOPInstanceUID."""
    image, _ = tube_phantom(shape=SHAPE)
    write_series(tmp_path / "study", image, orientation=OBLIQUE)
    files = {}
    for path in (tmp_path / "study").iterdir():
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        files[str(ds.SOPInstanceUID)] = ds
    return read_volume(tmp_path / "study"), files


def _slice_index(nifti: Volume, ds: pydicom.Dataset) -> int:
    """The slice ``k`` of a source file on the NIfTI mask's grid, from the file's position."""
    index = np.linalg.inv(LPS @ nifti.affine) @ [*(float(v) for v in ds.ImagePositionPatient), 1]
    np.testing.assert_allclose(index[:2], 0, atol=1e-3)
    return int(round(index[2]))


def test_seg_of_an_oblique_series_lies_on_its_slices_and_decodes_to_the_nifti_mask(
    tmp_path: Path, oblique: tuple[Volume, dict[str, pydicom.Dataset]]
) -> None:
    scan, files = oblique
    mask = _mask()
    seg_path = write_like(mask, scan, tmp_path / "out" / "study_pred.dcm")
    nifti = read_volume(write_like(mask, scan, tmp_path / "out" / "study_pred.nii.gz"))
    ds = pydicom.dcmread(seg_path)
    source = next(iter(files.values()))
    assert ds.Modality == "SEG" and ds.SegmentationType == "BINARY"
    for tag in PATIENT_STUDY_TAGS:
        assert ds[tag].value == source[tag].value, tag
    # the source series and all its instances are referenced
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == source.SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence} == set(files)
    # one frame per slice holding vessel; each on its source slice's position
    holding = {k for k in range(SHAPE[2]) if nifti.array[:, :, k].any()}
    assert holding == set(range(3, 9))
    assert int(ds.NumberOfFrames) == len(holding)
    seg = hd.seg.Segmentation.from_dataset(ds)
    frames = seg.pixel_array  # (frames, rows, columns), highdicom's decoding
    seen = set()
    for n, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        uid = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        src = files[uid]
        assert frame.PlanePositionSequence[0].ImagePositionPatient == src.ImagePositionPatient
        k = _slice_index(nifti, src)
        seen.add(k)
        np.testing.assert_array_equal(frames[n], nifti.array[:, :, k].T)
    assert seen == holding
    shared = ds.SharedFunctionalGroupsSequence[0]
    orientation = shared.PlaneOrientationSequence[0].ImageOrientationPatient
    assert [float(v) for v in orientation] == [float(v) for v in source.ImageOrientationPatient]
    assert shared.PixelMeasuresSequence[0].PixelSpacing == source.PixelSpacing
    # the segment, coded
    (segment,) = ds.SegmentSequence
    assert segment.SegmentLabel == "coronary artery lumen"
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    category = segment.SegmentedPropertyCategoryCodeSequence[0]
    kind = segment.SegmentedPropertyTypeCodeSequence[0]
    assert (category.CodingSchemeDesignator, category.CodeValue) == ("SCT", "85756007")
    assert (kind.CodingSchemeDesignator, kind.CodeValue) == ("SCT", "41801008")
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("vesselFM", __version__)
    # read back by vesselfm: the mask on the series' whole grid
    back = read_volume(seg_path)
    assert back.format == "dicom_seg" and back.array.dtype == np.uint8
    np.testing.assert_array_equal(back.array, mask)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-5, rtol=0)
    # the .seg.nrrd of the same series: Slicer's fields, the mask, the first slice's LPS origin
    seg_nrrd = write_like(mask, scan, tmp_path / "out" / "study_pred.seg.nrrd")
    data, header = nrrd.read(str(seg_nrrd), index_order="F")
    np.testing.assert_array_equal(data, mask)
    assert header["Segment0_Name"] == "coronary artery lumen"
    assert "SCT^41801008^Coronary artery" in header["Segment0_Tags"]
    hit = np.argwhere(mask)
    bounds = np.stack([hit.min(0), hit.max(0)], axis=1).ravel().tolist()
    assert [int(v) for v in header["Segment0_Extent"].split()] == bounds and bounds[4:] == [3, 8]
    first = next(ds for ds in files.values() if _slice_index(nifti, ds) == 0)
    np.testing.assert_allclose(
        header["space origin"], [float(v) for v in first.ImagePositionPatient], atol=1e-9
    )


def test_frames_of_a_resampled_grid_are_nearest_neighbour_on_the_source_slices(
    tmp_path: Path,
) -> None:
    image, _ = tube_phantom(shape=SHAPE)
    write_series(tmp_path / "study", image)
    scan = read_volume(tmp_path / "study")
    coarse = _mask()
    # the scan on a grid twice as fine in-plane, whose voxel centres sit a quarter voxel off
    fine_affine = scan.affine.copy()
    fine_affine[:3, :2] /= 2
    fine_affine[:3, 3] -= fine_affine[:3, :2] @ [0.25, 0.25]
    fine = np.repeat(np.repeat(coarse, 2, axis=0), 2, axis=1)
    resampled = dataclasses.replace(scan, array=fine.astype(np.int16), affine=fine_affine)
    frames = source_frames(fine, fine_affine, scan.native.sources)
    np.testing.assert_array_equal(frames, coarse.transpose(2, 1, 0))
    target = write_like(fine, resampled, tmp_path / "study_pred.dcm")
    back = read_volume(target)  # on the source series' grid, not the resampled one
    np.testing.assert_array_equal(back.array, coarse)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-5, rtol=0)


def test_an_empty_mask_and_a_one_slice_mask_read_back_on_the_whole_grid(tmp_path: Path) -> None:
    image, _ = tube_phantom(shape=SHAPE)
    write_series(tmp_path / "study", image, orientation=OBLIQUE)
    scan = read_volume(tmp_path / "study")
    empty = write_like(np.zeros(SHAPE, np.uint8), scan, tmp_path / "e_pred.dcm")
    assert int(pydicom.dcmread(empty).NumberOfFrames) == SHAPE[2]  # a SEG needs a frame
    back = read_volume(empty)
    assert back.shape == SHAPE and not back.array.any()
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-5, rtol=0)
    one = np.zeros(SHAPE, np.uint8)
    one[4:9, 6:10, 5] = 1
    target = write_like(one, scan, tmp_path / "o_pred.dcm")
    assert int(pydicom.dcmread(target).NumberOfFrames) == 1
    back = read_volume(target)  # the slice step from SpacingBetweenSlices
    np.testing.assert_array_equal(back.array, one)
    np.testing.assert_allclose(back.affine, scan.affine, atol=1e-4, rtol=0)


def test_dicom_seg_names_formats_and_refusals(tmp_path: Path) -> None:
    assert case_id("7_pred.dcm") == "7" and role_of("7_PRED.DCM") == "prediction"
    assert is_volume_file("7_pred.dcm") and not is_volume_file("IM0001.dcm")
    assert check_output_formats(["dicom_seg", "seg.nrrd"]) == ("dicom_seg", "seg.nrrd")
    folder = tmp_path / "study"
    folder.mkdir()
    assert output_formats_for(folder) == ("dicom_seg",)
    paths = output_paths(tmp_path, "s", "dicom_seg", "dicom")
    assert (paths["pred"].name, paths["prob"].name) == ("s_pred.dcm", "s_prob.nii.gz")
    with pytest.raises(VolumeError, match=r"a.nii.gz: output_format=dicom_seg needs a DICOM") as e:
        output_formats_for(tmp_path / "a.nii.gz", ["nifti", "dicom_seg"])
    assert "\n" not in str(e.value)
    # a NIfTI scan has no series to reference: nothing is written
    nifti = Volume(np.zeros(SHAPE, np.int16), np.eye(4), str(tmp_path / "a.nii.gz"))
    out = tmp_path / "out"
    with pytest.raises(VolumeError, match="needs a DICOM series input"):
        write_like(np.zeros(SHAPE, np.uint8), nifti, out / "a_pred.dcm")
    with pytest.raises(VolumeError, match=r"b_pred.dcm: output_format=dicom_seg needs a DICOM"):
        write_volume(np.zeros(SHAPE, np.uint8), np.eye(4), out / "b_pred.dcm")
    assert not out.exists() or not list(out.iterdir())
    # a slice of a series is not a SEG
    image, _ = tube_phantom(shape=SHAPE)
    write_series(folder, image)
    a_slice = sorted(folder.iterdir())[0]
    with pytest.raises(VolumeError, match="not a DICOM Segmentation.*folder or .zip"):
        read_volume(a_slice)
    # a source slice without its position: refused, nothing written
    series = read_volume(folder)
    broken = copy.deepcopy(series.native.sources[0])
    del broken.ImagePositionPatient
    header = dataclasses.replace(series.native, sources=(broken, *series.native.sources[1:]))
    with pytest.raises(VolumeError, match=r"e_pred.dcm: the source series lacks a slice's posi"):
        write_like(_mask(), dataclasses.replace(series, native=header), out / "e_pred.dcm")
    assert not out.exists() or not list(out.iterdir())
    # SEG predictions are found as <case>_pred files
    write_like(_mask(), series, tmp_path / "preds" / "s_pred.dcm")
    assert find_outputs(tmp_path / "preds", "prediction", "pred") == {
        "s": tmp_path / "preds" / "s_pred.dcm"
    }


def test_evaluate_scores_seg_predictions_as_the_nifti_ones(
    tmp_path: Path, oblique: tuple[Volume, dict[str, pydicom.Dataset]]
) -> None:
    from vesselfm.metrics.folders import evaluate_folders

    scan, _ = oblique
    label = _mask()
    pred = label.copy()
    pred[:, :, 4] = 0  # a cut tube: errors of every kind
    pred[2:5, 2:5, 6] = 1
    write_like(label, scan, tmp_path / "gt" / "study.label.nii.gz")
    rows = {}
    for fmt, ext in (("nifti", ".nii.gz"), ("dicom_seg", ".dcm"), ("seg.nrrd", ".seg.nrrd")):
        write_like(pred, scan, tmp_path / fmt / f"study_pred{ext}")
        result = evaluate_folders(tmp_path / fmt, tmp_path / "gt", tmp_path / f"ev_{fmt}")
        assert not result.errors, result.errors
        rows[fmt] = result.rows
    assert len(rows["nifti"]) == 1 and 0 < rows["nifti"][0]["dice"] < 1
    assert rows["dicom_seg"] == rows["nifti"]
    assert rows["seg.nrrd"] == rows["nifti"]


def test_visualise_meshes_a_seg_prediction_as_the_nifti_one(
    tmp_path: Path, oblique: tuple[Volume, dict[str, pydicom.Dataset]]
) -> None:
    from stl import mesh

    from vesselfm.viz import visualise_case

    scan, _ = oblique
    meshes = {}
    for ext in (".nii.gz", ".dcm"):
        pred = write_like(_mask(), scan, tmp_path / ext.strip(".") / f"study_pred{ext}")
        written = visualise_case(pred, pred.parent / "viz", stl=True, html=False, png=False)
        meshes[ext] = mesh.Mesh.from_file(str(written["pred_stl"])).vectors
    assert meshes[".dcm"].shape == meshes[".nii.gz"].shape and len(meshes[".dcm"]) > 100
    np.testing.assert_allclose(meshes[".dcm"], meshes[".nii.gz"], atol=1e-4)


def test_several_named_segments_make_one_seg_read_back_as_their_labelmap(tmp_path: Path) -> None:
    from vesselfm.io.dicom_seg import write_like as write_seg
    from vesselfm.io.terminology import VESSEL, Code, Segment

    image, _ = tube_phantom(shape=SHAPE)
    write_series(tmp_path / "study", image)
    scan = read_volume(tmp_path / "study")
    other = Segment(
        label=2,
        name="other vessel",
        color=(0.2, 0.4, 0.8),
        category=Code("SCT", "85756007", "Tissue"),
        type=Code("SCT", "59820001", "Blood vessel"),
    )
    labels = _mask()
    labels[10:14, 4:8, 5:7] = 2
    target = tmp_path / "s_pred.dcm"
    write_seg(labels, scan.affine, scan.native, target, segments=(VESSEL, other))
    ds = pydicom.dcmread(target)
    assert [(s.SegmentNumber, s.SegmentLabel) for s in ds.SegmentSequence] == [
        (1, "coronary artery lumen"),
        (2, "other vessel"),
    ]
    np.testing.assert_array_equal(read_volume(target).array, labels)
    with pytest.raises(ValueError, match="numbered 1..1"):
        write_seg(labels, scan.affine, scan.native, tmp_path / "x_pred.dcm")


def test_seg_over_an_enhanced_ct_references_its_frames_and_decodes_to_the_nifti_mask(
    tmp_path: Path, oblique: tuple[Volume, dict[str, pydicom.Dataset]]
) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage

    scan, files = oblique
    enhanced = LegacyConvertedEnhancedCTImage(
        [pydicom.dcmread(f) for f in sorted((tmp_path / "study").iterdir())],
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=5,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    (tmp_path / "multi").mkdir()
    enhanced.save_as(tmp_path / "multi" / "ct.dcm")
    multi = read_volume(tmp_path / "multi")
    mask = _mask()
    seg_path = write_like(mask, multi, tmp_path / "out" / "multi_pred.dcm")
    nifti = read_volume(write_like(mask, scan, tmp_path / "out" / "single_pred.nii.gz"))
    ds = pydicom.dcmread(seg_path)
    (series,) = ds.ReferencedSeriesSequence
    assert series.SeriesInstanceUID == enhanced.SeriesInstanceUID
    assert [i.ReferencedSOPInstanceUID for i in series.ReferencedInstanceSequence] == [
        enhanced.SOPInstanceUID
    ]
    # every frame of the object, each on its source frame's position, referenced by its number
    source_frames_ = enhanced.PerFrameFunctionalGroupsSequence
    assert int(ds.NumberOfFrames) == len(source_frames_) == SHAPE[2]
    frames = hd.seg.Segmentation.from_dataset(ds).pixel_array
    numbers = set()
    for n, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):
        ref = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert ref.ReferencedSOPInstanceUID == enhanced.SOPInstanceUID
        number = int(ref.ReferencedFrameNumber)
        numbers.add(number)
        position = frame.PlanePositionSequence[0].ImagePositionPatient
        want = source_frames_[number - 1].PlanePositionSequence[0].ImagePositionPatient
        np.testing.assert_allclose([float(v) for v in position], [float(v) for v in want])
        # the frame is the NIfTI mask's slice at that position
        k = _slice_index(nifti, frame.PlanePositionSequence[0])
        np.testing.assert_array_equal(frames[n], nifti.array[:, :, k].T)
    assert numbers == set(range(1, SHAPE[2] + 1))
    back = read_volume(seg_path)
    np.testing.assert_array_equal(back.array, nifti.array)
    np.testing.assert_allclose(back.affine, nifti.affine, atol=1e-4, rtol=0)
    # two segments: a SEG frame per segment and source frame, read back as their labelmap
    from vesselfm.io.dicom_seg import write_like as write_seg
    from vesselfm.io.terminology import VESSEL, Code, Segment

    other = Segment(
        2, "other", (0.2, 0.4, 0.8), VESSEL.category, Code("SCT", "59820001", "Blood vessel")
    )
    labels = mask.copy()
    labels[10:14, 4:8, 5:7] = 2
    write_seg(labels, multi.affine, multi.native, tmp_path / "two_pred.dcm", (VESSEL, other))
    assert int(pydicom.dcmread(tmp_path / "two_pred.dcm").NumberOfFrames) == 2 * SHAPE[2]
    np.testing.assert_array_equal(read_volume(tmp_path / "two_pred.dcm").array, labels)


def test_seg_over_an_enhanced_ct_of_two_phases_is_refused_with_one_line(
    tmp_path: Path,
) -> None:
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.dataset import Dataset

    image, _ = tube_phantom(shape=SHAPE)
    uid = pydicom.uid.generate_uid()
    write_series(tmp_path / "s", image, orientation=OBLIQUE, series=uid, phase=40, prefix="a")
    write_series(tmp_path / "s", image + 5, orientation=OBLIQUE, series=uid, phase=75, prefix="b")
    legacy = {str(ds.SOPInstanceUID): ds for ds in map(pydicom.dcmread, (tmp_path / "s").iterdir())}
    enhanced = LegacyConvertedEnhancedCTImage(
        list(legacy.values()),
        series_instance_uid=pydicom.uid.generate_uid(),
        series_number=5,
        sop_instance_uid=pydicom.uid.generate_uid(),
        instance_number=1,
    )
    for item in enhanced.PerFrameFunctionalGroupsSequence:  # the converter drops the phases
        source = item.ConversionSourceAttributesSequence[0].ReferencedSOPInstanceUID
        cardiac = Dataset()
        cardiac.NominalPercentageOfCardiacPhase = legacy[source].NominalPercentageOfCardiacPhase
        item.CardiacSynchronizationSequence = [cardiac]
    (tmp_path / "multi").mkdir()
    enhanced.save_as(tmp_path / "multi" / "ct.dcm")
    scan = read_volume(tmp_path / "multi", phase=40)
    np.testing.assert_array_equal(scan.array, image)
    assert len(scan.native.frame_numbers) == SHAPE[2]
    # highdicom writes a frame per source frame and refuses two at one position: refused
    # before anything is written, naming the file and the formats that work
    with pytest.raises(VolumeError) as err:
        write_like(_mask(), scan, tmp_path / "out" / "m_pred.dcm")
    message = str(err.value)
    assert "\n" not in message and message.startswith(str(tmp_path / "out" / "m_pred.dcm"))
    assert "holds 24 frames and the phase read 12" in message and "output_format=nifti" in message
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
