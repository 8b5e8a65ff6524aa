"""Fixtures for the case-file tests: the inference tests' synthetic NIfTIs (flipped affine,
distinct qform/sform codes), so that any slip in geometry handling shows up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

# the synthetic scans live with the inference tests (one kit for both)
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "inference"))

from inference_helpers import save_nifti, tube_phantom  # noqa: E402


@pytest.fixture()
def scan_file(tmp_path: Path) -> Path:
    """``<tmp>/scans/1.img.nii.gz`` (48×40×32, flipped affine, qform 1 / sform 2) and its label."""
    folder = tmp_path / "scans"
    folder.mkdir()
    image, label = tube_phantom()
    save_nifti(folder / "1.label.nii.gz", label)
    return save_nifti(folder / "1.img.nii.gz", image)
