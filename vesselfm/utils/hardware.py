"""Precision and threads chosen from the hardware the run is on.

Every precision key accepts ``auto`` (``trainer.precision``, ``inference.precision``,
``inference.cpu.precision``): bf16 where the hardware computes it natively, else fp32 on a CPU
and fp16 on a GPU. On a CPU without native bf16 (AVX2-only, or AVX-512 without the BF16
extension) oneDNN emulates bf16, and a training step runs about 40x slower than in fp32; that is
what ``auto`` avoids. An explicit ``bf16`` there still runs, with one warning.

The CPU probe honours the AVX2 emulation of an AVX-512 machine
(``ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2``): bf16 counts as native only when
``torch.backends.cpu.get_cpu_capability()`` reports an AVX-512 level, ``ONEDNN_MAX_CPU_ISA`` does
not cap oneDNN below ``AVX512_CORE_BF16``, and the CPU has AVX512-BF16 or AMX.

``threads`` (every entrypoint's top-level key) sets torch's intra-op threads. ``auto`` is the
number of cores this process may use (its CPU affinity, capped by a cgroup CPU quota as in a
container): it depends on the machine, never on its load at start-up, so the same seed gives the
same metrics run after run.

Hydra- and Lightning-free: the predictor, the training entrypoint and the benchmarks share it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vesselfm.utils.errors import UserError

log = logging.getLogger(__name__)

# oneDNN's ISA levels (ONEDNN_MAX_CPU_ISA, formerly DNNL_MAX_CPU_ISA) at which bf16 matrix work is
# native: AVX512_CORE_BF16 and every level above it. Below it (SSE41 ... AVX512_CORE_VNNI) oneDNN
# emulates bf16. A value we do not know counts as capped: wrongly assuming native bf16 costs up
# to 40x, wrongly assuming fp32 about 2x.
ONEDNN_BF16_LEVELS = frozenset(
    {
        "ALL",
        "DEFAULT",
        "AVX512_CORE_BF16",
        "AVX512_CORE_FP16",
        "AVX512_CORE_AMX",
        "AVX512_CORE_AMX_FP16",
        "AVX10_1_512",
        "AVX10_1_512_AMX",
        "AVX10_1_512_AMX_FP16",
        "AVX10_2_512",
        "AVX10_2_512_AMX_2",
    }
)

# the precision names of the inference keys, and Lightning's trainer values per resolved name
INFERENCE_PRECISIONS = ("auto", "bf16", "fp16", "fp32")
TRAINER_AUTO = {"bf16": "bf16-mixed", "fp16": "16-mixed", "fp32": "32-true"}
# how much slower emulated bf16 ran than fp32 on a 2-core AVX2 AMD EPYC (issue #14): a tiny-model
# training step 43 s against 1.0 s, a 128^3 window of vesselfm_base over 5 min against about 10 s
EMULATED_BF16_SLOWDOWN = "10-40x"


@dataclass(frozen=True)
class Bf16Support:
    """Whether a device computes bf16 natively, and the reason in words for the log.

    Attributes:
        native: ``True`` where bf16 matrix work runs in hardware.
        reason: e.g. ``"this CPU has no native bf16 (AVX2)"``.
    """

    native: bool
    reason: str


def cpu_bf16_support() -> Bf16Support:
    """Whether this CPU computes bf16 natively, from torch's own probes (see the module)."""
    capability = str(torch.backends.cpu.get_cpu_capability())
    if not capability.upper().startswith("AVX512"):
        return Bf16Support(False, f"this CPU has no native bf16 ({capability})")
    for variable in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA"):
        cap = os.environ.get(variable, "").strip().upper()
        if cap and cap not in ONEDNN_BF16_LEVELS:
            return Bf16Support(False, f"oneDNN is capped below AVX512_CORE_BF16 ({variable}={cap})")
    if torch.cpu._is_amx_tile_supported():
        return Bf16Support(True, f"this CPU has AMX ({capability})")
    if torch.cpu._is_avx512_bf16_supported():
        return Bf16Support(True, f"this CPU has AVX512-BF16 ({capability})")
    return Bf16Support(
        False, f"this CPU has no native bf16 ({capability} without AVX512-BF16 or AMX)"
    )


def cuda_bf16_support() -> Bf16Support:
    """Whether the current CUDA GPU computes bf16 natively (compute capability 8.0 and up).

    Raises:
        UserError: CUDA is not available (a GPU trainer or device asked for on a machine
            without one).
    """
    if not torch.cuda.is_available():
        raise UserError(
            "a CUDA GPU was asked for (trainer=gpu, trainer.accelerator=gpu or "
            "inference.device=cuda) but CUDA is not available here; use trainer=cpu or "
            "inference.device=cpu"
        )
    name = torch.cuda.get_device_name()
    if torch.cuda.is_bf16_supported(including_emulation=False):
        return Bf16Support(True, f"{name} supports bf16")
    return Bf16Support(False, f"{name} has no native bf16")


def bf16_support(device_type: str) -> Bf16Support:
    """:func:`cpu_bf16_support` or :func:`cuda_bf16_support` for ``"cpu"``/``"cuda"``."""
    if device_type == "cpu":
        return cpu_bf16_support()
    if device_type == "cuda":
        return cuda_bf16_support()
    return Bf16Support(False, f"bf16 is not probed on {device_type}")


def _choose(value: str, device_type: str, key: str, names: dict[str, Any]) -> Any:
    """``names[...]`` for ``value`` (``"auto"`` resolved, the choice logged with its reason);
    a bf16 value on a CPU that emulates bf16 is kept, with one warning."""
    if value == "auto":
        support = bf16_support(device_type)
        chosen = "bf16" if support.native else ("fp16" if device_type == "cuda" else "fp32")
        log.info("%s auto -> %s: %s", key, names[chosen], support.reason)
        return names[chosen]
    if "bf16" in value and device_type == "cpu":
        support = cpu_bf16_support()
        if not support.native:
            log.warning(
                "%s=%s but %s: bf16 is emulated and runs about %s slower than fp32; "
                "set %s=auto (or %s)",
                key,
                value,
                support.reason,
                EMULATED_BF16_SLOWDOWN,
                key,
                names["fp32"],
            )
    return names.get(value, value)


def resolve_precision(requested: str, device_type: str, key: str = "inference.precision") -> str:
    """The precision a run uses on ``device_type``: ``"bf16"``, ``"fp16"`` or ``"fp32"``.

    ``auto``: bf16 where the device computes it natively; else fp32 on a CPU and fp16 on a GPU
    (fp32 on other devices). The choice is logged with its reason (callers resolve once per
    run). An explicit ``bf16`` on a CPU without native bf16 is kept, with one warning naming the
    slowdown and the override.

    Args:
        requested: ``"auto"``, ``"bf16"``, ``"fp16"`` or ``"fp32"``.
        device_type: ``"cpu"``, ``"cuda"``, ...
        key: the config key, for the messages.

    Raises:
        ValueError: ``requested`` is not one of the names above.
    """
    value = str(requested).strip().lower()
    if value not in INFERENCE_PRECISIONS:
        raise ValueError(f"{key} must be one of {INFERENCE_PRECISIONS}, got {requested!r}")
    return _choose(value, device_type, key, {"bf16": "bf16", "fp16": "fp16", "fp32": "fp32"})


def resolve_trainer_precision(precision: Any, accelerator: Any) -> Any:
    """``trainer.precision`` as Lightning takes it, with ``auto`` resolved for the accelerator.

    ``auto`` → ``"bf16-mixed"`` where the device computes bf16 natively, else ``"32-true"`` on a
    CPU and ``"16-mixed"`` on a GPU (logged, e.g. ``trainer.precision auto -> 32-true: this CPU
    has no native bf16 (AVX2)``). Explicit values are returned unchanged; a bf16 value on a CPU
    without native bf16 is warned about.

    Args:
        precision: the ``trainer.precision`` value (``"auto"``, ``"32-true"``, ``"bf16-mixed"``,
            ``16``, ...).
        accelerator: ``trainer.accelerator`` (``"auto"``, ``"cpu"``, ``"gpu"``, ``"cuda"``, ...).
    """
    value = str(precision).strip().lower()
    chosen = _choose(value, _accelerator_device(accelerator), "trainer.precision", TRAINER_AUTO)
    return chosen if value == "auto" else precision


def _accelerator_device(accelerator: Any) -> str:
    name = str(accelerator or "auto").strip().lower()
    if name in {"gpu", "cuda"}:
        return "cuda"
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def emulated_note(precision: str, device_type: str) -> str | None:
    """``"not run: bf16 is emulated on this CPU"`` for a bf16 precision (``"bf16"``,
    ``"bf16-mixed"``, ...) the device does not compute natively; ``None`` where it may run
    (``"auto"`` included: it never picks an emulated precision). The benchmarks print it
    instead of running a row for hours."""
    if "bf16" not in str(precision).lower() or bf16_support(device_type).native:
        return None
    return f"not run: bf16 is emulated on this {'GPU' if device_type == 'cuda' else device_type.upper()}"


def describe_device(device_type: str) -> str:
    """The machine in words, for the figures a benchmark prints (CPU model, capability, cores)."""
    support = bf16_support(device_type)
    bf16 = "native bf16" if support.native else "no native bf16"
    if device_type == "cuda":
        return f"{torch.cuda.get_device_name()} (CUDA {torch.version.cuda}, {bf16})"
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        import platform

        model = platform.processor() or model
    return (
        f"{model}, {torch.backends.cpu.get_cpu_capability()}, {bf16}, {available_cpus()} cores "
        f"for this process, {torch.get_num_threads()} torch threads"
    )


# ---------------------------------------------------------------------------- memory
CPU_MEMORY_MODES = ("reuse", "release")
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)


def apply_cpu_memory(mode: Any, key: str = "cpu_memory") -> bool:
    """``cpu_memory=reuse`` (train's and infer's default): glibc's malloc keeps freed memory for
    the next allocation instead of handing it back to the kernel.

    By default glibc serves every block over 32 MiB with its own ``mmap`` and returns it with
    ``munmap`` when torch frees it. A sliding window over a full-size scan allocates and frees
    feature maps of hundreds of MiB per window, and every page of each new block is faulted in
    and zeroed by the kernel again: on the 2-core AVX2 box a 512x512x250 scan with ``model=tiny``
    took 6.3 million page faults, 25 s of its 51 s in the kernel. ``reuse`` sets ``M_MMAP_MAX=0``
    (no block gets its own mapping) and ``M_TRIM_THRESHOLD`` to 2 GiB (the heap's free top is
    kept), the tuning PyTorch's CPU performance guide gets from jemalloc/tcmalloc: 35 s for that
    scan, 0.25 million faults, peak memory 1.47 GiB against 1.32 GiB (README, "Precision and
    threads"). ``release``: glibc's defaults. Memory freed is then kept by the process until it
    ends, which a CLI run does; a long-lived process that wants it back uses ``release``.

    Returns:
        Whether the tuning is on (``False`` for ``release``, or where the C library is not
        glibc: musl and macOS have no ``mallopt``).

    Raises:
        ValueError: ``mode`` is neither ``reuse`` nor ``release``.
    """
    mode = str(mode).strip().lower()
    if mode not in CPU_MEMORY_MODES:
        raise ValueError(f"{key} must be one of {list(CPU_MEMORY_MODES)}, got {mode!r}")
    if mode == "release":
        return False
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        log.debug("%s=reuse: no glibc mallopt here; the C library's defaults stay", key)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    done = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    log.debug("%s=reuse: freed memory kept for reuse (M_MMAP_MAX=0): %s", key, done)
    return done


# ---------------------------------------------------------------------------- threads
def _cgroup_cpu_quota() -> float | None:
    """Cores allowed by a cgroup CPU quota (v2 ``cpu.max``, v1 ``cfs_quota_us``), or ``None``."""
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            return int(quota) / int(period)
        return None
    except (OSError, ValueError):
        pass
    try:
        quota = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text())
        period = int(Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cpus() -> int:
    """The cores this process may use: its CPU affinity, capped by a cgroup CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, max(1, math.ceil(quota)))
    return max(1, cores)


def _auto_threads() -> tuple[int, str]:
    """``threads=auto``: ``OMP_NUM_THREADS`` where the user (or torchrun) set it, else the cores
    this process may use, shared with the other processes of a DDP run on this machine."""
    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    if omp.isdigit() and int(omp) > 0:
        return int(omp), "OMP_NUM_THREADS"
    cores = available_cpus()
    local = os.environ.get("LOCAL_WORLD_SIZE", "").strip()
    if local.isdigit() and int(local) > 1:
        return max(
            1, cores // int(local)
        ), f"the cores this process may use, over {local} processes"
    return cores, "the cores this process may use"


def resolve_threads(threads: Any, key: str = "threads") -> int:
    """``threads`` as a count: ``auto`` (or ``None``) → ``OMP_NUM_THREADS`` where set, else
    :func:`available_cpus` (divided among a DDP run's ``LOCAL_WORLD_SIZE`` processes).

    Raises:
        ValueError: neither ``auto`` nor a positive integer.
    """
    if threads is None or str(threads).strip().lower() == "auto":
        return _auto_threads()[0]
    try:
        count = int(threads)
    except (TypeError, ValueError):
        count = 0
    if count < 1 or str(threads).strip() != str(count):
        raise ValueError(f"{key} must be auto or a positive integer, got {threads!r}")
    return count


def describe_threads(threads: Any, key: str = "threads") -> str:
    """``threads=auto -> 2 torch threads (the cores this process may use)``, for the log."""
    count = resolve_threads(threads, key)
    how = "as set" if str(count) == str(threads).strip() else _auto_threads()[1]
    return f"{key}={threads} -> {count} torch threads ({how})"


def apply_threads(threads: Any, key: str = "threads", level: int = logging.INFO) -> int:
    """Set torch's intra-op threads from ``threads`` (see :func:`resolve_threads`) and log it
    at ``level`` (the entrypoints log it at DEBUG; train and infer say it at INFO)."""
    count = resolve_threads(threads, key)
    torch.set_num_threads(count)
    log.log(level, describe_threads(threads, key))
    return count
