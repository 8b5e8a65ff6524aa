"""``infer`` on a DICOM series: the same mask as from the same phantom as NIfTI."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from cli import TINY_INFER, run_cli
from synthetic import LPS_TO_RAS, lps_affine, save_nifti, tube_phantom, write_series

from vesselfm.io import read_volume

_run_cli = partial(run_cli, "vesselfm.infer")
FAST = TINY_INFER


@pytest.mark.slow
def test_dicom_folder_gives_the_mask_of_the_same_phantom_as_nifti(
    tmp_path: Path, weights: Path
) -> None:
    image, _ = tube_phantom(shape=(40, 36, 32))
    write_series(tmp_path / "study1", image, number=1)
    # a series with more slices: series=1 must pass down to the reader to get the phantom
    write_series(tmp_path / "study1", np.zeros((40, 36, 34), np.int16) - 900, number=2)
    save_nifti(tmp_path / "nii" / "study1.nii.gz", image, LPS_TO_RAS @ lps_affine())
    outs = {}
    for name, spec, extra in (
        ("dicom", tmp_path / "study1", ["series=1"]),
        ("nifti", tmp_path / "nii", []),
    ):
        outs[name] = tmp_path / f"out_{name}"
        proc = _run_cli(
            f"input={spec}",
            f"output={outs[name]}",
            f"model.checkpoint={weights}",
            *extra,
            *FAST,
            cwd=tmp_path,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "1 segmented" in proc.stderr
    dicom = read_volume(outs["dicom"] / "study1_pred.nii.gz")
    nifti = read_volume(outs["nifti"] / "study1_pred.nii.gz")
    assert dicom.shape == (40, 36, 32) and dicom.array.any()
    np.testing.assert_array_equal(dicom.array, nifti.array)
    np.testing.assert_allclose(dicom.affine, nifti.affine, atol=1e-4, rtol=0)
