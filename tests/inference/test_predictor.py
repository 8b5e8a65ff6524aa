"""SlidingWindowPredictor: windows, batches, devices, preprocessing that matches prepare."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from inference_helpers import IdentityNet
from omegaconf import DictConfig, OmegaConf
from synthetic import FLIPPED_AFFINE, tube_phantom
from torch import nn

from vesselfm.data.preprocessing import (
    PreprocessConfig,
    intensity_range,
    normalize_intensity,
    resample_image,
    resample_probabilities,
    target_shape,
)
from vesselfm.inference import SlidingWindowPredictor
from vesselfm.io.frames import spacing_from_affine
from vesselfm.utils.cli import UserError


@pytest.mark.slow
def test_same_prediction_for_two_window_batch_sizes(tiny_net: nn.Module) -> None:
    x = torch.rand(1, 1, 40, 40, 32)  # 2 x 2 x 1 windows: batches of 3 + 1 against 4 x 1
    one = SlidingWindowPredictor(
        tiny_net, roi_size=32, overlap=0.5, cpu={"sw_batch_size": 1}
    ).predict_volume(x)
    three = SlidingWindowPredictor(
        tiny_net, roi_size=32, overlap=0.5, cpu={"sw_batch_size": 3}
    ).predict_volume(x)
    torch.testing.assert_close(one, three, atol=1e-5, rtol=0)
    assert one.dtype == torch.float32 and one.shape == x.shape


@pytest.mark.parametrize("roi", [16, 32, 64, (64, 16, 48)])
@pytest.mark.parametrize("mode", ["constant", "gaussian"])
def test_identity_network_for_roi_larger_and_smaller_than_the_volume(
    roi: int | tuple, mode: str
) -> None:
    x = torch.randn(2, 1, 40, 28, 20)
    out = SlidingWindowPredictor(
        IdentityNet(), roi_size=roi, overlap=0.25, mode=mode
    ).predict_volume(x)
    torch.testing.assert_close(out, torch.sigmoid(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize("roi", [32, 96])
def test_tiny_network_roi_larger_and_smaller_than_the_volume(tiny_net: nn.Module, roi: int) -> None:
    x = torch.rand(1, 1, 40, 36, 24)
    out = SlidingWindowPredictor(tiny_net, roi_size=roi, overlap=0.25).predict_volume(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all() and out.min() >= 0 and out.max() <= 1


def test_predict_array_matches_the_training_preprocessing(tiny_net: nn.Module) -> None:
    image, _ = tube_phantom((56, 44, 30))
    preprocess = PreprocessConfig(in_plane_size=32)
    predictor = SlidingWindowPredictor(tiny_net, roi_size=32, overlap=0.5, preprocess=preprocess)
    prob = predictor.predict_array(image, FLIPPED_AFFINE)

    # the steps prepare and training use, written out by hand
    shape = target_shape(image.shape, spacing_from_affine(FLIPPED_AFFINE), preprocess)
    assert shape == (32, 32, 30)
    resampled = resample_image(image, shape)
    normalized = normalize_intensity(resampled, intensity_range(resampled, preprocess), preprocess)
    with torch.inference_mode():
        net_prob = predictor.predict_volume(torch.from_numpy(normalized)[None, None])[0, 0]
    expected = resample_probabilities(net_prob, image.shape)

    assert prob.shape == image.shape and prob.dtype == np.float32
    np.testing.assert_array_equal(prob, expected)


def test_predict_array_when_the_grid_is_already_the_prepared_one(tiny_net: nn.Module) -> None:
    image, _ = tube_phantom((32, 32, 20))
    predictor = SlidingWindowPredictor(
        tiny_net, roi_size=32, preprocess=PreprocessConfig(in_plane_size=32)
    )
    prob = predictor.predict_array(image, FLIPPED_AFFINE)
    assert prob.shape == image.shape
    out = predictor.predict_volume(torch.rand(1, 1, 16, 16, 16))
    out.clamp_(0.0, 1.0)  # a normal tensor, not an inference tensor: callers may modify it


def test_predict_array_with_target_spacing(tiny_net: nn.Module) -> None:
    image, _ = tube_phantom((40, 40, 24))
    predictor = SlidingWindowPredictor(
        tiny_net,
        roi_size=32,
        preprocess=PreprocessConfig(in_plane_size=None, target_spacing=(1.0, 1.0, 1.0)),
    )
    prepared = predictor.preprocess_array(image, FLIPPED_AFFINE)
    assert prepared.shape == (30, 25, 30)  # 40 * 0.75, 40 * 0.625, 24 * 1.25
    assert prepared.min() >= 0 and prepared.max() <= 1
    assert predictor.predict_array(image, FLIPPED_AFFINE).shape == image.shape


def test_from_config_with_the_real_config(
    compose_cfg: Callable[..., DictConfig], tiny_net: nn.Module
) -> None:
    cfg = compose_cfg("infer", ["input=x.nii.gz", "model=tiny"])
    inference = OmegaConf.to_container(cfg.inference, resolve=True)
    predictor = SlidingWindowPredictor.from_config(tiny_net, inference)
    assert predictor.roi_size == (128, 128, 128) and predictor.overlap == 0.5
    assert not predictor.tta.enabled and not predictor.postprocess.enabled
    assert predictor.compute_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    # the LightningModule drops device/sw_device: run where the network is
    lit = SlidingWindowPredictor.from_config(
        tiny_net, {k: v for k, v in inference.items() if "device" not in k}
    )
    assert lit.compute_device() == torch.device("cpu")
    with pytest.raises(ValueError, match="unknown inference keys"):
        SlidingWindowPredictor.from_config(tiny_net, {**inference, "roi": 3})


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"overlap": 1.0}, "inference.overlap"),
        ({"mode": "linear"}, "inference.mode"),
        ({"precision": "fp8"}, "inference.precision"),
        ({"roi_size": (32, 32)}, "inference.roi_size"),
        ({"sw_batch_size": 0}, "inference.sw_batch_size"),
        ({"threshold": 1.5}, "inference.threshold"),
        ({"cpu": {"precision": "fp16"}}, "inference.cpu.precision"),
        ({"device": "tpu"}, "inference.device"),
    ],
)
def test_bad_settings_name_the_key(kwargs: dict, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        SlidingWindowPredictor(IdentityNet(), **kwargs)


def test_device_none_never_moves_the_network(tiny_net: nn.Module) -> None:
    predictor = SlidingWindowPredictor(tiny_net, roi_size=16, device=None)
    assert predictor.compute_device() == torch.device("cpu")
    out = predictor.predict_volume(torch.rand(1, 1, 16, 16, 16))
    assert out.device == torch.device("cpu")


def test_cpu_stitching_and_explicit_cpu_device(tiny_net: nn.Module) -> None:
    x = torch.rand(1, 1, 40, 32, 24)
    a = SlidingWindowPredictor(tiny_net, roi_size=32, device="cpu", sw_device="cpu").predict_volume(
        x
    )
    b = SlidingWindowPredictor(
        tiny_net, roi_size=32, device="auto", sw_device="auto"
    ).predict_volume(x)
    torch.testing.assert_close(a.cpu(), b.cpu(), atol=1e-5, rtol=0)
    assert a.device == torch.device("cpu")


@pytest.mark.slow
def test_cpu_prediction_runs_the_channels_last_view_by_default(
    tiny_net: nn.Module, monkeypatch: pytest.MonkeyPatch
) -> None:
    import vesselfm.inference.channels_last as kernels

    built, original = [], kernels.channels_last_view

    def spy(network: nn.Module) -> nn.Module:
        built.append(network)
        return original(network)

    monkeypatch.setattr(kernels, "channels_last_view", spy)
    x = torch.rand(1, 1, 40, 36, 24)
    SlidingWindowPredictor(tiny_net, roi_size=32).predict_volume(x)
    assert built == [tiny_net]
    SlidingWindowPredictor(tiny_net, roi_size=32, cpu={"channels_last": False}).predict_volume(x)
    assert built == [tiny_net]


@pytest.mark.slow
def test_cpu_bf16_and_channels_last_stay_close(tiny_net: nn.Module) -> None:
    x = torch.rand(1, 1, 32, 32, 32)
    ref = SlidingWindowPredictor(tiny_net, roi_size=32).predict_volume(x)
    bf16 = SlidingWindowPredictor(tiny_net, roi_size=32, cpu={"precision": "bf16"}).predict_volume(
        x
    )
    plain = SlidingWindowPredictor(
        tiny_net, roi_size=32, cpu={"channels_last": False}
    ).predict_volume(x)
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, ref, atol=0.05, rtol=0)
    torch.testing.assert_close(plain, ref, atol=1e-5, rtol=0)


def test_threads_are_restored(tiny_net: nn.Module) -> None:
    before = torch.get_num_threads()
    SlidingWindowPredictor(tiny_net, roi_size=16, cpu={"threads": 1}).predict_volume(
        torch.rand(1, 1, 16, 16, 16)
    )
    assert torch.get_num_threads() == before


def test_rejects_a_wrong_layout(tiny_net: nn.Module) -> None:
    with pytest.raises(ValueError, match=r"\(B, 1, X, Y, Z\)"):
        SlidingWindowPredictor(tiny_net).predict_volume(torch.rand(16, 16, 16))


def test_cuda_out_of_memory_lowers_the_batch_then_stitches_on_cpu_then_names_the_keys() -> None:
    predictor = SlidingWindowPredictor(IdentityNet(), sw_batch_size=4)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    err = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert predictor._recover_from_oom(cuda, cuda, 4, err)
    assert predictor.sw_batch_size == 2
    assert predictor._recover_from_oom(cuda, cuda, 1, err)
    assert predictor.stitch_device(cuda) == cpu
    with pytest.raises(
        UserError, match=r"inference\.sw_batch_size.*inference\.sw_device=cpu"
    ) as info:
        predictor._recover_from_oom(cuda, cpu, 1, err)
    assert "\n" not in str(info.value)
    assert not predictor._recover_from_oom(cpu, cpu, 4, err)  # not a GPU: nothing to lower


class _OOMOnce(nn.Module):
    """Raises CUDA out-of-memory for window batches larger than 1 (simulated, on the CPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(x.shape[0])
        if x.shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return x.clone()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(tiny_net: nn.Module) -> None:
    x = torch.rand(1, 1, 64, 64, 48)
    cpu = SlidingWindowPredictor(tiny_net, roi_size=32, device="cpu").predict_volume(x)
    gpu32 = SlidingWindowPredictor(
        tiny_net, roi_size=32, device="cuda", precision="fp32"
    ).predict_volume(x)
    torch.testing.assert_close(gpu32.cpu(), cpu, atol=1e-4, rtol=0)
    bf16 = SlidingWindowPredictor(
        tiny_net, roi_size=32, device="cuda", sw_device="cpu"
    ).predict_volume(x)
    assert bf16.device.type == "cpu"
    torch.testing.assert_close(bf16, cpu, atol=0.05, rtol=0)
    predictor = SlidingWindowPredictor(
        _OOMOnce().cuda(), roi_size=16, sw_batch_size=4, device="cuda"
    )
    predictor.predict_volume(torch.rand(1, 1, 32, 32, 32))
    assert predictor.sw_batch_size == 1


def test_predict_file_writes_and_skips(
    tiny_net: nn.Module, scan_file: Path, tmp_path: Path
) -> None:
    import nibabel as nib

    predictor = SlidingWindowPredictor(
        tiny_net, roi_size=32, preprocess=PreprocessConfig(in_plane_size=32)
    )
    out = tmp_path / "out"
    result = predictor.predict_file(scan_file, out, save_prob=True)
    assert result["case"] == "1" and not result["skipped"]
    assert result["pred"] == out / "1_pred.nii.gz" and result["prob"] == out / "1_prob.nii.gz"
    assert set(result["timings"]) == {"read", "predict", "postprocess", "write", "total"}
    src = nib.load(scan_file)
    pred = nib.load(result["pred"])
    prob = nib.load(result["prob"])
    assert pred.shape == prob.shape == src.shape
    np.testing.assert_array_equal(pred.affine, src.affine)
    mask = np.asarray(pred.dataobj)
    np.testing.assert_array_equal(mask, (np.asarray(prob.dataobj) >= 0.5).astype(np.uint8))

    mtime = result["pred"].stat().st_mtime_ns
    again = predictor.predict_file(scan_file, out, save_prob=True)
    assert again["skipped"] and result["pred"].stat().st_mtime_ns == mtime
    # asking for an output that is missing redoes the case
    assert not predictor.predict_file(scan_file, out, save_prob=True, save_mesh=True)["skipped"]
    assert (out / "1_pred.stl").stat().st_size > 84
    assert not predictor.predict_file(scan_file, out, overwrite=True)["skipped"]
    assert sorted(p.name for p in out.iterdir()) == [
        ".vesselfm-outputs.json",
        "1_pred.nii.gz",
        "1_pred.stl",
        "1_prob.nii.gz",
    ]


def test_the_fast_preset_is_the_default_with_overlap_changed(
    tiny_net: nn.Module, compose_cfg: Callable[..., DictConfig]
) -> None:
    def predictor(option: str) -> SlidingWindowPredictor:
        cfg = compose_cfg("infer", ["input=scan.nii.gz", f"inference={option}"])
        return SlidingWindowPredictor.from_config(
            tiny_net, OmegaConf.to_container(cfg.inference, resolve=True)
        )

    default, fast = predictor("default"), predictor("fast")
    assert (default.overlap, default.cpu.precision, default.precision) == (0.5, "auto", "auto")
    # the same precision key as the default: on CPUs without native bf16 the fast preset runs
    # fp32, so it is never slower than the default
    assert (fast.overlap, fast.cpu.precision, fast.precision) == (0.25, "auto", "auto")
    assert fast.roi_size == default.roi_size == (128, 128, 128)
    assert fast.mode == default.mode == "gaussian"
    assert fast.cpu.channels_last and fast.cpu.sw_batch_size == 1
