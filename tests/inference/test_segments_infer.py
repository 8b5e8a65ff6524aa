"""Inference for segment models: the float16 per-class stitching gives the label map with the
codes, written as NIfTI on the scan's grid and as a 3D Slicer seg.nrrd with named segments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from synthetic import save_nifti
from torch import nn

from vesselfm.data.imagecasx import SEGMENTS
from vesselfm.data.preprocessing import PreprocessConfig
from vesselfm.inference.segments import CORONARY_SEGMENTS, predict_classes, segment_file


def nearest_code_net(num_classes: int = 15) -> nn.Module:
    """A 1x1x1 convolution whose logits ``c * x - c^2 / 2`` peak at the class nearest to the
    intensity ``x``: its argmax is ``round(x)``, so the right answer is known voxel by voxel."""
    conv = nn.Conv3d(1, num_classes, 1)
    with torch.no_grad():
        c = torch.arange(num_classes, dtype=torch.float32)
        conv.weight.copy_(c.view(-1, 1, 1, 1, 1))
        conv.bias.copy_(-(c**2) / 2)
    return conv


def code_volume() -> np.ndarray:
    """24x20x12 codes: background, blocks of codes 1..14 (14 in the corner sets the maximum)."""
    codes = np.zeros((24, 20, 12), dtype=np.int16)
    for code in range(1, 15):
        x = (code - 1) % 7 * 3
        y = (code - 1) // 7 * 8
        codes[x : x + 3, y : y + 6, 2:10] = code
    return codes


def test_predict_classes_stitches_codes_in_float16() -> None:
    codes = code_volume()
    labels, probs = predict_classes(
        nearest_code_net(), codes.astype(np.float32), 15, roi_size=(16, 16, 8), overlap=0.5,
        sw_batch_size=3, probabilities=True,
    )  # fmt: skip
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, codes)
    assert probs.dtype == np.float16 and probs.shape == (15, *codes.shape)
    np.testing.assert_array_equal(probs.astype(np.float32).argmax(0), codes)
    # weighted means of softmax probabilities: they sum to 1 (float16's precision)
    np.testing.assert_allclose(probs.astype(np.float32).sum(0), 1.0, atol=2e-2)
    assert predict_classes(nearest_code_net(), codes.astype(np.float32), 15)[1] is None


def test_segment_file_writes_codes_and_named_segments(tmp_path: Path) -> None:
    import nrrd

    from vesselfm.io import read_volume

    codes = code_volume()
    codes[codes == 8] = 0  # a segment absent from the scan has no Slicer segment
    scan = save_nifti(tmp_path / "scans" / "7.img.nii.gz", codes)
    # intensities 0..14 map onto 0..14 unchanged: the network's argmax is the code
    pre = PreprocessConfig(in_plane_size=None, lower=0.0, upper=100.0, b_min=0.0, b_max=14.0)
    out = segment_file(
        nearest_code_net(), scan, tmp_path / "out", pre,
        inference={"roi_size": [16, 16, 8], "overlap": 0.25}, probabilities=True,
    )  # fmt: skip
    assert out["labels"].name == "7_segments.nii.gz"
    written = read_volume(out["labels"])
    np.testing.assert_array_equal(written.array, codes)
    np.testing.assert_allclose(written.affine, read_volume(scan).affine)

    data, header = nrrd.read(str(out["seg_nrrd"]), index_order="F")
    np.testing.assert_array_equal(data, codes)
    present = [c for c in range(1, 15) if c != 8]
    names = [header[f"Segment{i}_Name"] for i in range(len(present))]
    assert names == [SEGMENTS[c] for c in present]
    assert [int(header[f"Segment{i}_LabelValue"]) for i in range(len(present))] == present
    assert "Segment13_Name" not in header
    colours = {header[f"Segment{i}_Color"] for i in range(len(present))}
    assert len(colours) == len(present)  # every segment its own colour
    assert np.load(out["probabilities"]).shape == (15, *codes.shape)


def test_coronary_segments_table() -> None:
    assert [s.label for s in CORONARY_SEGMENTS] == list(range(1, 15))
    assert CORONARY_SEGMENTS[1].name == "LAD" and CORONARY_SEGMENTS[8].name == "RCA"
    with pytest.raises(ValueError, match="channels"):
        predict_classes(nearest_code_net(3), np.zeros((8, 8, 8), np.float32), 15)
