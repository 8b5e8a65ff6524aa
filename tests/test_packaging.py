"""The wheel must carry every subpackage and the configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import tomllib
from cli import run_cli, run_code

ROOT = Path(__file__).resolve().parents[1]


def test_every_subpackage_is_listed_in_pyproject():
    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "vesselfm").rglob("__init__.py")
    } | {"vesselfm.configs"}
    assert found == listed


@pytest.mark.slow
def test_wheel_ships_configs_and_runs_outside_the_checkout(tmp_path):
    """Build the wheel, install it (without deps, beside the test venv's) and run --help from elsewhere."""
    import zipfile

    wheel_dir, target = tmp_path / "wheel", tmp_path / "site"
    pip_wheel = ("wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheel_dir))
    run_cli("pip", *pip_wheel, str(ROOT), check=True)
    (wheel,) = wheel_dir.glob("vesselfm-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for config in (
        "train.yaml",
        "model/vesselfm_base.yaml",
        "model/tiny.yaml",
        "hydra/default.yaml",
    ):
        assert f"vesselfm/configs/{config}" in names, config
    run_cli("pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel), check=True)
    env = {"PYTHONPATH": str(target)}
    # -I would drop PYTHONPATH; -P keeps the cwd off sys.path, so only the installed wheel is found.
    proc = run_code(
        "import vesselfm.configs as c; print(c.__file__)",
        flags=["-P"],
        env=env,
        cwd=tmp_path,
        check=True,
    )
    assert proc.stdout.strip().startswith(str(target)), proc.stdout
    proc = run_cli("vesselfm.train", "--help", flags=["-P"], env=env, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "experiment" in proc.stdout and "vesselfm_base" in proc.stdout


# Each group is imported in a fresh interpreter (sys.modules shows what importing it loaded).
LIBRARY_IMPORTS = [
    pytest.param(
        (
            "vesselfm.metrics",
            "vesselfm.models",
            "vesselfm.inference",
            "vesselfm.data.transforms",
            "vesselfm.data.preprocessing",
            "vesselfm.viz",
        ),
        ("lightning", "hydra", "omegaconf"),
        id="library-without-lightning-or-hydra",
    ),
    pytest.param(
        ("vesselfm.io", "vesselfm.data.manifest", "vesselfm.data.phantom"),
        ("torch", "lightning", "hydra", "omegaconf"),
        id="io-manifest-and-phantom-without-torch",
    ),
    pytest.param(
        ("vesselfm.analysis", "vesselfm.analysis.report"),
        ("torch", "lightning", "hydra", "omegaconf"),
        id="analysis-without-torch",
    ),
]


@pytest.mark.slow
@pytest.mark.parametrize(("modules", "forbidden"), LIBRARY_IMPORTS)
def test_library_modules_import_neither_lightning_nor_hydra(modules, forbidden):
    """Metrics, models, transforms, I/O and the predictor are plain code (DESIGN.md): a Python API
    without Hydra; the CLIs compose them. The case-file layer, the manifest and the phantom need no torch either."""
    code = (
        f"import sys, {', '.join(modules)};"
        f"print(sorted(m for m in {forbidden!r} if m in sys.modules))"
    )
    out = run_code(code, check=True).stdout
    assert out.strip() == "[]", f"importing {modules} loaded {out.strip()}"
