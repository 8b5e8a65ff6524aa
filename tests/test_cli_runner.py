"""The test suite's subprocess runner (``tests/cli.py``): one environment for every CLI test."""

from __future__ import annotations

import pytest
from cli import cli_env, run_cli


def test_the_environment_drops_what_changes_errors_and_adds_the_offline_switches(
    monkeypatch, tmp_path
):
    for key in ("VESSELFM_DEBUG", "HYDRA_FULL_ERROR", "VESSELFM_DATA", "OMP_NUM_THREADS"):
        monkeypatch.setenv(key, "1")
    monkeypatch.setenv("VESSELFM_ROOT", "/somewhere/else")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("KEEP_ME", "yes")

    env = cli_env({"EXTRA": "on top", "KEEP_ME": None}, cwd=tmp_path)

    for key in ("VESSELFM_DEBUG", "HYDRA_FULL_ERROR", "VESSELFM_DATA", "OMP_NUM_THREADS"):
        assert key not in env, key
    assert env["VESSELFM_ROOT"] == str(tmp_path)
    assert env["HF_HUB_OFFLINE"] == "1" and env["WANDB_MODE"] == "offline"
    assert env["EXTRA"] == "on top"
    assert "KEEP_ME" not in env  # None removes a variable
    assert "VESSELFM_ROOT" not in cli_env()  # no cwd: the parent's root is not passed on


@pytest.mark.slow
@pytest.mark.parametrize("debug", ["VESSELFM_DEBUG", "HYDRA_FULL_ERROR"])
def test_a_user_error_stays_one_line_with_debugging_set_in_the_shell(monkeypatch, tmp_path, debug):
    monkeypatch.setenv(debug, "1")
    result = run_cli("vesselfm.phantom", "output=out", "n=0", cwd=tmp_path, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "n must be" in lines[0], lines
