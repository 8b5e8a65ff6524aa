"""Exported models (``python -m vesselfm.export``) and ``inference.backend``: the exported logits
match torch's, the engines give torch's mask, the record beside the model, INT8, and the one-line
error when an engine is not installed."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from cli import TINY_INFER
from synthetic import save_nifti, tube_phantom

from vesselfm.data.preprocessing import PreprocessConfig
from vesselfm.inference import SlidingWindowPredictor
from vesselfm.inference.backends import (
    ExportedNetwork,
    OpenVinoEngine,
    choose_backend,
    export_model,
    open_engine,
)
from vesselfm.io import read_volume
from vesselfm.utils.errors import UserError
from vesselfm.utils.outputs import file_sha256

WINDOW = (32, 32, 32)
PREPROCESS = PreprocessConfig.from_mapping({"in_plane_size": 32})
SETTINGS = {"roi_size": 32, "overlap": 0.25, "device": "cpu", "preprocess": PREPROCESS}


@pytest.fixture(scope="module")
def net() -> torch.nn.Module:
    from vesselfm.models import build_network, model_config

    torch.manual_seed(0)
    return build_network(model_config("tiny")["net"]).eval()


@pytest.fixture(scope="module")
def exported(net: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``net`` exported once per module as ONNX and as an OpenVINO IR (one folder each: both
    would write ``tiny.json``)."""
    root = tmp_path_factory.mktemp("exported")
    record = {"threshold": 0.4}
    return {
        fmt: export_model(net, root / fmt, "tiny", fmt, window=WINDOW, record=record)["path"]
        for fmt in ("onnx", "openvino")
    }


def _scan() -> tuple[np.ndarray, np.ndarray]:
    image, _ = tube_phantom((24, 20, 12), 0)
    return image.astype(np.float32), np.diag([0.7, 0.7, 1.5, 1.0])


@pytest.mark.parametrize(("fmt", "backend"), [("onnx", "onnxruntime"), ("openvino", "openvino")])
def test_exported_logits_match_torch_for_any_batch_and_window(
    net: torch.nn.Module, exported: dict[str, Path], fmt: str, backend: str
) -> None:
    engine = open_engine(exported[fmt], backend)
    for shape in ((2, 1, *WINDOW), (1, 1, 48, 32, 16)):  # dynamic batch and window size
        x = torch.rand(shape, generator=torch.Generator().manual_seed(1))
        with torch.no_grad():
            expected = net(x)
        got = engine(x)
        assert got.shape == expected.shape
        assert float((got - expected).abs().max()) < 1e-3
    record = json.loads(exported[fmt].with_suffix(".json").read_text())
    assert record["check"]["max_abs_logit_diff"] < 1e-3
    assert record["check"]["tolerance"] == 0.05 and record["check"]["engine"] == backend


@pytest.mark.parametrize(("fmt", "backend"), [("onnx", "onnxruntime"), ("openvino", "auto")])
def test_engines_give_the_torch_mask(
    net: torch.nn.Module, exported: dict[str, Path], fmt: str, backend: str
) -> None:
    image, affine = _scan()
    torch_prob = SlidingWindowPredictor(net, **SETTINGS).predict_array(image, affine)
    predictor = SlidingWindowPredictor(ExportedNetwork(exported[fmt]), backend=backend, **SETTINGS)
    prob = predictor.predict_array(image, affine)
    assert predictor.resolved_backend(torch.device("cpu")) == (
        "onnxruntime" if fmt == "onnx" else "openvino"
    )
    np.testing.assert_allclose(prob, torch_prob, atol=1e-4)
    assert np.mean((prob >= 0.5) == (torch_prob >= 0.5)) >= 0.999


def test_auto_exports_weights_from_a_file_once_into_the_cache(
    net: torch.nn.Module, tmp_path: Path
) -> None:
    image, affine = _scan()
    cache = tmp_path / "cache"
    random_weights = SlidingWindowPredictor(net, backend="auto", export_cache=cache, **SETTINGS)
    assert random_weights.resolved_backend(torch.device("cpu")) == "torch"  # nothing to key on
    torch_prob = random_weights.predict_array(image, affine)
    assert not cache.exists()

    net.source_checkpoint = {"source": "tiny.pt", "sha256": "0" * 64}
    try:
        first = SlidingWindowPredictor(net, backend="auto", export_cache=cache, **SETTINGS)
        prob = first.predict_array(image, affine)
        (folder,) = cache.iterdir()
        made = folder.stat().st_mtime_ns
        again = SlidingWindowPredictor(net, backend="auto", export_cache=cache, **SETTINGS)
        np.testing.assert_array_equal(again.predict_array(image, affine), prob)
    finally:
        del net.source_checkpoint
    assert first.resolved_backend(torch.device("cpu")) == "openvino"
    assert [p.name for p in cache.iterdir()] == [folder.name] and folder.name.endswith("-openvino")
    assert folder.stat().st_mtime_ns == made  # reused, not exported again
    record = json.loads((folder / "model.json").read_text())
    assert record["source_checkpoint"]["source"] == "tiny.pt"
    assert np.mean((prob >= 0.5) == (torch_prob >= 0.5)) >= 0.999


def test_backend_choices_and_refusals(net: torch.nn.Module, exported: dict[str, Path]) -> None:
    onnx, xml = ExportedNetwork(exported["onnx"]), ExportedNetwork(exported["openvino"])
    assert choose_backend("auto", "cuda", net, cacheable=True) == "torch"
    assert choose_backend("auto", "cpu", net, cacheable=True) == "openvino"
    assert choose_backend("onnxruntime", "cpu", net, cacheable=False) == "onnxruntime"
    assert choose_backend("auto", "cpu", onnx, cacheable=False) == "openvino"
    with pytest.raises(UserError, match="inference.device=cpu or inference.backend=torch"):
        choose_backend("openvino", "cuda", net, cacheable=True)
    with pytest.raises(UserError, match="exported model, which torch cannot run"):
        choose_backend("torch", "cpu", xml, cacheable=False)
    with pytest.raises(UserError, match="inference.backend=onnxruntime cannot read tiny.xml"):
        choose_backend("onnxruntime", "cpu", xml, cacheable=False)
    with pytest.raises(ValueError, match="inference.backend must be one of"):
        SlidingWindowPredictor(net, backend="tensorrt")


def test_openvino_precision_hint_follows_our_choice(
    net: torch.nn.Module, exported: dict[str, Path], fake_cpu
) -> None:
    xml = ExportedNetwork(exported["openvino"])
    engine = SlidingWindowPredictor(xml, backend="openvino", **SETTINGS).engine(torch.device("cpu"))
    assert isinstance(engine, OpenVinoEngine)
    assert engine.config["INFERENCE_PRECISION_HINT"] == "f32"  # this AVX2 CPU: no native bf16
    assert engine.inference_precision(WINDOW) == "f32"
    fake_cpu("AVX512", amx=True)  # where bf16 is native, auto allows it
    engine = SlidingWindowPredictor(xml, backend="openvino", **SETTINGS).engine(torch.device("cpu"))
    assert engine.config["INFERENCE_PRECISION_HINT"] == "bf16"
    fp32 = SlidingWindowPredictor(xml, backend="openvino", cpu={"precision": "fp32"}, **SETTINGS)
    assert fp32.engine(torch.device("cpu")).config["INFERENCE_PRECISION_HINT"] == "f32"


def test_int8_export_runs_and_tracks_the_fp32_logits(net: torch.nn.Module, tmp_path: Path) -> None:
    from vesselfm.export import crop_windows

    predictor = SlidingWindowPredictor(net, **SETTINGS)
    windows = []
    for seed in (0, 1):
        image, _ = tube_phantom((24, 20, 12), seed)
        prepared = predictor.preprocess_array(image.astype(np.float32), np.eye(4))
        windows += crop_windows(prepared, WINDOW, 3)  # one position: the volume fits a window
    assert len(windows) == 2 and windows[0].shape == (1, 1, *WINDOW)
    result = export_model(
        net, tmp_path, "tiny", "openvino", "int8", window=WINDOW, calibration=windows
    )
    assert [p.name for p in result["files"]] == ["tiny.xml", "tiny.bin", "tiny.json"]
    # NNCF ran in a child process: it would have imported nncf.torch here (issue 20's segfault)
    assert not [m for m in sys.modules if m == "nncf" or m.startswith("nncf.")]
    engine = open_engine(result["path"], "openvino")
    ops = {op.get_type_name() for op in engine.model.get_ops()}
    assert "FakeQuantize" in ops  # quantised, not an fp32 copy
    x = torch.from_numpy(windows[0])
    with torch.no_grad():
        expected = net(x).flatten().numpy()
    got = engine(x).flatten().numpy()
    assert np.corrcoef(got, expected)[0, 1] > 0.9
    record = json.loads((tmp_path / "tiny.json").read_text())
    assert record["precision"] == "int8" and "nncf" in record["engines"]
    assert record["check"]["tolerance"] is None  # reported, not enforced


def test_export_refuses_int8_onnx_and_existing_files(net: torch.nn.Module, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="set format=openvino"):
        export_model(net, tmp_path, "tiny", "onnx", "int8")
    (tmp_path / "tiny.onnx").write_bytes(b"x")
    with pytest.raises(UserError, match="overwrite=true"):
        export_model(net, tmp_path, "tiny", "onnx", window=WINDOW)
    assert (tmp_path / "tiny.onnx").read_bytes() == b"x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.onnx"]


def test_export_records_the_checkpoint_and_infer_runs_the_export(
    tmp_path: Path, net: torch.nn.Module, compose_cfg, caplog: pytest.LogCaptureFixture
) -> None:
    """``vesselfm.export`` and ``vesselfm.infer`` as their CLIs run them (composed configs), in
    this process: the subprocess start-up was most of this test's time."""
    from vesselfm.export import export
    from vesselfm.infer import infer

    ckpt = tmp_path / "best.ckpt"
    torch.save(
        {
            "state_dict": {f"model.{k}": v for k, v in net.state_dict().items()},
            "vesselfm": {"preprocess": {"in_plane_size": 32}, "threshold": 0.45},
        },
        ckpt,
    )
    out = tmp_path / "exported"
    overrides = ["model=tiny", f"model.checkpoint={ckpt}", "format=openvino", f"output={out}"]
    caplog.set_level(logging.INFO)
    result = export(compose_cfg("export", [*overrides, "window=[32,32,32]"]))
    assert sorted(p.name for p in out.iterdir()) == ["tiny.bin", "tiny.json", "tiny.xml"]
    record = json.loads((out / "tiny.json").read_text())
    assert record == json.loads(json.dumps(result["record"]))
    assert record["source_checkpoint"] == {"source": str(ckpt), "sha256": file_sha256(ckpt)}
    assert record["threshold"] == 0.45 and record["preprocess"]["in_plane_size"] == 32
    assert record["format"] == "openvino" and record["precision"] == "fp32"
    assert {"torch", "onnx", "openvino"} <= set(record["engines"])
    assert record["model_name"] == "tiny" and record["input"]["shape"][0] == "batch"
    assert record["num_classes"] == 1  # a lumen model: infer reads this, not torch.load
    diff = record["check"]["max_abs_logit_diff"]
    assert f"largest logit difference from torch {diff:.3g}" in caplog.text

    image, _ = tube_phantom((24, 20, 12), 0)
    scan = save_nifti(tmp_path / "scan.nii.gz", image)
    caplog.clear()
    infer(
        compose_cfg(
            "infer",
            [
                f"input={scan}",
                f"output={tmp_path / 'preds'}",
                *TINY_INFER,
                f"model.checkpoint={out / 'tiny.xml'}",
                "num_workers=0",
            ],
        )
    )
    assert "threshold 0.450 from the checkpoint" in caplog.text  # read from tiny.json
    assert "inference.backend auto -> openvino" in caplog.text
    got = np.asarray(nib.load(tmp_path / "preds" / "scan_pred.nii.gz").dataobj)
    # torch on the same scan with the same settings (TINY_INFER)
    volume = read_volume(scan, dtype=np.float32)
    predictor = SlidingWindowPredictor(net, threshold=0.45, **SETTINGS)
    expected = predictor.binarize(predictor.predict_array(volume.array, volume.affine))
    assert got.shape == expected.shape and expected.any()
    assert np.mean(got == expected) >= 0.999


def test_a_missing_engine_fails_with_one_line_naming_the_extra(
    tmp_path: Path, compose_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    from vesselfm.export import export

    monkeypatch.setitem(sys.modules, "openvino", None)  # as if the extra were not installed
    cfg = compose_cfg(
        "export",
        ["model=tiny", "model.checkpoint=null", "format=openvino", f"output={tmp_path / 'o'}"],
    )
    with pytest.raises(UserError) as err:
        export(cfg)
    assert str(err.value) == (
        "format=openvino needs openvino, which is not installed: pip install 'vesselfm[openvino]'"
    )
    assert not (tmp_path / "o").exists()


def _sigaltstack() -> tuple[int, int, int]:
    import ctypes

    class Stack(ctypes.Structure):
        _fields_ = [("sp", ctypes.c_void_p), ("flags", ctypes.c_int), ("size", ctypes.c_size_t)]

    stack = Stack()
    assert ctypes.CDLL(None).sigaltstack(None, ctypes.byref(stack)) == 0
    return (stack.sp or 0, stack.flags, stack.size)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sigaltstack probe is Linux's")
def test_openvino_leaves_the_signal_stack_alone(exported: dict[str, Path]) -> None:
    """OpenVINO's CPU plugin swaps the thread's alternate signal stack on compile for one that
    does not stay valid; the next Python signal handler (SIGCHLD after a DataLoader with workers)
    then killed the process with SIGSEGV (issue 20). The engine puts it back."""
    before = _sigaltstack()
    engine = OpenVinoEngine(exported["openvino"])
    engine(torch.zeros(1, 1, 24, 24, 16))  # a shape no other test compiled
    assert _sigaltstack() == before
