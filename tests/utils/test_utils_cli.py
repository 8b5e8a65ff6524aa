"""The CLI boundary: user errors are one line and exit status 2; bugs keep their traceback."""

from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from vesselfm.utils.cli import EXIT_USER_ERROR, UserError, run_guarded


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
