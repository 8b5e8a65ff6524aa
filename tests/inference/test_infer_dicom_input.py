"""``infer`` on a DICOM cohort folder: one case per study, ``dicom.resample=true`` passed down,
a bad study fails alone with one line naming the file and leaves nothing behind."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cli import TINY_INFER
from omegaconf import DictConfig
from synthetic import tube_phantom, write_series

from vesselfm.infer import infer
from vesselfm.io import read_volume
from vesselfm.utils.errors import UserError


def test_cohort_folder_one_case_per_study_bad_study_fails_alone(
    compose_cfg: Callable[..., DictConfig],
    tmp_path: Path,
    weights: Path,
) -> None:
    """In this process (the exit status 2 and the one ``error:`` line of a run that ends with
    failed scans are the CLI's, covered by ``test_infer_cli``'s bad-input test): the run's
    error, its log and its outputs."""
    image, _ = tube_phantom(shape=(32, 32, 20))
    cohort = tmp_path / "cohort"
    # a missing slice: read only because dicom.resample=true reaches the reader
    write_series(cohort / "a", image, study="1.2.3.1", patient="A1", skip=(7,))
    write_series(cohort / "b", image, study="1.2.3.2", patient="B2")
    cut = sorted((cohort / "b").iterdir())[4]
    cut.write_bytes(cut.read_bytes()[:-300])  # a truncated slice
    out = tmp_path / "out"
    cfg = compose_cfg(
        "infer",
        [
            f"input={cohort}",
            f"output={out}",
            f"model.checkpoint={weights}",
            "output_format=nifti",
            "dicom.resample=true",
            *TINY_INFER,
        ],
    )
    with pytest.raises(UserError) as info:
        infer(cfg)
    message = str(info.value)
    assert "\n" not in message and "1 of 2 scans failed" in message
    assert str(cut) in message and "truncated or corrupt" in message
    # the good study's mask, on its resampled grid (all 20 slices: the missing one is read only
    # because dicom.resample=true reached the reader, in a loader worker); nothing of the bad one
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
