"""Precision and threads from the hardware, with torch's probes replaced by the test.

Nothing here depends on how fast bf16 is: the probes are stubs, and the real-probe tests only
read flags.
"""

from __future__ import annotations

import logging
import os
import sys

import pytest
import torch
from cli import run_code
from torch import nn

from vesselfm.inference import SlidingWindowPredictor
from vesselfm.utils import hardware
from vesselfm.utils.hardware import (
    apply_cpu_memory,
    apply_threads,
    available_cpus,
    cpu_bf16_support,
    describe_threads,
    resolve_precision,
    resolve_threads,
    resolve_trainer_precision,
)


def fake_cuda(monkeypatch: pytest.MonkeyPatch, bf16: bool) -> list[dict]:
    """Make torch report one CUDA GPU with or without native bf16; returns the probe's calls."""
    calls: list[dict] = []

    def is_bf16_supported(**kwargs: bool) -> bool:
        calls.append(kwargs)
        # with emulation allowed every GPU would say yes: only the native answer may be used
        return bf16 or kwargs.get("including_emulation", True)

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "Fake GPU")
    return calls


# ----------------------------------------------------------------------------- CPU
def test_auto_is_fp32_on_a_cpu_without_native_bf16_and_says_why(fake_cpu, caplog):
    fake_cpu("AVX2")
    with caplog.at_level(logging.INFO, logger=hardware.__name__):
        assert resolve_precision("auto", "cpu", "inference.cpu.precision") == "fp32"
    assert "inference.cpu.precision auto -> fp32: this CPU has no native bf16 (AVX2)" in caplog.text


@pytest.mark.parametrize(
    ("avx512_bf16", "amx", "expected"),
    [(True, False, "bf16"), (False, True, "bf16"), (True, True, "bf16"), (False, False, "fp32")],
)
def test_auto_on_avx512_needs_avx512_bf16_or_amx(fake_cpu, caplog, avx512_bf16, amx, expected):
    fake_cpu("AVX512", avx512_bf16=avx512_bf16, amx=amx)
    with caplog.at_level(logging.INFO, logger=hardware.__name__):
        assert resolve_precision("auto", "cpu") == expected
    assert f"inference.precision auto -> {expected}: " in caplog.text


def test_aten_capped_at_avx2_is_not_native_even_with_bf16_flags(fake_cpu):
    # ATEN_CPU_CAPABILITY=avx2 on an AVX512-BF16 machine: ATen runs AVX2 kernels
    fake_cpu("AVX2", avx512_bf16=True, amx=True)
    assert resolve_precision("auto", "cpu") == "fp32"


@pytest.mark.parametrize(
    ("variable", "cap", "native"),
    [
        ("ONEDNN_MAX_CPU_ISA", "AVX2", False),
        ("ONEDNN_MAX_CPU_ISA", "avx512_core_vnni", False),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE", False),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", True),
        ("ONEDNN_MAX_CPU_ISA", "AVX512_CORE_AMX", True),
        ("ONEDNN_MAX_CPU_ISA", "ALL", True),
        ("ONEDNN_MAX_CPU_ISA", "NOT_AN_ISA", False),  # unknown: not trusted to be native
        ("DNNL_MAX_CPU_ISA", "AVX2", False),  # oneDNN's older name for the variable
    ],
)
def test_onednn_capped_below_avx512_core_bf16_is_not_native(
    monkeypatch, fake_cpu, variable, cap, native
):
    fake_cpu("AVX512", avx512_bf16=True)
    monkeypatch.setenv(variable, cap)
    support = cpu_bf16_support()
    assert support.native is native
    if not native:
        assert f"{variable}={cap.upper()}" in support.reason


def test_explicit_bf16_on_an_emulating_cpu_runs_with_one_warning(fake_cpu, caplog):
    fake_cpu("AVX2")
    with caplog.at_level(logging.INFO, logger=hardware.__name__):
        assert resolve_precision("bf16", "cpu", "inference.cpu.precision") == "bf16"
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    message = warning.getMessage()
    assert "emulated" in message and "10-40x slower" in message
    assert "inference.cpu.precision=auto" in message


@pytest.mark.parametrize("explicit", ["fp32", "bf16"])
def test_explicit_choices_win_without_a_warning_where_they_are_native(fake_cpu, caplog, explicit):
    fake_cpu("AVX512", avx512_bf16=True)
    with caplog.at_level(logging.INFO, logger=hardware.__name__):
        assert resolve_precision(explicit, "cpu") == explicit
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_explicit_fp32_wins_on_a_native_bf16_cpu(fake_cpu):
    fake_cpu("AVX512", amx=True)
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_trainer_precision("32-true", "cpu") == "32-true"


def test_unknown_precision_names_the_key_and_the_choices():
    with pytest.raises(ValueError, match=r"inference\.cpu\.precision must be one of .*'auto'"):
        resolve_precision("half", "cpu", "inference.cpu.precision")


# ----------------------------------------------------------------------------- CUDA
@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16"), (False, "fp16")])
def test_auto_on_cuda_is_bf16_by_capability_else_fp16(monkeypatch, caplog, bf16, expected):
    calls = fake_cuda(monkeypatch, bf16)
    with caplog.at_level(logging.INFO, logger=hardware.__name__):
        assert resolve_precision("auto", "cuda") == expected
    assert calls and all(c == {"including_emulation": False} for c in calls)
    assert f"inference.precision auto -> {expected}: Fake GPU" in caplog.text


@pytest.mark.parametrize(("bf16", "expected"), [(True, "bf16-mixed"), (False, "16-mixed")])
@pytest.mark.parametrize("accelerator", ["gpu", "cuda", "auto"])
def test_trainer_auto_on_cuda(monkeypatch, bf16, expected, accelerator):
    fake_cuda(monkeypatch, bf16)
    assert resolve_trainer_precision("auto", accelerator) == expected


@pytest.mark.parametrize(("avx512_bf16", "expected"), [(True, "bf16-mixed"), (False, "32-true")])
@pytest.mark.parametrize("accelerator", ["cpu", "auto"])
def test_trainer_auto_on_a_cpu(monkeypatch, fake_cpu, avx512_bf16, expected, accelerator):
    fake_cpu("AVX512", avx512_bf16=avx512_bf16)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_trainer_precision("auto", accelerator) == expected


def test_trainer_auto_logs_the_lightning_value_and_why(fake_cpu, caplog):
    fake_cpu("AVX2")
    with caplog.at_level(logging.INFO, logger=hardware.__name__):
        assert resolve_trainer_precision("auto", "cpu") == "32-true"
    assert "trainer.precision auto -> 32-true: this CPU has no native bf16 (AVX2)" in caplog.text


def test_trainer_explicit_values_stay_as_written(fake_cpu, caplog):
    fake_cpu("AVX2")
    assert resolve_trainer_precision("16-mixed", "gpu") == "16-mixed"
    assert resolve_trainer_precision(32, "cpu") == 32
    with caplog.at_level(logging.WARNING, logger=hardware.__name__):
        assert resolve_trainer_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert "trainer.precision=bf16-mixed but this CPU has no native bf16 (AVX2)" in caplog.text
    assert "trainer.precision=auto" in caplog.text


# ----------------------------------------------------------------------------- the real probe
def _probe_in_subprocess(env: dict[str, str]) -> str:
    code = (
        "import torch; from vesselfm.utils.hardware import cpu_bf16_support as s; "
        "print(torch.backends.cpu.get_cpu_capability(), s().native)"
    )
    return run_code(code, env=env, timeout=120, check=True).stdout.strip()


@pytest.mark.slow
def test_the_real_probe_follows_the_avx2_emulation_variables():
    # the settings an AVX-512 machine uses to behave like an AVX2 one: never native there
    out = _probe_in_subprocess({"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"})
    capability, native = out.split()
    assert native == "False"
    assert capability in {"AVX2", "DEFAULT", "NO AVX"}


# ----------------------------------------------------------------------------- the predictor
class _AutocastProbe(nn.Module):
    """Records autocast's state inside the forward pass; returns zeros of the window's shape."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[bool, torch.dtype]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
        return x * self.weight


@pytest.mark.parametrize(("avx512_bf16", "expected"), [(True, True), (False, False)])
def test_predictor_autocasts_bf16_only_where_the_cpu_is_native(fake_cpu, avx512_bf16, expected):
    fake_cpu("AVX512", avx512_bf16=avx512_bf16)
    net = _AutocastProbe()
    predictor = SlidingWindowPredictor(net, roi_size=8, device="cpu", cpu={"channels_last": False})
    assert predictor.cpu.precision == "auto"
    predictor.predict_volume(torch.rand(1, 1, 8, 8, 8))
    enabled, dtype = net.seen[-1]
    assert enabled is expected
    if expected:
        assert dtype == torch.bfloat16
    assert predictor.resolved_precision(torch.device("cpu")) == ("bf16" if expected else "fp32")


def test_predictor_fp32_switches_a_surrounding_bf16_autocast_off(fake_cpu):
    # validation inside a bf16-mixed training step predicts as infer does on an AVX2 CPU
    fake_cpu("AVX2")
    net = _AutocastProbe()
    predictor = SlidingWindowPredictor(net, roi_size=8, device="cpu", cpu={"channels_last": False})
    with torch.autocast("cpu", dtype=torch.bfloat16):
        predictor.predict_volume(torch.rand(1, 1, 8, 8, 8))
    assert net.seen[-1][0] is False


# ----------------------------------------------------------------------------- threads
def test_threads_auto_is_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert resolve_threads("auto") == resolve_threads(None) == available_cpus()
    assert available_cpus() <= len(os.sched_getaffinity(0))
    # a container's CPU quota caps it (1.5 cores -> 2 threads)
    monkeypatch.setattr(hardware, "_cgroup_cpu_quota", lambda: 1.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert available_cpus() == 2
    monkeypatch.setattr(hardware, "_cgroup_cpu_quota", lambda: None)
    assert available_cpus() == 16
    # the processes of a DDP run on one machine share the cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert resolve_threads("auto") == 4
    assert describe_threads("auto").endswith("(the cores this process may use, over 4 processes)")


def test_threads_auto_follows_omp_num_threads_where_set(monkeypatch):
    # the README's old advice for a busy box, and what torchrun sets for its ranks
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)))
    assert resolve_threads("auto") == 1
    assert describe_threads("auto") == "threads=auto -> 1 torch threads (OMP_NUM_THREADS)"
    assert resolve_threads(3) == 3  # an explicit count still wins


@pytest.mark.parametrize("bad", [0, -1, "two", 1.5, "1.5"])
def test_threads_must_be_auto_or_a_positive_count(bad):
    with pytest.raises(ValueError, match=r"threads must be auto or a positive integer"):
        resolve_threads(bad)


def test_a_gpu_asked_for_without_cuda_is_one_user_error(fake_cpu, monkeypatch):
    from vesselfm.utils.errors import UserError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(UserError, match=r"CUDA is not available here; use trainer=cpu"):
        resolve_trainer_precision("auto", "gpu")
    with pytest.raises(UserError, match=r"CUDA is not available"):
        resolve_precision("auto", "cuda")


def test_apply_threads_sets_torch_and_logs_the_choice(caplog, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    before = torch.get_num_threads()
    try:
        with caplog.at_level(logging.INFO, logger=hardware.__name__):
            assert apply_threads(1) == 1
            assert torch.get_num_threads() == 1
        assert "threads=1 -> 1 torch threads (as set)" in caplog.text
        assert describe_threads("auto").startswith("threads=auto -> ")
        assert describe_threads("auto").endswith("torch threads (the cores this process may use)")
    finally:
        torch.set_num_threads(before)


_FAULTS = """
import resource, sys, torch
from vesselfm.utils.hardware import apply_cpu_memory
print(apply_cpu_memory(sys.argv[1]))
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):  # the first blocks come from the kernel either way
    torch.ones(32 * 2**20).sum()
before = faults()
for _ in range(16):  # 128 MiB allocated, touched and freed, as a sliding window does
    torch.ones(32 * 2**20).sum()
print(faults() - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_cpu_memory_reuse_stops_the_page_faults_of_large_blocks():
    """With glibc's defaults each freed 128 MiB tensor is unmapped and the next one is faulted in
    page by page again (32768 faults each); ``reuse`` keeps the memory for the next one. (Where
    the heap puts torch's small allocations beside the block varies from run to run: a fresh
    environment re-faulted up to 3 of 8 blocks under ``reuse``, hence 16 and a factor of 2.)"""
    runs = {}
    for mode in ("release", "reuse"):
        done = run_code(_FAULTS, mode, check=True)
        applied, faults = done.stdout.split()
        runs[mode] = (applied, int(faults))
    assert runs["release"][0] == "False" and runs["reuse"][0] == "True"
    assert runs["release"][1] > 16 * 30_000  # every block faulted in again
    assert runs["reuse"][1] < runs["release"][1] // 2


def test_cpu_memory_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match=r"cpu_memory must be one of \['reuse', 'release'\]"):
        apply_cpu_memory("fast")
