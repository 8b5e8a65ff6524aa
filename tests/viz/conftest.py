"""Small synthetic volumes for the viz tests: a sphere, a branching tube tree, an HU image.

The affine is anisotropic, flips an axis and is translated, as scanner affines often are, so
that tests of millimetre coordinates and face orientation cannot pass by accident.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

SHAPE = (56, 48, 40)
# 0.4 x 0.5 x 0.8 mm voxels, x flipped (det < 0, like a LPS-ish scanner frame), offset origin.
AFFINE = np.array(
    [
        [-0.4, 0.0, 0.0, 30.0],
        [0.0, 0.5, 0.0, -12.0],
        [0.0, 0.0, 0.8, 100.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


def sphere(
    shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float
) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float64)
    dist = np.sqrt(sum((grid[a] - centre[a]) ** 2 for a in range(3)))
    return dist <= radius


def tube_tree(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    """A trunk along z that splits into two curved branches; radius about 2.5 voxels."""
    grid = np.indices(shape, dtype=np.float64)
    out = np.zeros(shape, dtype=bool)
    x0, y0 = shape[0] / 2, shape[1] / 2
    zs = np.arange(shape[2], dtype=np.float64)
    split = shape[2] * 0.45
    for sign in (-1.0, 1.0):
        # centre line: straight below the split, bending by sign * 0.02 * dz^2 above it
        cx = x0 + sign * 0.02 * np.clip(zs - split, 0, None) ** 2
        cy = y0 + 0.15 * (zs - split).clip(0)
        for z, (x, y) in enumerate(zip(cx, cy, strict=True)):
            if 2 <= z < shape[2] - 2:
                out[..., z] |= (grid[0, ..., z] - x) ** 2 + (grid[1, ..., z] - y) ** 2 <= 2.5**2
    return out


@pytest.fixture()
def affine() -> np.ndarray:
    """The anisotropic, x-flipped, translated affine of every fixture volume."""
    return AFFINE.copy()


@pytest.fixture()
def make_sphere():
    """``make_sphere(shape, centre, radius)`` -> boolean ball (voxel units)."""
    return sphere


@pytest.fixture()
def tree() -> np.ndarray:
    """A boolean tube tree of shape ``SHAPE`` (56, 48, 40)."""
    return tube_tree()


@dataclass
class Case:
    image: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    affine: np.ndarray


@pytest.fixture()
def case() -> Case:
    """A tube-tree label, a prediction with a missed branch tip and a spurious blob, an HU image."""
    rng = np.random.default_rng(0)
    label = tube_tree()
    pred = label.copy()
    pred[:, :, 34:] = False  # false negatives: the branch tips
    pred |= sphere(SHAPE, (10, 10, 10), 3)  # a false positive blob
    image = rng.normal(40, 20, SHAPE).astype(np.int16)  # soft tissue, HU
    image[:4] = -1000  # some air, so the image reads as HU
    image[label] = 400  # contrast-filled lumen
    return Case(
        image=image, label=label.astype(np.uint8), pred=pred.astype(np.uint8), affine=AFFINE.copy()
    )


@pytest.fixture()
def nifti_case(case: Case, tmp_path: Path) -> dict[str, Path]:
    """The case as NIfTI files in the ImageCAS / infer naming: 7.img, 7.label, 7_pred."""
    paths = {
        "image": tmp_path / "data" / "7.img.nii.gz",
        "gt": tmp_path / "data" / "7.label.nii.gz",
        "pred": tmp_path / "pred" / "7_pred.nii.gz",
    }
    for key, array in (("image", case.image), ("gt", case.label), ("pred", case.pred)):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(array, case.affine), paths[key])
    return paths


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
