"""Inference engines for the network alone: torch, ONNX Runtime and OpenVINO, and the export to them.

The sliding window, pre- and post-processing stay in :class:`~vesselfm.inference.SlidingWindowPredictor`;
an engine only maps a window batch ``(B, 1, X, Y, Z)`` of normalised intensities to logits of
the same shape, on the CPU. Pieces:

- :func:`export_onnx`, :func:`onnx_to_openvino`, :func:`quantize_int8`: a network → an ONNX
  file (dynamic window batch and size), an OpenVINO IR (``.xml`` + ``.bin``), an INT8 IR (NNCF
  post-training quantisation on a few prepared windows).
- :func:`export_model`: all of it into ``<output>/<name>.onnx|.xml``, beside ``<name>.json``
  (:func:`write_record`: preprocessing, threshold, source checkpoint and its sha256, precision,
  engine versions, and the check that the exported logits match torch's on a test window).
- :class:`OnnxRuntimeEngine`, :class:`OpenVinoEngine` (:func:`open_engine`): what the predictor
  calls per window batch. OpenVINO's ``INFERENCE_PRECISION_HINT`` is always set from our own
  precision choice (:func:`vesselfm.utils.hardware.resolve_precision`): ``f32`` unless bf16 is
  native and allowed, never OpenVINO's own default (which picks bf16 on CPUs with AMX).
- :class:`ExportedNetwork`: what :func:`vesselfm.models.load_model` returns for
  ``model.checkpoint=<file>.onnx|.xml``.
- :func:`choose_backend`, :func:`cached_export`: ``inference.backend=auto``.

The engines are optional extras (``pip install 'vesselfm[onnx]'`` / ``'vesselfm[openvino]'``);
asking for one that is missing fails with one line naming the extra (:func:`import_engine`).
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vesselfm.utils.errors import UserError

log = logging.getLogger(__name__)

BACKENDS = ("auto", "torch", "onnxruntime", "openvino")
ENGINES = ("onnxruntime", "openvino")
FORMATS = ("onnx", "openvino")
EXPORT_PRECISIONS = ("fp32", "int8")
#: file suffix of an exported model → its format
SUFFIXES = {".onnx": "onnx", ".xml": "openvino"}
#: Python module → the pyproject extra that installs it
EXTRAS = {"onnx": "onnx", "onnxruntime": "onnx", "openvino": "openvino", "nncf": "openvino"}
#: the engine ``inference.backend=auto`` takes on a CPU, best first, where installed. From
#: ``scripts/bench_infer.py`` on a 2-core AVX2 AMD EPYC (README, "python -m vesselfm.export"): OpenVINO
#: beat our channels-last torch path; ONNX Runtime did not, so torch stays ahead of it.
CPU_PREFERENCE = ("openvino",)
INPUT_NAME = "image"
OUTPUT_NAME = "logits"
OPSET = 17
CACHE_ENV = "VESSELFM_EXPORT_CACHE"


# ---------------------------------------------------------------------------- engines installed
def import_engine(module: str, key: str = "inference.backend") -> Any:
    """``import module``, or a :class:`UserError` of one line naming the extra that installs it.

    Args:
        module: ``"onnxruntime"``, ``"openvino"``, ``"onnx"`` or ``"nncf"``.
        key: what asked for it (e.g. ``"inference.backend=openvino"``), for the message.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:
        extra = EXTRAS.get(module, module)
        raise UserError(
            f"{key} needs {module}, which is not installed: pip install 'vesselfm[{extra}]'"
        ) from err


def require(module: str, key: str) -> None:
    """:func:`import_engine`'s check without the import: for NNCF, which only ever runs in a child
    process (:func:`quantize_int8`)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: blocked in sys.modules
        found = False
    if not found:
        extra = EXTRAS.get(module, module)
        raise UserError(
            f"{key} needs {module}, which is not installed: pip install 'vesselfm[{extra}]'"
        )


def installed(module: str) -> bool:
    """Whether ``module`` imports (a broken or blocked install counts as missing)."""
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def exported_format(path: str | os.PathLike[str] | None) -> str | None:
    """``"onnx"`` / ``"openvino"`` for an exported model file, else ``None``."""
    if path is None:
        return None
    return SUFFIXES.get(Path(str(path)).suffix.lower())


def engine_versions(*modules: str) -> dict[str, str]:
    """``{module: version}`` of torch and of the given engines that are installed."""
    versions = {"torch": torch.__version__}
    for module in modules:
        if module == "nncf":  # never imported here (see quantize_int8)
            from importlib.metadata import PackageNotFoundError, version

            try:
                versions[module] = version("nncf")
            except PackageNotFoundError:
                pass
            continue
        try:
            mod = importlib.import_module(module)
        except ImportError:
            continue
        version = getattr(mod, "__version__", None)
        if module == "openvino":
            version = mod.get_version()
        versions[module] = str(version)
    return versions


# ---------------------------------------------------------------------------- engines
class Engine:
    """A compiled network on the CPU: ``engine(window)`` → logits.

    Attributes:
        name: ``"onnxruntime"`` or ``"openvino"``.
        path: the model file.
        precision: what it computes in (``"fp32"``, ``"bf16"``; an INT8 model's quantised layers
            run in INT8 whatever this says).
    """

    name = "engine"

    def __init__(self, path: Path, precision: str) -> None:
        self.path = Path(path)
        self.precision = precision

    def run(self, window: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def __call__(self, window: torch.Tensor) -> torch.Tensor:
        """``(B, 1, X, Y, Z)`` float32 window batch (any device) → float32 logits on the CPU."""
        x = np.ascontiguousarray(window.detach().to("cpu", torch.float32).numpy())
        return torch.from_numpy(self.run(x))

    def describe(self) -> str:
        return f"{self.name} {self.precision} ({self.path.name})"


class OnnxRuntimeEngine(Engine):
    """ONNX Runtime's CPU execution provider on an ``.onnx`` file (fp32)."""

    name = "onnxruntime"

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None) -> None:
        ort = import_engine("onnxruntime", "inference.backend=onnxruntime")
        if precision != "fp32":
            log.info("onnxruntime computes fp32 on a CPU (precision %s not applied)", precision)
        super().__init__(path, "fp32")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def run(self, window: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: window})[0]


class _SignalStack:
    """Keeps the calling thread's alternate signal stack (``sigaltstack``) across OpenVINO calls.

    OpenVINO's CPU plugin (``libopenvino_intel_cpu_plugin.so``, 2026.4) installs its own alternate
    signal stack on the thread that compiles a model, replacing the one Python's faulthandler set,
    and that stack does not stay valid. The next signal with a handler that runs on the alternate
    stack (Python's own handlers do: SIGCHLD once a torch DataLoader with workers has run, SIGINT,
    SIGTERM) then cannot be delivered and the kernel kills the process with SIGSEGV, silently (the
    fault handler needs that stack too). Issue 20: the test suite died this way when a child
    process exited after an OpenVINO compile. Linux only; elsewhere a no-op.
    """

    class _Stack(ctypes.Structure):
        _fields_ = [
            ("ss_sp", ctypes.c_void_p),
            ("ss_flags", ctypes.c_int),
            ("ss_size", ctypes.c_size_t),
        ]

    _libc: Any = None

    def __enter__(self) -> _SignalStack:
        self.saved = None
        if sys.platform.startswith("linux"):
            if _SignalStack._libc is None:
                _SignalStack._libc = ctypes.CDLL(None, use_errno=True)
            saved = self._Stack()
            if _SignalStack._libc.sigaltstack(None, ctypes.byref(saved)) == 0:
                self.saved = saved
        return self

    def __exit__(self, *exc: object) -> None:
        if self.saved is not None:
            current = self._Stack()
            self._libc.sigaltstack(None, ctypes.byref(current))
            if (current.ss_sp, current.ss_size) != (self.saved.ss_sp, self.saved.ss_size):
                if self.saved.ss_flags & 2:  # SS_DISABLE: there was none
                    self.saved.ss_sp, self.saved.ss_size = None, 0
                self._libc.sigaltstack(ctypes.byref(self.saved), None)


class OpenVinoEngine(Engine):
    """OpenVINO's CPU plugin on an IR (``.xml``) or ``.onnx`` file.

    The model is compiled once per window batch shape ``(B, 1, X, Y, Z)``, fully static: OpenVINO
    plans its kernels per shape, and a static batch ran the 128³ window of ``vesselfm_base`` in
    9 % less CPU time than a dynamic one (README, "python -m vesselfm.export"); a run sees one or
    two shapes (the last window batch may be smaller). ``INFERENCE_PRECISION_HINT`` comes from
    ``precision`` (``"fp32"`` → ``f32``, ``"bf16"`` → ``bf16``), ``INFERENCE_NUM_THREADS`` from
    ``threads``, ``PERFORMANCE_HINT`` is ``LATENCY`` (one stream: the predictor calls it with one
    window batch at a time).
    """

    name = "openvino"
    HINTS = {"fp32": "f32", "bf16": "bf16"}

    def __init__(self, path: Path, precision: str = "fp32", threads: int | None = None) -> None:
        ov = import_engine("openvino", "inference.backend=openvino")
        if precision not in self.HINTS:
            raise ValueError(
                f"OpenVINO runs precision fp32 or bf16 on a CPU, got {precision!r}; "
                f"set inference.cpu.precision=auto|fp32|bf16"
            )
        super().__init__(path, precision)
        self.ov = ov
        self.core = ov.Core()
        self.model = self.core.read_model(str(path))
        self.config = {
            # ours, always: OpenVINO would otherwise pick bf16 on its own on CPUs with AMX
            "INFERENCE_PRECISION_HINT": self.HINTS[precision],
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "PERFORMANCE_HINT": "LATENCY",
        }
        self._compiled: dict[tuple[int, ...], Any] = {}

    def compiled(self, shape: tuple[int, ...]) -> Any:
        """The model compiled for window batches of ``shape`` ``(B, 1, X, Y, Z)`` (a spatial
        ``(X, Y, Z)`` means batch 1)."""
        shape = tuple(int(s) for s in shape)
        if len(shape) == 3:
            shape = (1, 1, *shape)
        if shape not in self._compiled:
            model = self.model.clone()
            model.reshape({model.inputs[0]: self.ov.PartialShape(list(shape))})
            with _SignalStack():
                compiled = self.core.compile_model(model, "CPU", self.config)
                self._compiled[shape] = (compiled, compiled.create_infer_request())
        return self._compiled[shape]

    def inference_precision(self, shape: tuple[int, ...]) -> str:
        """The ``INFERENCE_PRECISION_HINT`` the compiled model reports (``"f32"``, ``"bf16"``)."""
        compiled, _ = self.compiled(shape)
        hint = compiled.get_property("INFERENCE_PRECISION_HINT")  # an ov.Type, e.g. f32
        return str(getattr(hint, "to_string", lambda: hint)())

    def run(self, window: np.ndarray) -> np.ndarray:
        _, request = self.compiled(window.shape)
        with _SignalStack():
            request.infer({0: window})
        # the request reuses its output buffer on the next call
        return np.array(request.get_output_tensor(0).data, dtype=np.float32, copy=True)


def open_engine(
    path: str | os.PathLike[str], backend: str, precision: str = "fp32", threads: int | None = None
) -> Engine:
    """An engine for an exported file.

    Args:
        path: ``.onnx`` (either engine) or ``.xml`` (OpenVINO).
        backend: ``"onnxruntime"`` or ``"openvino"``.
        precision: ``"fp32"`` or ``"bf16"`` (OpenVINO's ``INFERENCE_PRECISION_HINT``).
        threads: CPU threads (``None``: torch's).

    Raises:
        UserError: the engine is not installed, or cannot read the file.
    """
    path = Path(path)
    fmt = exported_format(path)
    if backend == "onnxruntime":
        if fmt != "onnx":
            raise UserError(
                f"inference.backend=onnxruntime reads .onnx files, got {path.name}; "
                f"use inference.backend=openvino (or auto) for an OpenVINO .xml"
            )
        return OnnxRuntimeEngine(path, precision, threads)
    if backend == "openvino":
        return OpenVinoEngine(path, precision, threads)
    raise ValueError(f"inference.backend must be one of {ENGINES} for {path.name}, got {backend!r}")


# ---------------------------------------------------------------------------- exported network
def read_record(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The ``<name>.json`` written beside an exported model, or ``{}`` when there is none."""
    record = Path(path).with_suffix(".json")
    if not record.is_file():
        return {}
    try:
        return json.loads(record.read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"cannot read {record} (the exported model's record): {err}") from err


class ExportedNetwork(nn.Module):
    """An exported model (``.onnx``, or OpenVINO ``.xml`` + ``.bin``) as the predictor's network.

    It has no torch parameters; the predictor runs it with an engine
    (``inference.backend=auto|onnxruntime|openvino``) on the CPU. Called directly it runs with
    the first installed engine that reads it, in fp32.

    Attributes:
        path: the model file.
        format: ``"onnx"`` or ``"openvino"``.
        record: its ``<name>.json`` (``{}`` when absent).
        out_channels: the classes it emits, as its record says (1 when it does not: a lumen
            model), as a DynUNet's ``out_channels``
            (:func:`vesselfm.inference.segments.network_classes`).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__()
        self.path = Path(path)
        fmt = exported_format(self.path)
        if fmt is None:
            raise UserError(f"{self.path} is not an exported model (.onnx or .xml)")
        if fmt == "openvino" and not self.path.with_suffix(".bin").is_file():
            raise UserError(
                f"model.checkpoint={self.path}: its weights {self.path.with_suffix('.bin').name} "
                f"are missing beside it; copy the .xml together with its .bin"
            )
        self.format = fmt
        self.record = read_record(self.path)
        self.out_channels = int(self.record.get("num_classes") or 1)
        self._engine: Engine | None = None

    def engines(self) -> tuple[str, ...]:
        """The engines that can read this file, best first."""
        return ("openvino",) if self.format == "openvino" else ("openvino", "onnxruntime")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._engine is None:
            backend = next((e for e in self.engines() if installed(e)), self.engines()[0])
            self._engine = open_engine(self.path, backend)
        return self._engine(x)


def choose_backend(requested: str, device_type: str, network: nn.Module, cacheable: bool) -> str:
    """The engine a run uses: ``"torch"``, ``"onnxruntime"`` or ``"openvino"``.

    ``auto``: on a CPU, the first of :data:`CPU_PREFERENCE` that is installed (for an exported
    file, the first installed engine that reads it), else torch; torch for a network without a
    checkpoint file behind it (``cacheable`` false: nothing to key an export on); on CUDA, torch.

    Raises:
        UserError: torch asked to run an exported file, an engine asked on a GPU, or an engine
            that cannot read the exported file.
    """
    requested = str(requested).strip().lower()
    if requested not in BACKENDS:
        raise ValueError(f"inference.backend must be one of {BACKENDS}, got {requested!r}")
    exported = isinstance(network, ExportedNetwork)
    if exported:
        if requested == "torch":
            raise UserError(
                f"model.checkpoint={network.path} is an exported model, which torch cannot run; "
                f"use inference.backend=auto|{'|'.join(network.engines())}"
            )
        if requested == "auto":
            for engine in network.engines():
                if installed(engine):
                    return engine
            first = network.engines()[-1]
            import_engine(first, f"model.checkpoint={network.path.name}")
        if requested not in network.engines():
            raise UserError(
                f"inference.backend={requested} cannot read {network.path.name}; "
                f"use inference.backend={'|'.join(network.engines())}"
            )
        return requested
    if device_type != "cpu":
        if requested in ENGINES:
            raise UserError(
                f"inference.backend={requested} runs on the CPU, but inference.device is "
                f"{device_type}; set inference.device=cpu or inference.backend=torch"
            )
        return "torch"
    if requested != "auto":
        return requested
    if not cacheable:
        return "torch"
    return next((e for e in CPU_PREFERENCE if installed(e)), "torch")


# ---------------------------------------------------------------------------- export
def export_onnx(
    network: nn.Module,
    path: str | os.PathLike[str],
    window: Sequence[int] = (128, 128, 128),
    opset: int = OPSET,
) -> Path:
    """Write ``network`` (fp32, eval mode) as ONNX: input ``image`` ``(batch, 1, x, y, z)``, output
    ``logits`` of the same shape, every axis but the channel dynamic.

    TorchScript-based exporter: on DynUNet it takes well under a second for the tiny model,
    where ``torch.export``'s takes 15 s, and it writes dynamic spatial axes without constraints.
    """
    path = Path(path)
    example = torch.zeros(1, 1, *(int(s) for s in window))
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    was_training = network.training
    network.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer and deprecation notices, one per layer
            torch.onnx.export(
                network,
                (example,),
                str(path),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                opset_version=int(opset),
            )
    finally:
        network.train(was_training)
    return path


def onnx_to_openvino(onnx_path: str | os.PathLike[str], xml_path: str | os.PathLike[str]) -> Path:
    """Convert an ONNX file into an OpenVINO IR (``.xml`` + ``.bin``), weights kept in fp32."""
    ov = import_engine("openvino", "format=openvino")
    model = ov.Core().read_model(str(onnx_path))
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    return Path(xml_path)


#: NNCF's quantisation, run by :func:`quantize_int8` in a child process: ``argv`` = the fp32 IR, the
#: INT8 IR to write, an ``.npy`` of the calibration windows ``(N, 1, 1, X, Y, Z)``.
_QUANTIZE_CHILD = """
import sys
# NNCF asks torch first whether the model is one of its own: that imports nncf.torch (and torch);
# an OpenVINO IR needs neither (NNCF catches the ImportError and moves on to OpenVINO)
sys.modules["torch"] = None
import warnings
import numpy as np
import openvino as ov
import nncf
xml, out, data = sys.argv[1:4]
windows = np.load(data)
model = ov.Core().read_model(xml)
model.reshape({model.inputs[0]: ov.PartialShape(list(windows.shape[1:]))})
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    quantized = nncf.quantize(model, nncf.Dataset(list(windows)), subset_size=len(windows))
# back to a dynamic window batch and size, as the fp32 export
quantized.reshape({quantized.inputs[0]: ov.PartialShape([-1, 1, -1, -1, -1])})
ov.save_model(quantized, out, compress_to_fp16=False)
"""


def quantize_int8(
    xml_path: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
    windows: Sequence[np.ndarray],
) -> Path:
    """NNCF post-training quantisation of an OpenVINO IR to INT8, calibrated on ``windows``.

    NNCF runs in a child process (the same Python, torch blocked there): called on an OpenVINO
    model it still imports its torch backend (``nncf.torch``) and leaves a thread pool running
    in the process that calls it. (It was a suspect for issue 20's SIGSEGV, but the cause was
    OpenVINO's signal stack, :class:`_SignalStack`; the child process keeps the caller clean.)

    Args:
        xml_path: the fp32 IR.
        out_path: the INT8 IR to write (``.xml``; its ``.bin`` beside).
        windows: prepared, normalised windows, each ``(1, 1, X, Y, Z)`` float32, all one size.

    Raises:
        UserError: no windows, NNCF not installed, or the quantisation failed (its last line).
    """
    import_engine("openvino", "precision=int8")
    require("nncf", "precision=int8")
    if not windows:
        raise UserError(
            "precision=int8 needs calibration windows; set calibration= or calibration_cases>0"
        )
    out_path = Path(out_path)
    data = out_path.with_name(f".{out_path.stem}.calibration.npy")
    np.save(data, np.stack([np.asarray(w, dtype=np.float32) for w in windows]))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _QUANTIZE_CHILD, str(xml_path), str(out_path), str(data)],
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        data.unlink(missing_ok=True)
    if proc.returncode != 0 or not out_path.is_file():
        last = (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        raise UserError(f"INT8 quantisation (NNCF) failed: {last}")
    return out_path


def compare_logits(network: nn.Module, engine: Engine, window: np.ndarray) -> dict[str, float]:
    """Torch fp32 (NCDHW, no channels-last view) against ``engine`` on one window.

    Returns:
        ``{"max_abs_logit_diff", "sign_agreement"}``: the largest absolute logit difference, and
        the fraction of voxels on the same side of 0 (the mask at threshold 0.5).
    """
    x = torch.from_numpy(np.ascontiguousarray(window, dtype=np.float32))
    with torch.inference_mode(), torch.autocast("cpu", enabled=False):
        ref = network(x)
    if isinstance(ref, list | tuple):
        ref = ref[0]
    ref = ref.float().numpy()
    got = engine(x).numpy()
    return {
        "max_abs_logit_diff": float(np.abs(got - ref).max()),
        "sign_agreement": float(np.mean((got >= 0) == (ref >= 0))),
    }


def write_record(path: str | os.PathLike[str], record: Mapping[str, Any]) -> Path:
    """``record`` as indented JSON at ``path``, written atomically."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str) + "\n")
    os.replace(tmp, path)
    return path


def model_files(path: str | os.PathLike[str]) -> list[Path]:
    """The files of an exported model: ``.onnx``, or ``.xml`` + ``.bin``; then its ``.json``."""
    path = Path(path)
    files = [path] + ([path.with_suffix(".bin")] if path.suffix == ".xml" else [])
    return [*files, path.with_suffix(".json")]


def export_model(
    network: nn.Module,
    output_dir: str | os.PathLike[str],
    name: str,
    fmt: str = "onnx",
    precision: str = "fp32",
    window: Sequence[int] = (128, 128, 128),
    calibration: Sequence[np.ndarray] = (),
    check_window: np.ndarray | None = None,
    tolerance: float | None = 0.05,
    record: Mapping[str, Any] | None = None,
    opset: int = OPSET,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Export ``network`` into ``output_dir`` and check it against torch.

    Writes ``<name>.onnx`` (``fmt="onnx"``) or ``<name>.xml`` + ``<name>.bin``
    (``fmt="openvino"``), and ``<name>.json``: ``record`` plus ``format``, ``precision``,
    ``engines`` (versions), ``input`` and ``check``. Everything is written in a temporary folder
    first and moved in at the end, so a failed export leaves nothing behind.

    Args:
        network: the torch network (fp32 weights).
        output_dir: where the files go (created).
        name: the file stem, e.g. the model's name.
        fmt: ``"onnx"`` or ``"openvino"``.
        precision: ``"fp32"``, or ``"int8"`` (OpenVINO only; NNCF on ``calibration``).
        window: the window size of the trace (the exported model takes any size) and of the
            check.
        calibration: prepared windows ``(1, 1, *window)`` for INT8.
        check_window: ``(1, 1, X, Y, Z)`` window for the check (default: seeded uniform noise).
        tolerance: largest allowed absolute logit difference for fp32 (``None``: report only;
            INT8 is always report-only: its quality is measured by ``scripts/bench_infer.py``).
        record: what to record (preprocessing, threshold, source checkpoint, ...).
        opset: the ONNX opset.
        overwrite: replace existing files of the same name.

    Returns:
        ``{"path", "record", "files", "check"}``.

    Raises:
        UserError: bad format/precision, a missing engine, files that exist (without
            ``overwrite``), or an fp32 export whose logits differ from torch's beyond
            ``tolerance``.
    """
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if precision not in EXPORT_PRECISIONS:
        raise ValueError(f"precision must be one of {EXPORT_PRECISIONS}, got {precision!r}")
    if precision == "int8" and fmt != "openvino":
        raise UserError("precision=int8 is written by OpenVINO's NNCF: set format=openvino")
    import_engine("onnx", f"format={fmt}")
    engine_name = "openvino" if fmt == "openvino" else "onnxruntime"
    import_engine(engine_name, f"format={fmt}")
    if precision == "int8":
        require("nncf", "precision=int8")
    output_dir = Path(output_dir)
    suffix = ".xml" if fmt == "openvino" else ".onnx"
    target = output_dir / f"{name}{suffix}"
    existing = [p for p in model_files(target) if p.exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} exists; choose another output= or set overwrite=true")
    output_dir.mkdir(parents=True, exist_ok=True)
    window = tuple(int(s) for s in window)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=f".{name}.export-") as tmp:
        tmp = Path(tmp)
        onnx_path = export_onnx(network, tmp / f"{name}.onnx", window, opset)
        path = onnx_path
        if fmt == "openvino":
            fp32_xml = onnx_to_openvino(onnx_path, tmp / f"{name}.fp32.xml")
            path = fp32_xml
            if precision == "int8":
                path = quantize_int8(fp32_xml, tmp / f"{name}.int8.xml", calibration)
        seconds = time.perf_counter() - t0
        if check_window is None:
            check_window = np.random.default_rng(0).random((1, 1, *window), dtype=np.float32)
        engine = open_engine(path, engine_name, "fp32")
        check = compare_logits(network, engine, check_window)
        check["engine"] = engine_name
        check["window"] = list(check_window.shape[2:])
        check["tolerance"] = None if precision == "int8" else tolerance
        log.info(
            "exported %s (%s %s) in %.1f s; on a %s window the largest logit difference from "
            "torch is %.2g, %.5f of the voxels on the same side of the threshold",
            target.name,
            fmt,
            precision,
            seconds,
            "x".join(map(str, check["window"])),
            check["max_abs_logit_diff"],
            check["sign_agreement"],
        )
        if check["tolerance"] is not None and check["max_abs_logit_diff"] > tolerance:
            raise UserError(
                f"the exported model's logits differ from torch's by up to "
                f"{check['max_abs_logit_diff']:.3g} (> check_tolerance={tolerance}); nothing written"
            )
        del engine
        from vesselfm.inference.segments import network_classes

        full = {
            **dict(record or {}),
            "name": name,
            "num_classes": network_classes(network),  # 1: lumen; 15: ImageCAS-X segments
            "format": fmt,
            "precision": precision,
            "file": target.name,
            "engines": engine_versions(
                "onnx", engine_name, *(["nncf"] if precision == "int8" else [])
            ),
            "onnx_opset": int(opset),
            "input": {
                "name": INPUT_NAME,
                "shape": ["batch", 1, "x", "y", "z"],
                "dtype": "float32",
                "output": OUTPUT_NAME,
            },
            "check": check,
            "export_seconds": round(seconds, 2),
        }
        write_record(tmp / f"{name}.json", full)
        sources = model_files(path)
        for src, dst in zip(sources, model_files(target), strict=True):
            if src.suffix == ".json":
                src = tmp / f"{name}.json"
            os.replace(src, dst)
    return {"path": target, "record": full, "files": model_files(target), "check": check}


# ---------------------------------------------------------------------------- the cache for auto
def cache_root(override: str | os.PathLike[str] | None = None) -> Path:
    """Where ``inference.backend=auto`` keeps its exports: ``override``, else
    ``$VESSELFM_EXPORT_CACHE``, else ``$XDG_CACHE_HOME/vesselfm/exports`` (default
    ``~/.cache/vesselfm/exports``)."""
    if override:
        return Path(str(override)).expanduser()
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "vesselfm" / "exports"


def weights_key(network: nn.Module) -> str:
    """sha256 of the network's structure and weights (names, shapes, dtypes, bytes): the same
    weights give the same key whichever file they came from; changed weights a new one."""
    digest = hashlib.sha256(repr(network).encode())
    for name, tensor in network.state_dict().items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        digest.update(t.view(torch.uint8).numpy().data if t.numel() else b"")
    return digest.hexdigest()


def cached_export(
    network: nn.Module,
    fmt: str,
    cache: str | os.PathLike[str] | None = None,
    record: Mapping[str, Any] | None = None,
    window: Sequence[int] = (128, 128, 128),
) -> Path:
    """The fp32 export of ``network`` in the cache (:func:`cache_root`), made on first use.

    ``<cache>/<weights sha256[:16]>-<fmt>/model.onnx|.xml``; a concurrent first use (several
    processes of one run) exports once per process into a temporary folder, and the first to
    finish moves it in.
    """
    key = weights_key(network)
    root = cache_root(cache)
    folder = root / f"{key[:16]}-{fmt}"
    path = folder / ("model.xml" if fmt == "openvino" else "model.onnx")
    if path.is_file() and path.with_suffix(".json").is_file():
        log.info("exported model from the cache: %s", path)
        return path
    root.mkdir(parents=True, exist_ok=True)
    log.info("exporting the network once for %s into %s", fmt, folder)
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{key[:16]}-") as tmp:
        export_model(
            network,
            tmp,
            "model",
            fmt,
            window=window,
            record={**dict(record or {}), "weights_sha256": key},
        )
        try:
            os.replace(tmp, folder)
        except OSError:  # another process was first
            if not path.is_file():
                raise
        else:
            os.makedirs(tmp, exist_ok=True)  # TemporaryDirectory removes it on exit
    return path


__all__ = [
    "BACKENDS",
    "ENGINES",
    "Engine",
    "ExportedNetwork",
    "OnnxRuntimeEngine",
    "OpenVinoEngine",
    "cache_root",
    "cached_export",
    "choose_backend",
    "export_model",
    "export_onnx",
    "import_engine",
    "onnx_to_openvino",
    "open_engine",
    "quantize_int8",
    "weights_key",
]
