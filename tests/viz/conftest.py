"""Fixtures for the viz tests: a ball, a branching tube tree, an HU image (``tests/synthetic.py``).

The affine (``synthetic.ANISO_AFFINE``) is anisotropic, flips an axis and is translated, as
scanner affines often are, so that tests of millimetre coordinates and face orientation cannot
pass by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from synthetic import ANISO_AFFINE, ball, hu_image, save_nifti, tube_tree, write_case

SHAPE = (56, 48, 40)


@pytest.fixture()
def affine() -> np.ndarray:
    """The anisotropic, x-flipped, translated affine of every fixture volume."""
    return ANISO_AFFINE.copy()


@pytest.fixture()
def make_sphere():
    """``make_sphere(shape, centre, radius)`` -> boolean ball (voxel units)."""
    return ball


@pytest.fixture()
def tree() -> np.ndarray:
    """A boolean tube tree of shape ``SHAPE`` (56, 48, 40)."""
    return tube_tree(SHAPE)


@dataclass
class Case:
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    affine: np.ndarray


@pytest.fixture()
def case() -> Case:
    """A tube-tree label, a prediction with a missed branch tip and a spurious blob, an HU image."""
    label = tube_tree(SHAPE)
    pred = label.copy()
    pred[:, :, 34:] = False  # false negatives: the branch tips
    pred |= ball(SHAPE, (10, 10, 10), 3)  # a false positive blob
    return Case(
        image=hu_image(label, seed=0),
        label=label.astype(np.uint8),
        pred=pred.astype(np.uint8),
        affine=ANISO_AFFINE.copy(),
    )


@pytest.fixture()
def nifti_case(case: Case, tmp_path: Path) -> dict[str, Path]:
    """The case as NIfTI files in the ImageCAS / infer naming: 7.img, 7.label, 7_pred."""
    files = write_case(tmp_path / "data", "7", case.image, case.label, case.affine)
    pred = save_nifti(tmp_path / "pred" / "7_pred.nii.gz", case.pred, case.affine)
    return {"image": files.image, "gt": files.label, "pred": pred}


CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--enable-unsafe-swiftshader",  # software WebGL for plotly's 3D scene
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--virtual-time-budget=10000",
]


@pytest.fixture()
def chromium(tmp_path: Path):
    """``chromium(url, *args) -> CompletedProcess``: headless Chromium with a throw-away profile.

    Debian's ``chromium`` (``.ci/run`` installs it; locally ``apt-get install chromium``) or the
    binary named by ``VESSELFM_CHROMIUM``. Missing, the browser tests are skipped with the
    install hint on a developer's machine, so that the README's test command passes on a fresh
    one, and fail under ``CI=true``, where ``.ci/run`` installs the browser.
    """
    import os
    import shutil
    import subprocess

    binary = os.environ.get("VESSELFM_CHROMIUM") or next(
        (b for b in ("chromium", "chromium-browser", "google-chrome") if shutil.which(b)), None
    )
    if binary is None:
        hint = "headless browser test needs Chromium: apt-get install -y chromium (or set VESSELFM_CHROMIUM)"
        if os.environ.get("CI", "").lower() in {"1", "true", "yes"}:
            pytest.fail(hint)
        pytest.skip(hint)

    def run(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        profile = tmp_path / "chromium-profile"
        cmd = [binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args, url]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)

    return run
