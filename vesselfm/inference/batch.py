"""Segment many scans with one predictor: the loop behind ``python -m vesselfm.infer``.

:func:`segment_files` takes scan paths and a built
:class:`~vesselfm.inference.SlidingWindowPredictor` and returns a :class:`BatchResult`; it needs
no Hydra, so notebooks, scripts and the training demo call it as the CLI does. A scan that fails
is recorded and skipped while the others go on; :meth:`BatchResult.raise_for_errors` turns the
failures (and, with labels, the unlabelled cases) into the CLI's one-line error.

Checks about the run (case ids, the output folder) run before its first write, checks about a
case (its output names, outputs vesselfm did not write) before that case's first write. Case ids
are unique per run (:func:`vesselfm.io.unique_case_ids`); with ``labels``, each case is scored
as ``evaluate`` scores it (:func:`vesselfm.metrics.folders.score_volumes`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vesselfm.utils.errors import UserError

if TYPE_CHECKING:
    from vesselfm.inference.predictor import SlidingWindowPredictor

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes"}  # VESSELFM_DEBUG values that turn debugging on


def default_output_dir(spec: str | os.PathLike[str]) -> Path:
    """``vesselfm_pred/`` in the input's folder (the folder itself when ``spec`` is one).

    Args:
        spec: ``input=``: a file, a folder or a glob.
    """
    from vesselfm.io import static_root

    path = Path(spec).expanduser()
    if path.is_dir():
        return path / "vesselfm_pred"
    if path.is_file():
        return path.parent / "vesselfm_pred"
    return static_root(path) / "vesselfm_pred"  # a glob: the deepest folder without wildcards


def case_ids(inputs: Sequence[str | os.PathLike[str]]) -> dict[Path, str]:
    """The case id of every scan, unique within the run (:func:`vesselfm.io.unique_case_ids`);
    the files whose ids got their folders' names prefixed are logged.

    Raises:
        UserError: ids that clash and that the files' folders cannot tell apart, or a refused id.
    """
    from vesselfm.io import renamed_cases, unique_case_ids

    ids = unique_case_ids([Path(p) for p in inputs])
    renamed = renamed_cases(ids)
    if renamed:
        log.info(
            "%d input(s) share their file's case id with another; their folders' names are "
            "prefixed (<parent>_<name>):",
            len(renamed),
        )
        for line in renamed:
            log.info("  renamed: %s", line)
    return ids


@dataclass
class BatchResult:
    """What :func:`segment_files` did.

    Attributes:
        output_dir: the folder the outputs are in.
        expected: the number of scans asked for.
        cases: one dict per scan done or skipped, in input order, as
            :meth:`~vesselfm.inference.SlidingWindowPredictor.predict_file` returns it:
            ``{"case", "input", "pred", ["prob"], ["mesh"], "skipped", ["shape", "timings"]}``.
        failed: ``(file, reason)`` of each scan that failed, in input order.
        failed_cases: the same reasons by case id.
        metrics: with labels, one row per scored case, ``{"case": id, **compute_metrics(...)}``.
        reports: with labels, ``{"csv", "json", "md"}`` paths of ``metrics.csv``,
            ``summary.json`` and ``summary.md``; else ``None``.
        missing_labels: with labels, the case ids segmented but not scored (no label).
        labels_from: where the labels came from, for messages (e.g. ``"label=/data/labels"``).
        rank, world_size: this process among the run's (DDP); ``cases`` and ``failed`` are its
            share's.
        shard: ``(K, N)`` of ``shard=K/N``, else ``None``.
        summary: on rank 0, ``run_summary.json`` as written (every status file in the folder
            merged: ``expected``, ``done``, ``skipped``, ``failed``, ``pending``, ...).
    """

    output_dir: Path
    expected: int
    cases: list[dict[str, Any]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    failed_cases: dict[str, str] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    reports: dict[str, Path] | None = None
    missing_labels: list[str] = field(default_factory=list)
    labels_from: str | None = None
    rank: int = 0
    world_size: int = 1
    shard: tuple[int, int] | None = None
    summary: dict[str, Any] | None = None

    @property
    def segmented(self) -> int:
        """Scans segmented in this run."""
        return sum(not r["skipped"] for r in self.cases)

    @property
    def skipped(self) -> int:
        """Scans skipped because their outputs exist (a resumed run)."""
        return sum(r["skipped"] for r in self.cases)

    def raise_for_errors(self) -> None:
        """Raise the run's one-line error when a scan failed or a case had no label.

        Raises:
            UserError: the reason of the only scan (one scan), or how many failed and the first
                reason; else, with labels, how many cases had no label and which.
        """
        if self.failed:
            if self.expected == 1:
                raise UserError(self.failed[0][1])
            raise UserError(
                f"{len(self.failed)} of {self.expected} scans failed (first: {self.failed[0][1]}); "
                "see the log above"
            )
        if self.missing_labels:
            missing = self.missing_labels
            shown = ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else "")
            raise UserError(
                f"{self.labels_from}: {len(missing)} of {self.expected} case(s) have no label, so "
                f"they were segmented but not scored ({shown}); add their labels or leave label= out"
            )


def segment_files(
    inputs: Sequence[str | os.PathLike[str]] | Mapping[Path, str],
    predictor: SlidingWindowPredictor,
    output_dir: str | os.PathLike[str],
    *,
    labels: Mapping[str, Path] | None = None,
    labels_from: str = "labels",
    save_prob: bool = False,
    save_mesh: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_on_error: bool = False,
    output_format: str | Sequence[str] | None = None,
    devices: int = 1,
    num_nodes: int = 1,
    shard: str | Sequence[int] | None = None,
    num_workers: int | str | None = "auto",
    num_classes: int | None = None,
) -> BatchResult:
    """Segment every scan with ``predictor`` and write its outputs into ``output_dir``.

    Runs :mod:`vesselfm.inference.cohort`'s pipeline through Lightning's ``Trainer.predict``:
    loader workers read the next scans while one is predicted, a writer thread writes. Per scan,
    the files :meth:`~vesselfm.inference.SlidingWindowPredictor.predict_file` would write (the
    same bytes):
    ``<case>_pred.nii.gz`` (``.nrrd``/``.mha`` by ``output_format``; and ``<case>_prob.<same>``,
    ``<case>_pred.stl``); a case whose outputs
    exist and were written by vesselfm with the same weights and prediction settings is skipped
    unless ``overwrite`` (ours with other settings are redone). Each process writes
    ``status-<rank|shard>.jsonl`` (one line per case) and rank 0 merges every status file in
    the folder into ``run_summary.json``. With ``labels``, each case
    is scored against its label at the predictor's threshold (the one its masks use), as
    ``evaluate`` scores it (:func:`vesselfm.metrics.folders.score_volumes`), and ``metrics.csv``,
    ``summary.json`` and ``summary.md`` are written into ``output_dir`` at the end. A case line per scan and a summary
    are logged (``logging``, logger ``vesselfm.inference.batch``).

    Args:
        inputs: the scans (``.nii``/``.nii.gz``, ``.nrrd``, ``.mha``/``.mhd``), or ``{scan: case id}`` when the ids are chosen
            by the caller; ids default to :func:`case_ids`.
        predictor: the predictor, built once (network, preprocessing, threshold, TTA).
        output_dir: the output folder (created if missing).
        labels: label files by case id (:func:`vesselfm.io.find_labels`), paired with each case
            by :func:`vesselfm.io.match_label`; ``None``: no scoring, no reports.
        labels_from: where ``labels`` came from, named in messages (the CLI passes
            ``"label=<spec>"``).
        save_prob: also write ``<case>_prob.<ext>`` (float32 in [0, 1]).
        save_mesh: also write ``<case>_pred.stl`` (scanner mm).
        overwrite: redo every case and replace whatever is there, even outputs vesselfm did not
            write.
        progress: a progress bar over the scans (with two or more); the predictor's own
            ``progress`` says whether each sliding-window pass shows one.
        stop_on_error: re-raise a scan's error (after logging it) instead of recording it and
            going on; also on with the environment variable ``VESSELFM_DEBUG=1``.
        output_format: ``nifti``, ``nrrd``, ``mha`` or ``seg.nrrd``, or a list of them (each
            written), for every case; ``None``: each scan's own format
            (:func:`vesselfm.io.output_formats_for`).
        devices, num_nodes: processes per node and nodes (Lightning's DDP; started by
            Lightning, ``torchrun`` or SLURM); each takes a disjoint share of the cases
            (:mod:`vesselfm.inference.cohort`). From Python, more than one device needs a
            launcher (``torchrun``): Lightning re-runs the script for the other ranks.
        shard: ``"K/N"``: only the K-th of N deterministic shares (job arrays), or ``None``.
        num_workers: DataLoader workers reading and preprocessing the next scans (one scan
            each) while one is predicted; ``"auto"``: 2 where there are 3 or more cores, else 1.
            ``0`` reads in the predicting process.
        num_classes: the network's output classes; ``None``: read from the network
            (:func:`vesselfm.inference.segments.network_classes`). More than 1: a segment model
            (``experiment=imagecasx_segments``): each ``<case>_pred`` is a uint8 label map of
            the ImageCAS-X codes (argmax of the classes stitched in float16,
            :func:`vesselfm.inference.segments.predict_segments`); a ``.seg.nrrd``/DICOM-SEG
            holds one named, coloured, coded segment per code present; ``save_prob`` writes
            ``<case>_prob.nii.gz`` ``(X, Y, Z, C)`` float32, ``save_mesh`` also
            ``<case>_pred_<segment>.stl`` per segment present.

    Returns:
        A :class:`BatchResult`; failed and unlabelled cases are in it, not raised (see
        :meth:`BatchResult.raise_for_errors`).

    Raises:
        ValueError: an unknown ``output_format``, listing the known ones.
        UserError: clashing case ids, or an output folder that cannot be written or holds
            reports vesselfm did not write (with ``labels``, unless ``overwrite``): before any
            write.

    Example:
        >>> from pathlib import Path
        >>> from vesselfm.inference import SlidingWindowPredictor, segment_files
        >>> from vesselfm.io import find_labels
        >>> from vesselfm.models import load_model, model_config
        >>> net = load_model(model_config("vesselfm_base"))  # doctest: +SKIP
        >>> predictor = SlidingWindowPredictor(net, device="auto", threshold=0.5)  # doctest: +SKIP
        >>> result = segment_files(  # doctest: +SKIP
        ...     sorted(Path("scans").glob("*.img.nii.gz")), predictor, "preds",
        ...     labels=find_labels("labels"), save_prob=True,
        ... )
        >>> result.segmented, [row["dice"] for row in result.metrics]  # doctest: +SKIP
        (2, [0.81, 0.77])
    """
    from vesselfm.inference.cohort import (
        SUMMARY_NAME,
        CohortRun,
        parse_shard,
        prediction_settings,
        run_cohort,
        write_run_summary,
    )
    from vesselfm.inference.segments import check_segment_predictor, network_classes
    from vesselfm.io import (
        check_case_id,
        check_output_dir,
        check_output_formats,
        ensure_writable_dir,
        pair_labels,
    )
    from vesselfm.metrics.report import REPORT_FILES
    from vesselfm.utils.io import remove_stale_temporaries
    from vesselfm.utils.outputs import fork_run

    output_format = check_output_formats(output_format)
    shard_pair = parse_shard(shard)
    classes = network_classes(predictor.network) if num_classes is None else int(num_classes)
    if classes > 1:
        check_segment_predictor(predictor)
    devices, num_nodes = _positive(devices, "devices"), _positive(num_nodes, "num_nodes")
    workers = resolve_num_workers(num_workers)
    cases = dict(inputs) if isinstance(inputs, Mapping) else case_ids(inputs)
    for path, case in cases.items():
        check_case_id(path, case, "input")
    # the labels are paired as evaluate pairs them (one rule, before the first write)
    pairs = pair_labels(cases.values(), labels)[0] if labels is not None else None
    # with labels, the reports are replaced at the end: refused now if they are not ours
    reports = REPORT_FILES if labels is not None else ()
    check_output_dir(output_dir, "output", (*reports, SUMMARY_NAME), overwrite)
    # the first write of the run: every check about the run has passed
    output_dir = ensure_writable_dir(output_dir)
    for stale in remove_stale_temporaries(output_dir):
        log.info("removed %s, a temporary file of an interrupted run", stale)
    log.info("%d scan(s) -> %s | %s", len(cases), output_dir, predictor.describe())
    result = BatchResult(output_dir, expected=len(cases), labels_from=labels_from)
    options = {
        "save_prob": save_prob,
        "save_mesh": save_mesh,
        "overwrite": overwrite,
        "output_format": output_format,
        "num_classes": classes,
    }
    stop_on_error = stop_on_error or os.environ.get("VESSELFM_DEBUG", "").lower() in _TRUE
    settings = prediction_settings(predictor)
    if classes > 1:  # label maps of codes: not the outputs of a lumen model with these weights
        settings["num_classes"] = classes
    fork_run(prediction=settings)  # the outputs' record names the settings resume compares
    run = CohortRun(
        cases,
        predictor,
        output_dir,
        result,
        shard=shard_pair,
        options=options,
        settings=settings,
        pairs=pairs,
        num_workers=workers,
        progress=progress,
        stop_on_error=stop_on_error,
    )
    rank, world_size = run_cohort(run, devices, num_nodes)
    result.cases = [done for _, done in sorted(run.done, key=lambda item: item[0])]
    for _, path, case, reason in sorted(run.failed):
        result.failed.append((path, reason))
        result.failed_cases[case] = reason
    result.rank, result.world_size, result.shard = rank, world_size, shard_pair
    if rank == 0:
        if run.status is not None:
            result.summary = write_run_summary(output_dir, sorted(cases.values()))
            _merge_ranks(result, run, set(cases.values()))
        if labels is not None:
            _write_reports(result)
    _log_summary(result, labels is not None)
    return result


def resolve_num_workers(num_workers: int | str | None) -> int:
    """``num_workers``: a count, or ``auto``/``None``: 2 (one scan read while another waits),
    at most the cores this process may use less one for prediction, at least 1."""
    if num_workers is None or str(num_workers).strip().lower() == "auto":
        from vesselfm.utils.hardware import available_cpus

        return max(1, min(2, available_cpus() - 1))
    try:
        count = int(num_workers)
    except (TypeError, ValueError) as err:
        raise ValueError(f"num_workers must be auto or a count >= 0, got {num_workers!r}") from err
    if count < 0:
        raise ValueError(f"num_workers must be auto or a count >= 0, got {num_workers!r}")
    return count


def _positive(value: int, key: str) -> int:
    try:
        count = int(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key} must be a count >= 1, got {value!r}") from err
    if count < 1:
        raise ValueError(f"{key} must be a count >= 1, got {value!r}")
    return count


def _merge_ranks(result: BatchResult, run: Any, cases: set[str]) -> None:
    """On rank 0 of a run on several processes: the failures, and with labels the rows, of every
    process (the latest line of each case in the status files), for the run's one error and
    its reports. A shard's own run holds the rows of every shard finished so far."""
    if run.world_size == 1 and (run.shard is None or run.pairs is None):
        return
    from vesselfm.inference.cohort import read_status

    latest, _ = read_status(result.output_dir)
    if run.world_size > 1:
        failed = [
            (c, r) for c, r in sorted(latest.items()) if c in cases and r["state"] == "failed"
        ]
        result.failed = [(str(r.get("input")), str(r.get("reason"))) for _, r in failed]
        result.failed_cases = {c: str(r.get("reason")) for c, r in failed}
    if run.pairs is not None:
        ours = [c for c in sorted(latest) if c in cases]
        result.metrics = [latest[c]["metrics"] for c in ours if latest[c].get("metrics")]
        result.missing_labels = [c for c in ours if latest[c].get("missing_label")]


def _score(
    case: str, done: dict[str, Any], label_path: Path, threshold: float, with_prob: bool = True
) -> dict[str, Any]:
    """``{"case": case, **compute_metrics(...)}`` of a case's prediction against its label file,
    by :func:`vesselfm.metrics.folders.score_volumes`, as ``evaluate`` scores it: from the arrays
    just predicted, or (a case skipped because its outputs exist) from the files it left; with the
    probabilities only when they are saved (``save_prob``), as ``evaluate prob=`` sees them."""
    from vesselfm.io import format_of, output_paths
    from vesselfm.metrics.folders import CaseError, read_case_volume, score_volumes

    try:
        label = read_case_volume(label_path)
        if done["skipped"]:
            pred = read_case_volume(done["pred"])
            prob_path = output_paths(
                done["pred"].parent, case, done["format"], format_of(done["input"])
            )["prob"]
            prob = read_case_volume(prob_path) if with_prob and prob_path.exists() else None
        else:
            arrays = done["arrays"]
            pred = arrays["scan"].with_array(arrays["mask"], done["pred"])
            # only what is on disk, so a resumed run and evaluate score the same row
            prob = (
                arrays["scan"].with_array(arrays["prob"])
                if with_prob and done.get("prob")
                else None
            )
        return score_volumes(case, pred, label, prob, threshold)
    except CaseError as err:
        raise UserError(str(err)) from err


def _reason(err: Exception, path: Path) -> str:
    """One line saying why ``path`` failed, naming the file; a bug's reason names its type."""
    reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not isinstance(err, UserError | ValueError | OSError):
        reason = f"{type(err).__name__}: {reason}"
    if str(path) not in reason:
        reason = f"{path}: {reason}"
    return reason


def _write_reports(result: BatchResult) -> None:
    from vesselfm.metrics import write_reports

    result.reports = write_reports(
        result.metrics,
        result.output_dir,
        expected=result.expected,
        missing={"missing_labels": result.missing_labels},
        failed=result.failed_cases,
    )
    log.info(
        "metrics of %d of %d case(s): %s",
        len(result.metrics),
        result.expected,
        ", ".join(str(p) for p in result.reports.values()),
    )


def _log_summary(result: BatchResult, scored: bool) -> None:
    counts = f"; scored {len(result.metrics)} of {result.expected}" if scored else ""
    log.info(
        "summary: %d segmented, %d skipped (outputs exist), %d failed%s; outputs in %s",
        result.segmented,
        result.skipped,
        len(result.failed),
        counts,
        result.output_dir,
    )
    for _, reason in result.failed:
        log.info("  failed: %s", reason)
    if result.missing_labels:
        log.info("  no label (not scored): %s", ", ".join(result.missing_labels))
