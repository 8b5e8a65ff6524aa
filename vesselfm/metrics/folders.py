"""Scoring predictions against labels, file by file: what ``evaluate`` and ``infer label=`` share.

Cases pair by id (:mod:`vesselfm.io.names`): ``<case>_pred.nii.gz`` in ``pred`` with the label
of that case in ``gt`` (``<case>.label.nii.gz``, ``<case>.coronary.nii.gz`` or
``<case>.nii.gz``, in a folder or a glob; ids that clash get their parent folder's name
prefixed, as ``infer`` names its outputs), and ``<case>_prob.nii.gz`` in ``prob`` when given
(for ROC AUC and AP).

:func:`score_volumes` scores one case from volumes already read: the prediction must be on the
label's grid (:func:`vesselfm.io.check_same_grid`), the label binary, the probabilities in
[0, 1]; the spacing is the label's. ``infer label=`` calls it with the arrays it just wrote,
:func:`score_case` with the files, so both give the same metrics for the same pair.
:func:`evaluate_folders` scores every pair of two folders in a process pool and writes the
reports (:mod:`vesselfm.metrics.report`). Nothing here imports Lightning or Hydra.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from vesselfm.io import Volume
from vesselfm.io.centerlines import Centerlines
from vesselfm.io.dicom import Selection
from vesselfm.utils.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
#: the key of :func:`score_volumes`'s row holding the case's local-Dice points (not a column)
POINTS_KEY = "_local_dice_points"
_NO_RESAMPLING = "predictions must be on the label's grid (scoring does not resample)"
#: the hint for a DICOM-SEG prediction off the label's grid: a SEG's frames lie on its source
#: slices, while a series read resampled (gantry tilt, ``dicom.resample=true``) has its masks,
#: and so labels drawn on them, on the resampled grid
_SEG_OFF_GRID = (
    "a DICOM-SEG lies on its source series' slices, not on the regular grid a tilted or "
    "gapped series is resampled onto (as its label is): score that case's NIfTI prediction "
    "instead (python -m vesselfm.infer ... output_format=[dicom_seg,nifti])"
)
#: what find_predictions looks for, for messages
_PREDICTION_NAMES = "<case>_pred.nii.gz/.nii/.nrrd/.mha/.mhd/.seg.nrrd/.dcm (DICOM-SEG)"


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: prediction, label and optional probability map."""

    case: str
    pred: Path
    gt: Path | None
    prob: Path | None = None
    #: folder of ``<case>.coronary_{left,right}_centerline.vtk`` (ImageCAS-X), with centerlines=
    centerlines: Path | None = None
    #: the case's scan (lumen HU of the local-Dice points), with image=
    image: Path | None = None
    #: the case's true lesions (``<case>.json`` of a phantom's ``stenoses/``), with stenoses=
    stenoses: Path | None = None
    #: analyse the prediction (:mod:`vesselfm.analysis`) and score it (:mod:`~.scoring`)
    analysis: bool = False


class CaseError(Exception):
    """A case that cannot be scored; the message names the file and the reason."""


def natural_key(case: str) -> list[Any]:
    """Sort key of case ids: numbers numerically (``2`` before ``10``)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", case)]


def _folder(value: Any, key: str, what: str = "NIfTI files") -> Path:
    if value in (None, "", "???"):
        raise UserError(f"{key}= is required: give the folder, e.g. {key}=/path/to/folder")
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise UserError(f"{key}={value}: no such folder; give an existing folder of {what}")
    return path


def _scans(spec: str | Path) -> dict[str, Path]:
    """``{case: scan}`` of ``image=`` (a folder or glob of ``<case>.img.nii.gz``/``<case>.nii.gz``)."""
    from vesselfm.io import case_id, find_inputs

    return {case_id(p, "image"): p for p in find_inputs(str(spec))}


def find_predictions(pred_dir: str | Path) -> dict[str, Path]:
    """``{case: file}`` of the ``<case>_pred`` files in ``pred_dir``.

    Raises:
        UserError: there is none.
    """
    from vesselfm.io import find_outputs

    preds = find_outputs(pred_dir, "prediction", "pred")
    if not preds:
        raise UserError(
            f"pred={pred_dir}: no {_PREDICTION_NAMES} files found; point pred= at the "
            "folder python -m vesselfm.infer wrote"
        )
    return preds


def pair_cases(
    pred_dir: str | Path, gt: str | Path, prob_dir: str | Path | None = None
) -> tuple[list[CaseFiles], list[str]]:
    """Pair ``<case>_pred.nii.gz`` files with their labels (and probability maps).

    Args:
        pred_dir: folder of ``<case>_pred.nii.gz`` (or ``.nii``).
        gt: folder (or glob) of labels; ids by :func:`vesselfm.io.find_labels`.
        prob_dir: optional folder of ``<case>_prob.nii.gz``.

    Returns:
        ``(cases, unpredicted)``: one entry per prediction, sorted by case id (numbers
        numerically; ``gt`` is ``None`` where no label was found), and the ids of the labels
        that no prediction pairs with.

    Raises:
        UserError: ``gt`` holds no label, or ``pred_dir`` no ``*_pred`` file.
    """
    from vesselfm.io import find_labels, find_outputs, pair_labels

    labels = find_labels(gt, key="gt")
    preds = find_predictions(pred_dir)
    probs = find_outputs(prob_dir, "probability", "prob") if prob_dir is not None else {}
    pairs, unpaired = pair_labels(sorted(preds, key=natural_key), labels)
    cases = [
        CaseFiles(case=case, pred=preds[case], gt=label, prob=probs.get(case))
        for case, label in pairs.items()
    ]
    unpredicted = sorted(unpaired, key=natural_key)
    if unpredicted:
        shown = ", ".join(unpredicted[:10]) + (" ..." if len(unpredicted) > 10 else "")
        log.warning(
            "%d label(s) in %s have no prediction and are not scored: %s",
            len(unpredicted),
            gt,
            shown,
        )
    return cases, unpredicted


def find_cases(
    pred_dir: str | Path, gt_dir: str | Path, prob_dir: str | Path | None = None
) -> list[CaseFiles]:
    """The cases of :func:`pair_cases` (one per prediction), without the unpredicted labels."""
    return pair_cases(pred_dir, gt_dir, prob_dir)[0]


def expected_cases(
    cases: Any = None, split: str | None = None, manifest: str | Path | None = None
) -> tuple[list[str], str] | None:
    """The case ids a run must score, from ``cases=`` or ``split=`` (``None`` when neither).

    Args:
        cases: a list of ids, or a text file with one id per line (blank lines and ``#``
            comments skipped).
        split: ``train``, ``val`` or ``test``: the cases of that split in ``manifest``.
        manifest: a prepared set's folder or its ``manifest.json`` (``python -m
            vesselfm.prepare``).

    Returns:
        ``(ids, where)``: the ids in order, without repeats, and the keys that named them (for
        messages).

    Raises:
        UserError: both keys given, a missing or empty file, an unknown split, no manifest.
    """
    if cases not in (None, "") and split not in (None, ""):
        raise UserError("cases= and split= both name the expected cases; give one of them")
    if cases not in (None, ""):
        if isinstance(cases, list | tuple):
            ids = [str(c).strip() for c in cases]
        elif isinstance(cases, int) and not isinstance(cases, bool):
            ids = [str(cases)]
        else:
            path = Path(str(cases)).expanduser()
            if not path.is_file():
                raise UserError(
                    f"cases={cases}: no such file; give a file with one case id per line, or a "
                    "list: cases=[1,2,3]"
                )
            lines = path.read_text(encoding="utf-8").splitlines()
            ids = [line.strip() for line in lines if line.strip() and not line.startswith("#")]
        ids = list(dict.fromkeys(i for i in ids if i))
        if not ids:
            raise UserError(f"cases={cases}: no case ids in it; list the cases to score")
        return ids, "cases="
    if split in (None, ""):
        return None
    if split not in SPLITS:
        raise UserError(f"split must be one of {list(SPLITS)}, got {split!r}")
    if manifest in (None, ""):
        raise UserError(
            f"split={split} needs manifest=: the prepared set's folder or its manifest.json"
        )
    from vesselfm.data.manifest import manifest_path, read_manifest

    path = manifest_path(str(manifest))
    try:
        entries = read_manifest(path)["cases"]
        ids = [c for c, e in entries.items() if isinstance(e, dict) and e.get("split") == split]
    except FileNotFoundError as err:
        raise UserError(
            f"manifest={manifest}: no {path.name} there; give a prepared set's folder or its "
            "manifest.json"
        ) from err
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UserError(
            f"manifest={manifest}: {path} is not a prepared set's manifest ({type(err).__name__})"
        ) from err
    if not ids:
        raise UserError(f"split={split}: {path} lists no {split} case")
    return ids, f"split={split} (manifest={manifest})"


def score_volumes(
    case: str,
    pred: Volume,
    label: Volume,
    prob: Volume | None = None,
    threshold: float = 0.5,
    metrics: Sequence[str] | None = None,
    centerlines: Mapping[str, Centerlines] | None = None,
    image: Volume | None = None,
    analysis: bool = False,
    stenoses: Sequence[Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score one case at native resolution, with the label's voxel spacing.

    Args:
        case: the case id (the row's ``case``).
        pred: the prediction: a 0/1 mask, or probabilities (float) thresholded at ``threshold``.
        label: the binary label (0/1, any dtype), or ImageCAS-X segment codes 0..14 (scored as
            their union, plus ``dice_<segment>``); ``pred`` may then hold codes too.
        prob: optional probabilities in [0, 1] on the same grid (ROC AUC and AP).
        threshold: applied when ``pred`` holds probabilities (float, not only 0/1).
        metrics: subset of metric names, ``None`` for all.
        centerlines: the case's ground-truth centrelines ``{side: Centerlines}`` (LPS mm), for
            the centreline distances and local Dice.
        image: the case's scan on the label's grid (HU of the local-Dice points).
        analysis: analyse the prediction as ``vesselfm.analyse`` does and add the columns of
            :func:`vesselfm.analysis.scoring.score_analysis` (``cl_ov`` ... ``cad_rads_exact``).
        stenoses: the case's true lesions (phantom records, RAS mm), for the stenosis columns.

    Returns:
        ``{"case": case, **compute_metrics(...), **imagecasx_columns(...)}``; with
        ``centerlines``, also ``POINTS_KEY``: the rows of ``local_dice.csv``.

    Raises:
        CaseError: a grid mismatch (:func:`vesselfm.io.check_same_grid`), a label that is not
            binary, probabilities outside [0, 1], or invalid values, naming the file.
    """
    from vesselfm.io import GridError, check_same_grid
    from vesselfm.metrics import compute_metrics
    from vesselfm.metrics.compute import _as_binary, _check_probabilities
    from vesselfm.metrics.imagecasx import check_segments, imagecasx_columns, segment_codes

    try:
        check_same_grid(
            pred, label, hint=_SEG_OFF_GRID if pred.format == "dicom_seg" else _NO_RESAMPLING
        )
        if prob is not None:
            check_same_grid(prob, label, hint=_NO_RESAMPLING)
        if image is not None:
            check_same_grid(
                image, label, hint="image= must hold the scans the labels were drawn on"
            )
    except GridError as err:
        raise CaseError(str(err)) from err
    scores = None
    if prob is not None:
        scores = np.asarray(prob.array, dtype=np.float32)
        try:  # checked here so that the message names the prob file, not the prediction
            _check_probabilities(scores, prob.where)
        except ValueError as err:
            raise CaseError(str(err)) from err
    label_values = np.asarray(label.array)
    label_codes = segment_codes(label_values, min_codes=2)
    segments = label_codes is not None
    if label_codes is not None:
        label_values = label_codes
    try:
        if segments:
            check_segments(label_values, label.where)
        else:
            _as_binary(label_values, label.where)
    except ValueError as err:
        raise CaseError(str(err)) from err
    values = pred.array
    # A float file holding only 0 and 1 is a mask saved as float, not a probability map.
    if values.dtype.kind == "f" and np.all((values == 0) | (values == 1)):
        values = values.astype(bool)
    codes = segment_codes(values) if segments else None
    if codes is not None:
        try:
            check_segments(codes, pred.where)
        except ValueError as err:
            raise CaseError(str(err)) from err
        values = codes != 0
    try:
        row = compute_metrics(
            values,
            label_values != 0 if segments else label_values,
            spacing=label.spacing,
            threshold=threshold,
            metrics=metrics,
            prob=scores,
        )
    except (ValueError, TypeError) as err:
        raise CaseError(f"{pred.where}: {err}") from err
    pred_bin = values >= threshold if values.dtype.kind == "f" else values != 0
    extra, points = imagecasx_columns(
        case,
        codes if codes is not None else pred_bin,
        label_values,
        label.affine,
        label.spacing,
        centerlines,
        None if image is None else np.asarray(image.array),
    )
    out = {"case": case, **row, **extra}
    if analysis:
        from vesselfm.analysis.pipeline import analyse_mask
        from vesselfm.analysis.scoring import score_analysis

        found = analyse_mask(pred_bin, label.affine, case=case)
        out.update(score_analysis(found, label_values, label.affine, centerlines, stenoses))
    if centerlines is not None:
        out[POINTS_KEY] = points
    return out


def read_case_volume(path: Path) -> Volume:
    """:func:`vesselfm.io.read_volume`, its errors as :class:`CaseError` (that case only)."""
    from vesselfm.io import VolumeError, read_volume

    try:
        return read_volume(path)
    except VolumeError as err:
        raise CaseError(str(err)) from err


def score_case(
    files: CaseFiles, threshold: float = 0.5, metrics: Sequence[str] | None = None
) -> dict[str, Any]:
    """Read one case's files and score them with :func:`score_volumes`.

    Args:
        files: the case's files (``files.gt`` must be set).
        threshold: applied when the prediction holds probabilities (float, not only 0/1).
        metrics: subset of metric names, ``None`` for all.

    Returns:
        ``{"case": id, **compute_metrics(...)}``.

    Raises:
        CaseError: a missing label, an unreadable file, a shape/affine mismatch, invalid values.
    """
    if files.gt is None:
        raise CaseError(
            f"{files.pred}: no label {files.case}.label.<ext>, {files.case}.coronary.<ext> or "
            f"{files.case}.<ext> in gt= (a prediction without a label cannot be scored)"
        )
    label = read_case_volume(files.gt)
    pred = read_case_volume(files.pred)
    prob = read_case_volume(files.prob) if files.prob is not None else None
    image = read_case_volume(files.image) if files.image is not None else None
    centerlines = None
    if files.centerlines is not None:
        from vesselfm.io.centerlines import CenterlineError, read_centerlines
        from vesselfm.metrics.imagecasx import centerline_files

        found = centerline_files(files.centerlines, files.case)
        if not found:
            raise CaseError(
                f"{files.centerlines}: no {files.case}.coronary_left_centerline.vtk or "
                f"{files.case}.coronary_right_centerline.vtk for case {files.case}; add them or "
                "score without centerlines="
            )
        try:
            centerlines = {side: read_centerlines(path) for side, path in found.items()}
        except CenterlineError as err:
            raise CaseError(str(err)) from err
    stenoses = read_stenoses(files.stenoses) if files.stenoses is not None else None
    return score_volumes(
        files.case,
        pred,
        label,
        prob,
        threshold,
        metrics,
        centerlines=centerlines,
        image=image,
        analysis=files.analysis,
        stenoses=stenoses,
    )


def read_stenoses(path: Path) -> list[dict[str, Any]]:
    """The ``stenoses`` list of a phantom's ``stenoses/<case>.json`` (RAS mm)."""
    import json

    if not path.is_file():
        raise CaseError(
            f"{path}: no such stenosis record; give stenoses= the stenoses/ folder of the "
            "phantoms (python -m vesselfm.phantom layout=imagecasx) or score without it"
        )
    try:
        records = json.loads(path.read_text(encoding="utf-8"))["stenoses"]
        for r in records:
            r["tree"], r["degree_percent"], r["position_mm"], r["branch"]  # noqa: B018
        return list(records)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CaseError(
            f"{path}: not a stenosis record ({type(err).__name__}: {err}); expected "
            '{"stenoses": [{"branch", "tree", "position_mm", "degree_percent"}, ...]}'
        ) from err


def _score_task(
    files: CaseFiles, threshold: float, metrics: Sequence[str] | None, dicom: Selection
) -> tuple[str, dict[str, Any] | None, str | None]:
    """Worker entry: never raises for a case-level problem, so one bad case stops nothing.
    DICOM scans are read with ``dicom`` (the caller's ``series=``, ``phase=``,
    ``dicom.resample=``: a worker process does not inherit the caller's context)."""
    from vesselfm.io.dicom import selection

    try:
        with selection(dicom.series, dicom.phase, dicom.resample):
            return files.case, score_case(files, threshold, metrics), None
    except CaseError as err:
        return files.case, None, str(err)


class Evaluation(NamedTuple):
    """What :func:`evaluate_folders` scored and wrote.

    Attributes:
        rows: a row per scored case, sorted by case id.
        errors: ``{case: reason}`` for the cases that could not be scored.
        paths: the report files by kind (``csv``, ``json``, ``md``).
        missing_predictions: the ids of the labels without a prediction (listed in the
            reports, not scored).
    """

    rows: list[dict[str, Any]]
    errors: dict[str, str]
    paths: dict[str, Path]
    missing_predictions: list[str]


def evaluate_folders(
    pred: str | Path,
    gt: str | Path,
    output: str | Path,
    prob: str | Path | None = None,
    workers: int = 1,
    threshold: float = 0.5,
    metrics: Sequence[str] | None = None,
    expected: Sequence[str] | None = None,
    expected_by: str = "cases=",
    overwrite: bool = False,
    centerlines: str | Path | None = None,
    image: str | Path | None = None,
    descriptors: str | Path | None = None,
    stenoses: str | Path | None = None,
    analysis: bool | None = None,
) -> Evaluation:
    """Score every ``<case>_pred`` file in ``pred`` against ``gt`` and write the reports.

    Everything about the run (folders, options, the output folder and the files to be replaced
    in it, the expected cases) is checked before the first case is scored.

    Args:
        pred: folder of ``<case>_pred.nii.gz``.
        gt: folder (or glob) of ``<case>.label.nii.gz`` / ``<case>.nii.gz``.
        output: folder for ``metrics.csv``, ``summary.json``, ``summary.md``.
        prob: optional folder of ``<case>_prob.nii.gz`` (ROC AUC and AP).
        workers: parallel processes; 1 scores in this process.
        threshold: for prediction files that hold probabilities.
        metrics: subset of metric names, ``None`` for all.
        expected: the case ids to score (:func:`expected_cases`); every one must have a
            prediction, and predictions of other cases are left out. ``None``: every prediction.
        expected_by: the keys that named ``expected``, for messages.
        overwrite: replace report files in ``output`` that vesselfm did not write.
        centerlines: folder of ImageCAS-X ``<case>.coronary_{left,right}_centerline.vtk``:
            adds the centreline distances and local Dice (``local_dice.csv``,
            ``local_dice_summary.csv``); a case without either file is not scored.
        image: the scans (a folder or glob; ``<case>.img.nii.gz``/``<case>.nii.gz``): the lumen
            HU of the local-Dice points.
        descriptors: ImageCAS-X's ``Descriptors.xlsx``/``.csv``: every table also by its groups
            (``summary_by_group.csv``; ``local_dice_summary.csv`` rows per group).
        stenoses: folder of ``<case>.json`` true-lesion records (a phantom's ``stenoses/``):
            the predictions are analysed (:mod:`vesselfm.analysis`) and scored
            (:mod:`vesselfm.analysis.scoring`: ``cl_*`` with ``centerlines``, names, radii,
            stenoses, CAD-RADS).
        analysis: analyse and score the predictions without ``stenoses`` too (``cl_*``,
            names and radii against ``centerlines``); ``None``: when ``stenoses`` is given.

    Returns:
        ``(rows, errors, paths, missing_predictions)`` as an :class:`Evaluation`.

    Raises:
        UserError: missing folders, no labels, no predictions, bad ``workers``/``threshold``,
            ``output`` not a writable folder or holding reports vesselfm did not write, or an
            expected case without a prediction.
    """
    from tqdm.auto import tqdm

    from vesselfm.io import check_output_dir
    from vesselfm.io.dicom import current_selection
    from vesselfm.metrics.compute import _select
    from vesselfm.metrics.imagecasx import (
        IMAGECASX_FILES,
        read_descriptors,
        write_imagecasx_reports,
    )
    from vesselfm.metrics.report import REPORT_FILES, write_reports

    if output in (None, "", "???"):
        raise UserError("output= is required: give the folder for the reports, e.g. output=eval")
    pred_dir = _folder(pred, "pred")
    prob_dir = _folder(prob, "prob") if prob not in (None, "") else None
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UserError(f"workers must be an integer >= 1, got {workers!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"threshold must be in [0, 1], got {threshold}")
    names = list(_select(metrics))
    centerline_dir = (
        _folder(centerlines, "centerlines", "<case>.coronary_left/right_centerline.vtk files")
        if centerlines not in (None, "")
        else None
    )
    table = read_descriptors(descriptors) if descriptors not in (None, "") else None
    stenosis_dir = (
        _folder(stenoses, "stenoses", "<case>.json stenosis records")
        if stenoses not in (None, "")
        else None
    )
    analyse = stenosis_dir is not None if analysis is None else bool(analysis)
    if analyse:
        from vesselfm.analysis.pipeline import require_extra

        try:
            require_extra()
        except RuntimeError as err:
            raise UserError(str(err)) from err
    output = check_output_dir(output, "output", REPORT_FILES + IMAGECASX_FILES, overwrite)

    cases, unpredicted = pair_cases(pred_dir, gt, prob_dir)
    if centerline_dir is not None or image not in (None, ""):
        scans = _scans(image) if image not in (None, "") else {}
        if scans:
            absent = [c.case for c in cases if c.case not in scans]
            if absent:
                log.warning(
                    "image=%s: no scan for %d case(s) (%s): their local-Dice HU is empty",
                    image,
                    len(absent),
                    ", ".join(absent[:5]),
                )
        cases = [replace(c, centerlines=centerline_dir, image=scans.get(c.case)) for c in cases]
    if analyse:
        cases = [
            replace(
                c,
                analysis=True,
                stenoses=None if stenosis_dir is None else stenosis_dir / f"{c.case}.json",
            )
            for c in cases
        ]
    if expected is not None:
        wanted = set(expected)
        have = {c.case for c in cases}
        absent = [case for case in expected if case not in have]
        if absent:
            shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
            raise UserError(
                f"{expected_by}: {len(absent)} of {len(expected)} expected case(s) have no "
                f"<case>_pred.nii.gz in pred={pred_dir}: {shown}; segment them "
                "(python -m vesselfm.infer) or leave them out of the expected cases"
            )
        others = [c.case for c in cases if c.case not in wanted]
        if others:
            log.info(
                "%d prediction(s) are not among the expected cases (%s) and are left out: %s",
                len(others),
                expected_by,
                ", ".join(others[:10]),
            )
        cases = [c for c in cases if c.case in wanted]
        unpredicted = []
    if prob_dir is not None:
        missing = [c.case for c in cases if c.prob is None]
        if missing:
            log.warning(
                "no <case>_prob.nii.gz in %s for %d case(s) (%s): their AUCs come from the pred file, or are empty",
                prob_dir,
                len(missing),
                ", ".join(missing[:5]),
            )
    total = len(cases) + len(unpredicted)
    log.info(
        "scoring %d case(s) from %s against %s with %d worker(s)",
        len(cases),
        pred_dir,
        gt,
        workers,
    )

    rows: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}

    points: dict[str, list[dict[str, Any]]] = {}

    def collect(case: str, row: dict[str, Any] | None, error: str | None) -> None:
        if error is not None:
            errors[case] = error
            log.error("case %s: %s", case, error)
        else:
            assert row is not None
            points[case] = row.pop(POINTS_KEY, [])
            rows[case] = row

    dicom = current_selection()
    bar = tqdm(total=len(cases), desc="evaluate", unit="case")
    if workers == 1:
        for files in cases:
            collect(*_score_task(files, threshold, names, dicom))
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(cases)), mp_context=ctx) as pool:
            futures = [pool.submit(_score_task, files, threshold, names, dicom) for files in cases]
            for future in as_completed(futures):
                collect(*future.result())
                bar.update()
    bar.close()

    ordered = [rows[c.case] for c in cases if c.case in rows]
    failed = {c.case: errors[c.case] for c in cases if c.case in errors}
    # always written, so that an earlier run's summary never stands for this one
    paths = write_reports(
        ordered,
        output,
        expected=total,
        missing={"missing_predictions": unpredicted},
        failed=failed,
    )
    paths.update(
        write_imagecasx_reports(
            ordered,
            [p for c in cases for p in points.get(c.case, [])],
            output,
            centerlines=centerline_dir is not None,
            descriptors=table,
        )
    )
    log.info(
        "scored %d of %d case(s); wrote %s",
        len(ordered),
        total,
        ", ".join(str(p) for p in paths.values()),
    )
    return Evaluation(ordered, failed, paths, unpredicted)
