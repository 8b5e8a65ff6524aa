"""Score predicted masks against labels: ``python -m vesselfm.evaluate pred=DIR gt=DIR output=DIR``.

Cases pair by id: ``<case>_pred.nii.gz`` in ``pred`` with ``<case>.label.nii.gz`` (ImageCAS) or
``<case>.nii.gz`` in ``gt``, and ``<case>_prob.nii.gz`` in ``prob`` when given (for ROC AUC and
AP). Each pair must share shape and affine; a case that does not, or cannot be read, is reported
(file and reason) and skipped, the others are scored, and the run ends with a non-zero status.
Scoring is at native resolution with the label header's voxel spacing. Writes ``metrics.csv``,
``summary.json`` and ``summary.md`` (see :mod:`vesselfm.metrics.report`).

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

from vesselfm.utils.cli import UserError, hydra_entrypoint

log = logging.getLogger(__name__)

NIFTI_SUFFIXES: tuple[str, ...] = (".nii.gz", ".nii")
PRED_SUFFIX = "_pred"
PROB_SUFFIX = "_prob"
AFFINE_ATOL_MM = 1e-3


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


def find_cases(pred_dir: Path, gt_dir: Path, prob_dir: Path | None = None) -> list[CaseFiles]:
    """Pair ``<case>_pred.nii.gz`` files with their labels (and probability maps).

    Args:
        pred_dir: folder of ``<case>_pred.nii.gz`` (or ``.nii``).
        gt_dir: folder of ``<case>.label.nii.gz`` or ``<case>.nii.gz``.
        prob_dir: optional folder of ``<case>_prob.nii.gz``.

    Returns:
        One entry per prediction, sorted by case id (numbers numerically); ``gt`` is ``None``
        where no label was found.

    Raises:
        UserError: ``gt_dir`` holds no NIfTI file, or ``pred_dir`` no ``*_pred`` file.
    """
    # ImageCAS keeps <case>.img.nii.gz beside <case>.label.nii.gz: images are not labels.
    gt_files = [p for p in _nifti_files(gt_dir) if not strip_nifti(p.name).endswith(".img")]
    if not gt_files:
        raise UserError(
            f"gt={gt_dir}: no NIfTI labels found; expected <case>.label.nii.gz or <case>.nii.gz files"
        )
    preds = {
        strip_nifti(p.name)[: -len(PRED_SUFFIX)]: p
        for p in _nifti_files(pred_dir)
        if strip_nifti(p.name).endswith(PRED_SUFFIX)
    }
    if not preds:
        raise UserError(
            f"pred={pred_dir}: no <case>_pred.nii.gz files found; point pred= at the folder "
            "python -m vesselfm.infer wrote"
        )
    cases = []
    for case in sorted(preds, key=_natural_key):
        gt = _first_existing(gt_dir, (f"{case}.label", case))
        prob = _first_existing(prob_dir, (f"{case}{PROB_SUFFIX}",)) if prob_dir else None
        cases.append(CaseFiles(case=case, pred=preds[case], gt=gt, prob=prob))

    label_ids = {strip_nifti(p.name).removesuffix(".label") for p in gt_files}
    unpredicted = sorted(label_ids - set(preds), key=_natural_key)
    if unpredicted:
        shown = ", ".join(unpredicted[:10]) + (" ..." if len(unpredicted) > 10 else "")
        log.warning(
            "%d label(s) in %s have no prediction and are not scored: %s",
            len(unpredicted),
            gt_dir,
            shown,
        )
    return cases


def _load(path: Path) -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    import nibabel as nib

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
    diff = float(np.abs(affine - ref_affine).max())
    if diff > AFFINE_ATOL_MM:
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

    if files.gt is None:
        raise CaseError(
            f"{files.pred}: no label {files.case}.label.nii.gz or {files.case}.nii.gz in the gt folder"
        )
    label, label_affine, spacing = _load(files.gt)
    pred, pred_affine, _ = _load(files.pred)
    _check_grid(files.pred, pred, pred_affine, files.gt, label, label_affine)
    prob = None
    if files.prob is not None:
        prob, prob_affine, _ = _load(files.prob)
        _check_grid(files.prob, prob, prob_affine, files.gt, label, label_affine)
        prob = np.asarray(prob, dtype=np.float32)
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
) -> tuple[list[dict[str, Any]], dict[str, str], dict[str, Path]]:
    """Score every ``<case>_pred`` file in ``pred`` against ``gt`` and write the reports.

    Args:
        pred: folder of ``<case>_pred.nii.gz``.
        gt: folder of ``<case>.label.nii.gz`` / ``<case>.nii.gz``.
        output: folder for ``metrics.csv``, ``summary.json``, ``summary.md``.
        prob: optional folder of ``<case>_prob.nii.gz`` (ROC AUC and AP).
        workers: parallel processes; 1 scores in this process.
        threshold: for prediction files that hold probabilities.
        metrics: subset of metric names, ``None`` for all.

    Returns:
        ``(rows, errors, paths)``: a row per scored case (sorted by case id), ``{case: reason}``
        for the cases that could not be scored, and the report paths (empty if nothing scored).

    Raises:
        UserError: missing folders, no labels, no predictions, bad ``workers``/``threshold``.
    """
    from tqdm.auto import tqdm

    from vesselfm.metrics import write_reports
    from vesselfm.metrics.compute import _select

    pred_dir, gt_dir = _folder(pred, "pred"), _folder(gt, "gt")
    prob_dir = _folder(prob, "prob") if prob not in (None, "") else None
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise UserError(f"workers must be an integer >= 1, got {workers!r}")
    if not 0.0 <= float(threshold) <= 1.0:
        raise UserError(f"threshold must be in [0, 1], got {threshold}")
    names = list(_select(metrics))

    cases = find_cases(pred_dir, gt_dir, prob_dir)
    if prob_dir is not None:
        missing = [c.case for c in cases if c.prob is None]
        if missing:
            log.warning(
                "no <case>_prob.nii.gz in %s for %d case(s) (%s): their AUCs come from the pred file, or are empty",
                prob_dir,
                len(missing),
                ", ".join(missing[:5]),
            )
    log.info(
        "scoring %d case(s) from %s against %s with %d worker(s)",
        len(cases),
        pred_dir,
        gt_dir,
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
    paths: dict[str, Path] = {}
    if ordered:
        paths = write_reports(ordered, output)
        log.info("wrote %s", ", ".join(str(p) for p in paths.values()))
    return ordered, errors, paths


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run :func:`evaluate_folders` from the composed ``evaluate.yaml``.

    Returns:
        ``{"rows", "errors", "paths"}``.

    Raises:
        UserError: bad configuration, or some case could not be scored (after writing the
            reports of the others).
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
    rows, errors, paths = evaluate_folders(
        pred=cfg.pred,
        gt=cfg.gt,
        output=cfg.output,
        prob=cfg.get("prob"),
        workers=workers,
        threshold=float(cfg.get("threshold", 0.5)),
        metrics=metrics,
    )
    if errors:
        first_case = next(iter(errors))
        where = f"; the other {len(rows)} are in {cfg.output}" if rows else ""
        raise UserError(
            f"{len(errors)} of {len(rows) + len(errors)} case(s) could not be scored "
            f"(case {first_case}: {errors[first_case]}){where}"
        )
    return {"rows": rows, "errors": errors, "paths": paths}


@hydra_entrypoint("evaluate")
def main(cfg: DictConfig) -> None:
    """CLI: score the folders and write the reports."""
    result = evaluate(cfg)
    if result["paths"]:
        print(result["paths"]["md"].read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
