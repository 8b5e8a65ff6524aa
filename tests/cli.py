"""The one way tests start a ``python -m vesselfm.X`` (or ``python -c``) subprocess.

Every run gets the same environment (:func:`cli_env`): the developer's, minus whatever changes
what a user would see on an error or where files go, plus offline switches, so that a test
passes the same with or without ``VESSELFM_DEBUG=1`` or ``VESSELFM_DATA`` set in the shell:

- removed: ``VESSELFM_DEBUG`` and ``HYDRA_FULL_ERROR`` (tracebacks instead of the one-line
  ``error:``), ``VESSELFM_ROOT`` and ``VESSELFM_DATA`` (runs and data outside the test's
  folder), ``OMP_NUM_THREADS`` (``threads=auto`` then resolves from the machine's cores,
  shared among a DDP run's processes, as it does for a user who sets nothing);
- set: ``HF_HUB_OFFLINE=1`` and ``WANDB_MODE=offline`` (nothing reaches the network),
  ``PYTHONWARNINGS=ignore`` (library warnings do not interleave with the lines tests read),
  ``PYTHONUNBUFFERED=1`` (output in order, also when a run is killed), and ``VESSELFM_ROOT``
  to ``cwd`` when one is given (runs and data stay in the test's folder);
- then the test's own ``env`` on top; a value of ``None`` removes that variable.

Subprocess tests are marked ``slow``: each one imports torch and Hydra again (seconds).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

REMOVED = (
    "VESSELFM_DEBUG",
    "HYDRA_FULL_ERROR",
    "VESSELFM_ROOT",
    "VESSELFM_DATA",
    "OMP_NUM_THREADS",
)
FIXED = {
    "HF_HUB_OFFLINE": "1",
    "WANDB_MODE": "offline",
    "PYTHONWARNINGS": "ignore",
    "PYTHONUNBUFFERED": "1",
}

Env = Mapping[str, "str | None"]


def cli_env(env: Env | None = None, cwd: str | Path | None = None) -> dict[str, str]:
    """The environment of every test subprocess (see the module's docstring)."""
    out = {k: v for k, v in os.environ.items() if k not in REMOVED}
    out.update(FIXED)
    if cwd is not None:
        out["VESSELFM_ROOT"] = str(cwd)
    for key, value in (env or {}).items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = str(value)
    return out


def run_cli(
    module: str,
    *args: str,
    env: Env | None = None,
    cwd: str | Path | None = None,
    timeout: float = 300,
    check: bool = False,
    flags: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``python [flags] -m <module> <args>`` under :func:`cli_env`; text output captured.

    ``module`` is written out (``"vesselfm.infer"``, ``"pip"``); ``flags`` go to the interpreter
    (``("-P",)``).
    """
    return _run([*flags, "-m", module, *args], env=env, cwd=cwd, timeout=timeout, check=check)


def run_code(
    code: str,
    *args: str,
    env: Env | None = None,
    cwd: str | Path | None = None,
    timeout: float = 300,
    check: bool = False,
    flags: Sequence[str] = (),
) -> subprocess.CompletedProcess[str]:
    """``python [flags] -c <code> <args>`` under :func:`cli_env`; text output captured."""
    return _run([*flags, "-c", code, *args], env=env, cwd=cwd, timeout=timeout, check=check)


def start_cli(
    module: str, *args: str, env: Env | None = None, cwd: str | Path | None = None, **popen
) -> subprocess.Popen:
    """``python -m <module> <args>`` started under :func:`cli_env`, for tests that signal or
    kill it; ``popen`` goes to :class:`subprocess.Popen` (``stdout=...``, ``text=True``)."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args], env=cli_env(env, cwd), cwd=cwd, **popen
    )


def start_code(
    code: str, *args: str, env: Env | None = None, cwd: str | Path | None = None, **popen
) -> subprocess.Popen:
    """``python -c <code> <args>`` started under :func:`cli_env` (see :func:`start_cli`)."""
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], env=cli_env(env, cwd), cwd=cwd, **popen
    )


def dead_pid() -> int:
    """The id of a process that has exited (for stale-temporary-file tests)."""
    return int(run_code("import os; print(os.getpid())", check=True).stdout)


def _run(
    argv: list[str], env: Env | None, cwd: str | Path | None, timeout: float, check: bool
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *argv],
        cwd=cwd,
        env=cli_env(env, cwd),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=check,
    )


#: ``infer`` overrides for tests: the tiny network, small windows, a 32 x 32 x N prepared grid
#: (seconds on a CPU); add ``model.checkpoint=...`` (or ``=null`` for random weights).
TINY_INFER = (
    "model=tiny",
    "inference.roi_size=[32,32,32]",
    "inference.overlap=0.25",
    "preprocess={in_plane_size: 32}",
    "progress=false",
)
