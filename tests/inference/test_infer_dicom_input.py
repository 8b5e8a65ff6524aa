"""``infer`` on a DICOM cohort folder: one case per study, ``dicom.resample=true`` passed down,
a bad study fails alone with one line naming the file and leaves nothing behind."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli import TINY_INFER, run_cli
from synthetic import tube_phantom, write_series

from vesselfm.io import read_volume


@pytest.mark.slow
def test_cohort_folder_one_case_per_study_bad_study_fails_alone(
    tmp_path: Path, weights: Path
) -> None:
    image, _ = tube_phantom(shape=(32, 32, 20))
    cohort = tmp_path / "cohort"
    # a missing slice: read only because dicom.resample=true reaches the reader
    write_series(cohort / "a", image, study="1.2.3.1", patient="A1", skip=(7,))
    write_series(cohort / "b", image, study="1.2.3.2", patient="B2")
    cut = sorted((cohort / "b").iterdir())[4]
    cut.write_bytes(cut.read_bytes()[:-300])  # a truncated slice
    out = tmp_path / "out"
    proc = run_cli(
        "vesselfm.infer",
        f"input={cohort}",
        f"output={out}",
        f"model.checkpoint={weights}",
        "output_format=nifti",
        "dicom.resample=true",
        *TINY_INFER,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert str(cut) in errors[0] and "truncated or corrupt" in errors[0]
    assert "1 segmented" in proc.stderr and "resampled onto a regular grid" in proc.stderr
    # the good study's mask, on its (resampled: all 20 slices) grid; nothing of the bad one
    written = sorted(p.name for p in out.glob("*.nii.gz"))
    assert written == ["cohort_A1_20260101_pred.nii.gz"]
    # the cohort summary names the bad study and why
    failed = json.loads((out / "run_summary.json").read_text())["failed"]
    assert (
        list(failed) == ["cohort_B2_20260101"]
        and "truncated or corrupt" in failed["cohort_B2_20260101"]
    )
    mask = read_volume(out / written[0])
    assert mask.shape == (32, 32, 20) and set(np.unique(mask.array)) <= {0, 1}
