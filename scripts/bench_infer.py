"""Benchmark whole-volume inference on a CPU (or GPU), side by side on the same weights and volume.

Variants, all on the same prepared phantom volume (default: a 512×512×200 phantom → 256×256×200):

- ``reference``: vesselFM's path, MONAI ``SlidingWindowInfererAdapt``, fp32, window batch 1,
  overlap 0.5, constant blending, under ``torch.no_grad``.
- ``ours-same-fp32``: ``SlidingWindowPredictor`` at the same settings (fp32), with its default
  CPU path: the network run channels-last (``vesselfm.inference.channels_last``).
- ``ours-same-fp32-nchw`` (only when named in ``--variants``): the same without the channels-last
  view (``inference.cpu.channels_last=false``), to see what the view alone gains.
- ``ours-same-bf16``: the same settings with bf16 autocast. Not run where bf16 is emulated (an
  AVX2-only CPU, where one 128³ window takes minutes): the row prints
  ``not run: bf16 is emulated on this CPU``.
- ``ours-default``: the default preset as ``vesselfm.infer`` runs it
  (``configs/inference/default.yaml``: overlap 0.5, Gaussian blending, precision ``auto``), the
  baseline ``inference=fast`` must never be slower than.
- ``ours-fast``: the fast preset, ``inference=fast`` (``configs/inference/fast.yaml``, read
  here): 128³ windows (the training patch), overlap 0.25, Gaussian blending, precision
  ``auto`` (bf16 where the device computes it natively, else fp32), channels-last. Larger
  windows than the training patch (160³) were faster but lost 0.03 Dice against the label
  (``--quality`` with a trained checkpoint).

``--engines`` (or ``--only engines``): the network alone on each engine, same weights and
windows: ``torch-fp32`` (NCDHW), ``torch-channels-last`` (our view), ``onnxruntime-fp32``,
``openvino-f32`` and ``openvino-int8`` (NNCF, calibrated on prepared windows of other
phantoms), each exported with ``vesselfm.export``'s code: seconds per window (median of
``--window-reps`` after a warm-up), per whole prepared volume (``--engine-volume``, a corner of
the phantom's; ``--no-engine-volume-rows`` skips it), the largest logit difference and the mask
Dice against torch fp32. ``--only engine-quality --quality-checkpoint <phantom_demo .ckpt>``:
Dice against the label on held-out phantoms for torch, OpenVINO f32 and INT8 of that checkpoint.

For each: seconds, speed-up over the reference, Dice of its mask against the reference mask.
``--quality`` fits ``model=tiny`` on one phantom for a few steps and compares the full preset's
and the fast preset's Dice against the label of another (random weights say nothing about
quality). ``--rss`` runs ``predict_file`` end to end on a 512×512×275 NIfTI in a subprocess and
reports its peak resident memory.

Usage:
    python scripts/bench_infer.py                       # vesselfm_base, random weights
    python scripts/bench_infer.py --model tiny --shape 256 256 96 --rss --quality
    python scripts/bench_infer.py --only rss
    python scripts/bench_infer.py --device cuda
    python scripts/bench_infer.py --only engines --window-reps 1 --calibration-windows 2
    python scripts/bench_infer.py --model tiny --only engine-quality --quality-checkpoint best.ckpt \
        --quality-roi 64

The first line names the device (CPU model, ATen capability, native bf16 or not, cores, threads).
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vesselfm.data.preprocessing import PreprocessConfig  # noqa: E402
from vesselfm.inference import SlidingWindowPredictor  # noqa: E402
from vesselfm.utils.hardware import (  # noqa: E402
    apply_threads,
    describe_device,
    emulated_note,
    resolve_precision,
)

FULL = {"roi_size": (128, 128, 128), "overlap": 0.5, "mode": "constant"}


def _preset(name: str) -> dict[str, Any]:
    """``configs/inference/<name>.yaml`` (over ``default.yaml``, as Hydra composes it)."""
    from omegaconf import OmegaConf

    folder = ROOT / "configs" / "inference"
    cfg = OmegaConf.load(folder / "default.yaml")
    if name != "default":
        option = OmegaConf.load(folder / f"{name}.yaml")
        option.pop("defaults", None)
        cfg = OmegaConf.merge(cfg, option)
    return OmegaConf.to_container(cfg, resolve=True)


def _windows(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: cfg[k] for k in ("overlap", "mode")} | {"roi_size": tuple(cfg["roi_size"])}


# the default and the fast preset as users get them: python -m vesselfm.infer ... [inference=fast]
_DEFAULT_CFG, _FAST_CFG = _preset("default"), _preset("fast")
DEFAULT, DEFAULT_PRECISION = _windows(_DEFAULT_CFG), _DEFAULT_CFG["cpu"]["precision"]
FAST, FAST_PRECISION = _windows(_FAST_CFG), _FAST_CFG["cpu"]["precision"]


def build(model: str, seed: int = 0) -> torch.nn.Module:
    from omegaconf import OmegaConf

    from vesselfm.models import build_network

    cfg = OmegaConf.load(ROOT / "configs" / "model" / "vesselfm_base.yaml").net
    if model == "tiny":
        cfg = OmegaConf.merge(cfg, OmegaConf.load(ROOT / "configs" / "model" / "tiny.yaml").net)
    torch.manual_seed(seed)
    return build_network(OmegaConf.to_container(cfg, resolve=True)).eval()


def phantom(shape: tuple[int, int, int], seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from vesselfm.data.phantom import generate_phantom

    p = generate_phantom(shape=shape, seed=seed)
    return p.image, p.label, p.affine


def dice(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor) -> float:
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    denom = a.sum() + b.sum()
    return 1.0 if denom == 0 else float(2 * np.logical_and(a, b).sum() / denom)


def reference_probabilities(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """vesselFM's inference call: SlidingWindowInfererAdapt, fp32, batch 1, overlap 0.5, constant."""
    from monai.inferers import SlidingWindowInfererAdapt

    inferer = SlidingWindowInfererAdapt(
        roi_size=(128, 128, 128), sw_batch_size=1, overlap=0.5, mode="constant"
    )
    with torch.no_grad():
        return torch.sigmoid(inferer(x, net))


def ours(
    net: torch.nn.Module,
    preset: dict[str, Any],
    precision: str,
    channels_last: bool,
    threads: int | None,
) -> SlidingWindowPredictor:
    return SlidingWindowPredictor(
        net,
        **preset,
        precision=precision,
        cpu={
            "precision": precision,
            "sw_batch_size": 1,
            "channels_last": channels_last,
            "threads": threads,
        },
    )


def timed(fn: Any) -> tuple[Any, float]:
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def speed(args: argparse.Namespace) -> dict[str, Any]:
    image, label, affine = phantom(tuple(args.shape), seed=0)
    net = build(args.model)
    device = torch.device(args.device)
    net.to(device)
    prep = SlidingWindowPredictor(net, preprocess=PreprocessConfig()).preprocess_array(
        image, affine
    )
    x = torch.from_numpy(prep)[None, None].to(device)
    print(
        f"model={args.model} on {describe_device(device.type)}; raw {image.shape} -> prepared "
        f"{tuple(prep.shape)}; precision {DEFAULT_PRECISION} -> "
        f"{resolve_precision(DEFAULT_PRECISION, device.type)} (default and fast presets)",
        flush=True,
    )
    bf16_note = emulated_note("bf16", device.type)

    # warm-up: one window per code path (oneDNN builds its kernels on first use)
    from vesselfm.inference.channels_last import channels_last_view

    window = torch.rand(1, 1, 128, 128, 128, device=device)
    with torch.inference_mode():
        for network in (net, channels_last_view(net)):
            network(window)
            if bf16_note is None:
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    network(window)

    # name: (windows, precision key, channels-last)
    variants = {
        "ours-same-fp32": (FULL, "fp32", True),
        "ours-same-fp32-nchw": (FULL, "fp32", False),
        "ours-same-bf16": (FULL, "bf16", True),
        "ours-default": (DEFAULT, DEFAULT_PRECISION, True),
        "ours-fast": (FAST, FAST_PRECISION, True),
    }
    wanted = args.variants or [v for v in variants if v != "ours-same-fp32-nchw"]
    runs = {"reference": lambda: reference_probabilities(net, x)}
    rows: dict[str, Any] = {}
    for name in (v for v in variants if v in wanted):
        preset, precision, channels_last = variants[name]
        note = emulated_note(precision, device.type)  # auto never picks an emulated one
        if note:
            rows[name] = {"not_run": note}
        else:
            runs[name] = lambda p=preset, q=precision, c=channels_last: ours(
                net, p, q, c, args.threads
            ).predict_volume(x)
    ref_mask = None
    for name in ["reference", *wanted]:
        if name in rows:
            print(f"{name:16s} {rows[name]['not_run']}", flush=True)
            continue
        prob, seconds = timed(runs[name])
        mask = (prob[0, 0] >= 0.5).cpu().numpy()
        ref_mask = mask if ref_mask is None else ref_mask
        rows[name] = {"seconds": seconds, "dice_vs_reference": dice(mask, ref_mask)}
        ratio = rows["reference"]["seconds"] / seconds
        rows[name]["speedup"] = ratio
        print(
            f"{name:16s} {seconds:8.1f} s  x{ratio:4.2f}  Dice vs reference {rows[name]['dice_vs_reference']:.5f}",
            flush=True,
        )
    default, fast = rows.get("ours-default", {}), rows.get("ours-fast", {})
    if "seconds" in default and "seconds" in fast:
        print(
            f"inference=fast against the default preset: {default['seconds'] / fast['seconds']:.2f}x",
            flush=True,
        )
    return rows


def fit_tiny(steps: int, shape: tuple[int, int, int]) -> torch.nn.Module:
    """A few Adam steps of ``model=tiny`` on 48³ crops of one phantom, so that masks mean something."""
    from monai.losses import DiceCELoss

    image, label, affine = phantom(shape, seed=1)
    predictor = SlidingWindowPredictor(build("tiny"), preprocess=PreprocessConfig())
    x = predictor.preprocess_array(image, affine)
    from vesselfm.data.preprocessing import resample_label

    y = resample_label(label, x.shape)
    net = build("tiny", seed=1).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss_fn = DiceCELoss(sigmoid=True)
    rng = np.random.default_rng(0)
    fg = np.argwhere(y > 0)
    c = 48
    for step in range(steps):
        batch_x, batch_y = [], []
        for _ in range(2):
            centre = fg[rng.integers(len(fg))] if rng.random() < 0.8 else rng.integers(0, x.shape)
            lo = [
                int(np.clip(ci - c // 2, 0, s - c)) for ci, s in zip(centre, x.shape, strict=True)
            ]
            sl = tuple(slice(a, a + c) for a in lo)
            batch_x.append(x[sl])
            batch_y.append(y[sl])
        xb = torch.from_numpy(np.stack(batch_x))[:, None]
        yb = torch.from_numpy(np.stack(batch_y).astype(np.float32))[:, None]
        loss = loss_fn(net(xb), yb)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            print(f"  fit tiny: step {step:4d} loss {loss.item():.3f}", flush=True)
    return net.eval()


def trained_tiny(checkpoint: str) -> tuple[torch.nn.Module, Any]:
    """``model=tiny`` with trained weights (e.g. phantom_demo's best checkpoint) and its preprocessing."""
    from vesselfm.inference import read_checkpoint_metadata
    from vesselfm.models import load_weights, read_state_dict

    net = build("tiny")
    load_weights(net, read_state_dict(checkpoint), model_name="tiny", source=checkpoint)
    meta = read_checkpoint_metadata(checkpoint)
    return net.eval(), meta.get("preprocess")


def quality(args: argparse.Namespace) -> dict[str, Any]:
    shape = tuple(args.quality_shape)
    preprocess = None
    if args.quality_checkpoint:
        net, preprocess = trained_tiny(args.quality_checkpoint)
        label_note = f"checkpoint {args.quality_checkpoint}"
    else:
        net = fit_tiny(args.fit_steps, shape)
        label_note = f"model=tiny fitted {args.fit_steps} steps"
    # held-out phantoms: seeds no training set of ours uses
    cases = [phantom(shape, seed=10_000 + k) for k in range(args.quality_cases)]
    out: dict[str, Any] = {}
    # Window sizes scale with the model's training patch (128 for vesselfm_base; phantom_demo's
    # tiny model trains on 64^3, and windows of mostly padding would change its instance norms).
    scale = args.quality_roi / FULL["roi_size"][0]
    full = {**FULL, "roi_size": tuple(round(s * scale) for s in FULL["roi_size"])}
    fast = {**FAST, "roi_size": tuple(round(s * scale) for s in FAST["roi_size"])}
    presets = (
        ("full-fp32", {**full, "mode": "gaussian"}, "fp32"),
        ("full-bf16", {**full, "mode": "gaussian"}, "bf16"),
        ("fast", fast, FAST_PRECISION),
    )
    full_masks: list[np.ndarray] = []
    for name, preset, precision in presets:
        note = emulated_note(precision, "cpu")
        if note:
            out[name] = {"not_run": note}
            print(f"quality {name:9s}: {note}", flush=True)
            continue
        predictor = ours(net, preset, precision, True, args.threads)
        if preprocess is not None:
            predictor.preprocess = preprocess
        scores, agree, seconds = [], [], 0.0
        for k, (image, label, affine) in enumerate(cases):
            prob, s = timed(lambda p=predictor, i=image, a=affine: p.predict_array(i, a))
            mask = prob >= 0.5
            if name == "full-fp32":
                full_masks.append(mask)
            scores.append(dice(mask, label))
            agree.append(dice(mask, full_masks[k]))
            seconds += s
        out[name] = {
            "dice_vs_label": float(np.mean(scores)),
            "dice_vs_full_fp32": float(np.mean(agree)),
            "seconds": seconds,
        }
        print(
            f"quality {name:9s}: Dice vs label {out[name]['dice_vs_label']:.4f}, vs full-fp32 mask "
            f"{out[name]['dice_vs_full_fp32']:.5f} ({seconds:.1f} s)",
            flush=True,
        )
    out["full_minus_fast"] = out["full-fp32"]["dice_vs_label"] - out["fast"]["dice_vs_label"]
    print(
        f"quality ({label_note}, {len(cases)} phantoms {shape}): full - fast = {out['full_minus_fast']:+.4f}",
        flush=True,
    )
    return out


# ---------------------------------------------------------------------------- engines
def engine_predictors(
    net: torch.nn.Module,
    files: dict[str, Path],
    preset: dict[str, Any],
    threads: int | None,
    rows: tuple[str, ...] = ("torch-fp32", "torch-channels-last"),
) -> dict[str, SlidingWindowPredictor]:
    """One predictor per backend row, same windows and blending, fp32 (INT8 where named)."""
    from vesselfm.inference.backends import ExportedNetwork

    def make(network: torch.nn.Module, backend: str, channels_last: bool = True) -> Any:
        return SlidingWindowPredictor(
            network,
            **preset,
            device="cpu",
            backend=backend,
            cpu={"precision": "fp32", "channels_last": channels_last, "threads": threads},
        )

    torch_rows = {
        "torch-fp32": lambda: make(net, "torch", channels_last=False),
        "torch-channels-last": lambda: make(net, "torch"),
    }
    rows = {name: torch_rows[name]() for name in rows}
    if "onnx" in files:
        rows["onnxruntime-fp32"] = make(ExportedNetwork(files["onnx"]), "onnxruntime")
    if "openvino" in files:
        rows["openvino-f32"] = make(ExportedNetwork(files["openvino"]), "openvino")
    if "int8" in files:
        rows["openvino-int8"] = make(ExportedNetwork(files["int8"]), "openvino")
    return rows


def export_all(
    net: torch.nn.Module,
    folder: Path,
    roi: tuple[int, int, int],
    calibration: list[np.ndarray],
    formats: tuple[str, ...] = ("onnx", "openvino"),
) -> dict[str, Path]:
    """ONNX, OpenVINO f32 and (with calibration windows) OpenVINO INT8 exports of ``net``;
    only the engines installed."""
    from vesselfm.inference.backends import export_model, installed

    files: dict[str, Path] = {}
    jobs = []
    if installed("onnxruntime") and "onnx" in formats:
        jobs.append(("onnx", "onnx", "fp32"))
    if installed("openvino"):
        jobs.append(("openvino", "openvino", "fp32"))
        if calibration and installed("nncf"):
            jobs.append(("int8", "openvino", "int8"))
    for key, fmt, precision in jobs:
        t = time.perf_counter()
        result = export_model(
            net,
            folder,
            f"model-{key}",
            fmt,
            precision,
            window=roi,
            calibration=calibration,
            check_window=calibration[-1] if calibration else None,
            tolerance=None,
        )
        check = result["check"]
        print(
            f"export {key:8s} {time.perf_counter() - t:6.1f} s  max logit diff {check['max_abs_logit_diff']:.2g}"
            f"  sign agreement {check['sign_agreement']:.5f}",
            flush=True,
        )
        files[key] = result["path"]
    return files


def calibration_set(
    predictor: SlidingWindowPredictor, shape: tuple[int, int, int], seeds: list[int], count: int
) -> list[np.ndarray]:
    """``count`` prepared windows from phantoms of the given seeds (as ``vesselfm.export`` makes them)."""
    from vesselfm.export import crop_windows

    per = -(-count // len(seeds))
    windows: list[np.ndarray] = []
    for seed in seeds:
        image, _, affine = phantom(shape, seed)
        windows += crop_windows(predictor.preprocess_array(image, affine), predictor.roi_size, per)
    return windows[:count]


def engines(args: argparse.Namespace) -> dict[str, Any]:
    """Per-window and whole-volume seconds for torch fp32, the channels-last view, ONNX Runtime,
    OpenVINO f32 and INT8 on the same weights, windows and volume; Dice against torch fp32."""
    net = build(args.model)
    image, _, affine = phantom(tuple(args.engine_shape), seed=0)
    roi = (args.engine_roi,) * 3
    preset = {"roi_size": roi, "overlap": args.engine_overlap, "mode": "gaussian"}
    base = SlidingWindowPredictor(net, preprocess=PreprocessConfig(), **preset)
    x = torch.from_numpy(base.preprocess_array(image, affine))[None, None]
    # a corner of the prepared volume: whole-volume rows cost one call per window and engine
    x = x[..., : args.engine_volume[0], : args.engine_volume[1], : args.engine_volume[2]]
    x = x.contiguous()
    print(
        f"engines: model={args.model} on {describe_device('cpu')}; raw {image.shape} -> prepared "
        f"{tuple(x.shape[2:])}; windows {roi}, overlap {args.engine_overlap}; fp32 unless INT8",
        flush=True,
    )
    calibration = calibration_set(
        base, tuple(args.engine_shape), [101, 102], args.calibration_windows
    )
    out: dict[str, Any] = {"prepared_shape": list(x.shape[2:]), "roi": list(roi)}
    with tempfile.TemporaryDirectory() as tmp:
        files = export_all(net, Path(tmp), roi, calibration)
        predictors = engine_predictors(net, files, preset, args.threads)
        window = torch.rand(1, 1, *roi, generator=torch.Generator().manual_seed(0))
        if calibration:  # a prepared window of a phantom, as inference sees them
            window = torch.from_numpy(calibration[0])
        ref_logits = None
        ref_mask = None
        for name, predictor in predictors.items():
            fn = predictor.window_fn(torch.device("cpu"))
            with torch.inference_mode():
                logits = fn(window)  # warm-up: kernels are built on first use
                times = []
                for _ in range(args.window_reps):
                    _, sec = timed(lambda f=fn: f(window))
                    times.append(sec)
            logits = logits.float()
            ref_logits = logits if ref_logits is None else ref_logits
            row = {
                "window_seconds": float(np.median(times)),
                "max_logit_diff_vs_torch": float((logits - ref_logits).abs().max()),
                # the window's mask at threshold 0.5
                "dice_vs_torch_fp32": dice(logits >= 0, ref_logits >= 0),
            }
            volume_seconds = float("nan")
            if args.engine_volume_rows:
                prob, volume_seconds = timed(lambda p=predictor: p.predict_volume(x))
                mask = (prob[0, 0] >= 0.5).numpy()
                ref_mask = mask if ref_mask is None else ref_mask
                row["dice_vs_torch_fp32"] = dice(mask, ref_mask)
            row["volume_seconds"] = volume_seconds
            out[name] = row
            print(
                f"{name:20s} window {row['window_seconds']:6.2f} s  volume {volume_seconds:7.1f} s  "
                f"max logit diff {row['max_logit_diff_vs_torch']:.2g}  mask Dice vs torch fp32 "
                f"{row['dice_vs_torch_fp32']:.5f}",
                flush=True,
            )
    ref = out["torch-fp32"]
    for name in predictors:
        out[name]["window_speedup"] = ref["window_seconds"] / out[name]["window_seconds"]
        out[name]["volume_speedup"] = ref["volume_seconds"] / out[name]["volume_seconds"]
    unit = "volume_seconds" if args.engine_volume_rows else "window_seconds"
    best_ours = min(("torch-fp32", "torch-channels-last"), key=lambda n: out[n][unit])
    if "openvino-f32" in out:
        ov, q = out["openvino-f32"], out.get("openvino-int8")
        gain = out[best_ours][unit] / ov[unit]
        print(
            f"target: OpenVINO f32 {gain:.2f}x our best fp32 path ({best_ours}), {unit} "
            f"(>= 1.25x), mask Dice vs torch fp32 {ov['dice_vs_torch_fp32']:.5f} (>= 0.999)",
            flush=True,
        )
        if q:
            print(
                f"target: OpenVINO INT8 {ov[unit] / q[unit]:.2f}x OpenVINO f32, {unit} (>= 1.5x)",
                flush=True,
            )
    return out


def engine_quality(args: argparse.Namespace) -> dict[str, Any]:
    """Dice against the label on held-out phantoms: torch fp32, OpenVINO f32 and INT8 of a
    trained ``model=tiny`` (phantom_demo's checkpoint), INT8 calibrated on other phantoms."""
    net, preprocess = trained_tiny(args.quality_checkpoint)
    roi = (args.quality_roi,) * 3
    preset = {"roi_size": roi, "overlap": 0.5, "mode": "gaussian"}
    shape = tuple(args.quality_shape)
    base = SlidingWindowPredictor(net, preprocess=preprocess or PreprocessConfig(), **preset)
    calibration = calibration_set(base, shape, [20_001, 20_002], args.calibration_windows)
    cases = [phantom(shape, seed=10_000 + k) for k in range(args.quality_cases)]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = export_all(net, Path(tmp), roi, calibration, formats=("openvino",))
        predictors = engine_predictors(net, files, preset, args.threads, ("torch-channels-last",))
        masks: dict[str, list[np.ndarray]] = {}
        for name, predictor in predictors.items():
            predictor.preprocess = base.preprocess
            scores, seconds = [], 0.0
            masks[name] = []
            for image, label, affine in cases:
                prob, sec = timed(lambda p=predictor, i=image, a=affine: p.predict_array(i, a))
                masks[name].append(prob >= 0.5)
                scores.append(dice(prob >= 0.5, label))
                seconds += sec
            agree = [
                dice(m, r) for m, r in zip(masks[name], masks["torch-channels-last"], strict=True)
            ]
            out[name] = {
                "dice_vs_label": float(np.mean(scores)),
                "dice_vs_torch_fp32_mask": float(np.mean(agree)),
                "seconds": seconds,
            }
            print(
                f"quality {name:20s} Dice vs label {out[name]['dice_vs_label']:.4f}  mask Dice vs "
                f"torch fp32 {out[name]['dice_vs_torch_fp32_mask']:.5f}  ({seconds:.1f} s)",
                flush=True,
            )
    if "openvino-int8" in out:
        loss = out["openvino-f32"]["dice_vs_label"] - out["openvino-int8"]["dice_vs_label"]
        out["int8_dice_loss"] = loss
        print(
            f"target: INT8 Dice loss vs OpenVINO f32 {loss:+.4f} (<= 0.01) on {len(cases)} "
            f"held-out phantoms {shape}, checkpoint {args.quality_checkpoint}",
            flush=True,
        )
    return out


def rss_child(path: str, model: str, threads: int | None) -> None:
    """Run in a subprocess: read, predict, write one scan with the default CPU settings."""
    net = build(model)
    predictor = SlidingWindowPredictor(net, device="cpu", cpu={"threads": threads})
    with tempfile.TemporaryDirectory() as out:
        result = predictor.predict_file(path, out)
    print(
        json.dumps(
            {
                "timings": result["timings"],
                "maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            }
        )
    )


def rss(args: argparse.Namespace) -> dict[str, Any]:
    from vesselfm.io import write_volume

    image, _, affine = phantom((512, 512, 275), seed=2)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.nii.gz"
        write_volume(image, affine, path)
        cmd = [sys.executable, __file__, "--rss-child", str(path), "--model", args.model]
        cmd += ["--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-2000:])
    child = json.loads(proc.stdout.strip().splitlines()[-1])
    gib = child["maxrss_kib"] / 2**20
    print(
        f"peak RSS, 512x512x275 end to end on the CPU, model={args.model}: {gib:.2f} GiB "
        f"(predict {child['timings']['predict']:.1f} s, total {child['timings']['total']:.1f} s)",
        flush=True,
    )
    return {"peak_rss_gib": gib, **child}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="vesselfm_base", choices=["vesselfm_base", "tiny"])
    parser.add_argument(
        "--shape", type=int, nargs=3, default=[512, 512, 200], help="raw phantom shape"
    )
    parser.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    parser.add_argument(
        "--threads",
        default="auto",
        help="torch threads: auto (the cores this process may use) or N",
    )
    parser.add_argument(
        "--variants",
        nargs="*",
        default=None,
        help="subset of ours-same-fp32 ours-same-fp32-nchw ours-same-bf16 ours-default ours-fast "
        "(default: all but ours-same-fp32-nchw)",
    )
    parser.add_argument(
        "--only", choices=["speed", "quality", "rss", "engines", "engine-quality"], default=None
    )
    parser.add_argument(
        "--engines",
        action="store_true",
        help="also compare torch, channels-last, ONNX Runtime, OpenVINO f32 and INT8",
    )
    parser.add_argument(
        "--engine-shape",
        type=int,
        nargs=3,
        default=[512, 512, 128],
        help="raw phantom shape for --engines",
    )
    parser.add_argument(
        "--engine-volume",
        type=int,
        nargs=3,
        default=[224, 224, 128],
        help="prepared volume for --engines' whole-volume rows (a corner of the phantom's; "
        "224x224x128: 4 windows of 128^3 at overlap 0.25)",
    )
    parser.add_argument("--engine-roi", type=int, default=128, help="window side for --engines")
    parser.add_argument(
        "--engine-volume-rows",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a whole (prepared) volume per engine",
    )
    parser.add_argument("--engine-overlap", type=float, default=0.25)
    parser.add_argument("--window-reps", type=int, default=3, help="timed windows per engine")
    parser.add_argument(
        "--calibration-windows", type=int, default=8, help="INT8 calibration windows"
    )
    parser.add_argument(
        "--quality", action="store_true", help="also compare full vs fast preset Dice vs label"
    )
    parser.add_argument("--fit-steps", type=int, default=100)
    parser.add_argument(
        "--quality-checkpoint",
        default=None,
        help="trained model=tiny weights for --quality (e.g. phantom_demo's best .ckpt) instead of fitting",
    )
    parser.add_argument(
        "--quality-cases", type=int, default=3, help="held-out phantoms for --quality"
    )
    parser.add_argument(
        "--quality-roi",
        type=int,
        default=128,
        help="full preset's window side for --quality (fast: x1.25)",
    )
    parser.add_argument(
        "--quality-shape",
        type=int,
        nargs=3,
        default=[256, 256, 128],
        help="raw phantom shape for --quality",
    )
    parser.add_argument(
        "--rss", action="store_true", help="also measure peak RSS on a 512x512x275 scan"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.threads = apply_threads(args.threads)
    if args.rss_child:
        rss_child(args.rss_child, args.model, args.threads)
        return

    results: dict[str, Any] = {
        "model": args.model,
        "shape": args.shape,
        "device": args.device,
        "threads": torch.get_num_threads(),
    }
    if args.only in (None, "speed"):
        results["speed"] = speed(args)
    if args.only == "quality" or (args.only is None and args.quality):
        results["quality"] = quality(args)
    if args.only == "engines" or (args.only is None and args.engines):
        results["engines"] = engines(args)
    if args.only == "engine-quality" or (
        args.only is None and args.engines and args.quality_checkpoint
    ):
        if not args.quality_checkpoint:
            parser.error("--only engine-quality needs --quality-checkpoint (phantom_demo's .ckpt)")
        results["engine_quality"] = engine_quality(args)
    if args.only == "rss" or (args.only is None and args.rss):
        results["rss"] = rss(args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
