"""DICOM scans in ``evaluate`` and ``visualise``: the shared ``series=``/``phase=``/
``dicom.resample=`` keys reach the reader (also in evaluate's worker processes), a DICOM folder
is an ``image=``; a SEG of a resampled (tilted) series is refused by ``evaluate`` with one line
saying what to score instead."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from omegaconf import DictConfig
from synthetic import OBLIQUE, tube_phantom, write_series

from vesselfm.io import EXTENSIONS, read_volume, write_like
from vesselfm.io.dicom import selection
from vesselfm.io.names import PREDICTION_EXTENSIONS
from vesselfm.utils.errors import UserError

SHAPE = (24, 20, 12)


@pytest.fixture()
def gap_study(tmp_path: Path) -> tuple[Path, np.ndarray]:
    """A DICOM series with a missing slice (read only with dicom.resample=true), its label on
    the resampled grid as prediction and ground truth (``pred/study_pred.nii.gz``,
    ``gt/study.label.nii.gz``)."""
    image, label = tube_phantom(shape=SHAPE)
    write_series(tmp_path / "study", image, skip=(4,))
    scan = read_volume(tmp_path / "study", resample=True)  # the notebook's (Python) way
    assert scan.shape == SHAPE  # the missing slice comes back
    with selection(resample=True):
        np.testing.assert_array_equal(read_volume(tmp_path / "study").array, scan.array)
    write_like(label, scan, tmp_path / "pred" / "study_pred.nii.gz")
    write_like(label, scan, tmp_path / "gt" / "study.label.nii.gz")
    return tmp_path / "study", label


def test_visualise_reads_a_dicom_image_with_dicom_resample(
    tmp_path: Path, compose_cfg: Callable[..., DictConfig], gap_study: tuple[Path, np.ndarray]
) -> None:
    from PIL import Image

    from vesselfm.visualise import visualise

    study, _ = gap_study
    keys = [f"pred={tmp_path / 'pred' / 'study_pred.nii.gz'}", "stl=false", "html=false"]
    with pytest.raises(ValueError) as err:  # the defaults: the gap stops, naming the key
        visualise(compose_cfg("visualise", [*keys, f"image={study}", f"output={tmp_path / 'a'}"]))
    assert "\n" not in str(err.value) and "image=" in str(err.value)
    assert "not evenly spaced" in str(err.value) and "dicom.resample=true" in str(err.value)
    with_image = visualise(
        compose_cfg(
            "visualise",
            [*keys, f"image={study}", f"output={tmp_path / 'b'}", "dicom.resample=true"],
        )
    )
    without = visualise(compose_cfg("visualise", [*keys, f"output={tmp_path / 'c'}"]))
    assert set(with_image) == {"axial", "coronal", "sagittal", "mip"}
    # the scan is the background: the views differ from those drawn without it
    pixels = [np.asarray(Image.open(w["axial"]).convert("L")) for w in (with_image, without)]
    assert pixels[0].shape == pixels[1].shape and (pixels[0] != pixels[1]).any()


# workers=2 starts a worker process (slow): the keys must reach it too
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
def test_evaluate_reads_a_dicom_image_with_dicom_resample_in_its_workers(
    tmp_path: Path,
    compose_cfg: Callable[..., DictConfig],
    gap_study: tuple[Path, np.ndarray],
    workers: int,
) -> None:
    from vesselfm.evaluate import evaluate

    study, _ = gap_study
    keys = [
        f"pred={tmp_path / 'pred'}",
        f"gt={tmp_path / 'gt'}",
        f"image={study}",
        f"workers={workers}",
    ]
    with pytest.raises(UserError) as err:  # without the key the scan (image=) is not read
        evaluate(compose_cfg("evaluate", [*keys, f"output={tmp_path / 'a'}"]))
    assert "not evenly spaced" in str(err.value) and "dicom.resample=true" in str(err.value)
    result = evaluate(
        compose_cfg("evaluate", [*keys, f"output={tmp_path / 'b'}", "dicom.resample=true"])
    )
    assert [row["case"] for row in result["rows"]] == ["study"]
    assert result["rows"][0]["dice"] == 1.0 and not result["errors"]


def test_seg_of_a_tilted_series_is_refused_by_evaluate_with_what_to_score(tmp_path: Path) -> None:
    from vesselfm.metrics.folders import evaluate_folders

    image, _ = tube_phantom(shape=SHAPE)
    write_series(tmp_path / "study", image, orientation=OBLIQUE, tilt=20.0)
    scan = read_volume(tmp_path / "study")  # resampled onto an orthogonal grid
    assert scan.shape == (24, 29, 12) and scan.native.resampled
    mask = (scan.array > 150).astype(np.uint8)
    write_like(mask, scan, tmp_path / "gt" / "study.label.nii.gz")
    seg = write_like(mask, scan, tmp_path / "seg" / "study_pred.dcm")
    write_like(mask, scan, tmp_path / "nifti" / "study_pred.nii.gz")
    assert read_volume(seg).shape == SHAPE  # the SEG lies on the source slices
    result = evaluate_folders(tmp_path / "seg", tmp_path / "gt", tmp_path / "ev_seg")
    (message,) = result.errors.values()
    assert not result.rows and "\n" not in message and str(seg) in message
    assert "a DICOM-SEG lies on its source series' slices" in message
    assert "output_format=[dicom_seg,nifti]" in message
    # the NIfTI prediction of that case is on the label's grid
    result = evaluate_folders(tmp_path / "nifti", tmp_path / "gt", tmp_path / "ev_nifti")
    assert not result.errors and result.rows[0]["dice"] == 1.0


def test_no_predictions_names_every_prediction_format(tmp_path: Path) -> None:
    from vesselfm.metrics.folders import find_predictions

    (tmp_path / "1.nii.gz").write_bytes(b"")  # not a <case>_pred file
    with pytest.raises(UserError) as err:
        find_predictions(tmp_path)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"pred={tmp_path}: no <case>_pred")
    for ext in (*EXTENSIONS, *PREDICTION_EXTENSIONS):
        assert ext in message, ext
