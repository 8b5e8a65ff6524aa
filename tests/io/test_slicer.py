"""Slicer ``.seg.nrrd``: names, the output-format list, extents, and an MHA input's geometry."""

from __future__ import annotations

from pathlib import Path

import nrrd
import numpy as np
import pytest
import SimpleITK as sitk

from vesselfm.io import (
    case_id,
    check_output_formats,
    output_paths,
    read_volume,
    role_of,
    split_extension,
    write_like,
)
from vesselfm.io.slicer import extent
from vesselfm.io.terminology import VESSEL


def test_seg_nrrd_names_are_one_extension() -> None:
    assert split_extension("1_pred.SEG.NRRD") == ("1_pred", ".SEG.NRRD")
    assert case_id("1_pred.seg.nrrd") == "1" and role_of("1_pred.seg.nrrd") == "prediction"
    assert case_id("scan.nrrd") == "scan"


def test_output_format_lists() -> None:
    assert check_output_formats(None) is None
    assert check_output_formats("SEG.NRRD") == ("seg.nrrd",)
    assert check_output_formats(["nifti", "seg.nrrd", "nifti"]) == ("nifti", "seg.nrrd")
    for bad in (["nifti", "png"], [], "dicom", 3):
        with pytest.raises(ValueError, match=r"^output_format must be one of .*seg\.nrrd") as info:
            check_output_formats(bad)
        assert "\n" not in str(info.value)


def test_probabilities_beside_a_seg_nrrd_are_the_scans_kind(tmp_path: Path) -> None:
    assert output_paths(tmp_path, "a", "seg.nrrd", "nifti")["prob"].name == "a_prob.nii.gz"
    assert output_paths(tmp_path, "a", "seg.nrrd", "mha")["prob"].name == "a_prob.nrrd"
    assert output_paths(tmp_path, "a", "seg.nrrd", "nrrd")["prob"].name == "a_prob.nrrd"
    assert output_paths(tmp_path, "a", "mha", "nifti")["prob"].name == "a_prob.mha"


def test_extent_of_a_mask_and_of_an_empty_one() -> None:
    mask = np.zeros((5, 6, 7), np.uint8)
    assert extent(mask) == "0 4 0 5 0 6"
    mask[1, 2:4, 6] = 1
    assert extent(mask) == "1 1 2 3 6 6"


def test_seg_nrrd_of_an_mha_scan_lies_on_its_voxels(tmp_path: Path) -> None:
    image = sitk.Image(6, 5, 4, sitk.sitkInt16)
    image.SetOrigin((10.0, -20.0, 5.5))
    image.SetSpacing((0.5, 0.7, 1.25))
    image.SetDirection((0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    sitk.WriteImage(image, str(tmp_path / "s.mha"))
    scan = read_volume(tmp_path / "s.mha")
    mask = np.zeros(scan.shape, np.uint8)
    mask[2:4, 1, 0:3] = 1
    target = write_like(mask, scan, tmp_path / "s_pred.seg.nrrd")
    data, header = nrrd.read(str(target), index_order="F")
    np.testing.assert_array_equal(data, mask)
    assert header["Segment0_Extent"] == "2 3 1 1 0 2"
    assert header["Segment0_LabelValue"] == str(VESSEL.label)
    for index in [(0, 0, 0), (5, 4, 3), (2, 1, 2)]:
        world = header["space origin"] + np.asarray(index) @ header["space directions"]
        np.testing.assert_allclose(world, image.TransformIndexToPhysicalPoint(index), atol=1e-9)
    with pytest.raises(ValueError, match="labelmap"):
        write_like(mask.astype(np.float32), scan, tmp_path / "x_pred.seg.nrrd")
