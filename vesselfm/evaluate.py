"""Score predicted masks against labels: ``python -m vesselfm.evaluate pred=DIR gt=DIR output=DIR``.

Cases pair by id: ``<case>_pred.nii.gz`` in ``pred`` with ``<case>.label.nii.gz`` (ImageCAS),
``<case>_label.nii.gz`` or ``<case>.nii.gz`` in ``gt`` (a folder or a glob; label ids follow
``infer``'s rule, :func:`vesselfm.inference.io.unique_case_ids`: ids that clash get their parent
folder's name prefixed), and ``<case>_prob.nii.gz`` in ``prob`` when given (for ROC AUC and AP).
Each pair must share shape and a finite affine; a case that does not, has no label, or cannot be
read, is reported (file and reason) and skipped, the others are scored, and the run ends with a
non-zero status. Labels without a prediction are listed in the summaries
(``missing_predictions``, "scored N of M"); where ``cases=`` or ``split=`` names the expected
cases, a missing prediction stops the run before anything is scored. Scoring is at native
resolution with the label header's voxel spacing. Writes ``metrics.csv``, ``summary.json`` and
``summary.md`` (see :mod:`vesselfm.metrics.report`).

``evaluate_folders(...)`` does the work and can be called from Python; ``main()`` is the CLI.
"""

from __future__ import annotations

import logging
import multiprocessing
import re
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

from vesselfm.data.manifest import manifest_path, read_manifest
from vesselfm.utils.cli import UserError, hydra_entrypoint

log = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
PRED_SUFFIX = "_pred"
PROB_SUFFIX = "_prob"
AFFINE_ATOL_MM = 1e-3
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class CaseFiles:
    """The files of one case: prediction, label and optional probability map."""

    case: str
    pred: Path
    gt: Path | None
    prob: Path | None = None


class CaseError(Exception):
    """A case that cannot be scored; the message names the file and the reason."""


def strip_nifti(name: str) -> str:
    """``"1_pred.nii.gz"`` → ``"1_pred"``; names without a NIfTI suffix come back unchanged."""
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _natural_key(case: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", case)]


def _nifti_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and strip_nifti(p.name) != p.name)


def _first_existing(folder: Path, stems: Sequence[str]) -> Path | None:
    for stem in stems:
        for suffix in NIFTI_SUFFIXES:
            path = folder / f"{stem}{suffix}"
            if path.is_file():
                return path
    return None


def _folder(value: Any, key: str) -> Path:
    if value in (None, "", "???"):
        raise UserError(f"{key}= is required: give the folder, e.g. {key}=/path/to/folder")
    path = Path(str(value)).expanduser()
    if not path.is_dir():
        raise UserError(f"{key}={value}: no such folder; give an existing folder of NIfTI files")
    return path


def _predictions(pred_dir: Path) -> dict[str, Path]:
    preds = {
        strip_nifti(p.name)[: -len(PRED_SUFFIX)]: p
        for p in _nifti_files(pred_dir)
        if strip_nifti(p.name).endswith(PRED_SUFFIX) and not p.name.startswith(".")
    }
    if not preds:
        raise UserError(
            f"pred={pred_dir}: no <case>_pred.nii.gz files found; point pred= at the folder "
            "python -m vesselfm.infer wrote"
        )
    return preds


def pair_cases(
    pred_dir: Path, gt: str | Path, prob_dir: Path | None = None
) -> tuple[list[CaseFiles], list[str]]:
    """Pair ``<case>_pred.nii.gz`` files with their labels (and probability maps).

    Args:
        pred_dir: folder of ``<case>_pred.nii.gz`` (or ``.nii``).
        gt: folder (or glob) of ``<case>.label.nii.gz``, ``<case>_label.nii.gz`` or
            ``<case>.nii.gz``; ids by :func:`~vesselfm.inference.io.find_labels`.
        prob_dir: optional folder of ``<case>_prob.nii.gz``.

    Returns:
        ``(cases, unpredicted)``: one entry per prediction, sorted by case id (numbers
        numerically; ``gt`` is ``None`` where no label was found), and the ids of the labels
        that no prediction pairs with.

    Raises:
        UserError: ``gt`` holds no NIfTI label, or ``pred_dir`` no ``*_pred`` file.
    """
    from vesselfm.inference.io import find_labels, match_label

    labels = find_labels(gt, key="gt")
    preds = _predictions(pred_dir)
    cases = []
    # by id first; the prefixed-id fallback only among the labels left
    paired = {labels[case] for case in preds if case in labels}
    for case in sorted(preds, key=_natural_key):
        label = match_label(case, labels, taken=paired)
        if label is not None:
            paired.add(label)
        prob = _first_existing(prob_dir, (f"{case}{PROB_SUFFIX}",)) if prob_dir else None
        cases.append(CaseFiles(case=case, pred=preds[case], gt=label, prob=prob))
    unpredicted = sorted(
        (case for case, path in labels.items() if path not in paired), key=_natural_key
    )
    if unpredicted:
        shown = ", ".join(unpredicted[:10]) + (" ..." if len(unpredicted) > 10 else "")
        log.warning(
            "%d label(s) in %s have no prediction and are not scored: %s",
            len(unpredicted),
            gt,
            shown,
        )
    return cases, unpredicted


def find_cases(pred_dir: Path, gt_dir: Path, prob_dir: Path | None = None) -> list[CaseFiles]:
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


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    import nibabel as nib

    from vesselfm.inference.io import gzip_named_nii

    if gzip_named_nii(path):
        raise CaseError(
            f"{path}: the file is gzip-compressed but named .nii; rename it to {path.name}.gz"
        )
    try:
        img = nib.load(str(path))
        data = np.asanyarray(img.dataobj)
    except Exception as err:  # noqa: BLE001 - any unreadable file is this case's error
        raise CaseError(f"{path}: cannot read it as NIfTI ({type(err).__name__}: {err})") from err
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(f"{path}: expected a 3D volume, got shape {data.shape}")
    return (
        data,
        np.asarray(img.affine, dtype=np.float64),
        tuple(float(z) for z in img.header.get_zooms()[:3]),
    )


def _check_grid(
    path: Path,
    data: np.ndarray,
    affine: np.ndarray,
    ref: Path,
    ref_data: np.ndarray,
    ref_affine: np.ndarray,
) -> None:
    if data.shape != ref_data.shape:
        raise CaseError(
            f"{path}: shape {data.shape} differs from {ref.name} {ref_data.shape}; predictions "
            "must be on the label's grid (evaluate does not resample)"
        )
    for where, matrix in ((path, affine), (ref, ref_affine)):
        if not np.isfinite(matrix).all():
            raise CaseError(
                f"{where}: the affine holds NaN or infinite values, so its grid cannot be "
                "checked; fix the header (qform/sform)"
            )
    diff = float(np.abs(affine - ref_affine).max())
    if not diff <= AFFINE_ATOL_MM:
        raise CaseError(
            f"{path}: affine differs from {ref.name} (max difference {diff:.4g}); predictions "
            "must be on the label's grid (evaluate does not resample)"
        )


def score_case(
    files: CaseFiles, threshold: float = 0.5, metrics: Sequence[str] | None = None
) -> dict[str, Any]:
    """Read one case and compute its metrics at native resolution.

    Args:
        files: the case's files (``files.gt`` must be set).
        threshold: applied when the prediction holds probabilities (float, not only 0/1).
        metrics: subset of metric names, ``None`` for all.

    Returns:
        ``{"case": id, **compute_metrics(...)}``.

    Raises:
        CaseError: a missing label, an unreadable file, a shape/affine mismatch, invalid values.
    """
    from vesselfm.metrics import compute_metrics
    from vesselfm.metrics.compute import _as_binary, _check_probabilities

    if files.gt is None:
        raise CaseError(
            f"{files.pred}: no label {files.case}.label.nii.gz or {files.case}.nii.gz in gt= "
            "(a prediction without a label cannot be scored)"
        )
    label, label_affine, spacing = _load(files.gt)
    pred, pred_affine, _ = _load(files.pred)
    _check_grid(files.pred, pred, pred_affine, files.gt, label, label_affine)
    prob = None
    if files.prob is not None:
        prob, prob_affine, _ = _load(files.prob)
        _check_grid(files.prob, prob, prob_affine, files.gt, label, label_affine)
        prob = np.asarray(prob, dtype=np.float32)
        try:  # checked here so that the message names the prob file, not the prediction
            _check_probabilities(prob, str(files.prob))
        except ValueError as err:
            raise CaseError(str(err)) from err
    try:
        _as_binary(np.asarray(label), str(files.gt))
    except ValueError as err:
        raise CaseError(str(err)) from err
    # A float file holding only 0 and 1 is a mask saved as float, not a probability map.
    if pred.dtype.kind == "f" and np.all((pred == 0) | (pred == 1)):
        pred = pred.astype(bool)
    try:
        scores = compute_metrics(
            pred, label, spacing=spacing, threshold=threshold, metrics=metrics, prob=prob
        )
    except (ValueError, TypeError) as err:
        raise CaseError(f"{files.pred}: {err}") from err
    return {"case": files.case, **scores}


def _score_task(
    files: CaseFiles, threshold: float, metrics: Sequence[str] | None
) -> tuple[str, dict[str, Any] | None, str | None]:
    """Worker entry: never raises for a case-level problem, so one bad case stops nothing."""
    try:
        return files.case, score_case(files, threshold, metrics), None
    except CaseError as err:
        return files.case, None, str(err)


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
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, Path], list[str]]:
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

    Returns:
        ``(rows, errors, paths, missing_predictions)``: a row per scored case (sorted by case
        id), ``{case: reason}`` for the cases that could not be scored, the report paths, and
        the ids of the labels without a prediction (listed in the reports, not scored).

    Raises:
        UserError: missing folders, no labels, no predictions, bad ``workers``/``threshold``,
            ``output`` not a writable folder or holding reports vesselfm did not write, or an
            expected case without a prediction.
    """
    from tqdm.auto import tqdm

    from vesselfm.inference.io import check_output_dir
    from vesselfm.metrics import write_reports
    from vesselfm.metrics.compute import _select
    from vesselfm.metrics.report import REPORT_FILES

    if output in (None, "", "???"):
        raise UserError("output= is required: give the folder for the reports, e.g. output=eval")
    pred_dir = _folder(pred, "pred")
    prob_dir = _folder(prob, "prob") if prob not in (None, "") else None
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UserError(f"workers must be an integer >= 1, got {workers!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"threshold must be in [0, 1], got {threshold}")
    names = list(_select(metrics))
    output = check_output_dir(output, "output", REPORT_FILES, overwrite)

    cases, unpredicted = pair_cases(pred_dir, gt, prob_dir)
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

    def collect(case: str, row: dict[str, Any] | None, error: str | None) -> None:
        if error is not None:
            errors[case] = error
            log.error("case %s: %s", case, error)
        else:
            rows[case] = row  # type: ignore[assignment]

    bar = tqdm(total=len(cases), desc="evaluate", unit="case")
    if workers == 1:
        for files in cases:
            collect(*_score_task(files, threshold, names))
            bar.update()
    else:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(workers, len(cases)), mp_context=ctx) as pool:
            futures = [pool.submit(_score_task, files, threshold, names) for files in cases]
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
    log.info(
        "scored %d of %d case(s); wrote %s",
        len(ordered),
        total,
        ", ".join(str(p) for p in paths.values()),
    )
    return ordered, failed, paths, unpredicted


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run :func:`evaluate_folders` from the composed ``evaluate.yaml``.

    Returns:
        ``{"rows", "errors", "paths", "missing_predictions"}``.

    Raises:
        UserError: bad configuration, an expected case (``cases=``/``split=``) without a
            prediction, or some case could not be scored (after writing the reports of the
            others).
    """
    for key in ("pred", "gt", "output"):
        if OmegaConf.is_missing(cfg, key):
            raise UserError(
                f"{key}= is required: python -m vesselfm.evaluate pred=DIR gt=DIR output=DIR"
            )
    metrics = cfg.get("metrics")
    if metrics is not None:
        metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    try:
        workers = int(cfg.get("workers", 1))
    except (TypeError, ValueError) as err:
        raise UserError(f"workers must be an integer >= 1, got {cfg.get('workers')!r}") from err
    cases = cfg.get("cases")
    if OmegaConf.is_config(cases):
        cases = OmegaConf.to_container(cases, resolve=True)
    expected = expected_cases(cases, cfg.get("split"), cfg.get("manifest"))
    rows, errors, paths, missing = evaluate_folders(
        pred=cfg.pred,
        gt=cfg.gt,
        output=cfg.output,
        prob=cfg.get("prob"),
        workers=workers,
        threshold=float(cfg.get("threshold", 0.5)),
        metrics=metrics,
        expected=expected[0] if expected else None,
        expected_by=expected[1] if expected else "cases=",
        overwrite=bool(cfg.get("overwrite", False)),
    )
    if errors:
        first_case = next(iter(errors))
        where = f"; the other {len(rows)} are in {cfg.output}" if rows else ""
        raise UserError(
            f"{len(errors)} of {len(rows) + len(errors)} case(s) could not be scored "
            f"(case {first_case}: {errors[first_case]}){where}"
        )
    return {"rows": rows, "errors": errors, "paths": paths, "missing_predictions": missing}


@hydra_entrypoint("evaluate")
def main(cfg: DictConfig) -> None:
    """CLI: score the folders and write the reports."""
    result = evaluate(cfg)
    if result["paths"]:
        print(result["paths"]["md"].read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
