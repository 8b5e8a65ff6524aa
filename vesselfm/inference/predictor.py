"""``SlidingWindowPredictor``: one predictor for validation, test and ``python -m vesselfm.infer``.

Read, preprocess, predict and export are separate steps (as in nnU-Net's predictor):

- :meth:`SlidingWindowPredictor.predict_volume`: a prepared, normalised ``(B, 1, X, Y, Z)``
  tensor → sigmoid probabilities, with MONAI's sliding window, autocast and TTA. Training's
  validation and test call this.
- :meth:`SlidingWindowPredictor.predict_array`: a raw scan on its own grid → probabilities on
  the same grid: resample to the prepared grid and percentile-normalise exactly as
  ``prepare`` does (:mod:`vesselfm.data.preprocessing`), predict, resample the probabilities
  back.
- :meth:`SlidingWindowPredictor.predict_file`: a NIfTI file → ``<case>_pred.nii.gz`` (and the
  probability map / STL), thresholded and post-processed, written atomically.

Engines. ``backend`` (``inference.backend``) picks what runs each window batch: torch (on the
CPU through the channels-last view, :mod:`~vesselfm.inference.channels_last`), ONNX Runtime or
OpenVINO (:mod:`~vesselfm.inference.backends`); ``auto`` takes the fastest installed engine on a
CPU, exporting the weights once into a cache, and torch on CUDA. The network may also be an
exported file (:class:`~vesselfm.inference.backends.ExportedNetwork`), which always runs on the CPU.

Devices. ``device`` is where the network runs; ``sw_device`` is where the full-volume output
is stitched (``"cpu"`` for volumes too large for the GPU). MONAI's
``sliding_window_inference`` names these the other way round (its ``sw_device`` runs the
windows, its ``device`` holds the output); the mapping is done here.
"""

from __future__ import annotations

import copy
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vesselfm.data.preprocessing import (
    PreprocessConfig,
    intensity_range,
    normalize_intensity,
    resample_image,
    resample_probabilities,
    target_shape,
)
from vesselfm.inference.postprocess import PostprocessConfig, postprocess_mask
from vesselfm.inference.tta import LogitMerger, TTAConfig, augmentations, intensity_transform
from vesselfm.io.frames import spacing_from_affine
from vesselfm.utils.config import checked_fields
from vesselfm.utils.errors import UserError
from vesselfm.utils.hardware import INFERENCE_PRECISIONS, resolve_precision

log = logging.getLogger(__name__)

PRECISIONS: dict[str, torch.dtype | None] = {
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": None,
}
CPU_PRECISIONS = ("auto", "bf16", "fp32")
BLEND_MODES = ("constant", "gaussian")
PADDING_MODES = ("constant", "reflect", "replicate", "circular")
_OOM_ERRORS: tuple[type[BaseException], ...] = tuple(
    {getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError}
)


@dataclass(frozen=True)
class CPUConfig:
    """Settings used instead of ``precision``/``sw_batch_size`` when the network runs on a CPU.

    Attributes:
        precision: ``"auto"``, ``"fp32"`` or ``"bf16"`` autocast. bf16 is 2-4× faster on CPUs
            with AVX512-BF16/AMX, but moves logits by ~0.1, flipping voxels whose logit is near
            0; on CPUs without them it is emulated and 10-40× slower than fp32. ``"auto"``:
            bf16 where the CPU computes it natively, else fp32
            (:func:`vesselfm.utils.hardware.resolve_precision`).
        sw_batch_size: windows per forward pass. Batching gains nothing on a CPU and each 128³
            window of ``vesselfm_base`` needs about 2 GB of activations.
        threads: ``torch.set_num_threads`` for the run, restored after it (``None``: the
            process's setting, which the entrypoints set from their ``threads`` key).
        channels_last: run the network channels-last through
            :func:`~vesselfm.inference.channels_last.channels_last_view` (same weights, same
            windows; 1.3-1.5x faster per window in fp32 and bf16 on an AVX-512 CPU, logits equal
            up to float rounding).
    """

    precision: str = "auto"
    sw_batch_size: int = 1
    threads: int | None = None
    channels_last: bool = True

    def __post_init__(self) -> None:
        if self.precision not in CPU_PRECISIONS:
            raise ValueError(
                f"inference.cpu.precision must be one of {CPU_PRECISIONS}, got {self.precision!r}"
            )
        if int(self.sw_batch_size) < 1:
            raise ValueError(f"inference.cpu.sw_batch_size must be >= 1, got {self.sw_batch_size}")
        if self.threads is not None and int(self.threads) < 1:
            raise ValueError(f"inference.cpu.threads must be >= 1 or null, got {self.threads}")

    @classmethod
    def from_mapping(cls, cfg: Mapping[str, Any] | CPUConfig | None) -> CPUConfig:
        if isinstance(cfg, CPUConfig):
            return cfg
        return cls(**checked_fields(cls, cfg, "inference.cpu"))


@dataclass(frozen=True)
class WindowRunner:
    """What runs a volume's sliding windows (:meth:`SlidingWindowPredictor.window_runner`).

    Attributes:
        device: where the windows run.
        forward: ``(B, 1, *roi_size)`` float32 windows on ``device`` -> ``(B, C, *roi_size)``
            float32 logits: the predictor's engine, or its network with autocast to the
            resolved precision, channels-last on a CPU, deep supervision's first head.
        batch: windows per call (``inference.cpu.sw_batch_size`` on a CPU, else
            ``inference.sw_batch_size``).
    """

    device: torch.device
    forward: Callable[[torch.Tensor], torch.Tensor]
    batch: int


def _parse_device(device: str | torch.device, key: str) -> torch.device:
    """A concrete device for ``inference.<key>``; CUDA only where it exists."""
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(
            f"inference.{key} must be auto, cpu, cuda or cuda:N, got {device!r}"
        ) from err
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UserError(
            f"inference.{key}={device} but CUDA is not available here; use inference.{key}=auto or cpu"
        )
    return resolved


def resolve_device(device: str | torch.device | None) -> torch.device | None:
    """``"auto"`` → CUDA when available, else CPU; ``None`` stays ``None``; anything else as given."""
    if device is None:
        return None
    if isinstance(device, str) and device.strip().lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return _parse_device(device, "device")


def network_device(network: nn.Module) -> torch.device:
    """The device of the network's first parameter (or buffer); CPU for a parameter-free module."""
    for tensor in network.parameters():
        return tensor.device
    for tensor in network.buffers():
        return tensor.device
    return torch.device("cpu")


def _triple(value: int | Sequence[int], key: str) -> tuple[int, int, int]:
    values = (
        (int(value),) * 3 if isinstance(value, int | np.integer) else tuple(int(v) for v in value)
    )
    if len(values) != 3 or min(values) < 1:
        raise ValueError(f"inference.{key} must be one positive int or three, got {value!r}")
    return values  # type: ignore[return-value]


class SlidingWindowPredictor:
    """Whole-volume vessel probabilities from a 3D network, by MONAI's sliding window.

    Args:
        network: ``(B, 1, X, Y, Z)`` normalised intensities → ``(B, 1, X, Y, Z)`` logits.
        roi_size: window size in voxels of the prepared grid.
        sw_batch_size: windows per forward pass (on a GPU; see ``cpu``).
        overlap: fraction of a window shared with its neighbour, in [0, 1).
        mode: window blending, ``"constant"`` or ``"gaussian"``.
        sigma_scale: Gaussian blending width relative to ``roi_size``.
        padding_mode: how windows reaching past the volume are padded (MONAI).
        device: where the network runs. ``None``: where its parameters are, never moving it
            (inside Lightning). ``"auto"``: the network's device when that is a GPU, else CUDA
            when available, else CPU. Anything else (``"cpu"``, ``"cuda:1"``): there; the network
            is moved on first use.
        sw_device: where the full-volume output is stitched: ``None``/``"auto"`` = ``device``,
            ``"cpu"`` for volumes too large for the GPU.
        precision: autocast on CUDA, ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"fp32"`` (off).
            ``"auto"``: bf16 where the GPU computes it natively, else fp16.
        threshold: probability at or above which a voxel is vessel.
        tta: a :class:`~vesselfm.inference.tta.TTAConfig` or its mapping (default: off).
        postprocess: a :class:`~vesselfm.inference.postprocess.PostprocessConfig` or its
            mapping (default: off).
        preprocess: the resampling and normalisation the network was trained with (default:
            ``PreprocessConfig()``, vesselFM's 256×256×N and percentiles 1-99).
        cpu: a :class:`CPUConfig` or its mapping, used when the network runs on a CPU.
        progress: show a progress bar per sliding window pass.
        oom_retry: on CUDA out-of-memory, retry with half the window batch, then with the
            output stitched on the CPU, before giving up with a message naming the keys.
        backend: what runs the network per window batch: ``"torch"``, ``"onnxruntime"``,
            ``"openvino"`` (CPU engines; the network is exported once into ``export_cache``
            unless it is an exported file already) or ``"auto"``: on a CPU the fastest
            installed engine (:data:`~vesselfm.inference.backends.CPU_PREFERENCE`, else torch)
            for weights loaded from a file or an exported model, torch on CUDA.
        export_cache: where ``backend`` keeps its exports (``None``: ``$VESSELFM_EXPORT_CACHE``,
            else ``~/.cache/vesselfm/exports``), one folder per hash of the weights.

    Example:
        >>> predictor = SlidingWindowPredictor(load_model(cfg.model), device="auto")  # doctest: +SKIP
        >>> predictor.predict_file("scan.nii.gz", "out/")  # doctest: +SKIP
        {'case': 'scan', 'pred': PosixPath('out/scan_pred.nii.gz'), ...}
    """

    def __init__(
        self,
        network: nn.Module,
        roi_size: int | Sequence[int] = (128, 128, 128),
        sw_batch_size: int = 4,
        overlap: float = 0.5,
        mode: str = "gaussian",
        sigma_scale: float = 0.125,
        padding_mode: str = "constant",
        device: str | torch.device | None = None,
        sw_device: str | torch.device | None = None,
        precision: str = "auto",
        threshold: float = 0.5,
        tta: TTAConfig | Mapping[str, Any] | None = None,
        postprocess: PostprocessConfig | Mapping[str, Any] | None = None,
        preprocess: PreprocessConfig | None = None,
        cpu: CPUConfig | Mapping[str, Any] | None = None,
        progress: bool = False,
        oom_retry: bool = True,
        backend: str = "torch",
        export_cache: str | os.PathLike[str] | None = None,
    ) -> None:
        from vesselfm.inference.backends import BACKENDS

        self.network = network
        self.roi_size = _triple(roi_size, "roi_size")
        if int(sw_batch_size) < 1:
            raise ValueError(f"inference.sw_batch_size must be >= 1, got {sw_batch_size}")
        self.sw_batch_size = int(sw_batch_size)
        if not 0.0 <= float(overlap) < 1.0:
            raise ValueError(f"inference.overlap must be in [0, 1), got {overlap}")
        self.overlap = float(overlap)
        if mode not in BLEND_MODES:
            raise ValueError(f"inference.mode must be one of {BLEND_MODES}, got {mode!r}")
        self.mode = mode
        self.sigma_scale = float(sigma_scale)
        if padding_mode not in PADDING_MODES:
            raise ValueError(
                f"inference.padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}"
            )
        self.padding_mode = padding_mode
        if precision not in INFERENCE_PRECISIONS:
            raise ValueError(
                f"inference.precision must be one of {INFERENCE_PRECISIONS}, got {precision!r}"
            )
        self.precision = precision
        self._resolved_precision: dict[str, str] = {}
        if not 0.0 <= float(threshold) <= 1.0:
            raise ValueError(f"inference.threshold must be in [0, 1], got {threshold}")
        self.threshold = float(threshold)
        self.tta = TTAConfig.from_mapping(tta)
        self.postprocess = PostprocessConfig.from_mapping(postprocess)
        if preprocess is not None and not isinstance(preprocess, PreprocessConfig):
            preprocess = PreprocessConfig.from_mapping(preprocess)
        self.preprocess = preprocess or PreprocessConfig()
        self.cpu = CPUConfig.from_mapping(cpu)
        self.progress = bool(progress)
        self.oom_retry = bool(oom_retry)
        self._device_request = self._check_device(device, "device")
        self._sw_device_request = self._check_device(sw_device, "sw_device")
        self._cpu_stitch_fallback = False
        backend = str(backend).strip().lower()
        if backend not in BACKENDS:
            raise ValueError(f"inference.backend must be one of {BACKENDS}, got {backend!r}")
        self.backend = backend
        self.export_cache = export_cache
        self._resolved_backend: dict[str, str] = {}
        self._engine: tuple[tuple[Any, ...], Any] | None = None

    # ------------------------------------------------------------------ construction
    @staticmethod
    def _check_device(device: str | torch.device | None, key: str) -> str | torch.device | None:
        if device is None or (isinstance(device, str) and device.strip().lower() in {"auto", ""}):
            return None if device is None or key == "sw_device" else "auto"
        return _parse_device(device, key)

    @classmethod
    def from_config(
        cls,
        network: nn.Module,
        cfg: Mapping[str, Any],
        preprocess: PreprocessConfig | None = None,
        **overrides: Any,
    ) -> SlidingWindowPredictor:
        """Build from the ``inference`` config group (a plain mapping).

        Args:
            network: the network (see the class).
            cfg: ``configs/inference/*.yaml`` as a dict; missing keys take the defaults, unknown
                keys raise, listing the allowed ones. Keys without ``device``/``sw_device`` run
                where the network is.
            preprocess: the training preprocessing (e.g. from the checkpoint).
            **overrides: keyword arguments that replace config values (e.g. ``progress=True``).
        """
        import inspect

        cfg = dict(cfg or {})
        cfg.update(overrides)
        allowed = [
            p
            for p in inspect.signature(cls.__init__).parameters
            if p not in {"self", "network", "preprocess"}
        ]
        unknown = sorted(set(cfg) - set(allowed))
        if unknown:
            raise ValueError(f"unknown inference keys {unknown}; allowed: {allowed}")
        return cls(network, preprocess=preprocess, **cfg)

    # ------------------------------------------------------------------ devices
    def compute_device(self) -> torch.device:
        """Where the network runs for the next prediction (see ``device``)."""
        current = network_device(self.network)
        request = self._device_request
        if self._exported():
            if request not in (None, "auto") and torch.device(request).type != "cpu":
                raise UserError(
                    f"model.checkpoint={self.network.path.name} is an exported model, which "
                    f"runs on the CPU; set inference.device=cpu (or auto)"
                )
            return torch.device("cpu")
        if request is None:
            return current
        if request == "auto":
            if current.type != "cpu":
                return current
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(request)

    def describe(self) -> str:
        """One line for a run's log: device, threshold, TTA and post-processing."""
        tta = f"{len(self.tta)} passes" if self.tta.enabled else "off"
        device = self.compute_device()
        return (
            f"device {device} | backend {self.resolved_backend(device)} | threshold {self.threshold:.3f} | TTA {tta} | "
            f"post-processing {'on' if self.postprocess.enabled else 'off'}"
        )

    def stitch_device(self, compute: torch.device) -> torch.device:
        """Where the full-volume output accumulates."""
        if self._cpu_stitch_fallback:
            return torch.device("cpu")
        return compute if self._sw_device_request is None else torch.device(self._sw_device_request)

    def place_network(self, device: torch.device) -> None:
        """Move the network to ``device``, unless this predictor leaves it where it is
        (``device=None``, :meth:`in_place`)."""
        if network_device(self.network) != device:
            if self._device_request is None:  # never move a network we were told to leave alone
                return
            log.info("moving the network to %s", device)
            self.network.to(device)

    def window_batch(self, device: torch.device) -> int:
        """Windows per forward pass on ``device``: ``cpu.sw_batch_size`` on a CPU, else
        ``sw_batch_size`` (lowered by an out-of-memory retry)."""
        return int(self.cpu.sw_batch_size) if device.type == "cpu" else self.sw_batch_size

    def in_place(self) -> SlidingWindowPredictor:
        """A shallow copy of this predictor that runs the network where it is and never moves
        it (``device=None``): a DDP rank's network is where Lightning put it
        (``cuda:<local rank>``), not at ``inference.device``."""
        pinned = copy.copy(self)
        pinned._device_request = None
        return pinned

    @contextmanager
    def window_runner(self) -> Iterator[WindowRunner]:
        """The network ready to run windows for a caller that stitches them itself (segment
        models: :func:`vesselfm.inference.segments.predict_segments`): on
        :meth:`compute_device` (:meth:`place_network`), in eval mode, with
        ``inference.cpu.threads`` torch threads on a CPU; the threads and the training mode are
        restored on exit. Run the windows under ``torch.inference_mode()``.

        Yields:
            A :class:`WindowRunner`: the device, the window function (:meth:`window_fn`) and
            the window batch (:meth:`window_batch`).
        """
        device = self.compute_device()
        self.place_network(device)
        forward = self.window_fn(device)
        previous = torch.get_num_threads()
        if device.type == "cpu" and self.cpu.threads:
            torch.set_num_threads(int(self.cpu.threads))
        was_training = self.network.training
        self.network.eval()
        try:
            yield WindowRunner(device, forward, self.window_batch(device))
        finally:
            self.network.train(was_training)
            torch.set_num_threads(previous)

    def resolved_precision(self, device: torch.device) -> str:
        """``"bf16"``, ``"fp16"`` or ``"fp32"``: the precision key for ``device`` with ``auto``
        resolved for its hardware (logged once per predictor and device type)."""
        if device.type not in self._resolved_precision:
            key, value = (
                ("inference.cpu.precision", self.cpu.precision)
                if device.type == "cpu"
                else ("inference.precision", self.precision)
            )
            self._resolved_precision[device.type] = resolve_precision(value, device.type, key)
        return self._resolved_precision[device.type]

    def _autocast(self, device: torch.device) -> Any:
        # fp32 switches autocast off explicitly: inside a Lightning step under bf16-mixed or
        # 16-mixed, a bare nullcontext would keep the trainer's autocast and validation would not
        # predict the way infer does.
        dtype = PRECISIONS[self.resolved_precision(device)]
        if dtype is None:
            return torch.autocast(device.type, enabled=False)
        return torch.autocast(device.type, dtype=dtype)

    # ------------------------------------------------------------------ engines
    def _exported(self) -> bool:
        from vesselfm.inference.backends import ExportedNetwork

        return isinstance(self.network, ExportedNetwork)

    def resolved_backend(self, device: torch.device) -> str:
        """``"torch"``, ``"onnxruntime"`` or ``"openvino"``: ``backend`` with ``auto`` resolved
        for ``device`` (logged once per predictor and device type)."""
        if device.type not in self._resolved_backend:
            from vesselfm.inference.backends import choose_backend

            # auto exports only weights that came from a file (load_model records it): random
            # or still-training weights would fill the cache with one export per run
            cacheable = getattr(self.network, "source_checkpoint", None) is not None
            chosen = choose_backend(self.backend, device.type, self.network, cacheable)
            if self.backend == "auto":
                log.info("inference.backend auto -> %s on %s", chosen, device.type)
            self._resolved_backend[device.type] = chosen
        return self._resolved_backend[device.type]

    def engine(self, device: torch.device) -> Any:
        """The engine that runs the windows (``None`` for torch), built on first use: the
        exported file, or the network exported once into the cache."""
        backend = self.resolved_backend(device)
        if backend == "torch":
            return None
        from vesselfm.inference.backends import cached_export, import_engine, open_engine

        import_engine(backend, f"inference.backend={backend}")  # one line naming the extra
        precision = self.resolved_precision(device)
        threads = torch.get_num_threads()
        if self._exported():
            path = self.network.path
        else:
            fmt = "openvino" if backend == "openvino" else "onnx"
            record = {
                "model_name": type(self.network).__name__,
                "source_checkpoint": getattr(self.network, "source_checkpoint", None),
                "preprocess": self.preprocess.to_dict(),
                "threshold": self.threshold,
            }
            path = cached_export(self.network, fmt, self.export_cache, record, self.roi_size)
        key = (str(path), backend, precision, threads)
        if self._engine is None or self._engine[0] != key:
            self._engine = (key, open_engine(path, backend, precision, threads))
            log.info("windows run on %s", self._engine[1].describe())
        return self._engine[1]

    # ------------------------------------------------------------------ prediction
    def window_fn(self, device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
        """The function that runs one window batch on ``device``: the engine (:meth:`engine`),
        or the network with autocast to :meth:`resolved_precision`, channels-last on a CPU
        (``cpu.channels_last``) and deep supervision's first head; float32 logits out."""
        engine = self.engine(device)
        if engine is not None:
            return engine  # (B, 1, X, Y, Z) float32 -> logits, on the CPU
        network = self.network
        if device.type == "cpu" and self.cpu.channels_last:
            from vesselfm.inference.channels_last import channels_last_view

            network = channels_last_view(network)  # shares the weights: built per pass
        autocast = self._autocast

        def forward(window: torch.Tensor) -> torch.Tensor:
            with autocast(device):
                out = network(window)
            if isinstance(out, list | tuple):  # deep supervision: the full-resolution head
                out = out[0]
            return out.float().contiguous()

        return forward

    def _sliding_window(
        self, image: torch.Tensor, device: torch.device, stitch: torch.device, batch: int
    ) -> torch.Tensor:
        from monai.inferers import sliding_window_inference

        # MONAI: its sw_device runs the windows, its device holds the stitched output.
        return sliding_window_inference(
            inputs=image,
            roi_size=self.roi_size,
            sw_batch_size=batch,
            predictor=self.window_fn(device),
            overlap=self.overlap,
            mode=self.mode,
            sigma_scale=self.sigma_scale,
            padding_mode=self.padding_mode,
            cval=0.0,
            sw_device=device,
            device=stitch,
            progress=self.progress,
        )

    def _predict_logits(
        self, image: torch.Tensor, device: torch.device, stitch: torch.device, batch: int
    ) -> torch.Tensor:
        # The whole volume goes to the GPU once when it is stitched there; otherwise MONAI
        # moves one window batch at a time.
        x = image.to(stitch, dtype=torch.float32)
        x = intensity_transform(x, self.tta)
        if not self.tta.enabled:
            return self._sliding_window(x, device, stitch, batch)
        merger = LogitMerger(self.tta.merge)
        for aug in augmentations(x.shape[2:], self.tta):
            merger.add(aug.inverse(self._sliding_window(aug.forward(x), device, stitch, batch)))
        return merger.result()

    def predict_volume(self, image: torch.Tensor) -> torch.Tensor:
        """Sigmoid probabilities of a prepared, normalised volume.

        Args:
            image: ``(B, 1, X, Y, Z)`` float intensities already on the prepared grid and
                normalised (e.g. to [0, 1]), on any device.

        Returns:
            ``(B, 1, X, Y, Z)`` float32 probabilities in [0, 1] (TTA merged if configured), on
            the stitching device (``sw_device``).

        Raises:
            ValueError: ``image`` is not ``(B, 1, X, Y, Z)``.
            UserError: CUDA ran out of memory even after the automatic retries.
        """
        if image.ndim != 5 or image.shape[1] != 1:
            raise ValueError(
                f"predict_volume expects a (B, 1, X, Y, Z) tensor, got shape {tuple(image.shape)}"
            )
        device = self.compute_device()
        self.place_network(device)
        previous_threads = torch.get_num_threads()
        if device.type == "cpu" and self.cpu.threads:
            torch.set_num_threads(int(self.cpu.threads))
        try:
            while True:
                stitch = self.stitch_device(device)
                batch = self.window_batch(device)
                try:
                    with torch.inference_mode():
                        logits = self._predict_logits(image, device, stitch, batch)
                    # Outside inference mode, so callers get a normal tensor they may modify in place.
                    return torch.sigmoid(logits.float())
                except _OOM_ERRORS as err:
                    if not self._recover_from_oom(device, stitch, batch, err):
                        raise
        finally:
            torch.set_num_threads(previous_threads)

    def _recover_from_oom(
        self, device: torch.device, stitch: torch.device, batch: int, err: BaseException
    ) -> bool:
        """Lower the window batch, then stitch on the CPU; ``False`` when nothing is left to try."""
        if device.type != "cuda":
            return False
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self.oom_retry and batch > 1:
            self.sw_batch_size = max(1, batch // 2)
            log.warning(
                "CUDA out of memory with inference.sw_batch_size=%d; retrying with %d",
                batch,
                self.sw_batch_size,
            )
            return True
        if self.oom_retry and stitch.type == "cuda":
            self._cpu_stitch_fallback = True
            log.warning(
                "CUDA out of memory stitching the volume on the GPU; retrying with inference.sw_device=cpu"
            )
            return True
        raise UserError(
            f"CUDA out of memory with inference.roi_size={list(self.roi_size)}, "
            f"inference.sw_batch_size={batch}, inference.sw_device={stitch.type}: lower inference.sw_batch_size, "
            f"set inference.sw_device=cpu, or use a smaller inference.roi_size ({str(err).splitlines()[0][:120]})"
        ) from err

    def preprocess_array(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """A raw scan ``(X, Y, Z)`` (HU) → the prepared grid, normalised (float32), as ``prepare`` does."""
        spacing = spacing_from_affine(affine)
        shape = target_shape(image.shape, spacing, self.preprocess)
        resampled = resample_image(image, shape)
        # Percentiles of the resampled image, as prepare computes them.
        value_range = intensity_range(resampled, self.preprocess)
        return np.asarray(
            normalize_intensity(resampled, value_range, self.preprocess), dtype=np.float32
        )

    def predict_array(self, image: np.ndarray, affine: np.ndarray) -> np.ndarray:
        """Probabilities for a raw scan on its own grid.

        Args:
            image: ``(X, Y, Z)`` intensities (HU for CT) on the scan's native grid.
            affine: its 4×4 voxel-to-world matrix (mm), for the voxel spacing.

        Returns:
            ``(X, Y, Z)`` float32 probabilities in [0, 1] on the same grid: the network's output
            on the prepared grid, resampled back before any thresholding.
        """
        image = np.asarray(image)
        if image.ndim != 3:
            raise ValueError(f"predict_array expects an (X, Y, Z) volume, got shape {image.shape}")
        prepared = self.preprocess_array(image, affine)
        prob = self.predict_volume(torch.from_numpy(prepared)[None, None])[0, 0]
        del prepared
        return resample_probabilities(prob.float().cpu(), image.shape)

    def binarize(self, prob: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0)) -> np.ndarray:
        """``prob >= threshold``, then post-processing (at the scan's ``spacing``), as uint8 0/1."""
        return postprocess_mask(np.asarray(prob) >= self.threshold, self.postprocess, spacing)

    def predict_file(
        self,
        path: str | os.PathLike[str],
        output_dir: str | os.PathLike[str],
        save_prob: bool = False,
        overwrite: bool = False,
        save_mesh: bool = False,
        case: str | None = None,
        return_arrays: bool = False,
        output_format: str | None = None,
    ) -> dict[str, Any]:
        """Segment one scan (NIfTI, NRRD or MetaImage) and write its outputs into ``output_dir``.

        Writes ``<case>_pred.nii.gz`` (or ``.nrrd``/``.mha``/``.seg.nrrd`` by ``output_format``,
        one file per format listed; uint8 0/1, the input's shape and voxels, its header when in
        its format), and with ``save_prob`` ``<case>_prob.<same>`` (float32; beside a
        ``.seg.nrrd``, ``.nii.gz`` for NIfTI input, else ``.nrrd``), with ``save_mesh``
        ``<case>_pred.stl``
        (mm, through the affine). Each file is written atomically; the mask comes last, so a
        run cut short is redone next time.

        Args:
            path: the scan (``.nii``/``.nii.gz``, ``.nrrd``, ``.mha``/``.mhd``).
            output_dir: the folder for the outputs (created if missing).
            save_prob: also write the probability map.
            overwrite: redo a case whose outputs all exist, and replace existing outputs that
                vesselfm did not write. Otherwise a case whose outputs all exist and are in the
                folder's output record (:mod:`vesselfm.utils.outputs`) is skipped, and one with an
                output that is not (or was changed since) is refused before it is predicted.
            save_mesh: also write an STL surface of the mask.
            case: the case id (default: from the file name, ``1.img.nii.gz`` → ``1``).
            return_arrays: add the ``"prob"``/``"mask"`` arrays, their ``"spacing"`` and the
                ``"scan"`` (:class:`~vesselfm.io.Volume`, for their grid) under ``"arrays"``.
            output_format: ``nifti``, ``nrrd``, ``mha`` or ``seg.nrrd``, or a list of them;
                ``None``: the input's own (:func:`vesselfm.io.output_formats_for`).

        Returns:
            ``{"case", "input", "format", "formats", "pred", ["prob"], ["mesh"], "preds",
            "files", "skipped", "shape", "timings"}``: ``pred``/``prob`` are the first
            format's, ``preds`` every format's mask, ``files`` every output (a case is skipped
            only when all exist); whether the case was skipped, and seconds per step
            (``read``, ``predict``, ``postprocess``, ``write``, ``total``).

        Raises:
            UserError: the scan is not a readable 3D NIfTI, the mesh writer is unavailable, an
                output name is too long for the file system, or an existing output was not
                written by vesselfm (without ``overwrite``).
        """
        from vesselfm.io import (
            case_id,
            check_case_id,
            check_case_outputs,
            format_of,
            output_formats_for,
            output_paths,
            read_volume,
            write_like,
        )
        from vesselfm.utils.outputs import written_from

        path = Path(path)
        case = check_case_id(path, case or case_id(path, "image"), "input")
        formats = output_formats_for(path, output_format)
        per_format = [output_paths(output_dir, case, f, format_of(path)) for f in formats]
        paths = per_format[0]
        preds = [p["pred"] for p in per_format]
        # a seg.nrrd and a nifti output share one <case>_prob.nii.gz: written once
        probs = list(dict.fromkeys(p["prob"] for p in per_format)) if save_prob else []
        targets = [*preds, *probs] + ([paths["mesh"]] if save_mesh else [])
        wanted = ["pred"] + (["prob"] if save_prob else []) + (["mesh"] if save_mesh else [])
        result: dict[str, Any] = {
            "case": case,
            "input": path,
            "format": formats[0],
            "formats": list(formats),
            "skipped": False,
            **{k: paths[k] for k in wanted},
            "preds": preds,
            "files": targets,
        }
        # before any work: names that fit, and nothing overwritten that vesselfm did not write
        if check_case_outputs(targets, overwrite, source=path):
            log.info(
                "%s: outputs exist in %s, skipped (overwrite=true redoes them)", case, output_dir
            )
            result["skipped"] = True
            return result
        writer = mesh_writer() if save_mesh else None

        t0 = time.perf_counter()
        scan = read_volume(path, dtype=np.float32)
        t1 = time.perf_counter()
        prob = self.predict_array(scan.array, scan.affine)
        t2 = time.perf_counter()
        spacing = scan.spacing
        mask = self.binarize(prob, spacing)
        t3 = time.perf_counter()
        with written_from(path):  # the record says which input each output was made from
            if probs:  # float32 in [0, 1]
                clipped = np.clip(np.asarray(prob, np.float32), 0.0, 1.0)
                for target in probs:
                    write_like(clipped, scan, target)
            if writer is not None:
                writer(mask, scan.affine, paths["mesh"])
            binary = (np.asarray(mask) > 0).astype(np.uint8)  # uint8 0/1
            for target in preds:
                write_like(binary, scan, target)
        t4 = time.perf_counter()
        result["shape"] = scan.shape
        result["timings"] = {
            "read": t1 - t0,
            "predict": t2 - t1,
            "postprocess": t3 - t2,
            "write": t4 - t3,
            "total": t4 - t0,
        }
        if return_arrays:
            result["arrays"] = {"prob": prob, "mask": mask, "spacing": spacing, "scan": scan}
        return result


def mesh_writer() -> Any:
    """``vesselfm.viz.mask_to_stl``, or a ``UserError`` when the visualisation package lacks it."""
    try:
        from vesselfm.viz import mask_to_stl
    except ImportError as err:
        raise UserError(
            "save_mesh=true needs vesselfm.viz.mask_to_stl, which this installation does not have; "
            "run without save_mesh or update vesselfm"
        ) from err
    return mask_to_stl
