"""Export the network for ONNX Runtime or OpenVINO: ``python -m vesselfm.export output=<dir>``.

``export(cfg)`` loads the model, resolves the preprocessing and threshold to record (as ``infer``
does), prepares INT8 calibration windows when asked, and calls
:func:`vesselfm.inference.backends.export_model`; ``main()`` is the Hydra CLI.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from vesselfm.utils.cli import hydra_entrypoint

log = logging.getLogger(__name__)


def window_starts(size: int, window: int, overlap: float = 0.5) -> list[int]:
    """Start indices of the sliding-window positions along one axis (as MONAI spaces them)."""
    if size <= window:
        return [0]
    count = math.ceil((size - window) / (window * (1.0 - overlap))) + 1
    return sorted({int(round(v)) for v in np.linspace(0, size - window, count)})


def crop_windows(volume: np.ndarray, window: tuple[int, int, int], count: int) -> list[np.ndarray]:
    """``count`` windows ``(1, 1, *window)`` spread evenly over the sliding-window positions of a
    prepared volume (zero-padded where it is smaller, as inference pads)."""
    pad = [(0, max(0, w - s)) for s, w in zip(volume.shape, window, strict=True)]
    volume = np.pad(volume, pad)
    grid = [
        (x, y, z)
        for x in window_starts(volume.shape[0], window[0])
        for y in window_starts(volume.shape[1], window[1])
        for z in window_starts(volume.shape[2], window[2])
    ]
    picks = np.unique(np.linspace(0, len(grid) - 1, max(1, count)).round().astype(int))
    out = []
    for i in picks:
        x, y, z = grid[i]
        crop = volume[x : x + window[0], y : y + window[1], z : z + window[2]]
        out.append(np.ascontiguousarray(crop, dtype=np.float32)[None, None])
    return out


def calibration_windows(cfg: Any, predictor: Any, window: tuple[int, int, int]) -> list[np.ndarray]:
    """Prepared windows for INT8 calibration, from ``calibration.input`` scans or phantoms."""
    scans: list[tuple[np.ndarray, np.ndarray]] = []
    if cfg.get("input"):
        from vesselfm.io import find_inputs, read_volume

        for path in find_inputs(cfg.input):
            volume = read_volume(path, dtype=np.float32)
            scans.append((volume.array, volume.affine))
    else:
        from vesselfm.data.phantom import generate_phantom

        shape = tuple(int(s) for s in cfg.shape)
        for i in range(int(cfg.cases)):
            p = generate_phantom(shape=shape, seed=int(cfg.seed) + i)
            scans.append((p.image.astype(np.float32), p.affine))
    per_scan = math.ceil(int(cfg.windows) / max(1, len(scans)))
    windows = []
    for image, affine in scans:
        windows += crop_windows(predictor.preprocess_array(image, affine), window, per_scan)
    return windows[: int(cfg.windows)]


def export(cfg: DictConfig) -> dict[str, Any]:
    """Export ``cfg.model`` as ``cfg.format`` into ``cfg.output``.

    Returns:
        ``{"path", "record", "files", "check"}`` (see
        :func:`vesselfm.inference.backends.export_model`).

    Raises:
        UserError: a missing engine, bad keys, existing files (without ``overwrite``), an
            exported model as ``model.checkpoint``, or a failed check.
    """
    from vesselfm.inference import SlidingWindowPredictor, resolve_preprocess_and_threshold
    from vesselfm.inference.backends import (
        EXPORT_PRECISIONS,
        FORMATS,
        ExportedNetwork,
        export_model,
        import_engine,
        require,
    )
    from vesselfm.inference.metadata import model_metadata, use_checkpoint_classes
    from vesselfm.models import load_model
    from vesselfm.utils.errors import UserError

    if OmegaConf.is_missing(cfg, "output") or not cfg.output:
        raise UserError(
            "output is required: the folder for the exported model, e.g. output=exported"
        )
    fmt, precision = str(cfg.format), str(cfg.precision)
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {list(FORMATS)}, got {fmt!r}")
    if precision not in EXPORT_PRECISIONS:
        raise UserError(f"precision must be one of {list(EXPORT_PRECISIONS)}, got {precision!r}")
    if precision == "int8" and fmt != "openvino":
        raise UserError("precision=int8 is written by OpenVINO's NNCF: set format=openvino")
    # a missing engine fails before the weights load
    import_engine("onnx", f"format={fmt}")
    import_engine("openvino" if fmt == "openvino" else "onnxruntime", f"format={fmt}")
    if precision == "int8":
        require("nncf", "precision=int8")
    window = tuple(int(s) for s in cfg.window)
    if len(window) != 3 or min(window) < 1:
        raise UserError(f"window must be three positive sizes [X, Y, Z], got {list(cfg.window)}")

    # one read of the checkpoint for its preprocessing, threshold and classes (as infer does)
    metadata = model_metadata(OmegaConf.to_container(cfg.model, resolve=True))
    preprocess = cfg.get("preprocess")
    preprocess, threshold = resolve_preprocess_and_threshold(
        cfg.model,
        None if preprocess is None else OmegaConf.to_container(preprocess, resolve=True),
        cfg.get("threshold"),
        metadata=metadata,
    )
    use_checkpoint_classes(cfg.model, metadata.get("num_classes"))  # a segment model's head
    network = load_model(cfg.model)
    if isinstance(network, ExportedNetwork):
        raise UserError(
            f"model.checkpoint={network.path} is already exported; give the .ckpt/.pt it came from"
        )
    name = str(cfg.get("name") or cfg.model.name)
    predictor = SlidingWindowPredictor(network, preprocess=preprocess)
    calibration: list[np.ndarray] = []
    check_window = None
    if precision == "int8":
        calibration = calibration_windows(cfg.calibration, predictor, window)
        log.info(
            "INT8 calibration on %d prepared %s windows",
            len(calibration),
            "x".join(map(str, window)),
        )
        check_window = calibration[-1]
    record = {
        "model_name": str(cfg.model.name),
        "net": OmegaConf.to_container(cfg.model.net, resolve=True),
        "preprocess": preprocess.to_dict(),
        "threshold": threshold,
        "source_checkpoint": getattr(network, "source_checkpoint", None),
        "window": list(window),
    }
    if precision == "int8":
        record["calibration"] = {
            "windows": len(calibration),
            "input": cfg.calibration.input
            or f"{cfg.calibration.cases} phantoms "
            f"{list(cfg.calibration.shape)} seed {cfg.calibration.seed}",
        }
    result = export_model(
        network,
        Path(str(cfg.output)).expanduser(),
        name,
        fmt,
        precision,
        window=window,
        calibration=calibration,
        check_window=check_window,
        tolerance=cfg.get("check_tolerance"),
        record=record,
        opset=int(cfg.opset),
        overwrite=bool(cfg.overwrite),
    )
    check = result["check"]
    log.info(
        "wrote %s; largest logit difference from torch %.3g on a %s window (%s)",
        ", ".join(p.name for p in result["files"]),
        check["max_abs_logit_diff"],
        "x".join(map(str, check["window"])),
        check["engine"],
    )
    return result


@hydra_entrypoint("export")
def main(cfg: DictConfig) -> None:
    """CLI: export the network, log the files and the check."""
    export(cfg)


if __name__ == "__main__":
    main()
