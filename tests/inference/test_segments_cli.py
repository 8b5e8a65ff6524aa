"""``python -m vesselfm.infer`` on a segment checkpoint (15 classes, ``experiment=
imagecasx_segments``): recognised from the checkpoint, label maps of the ImageCAS-X codes on the
scan's grid, seg.nrrd and DICOM-SEG with one named segment per code present, resume."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import TINY_INFER
from omegaconf import DictConfig
from synthetic import save_nifti, tube_phantom, write_series
from torch import nn

from vesselfm.infer import infer
from vesselfm.io import read_volume
from vesselfm.io.terminology import CORONARY_SEGMENTS, SEGMENTS
from vesselfm.models import build_network, model_config

SHAPE = (24, 20, 12)
FAST = [*TINY_INFER, "num_workers=0"]


@pytest.fixture()
def segment_net() -> nn.Module:
    """``model=tiny`` with a 15-class head and fixed random weights (its argmax holds most codes)."""
    cfg = model_config("tiny")
    cfg["net"]["out_channels"] = 15
    torch.manual_seed(0)
    return build_network(cfg["net"]).eval()


@pytest.fixture()
def segment_ckpt(tmp_path: Path, segment_net: nn.Module) -> Path:
    """``segment_net`` as training saves it: a Lightning ``.ckpt`` (keys ``model.*``) recording
    ``num_classes`` under ``"vesselfm"``."""
    path = tmp_path / "segments.ckpt"
    state = {f"model.{k}": v for k, v in segment_net.state_dict().items()}
    torch.save({"state_dict": state, "vesselfm": {"num_classes": 15}}, path)
    return path


def expected_codes(net: nn.Module, scan: Path) -> np.ndarray:
    """The label map by an independent route: the prepared grid as infer prepares it
    (``preprocess={in_plane_size: 32}``), MONAI's sliding window in float32, argmax, nearest
    back onto the scan's grid."""
    from monai.inferers import sliding_window_inference

    from vesselfm.data.preprocessing import PreprocessConfig
    from vesselfm.inference import SlidingWindowPredictor

    volume = read_volume(scan)
    prepared = SlidingWindowPredictor(
        net, preprocess=PreprocessConfig.from_mapping({"in_plane_size": 32})
    ).preprocess_array(volume.array.astype(np.float32), volume.affine)
    with torch.no_grad():
        logits = sliding_window_inference(
            torch.from_numpy(prepared)[None, None], (32, 32, 32), 1, net, overlap=0.25,
            mode="gaussian",
        )  # fmt: skip
    classes = logits.argmax(1, keepdim=True).float()
    back = torch.nn.functional.interpolate(classes, size=volume.shape, mode="nearest-exact")
    return back[0, 0].numpy().astype(np.uint8)


def test_segment_checkpoint_writes_codes_seg_nrrd_and_resumes(
    compose_cfg: Callable[..., DictConfig],
    tmp_path: Path,
    segment_net: nn.Module,
    segment_ckpt: Path,
) -> None:
    import nrrd

    image, _ = tube_phantom(SHAPE, 0)
    scan = save_nifti(tmp_path / "scans" / "1.img.nii.gz", image)
    out = tmp_path / "out"
    cfg = compose_cfg(
        "infer",
        [
            f"input={scan}",
            f"output={out}",
            f"model.checkpoint={segment_ckpt}",  # model=tiny's head has 1 channel: sized here
            "output_format=[nifti,seg.nrrd]",
            *FAST,
        ],
    )
    first = infer(cfg)
    assert [r["skipped"] for r in first["results"]] == [False]
    labels = read_volume(out / "1_pred.nii.gz")
    assert labels.array.dtype == np.uint8 and labels.shape == SHAPE
    np.testing.assert_allclose(labels.affine, read_volume(scan).affine, atol=1e-5)
    codes = set(np.unique(labels.array).tolist())
    assert codes <= set(range(15)) and len(codes - {0}) >= 3
    expected = expected_codes(segment_net, scan)
    assert (labels.array == expected).mean() >= 0.99  # float16 stitching: ties may flip

    data, header = nrrd.read(str(out / "1_pred.seg.nrrd"), index_order="F")
    np.testing.assert_array_equal(data, labels.array)
    present = sorted(codes - {0})
    assert [header[f"Segment{i}_Name"] for i in range(len(present))] == [
        SEGMENTS[c] for c in present
    ]
    assert [int(header[f"Segment{i}_LabelValue"]) for i in range(len(present))] == present
    assert f"Segment{len(present)}_Name" not in header
    lad = next((i for i, c in enumerate(present) if c == 2), None)
    if lad is not None:  # the artery's own SNOMED code (CID 3015) in Slicer's terminology tag
        assert (
            "SCT^59438005^Left Anterior Descending Coronary Artery" in header[f"Segment{lad}_Tags"]
        )

    # resumed (same weights and settings), scored against segment labels from the file left:
    # the label map itself as the label gives Dice 1 for each code present, none for the others
    save_nifti(tmp_path / "labels" / "1.coronary.nii.gz", labels.array)
    cfg.label = str(tmp_path / "labels")
    second = infer(cfg)
    assert [r["skipped"] for r in second["results"]] == [True]
    row = second["metrics"][0]
    for code, name in SEGMENTS.items():
        column = "dice_" + name.replace("-", "_")
        assert row[column] == (1.0 if code in codes else None), column


def test_dicom_input_gives_a_dicom_seg_with_named_segments(
    compose_cfg: Callable[..., DictConfig], tmp_path: Path, segment_ckpt: Path
) -> None:
    import highdicom as hd

    image, _ = tube_phantom(SHAPE, 1)
    write_series(tmp_path / "study", image.astype(np.int16))
    out = tmp_path / "out"
    cfg = compose_cfg(
        "infer",
        [
            f"input={tmp_path / 'study'}",
            f"output={out}",
            f"model.checkpoint={segment_ckpt}",
            "output_format=[dicom_seg,nifti]",
            *FAST,
        ],
    )
    infer(cfg)
    nifti = read_volume(out / "study_pred.nii.gz").array
    present = sorted(set(np.unique(nifti).tolist()) - {0})
    assert present and set(present) <= set(range(1, 15))
    seg = hd.seg.segread(out / "study_pred.dcm")
    numbers = list(seg.segment_numbers)
    assert numbers == list(range(1, len(present) + 1))  # DICOM numbers them 1..N
    names = [seg.get_segment_description(n).segment_label for n in numbers]
    assert names == [SEGMENTS[c] for c in present]
    types = [seg.get_segment_description(n).segmented_property_type.value for n in numbers]
    assert types == [CORONARY_SEGMENTS[c - 1].type.value for c in present]
    # read back through the case-file layer: the codes return, voxel for voxel
    np.testing.assert_array_equal(read_volume(out / "study_pred.dcm").array, nifti)


def test_a_segment_checkpoint_exports_with_its_own_head_and_infer_runs_the_export(
    compose_cfg: Callable[..., DictConfig],
    tmp_path: Path,
    segment_net: nn.Module,
    segment_ckpt: Path,
) -> None:
    """``export`` sizes the head from the checkpoint as ``infer`` does (``model=tiny`` configures
    one channel): the export has 15 output channels, records 15 classes, and ``infer`` on it
    writes the label map torch gives."""
    import json

    import onnx

    from vesselfm.export import export

    out = tmp_path / "exported"
    overrides = [
        "model=tiny",
        f"model.checkpoint={segment_ckpt}",
        "format=onnx",
        f"output={out}",
        "window=[32,32,32]",
        "preprocess={in_plane_size: 32}",
    ]
    result = export(compose_cfg("export", overrides))
    record = json.loads((out / "tiny.json").read_text())
    assert record["num_classes"] == 15 and record["net"]["out_channels"] == 15
    assert result["check"]["max_abs_logit_diff"] < 1e-3
    graph = onnx.load(str(out / "tiny.onnx")).graph
    assert graph.output[0].type.tensor_type.shape.dim[1].dim_value == 15

    image, _ = tube_phantom(SHAPE, 0)
    scan = save_nifti(tmp_path / "scan.nii.gz", image)
    cfg = compose_cfg(
        "infer",
        [
            f"input={scan}",
            f"output={tmp_path / 'preds'}",
            *FAST,
            f"model.checkpoint={out / 'tiny.onnx'}",
        ],
    )
    infer(cfg)
    got = read_volume(tmp_path / "preds" / "scan_pred.nii.gz").array
    expected = expected_codes(segment_net, scan)
    assert len(set(np.unique(expected).tolist()) - {0}) >= 2  # a map of several codes
    assert np.mean(got == expected) >= 0.999


def test_segment_codes_are_dicom_cid_3015() -> None:
    """Each artery's SNOMED code is the one DICOM PS3.16 CID 3015 gives it (pydicom's copy)."""
    from pydicom.sr.codedict import codes

    cid = codes.cid3015
    expected = {
        1: cid.LeftMainCoronaryArtery,
        2: cid.LeftAnteriorDescendingCoronaryArtery,
        3: cid.CircumflexCoronaryArtery,
        4: cid._1stDiagonalCoronaryArtery,
        5: cid._2ndDiagonalCoronaryArtery,
        6: cid._1stMarginalCoronaryArtery,
        7: cid._2ndMarginalCoronaryArtery,
        8: cid.IntermediateArteryRamus,
        9: cid.RightCoronaryArtery,
        10: cid.PosteriorDescendingRightCoronaryArtery,
        11: cid.PosterolateralBranchOfRightCoronaryArtery,
        12: cid.LeftPosteriorDescendingCircumflexCoronaryArtery,
        13: cid.LeftPosterolateralCircumflexCoronaryArtery,
    }
    for segment in CORONARY_SEGMENTS[:13]:
        code = expected[segment.label]
        assert (segment.type.scheme, segment.type.value) == ("SCT", code.value), segment.name
        assert segment.type.meaning == code.meaning
    assert CORONARY_SEGMENTS[13].name == "Other" and CORONARY_SEGMENTS[13].type.value == "41801008"


def test_checkpoint_classes_from_record_or_head(tmp_path: Path, segment_net: nn.Module) -> None:
    from vesselfm.inference.segments import checkpoint_classes

    raw = tmp_path / "raw.pt"  # a raw state dict records nothing: the head's shape tells
    torch.save(segment_net.state_dict(), raw)
    assert checkpoint_classes({"checkpoint": str(raw)}) == 15
    ckpt = tmp_path / "hparams.ckpt"  # Lightning's hyper-parameters, without our record
    state = {f"model.{k}": v for k, v in segment_net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": {"num_classes": 15}}, ckpt)
    assert checkpoint_classes({"checkpoint": str(ckpt)}) == 15
    assert checkpoint_classes({"checkpoint": None}) is None
