"""The CLI boundary: user errors are one line and exit status 2; bugs keep their traceback."""

from __future__ import annotations

import signal
import subprocess

import pytest
from cli import run_cli, start_code
from omegaconf import OmegaConf

from vesselfm.utils.cli import (
    EXIT_INTERRUPTED,
    EXIT_TERMINATED,
    EXIT_USER_ERROR,
    UserError,
    run_guarded,
)


def _raise(err):
    def fn(cfg):
        raise err

    return fn


@pytest.mark.parametrize(
    "err",
    [
        UserError("input=x.nii.gz: not a NIfTI\ndetail"),
        ValueError("bad"),
        FileNotFoundError("gone"),
    ],
)
def test_user_errors_exit_with_one_line(err, capsys, monkeypatch):
    monkeypatch.delenv("VESSELFM_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        run_guarded(_raise(err), OmegaConf.create({}))
    assert info.value.code == EXIT_USER_ERROR
    err_lines = capsys.readouterr().err.strip().splitlines()
    assert len(err_lines) == 1 and err_lines[0].startswith("error: ")


def test_debug_flag_keeps_the_traceback(monkeypatch):
    monkeypatch.setenv("VESSELFM_DEBUG", "1")
    with pytest.raises(UserError):
        run_guarded(_raise(UserError("x")), OmegaConf.create({}))


def test_bugs_are_not_swallowed(monkeypatch):
    monkeypatch.delenv("VESSELFM_DEBUG", raising=False)
    with pytest.raises(KeyError):
        run_guarded(_raise(KeyError("bug")), OmegaConf.create({}))


def test_returns_the_value():
    assert run_guarded(lambda cfg: 3, OmegaConf.create({})) == 3


def test_missing_required_key_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("VESSELFM_DEBUG", raising=False)
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as info:
        run_guarded(lambda cfg: cfg.input, OmegaConf.create({"input": "???"}))
    assert info.value.code == EXIT_USER_ERROR
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: input= is required")


# ------------------------------------------------------------------ Hydra's errors, one line


def _tool(tool: str, *args: str, cwd) -> subprocess.CompletedProcess:
    return run_cli(f"vesselfm.{tool}", *args, cwd=cwd, timeout=120)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("tool", "args", "expected"),
    [
        # a typo in a config option: the options, and the close one
        ("infer", ["input=x.nii.gz", "model=tinyy"], "model=tinyy: no such option; choose one of tiny, vesselfm_base (did you mean model=tiny?)"),
        ("train", ["experiment=phantom_dem"], "did you mean experiment=phantom_demo?"),
        # an unknown key, nested or not
        ("infer", ["input=x.nii.gz", "inference.overlapp=0.3"], "inference.overlapp: no such key in vesselfm.infer's config; did you mean inference.overlap"),
        ("evaluate", ["pred=p", "gt=g", "output=o", "workerz=2"], "workerz: no such key in vesselfm.evaluate's config; did you mean workers?"),
        # new sub-keys of an existing (struct) mapping: Hydra's '+', not a "did you mean" itself
        ("train", ["data.style_ranges={noise: [0.0, 0.05]}"], "data.style_ranges: this override adds keys data.style_ranges does not have yet; prefix it with '+': '+data.style_ranges={noise: [0.0, 0.05]}'"),
        # two typos: the first is named, never Hydra's traceback
        ("evaluate", ["pred=p", "gt=g", "output=o", "fooo=1", "barr=2"], "fooo: no such key in vesselfm.evaluate's config"),
        # paths Hydra's grammar cannot read unquoted
        ("visualise", ["pred=/data/a=b_pred.nii.gz"], "cannot read the override 'pred=/data/a=b_pred.nii.gz'"),
        ("infer", ["input=/data/scan (1).nii.gz"], "quote a value"),
    ],
)  # fmt: skip
def test_hydra_errors_are_one_line_and_exit_2(tmp_path, tool, args, expected):
    result = _tool(tool, *args, cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == EXIT_USER_ERROR, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in lines[0]
    assert list(tmp_path.iterdir()) == []  # no Hydra output folder, no log file


@pytest.mark.slow
def test_quoted_values_and_help_still_reach_hydra(tmp_path):
    result = _tool("infer", "input='/data/scan (1).nii.gz'", "model=tiny", cwd=tmp_path)
    assert result.returncode == EXIT_USER_ERROR
    assert "error: input=/data/scan (1).nii.gz: no such file" in result.stderr  # read whole
    assert _tool("infer", "--help", cwd=tmp_path).returncode == 0


# ------------------------------------------------------------------ Ctrl-C and SIGTERM

_WRITER = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from vesselfm.utils.cli import run_guarded
from vesselfm.utils.io import atomic_path

def work(cfg):
    with atomic_path(Path(cfg.out) / "1_pred.nii.gz") as tmp:
        tmp.write_text("half a file")
        print("writing", flush=True)
        time.sleep(60)

run_guarded(work, OmegaConf.create({"out": sys.argv[1]}))
"""


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "code", "word"),
    [(signal.SIGTERM, EXIT_TERMINATED, "terminated"), (signal.SIGINT, EXIT_INTERRUPTED, "interrupted")],
)  # fmt: skip
def test_a_signal_mid_write_ends_with_one_line_and_no_temporary_file(tmp_path, sig, code, word):
    proc = start_code(
        _WRITER, str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "writing"
    assert [p.name for p in tmp_path.iterdir()]  # the temporary file exists now
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and word in lines[0], err
    assert list(tmp_path.iterdir()) == []  # neither the output nor its temporary file


def test_keyboard_interrupt_in_process_is_one_line(capsys, monkeypatch):
    monkeypatch.delenv("VESSELFM_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        run_guarded(_raise(KeyboardInterrupt()), OmegaConf.create({}))
    assert info.value.code == EXIT_INTERRUPTED
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "interrupted (Ctrl-C)" in lines[0]
