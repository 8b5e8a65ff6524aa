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
) -> BatchResult:
    """Segment every scan with ``predictor`` and write its outputs into ``output_dir``.

    Per scan, :meth:`~vesselfm.inference.SlidingWindowPredictor.predict_file` writes
    ``<case>_pred.nii.gz`` (``.nrrd``/``.mha`` by ``output_format``; and ``<case>_prob.<same>``,
    ``<case>_pred.stl``); a case whose outputs
    exist and were written by vesselfm is skipped unless ``overwrite``. With ``labels``, each case
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
    from tqdm.auto import tqdm

    from vesselfm.io import (
        check_case_id,
        check_output_dir,
        check_output_formats,
        ensure_writable_dir,
        pair_labels,
    )
    from vesselfm.metrics.report import REPORT_FILES
    from vesselfm.utils.io import remove_stale_temporaries

    output_format = check_output_formats(output_format)
    cases = dict(inputs) if isinstance(inputs, Mapping) else case_ids(inputs)
    for path, case in cases.items():
        check_case_id(path, case, "input")
    # the labels are paired as evaluate pairs them (one rule, before the first write)
    pairs = pair_labels(cases.values(), labels)[0] if labels is not None else None
    # with labels, the reports are replaced at the end: refused now if they are not ours
    check_output_dir(output_dir, "output", REPORT_FILES if labels is not None else (), overwrite)
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
    }
    stop_on_error = stop_on_error or os.environ.get("VESSELFM_DEBUG", "").lower() in _TRUE

    bar = tqdm(cases.items(), desc="scans", unit="scan", disable=not progress or len(cases) < 2)
    for path, case in bar:
        path = Path(path)
        bar.set_postfix_str(path.name)
        try:
            done = _segment_case(path, case, predictor, output_dir, pairs, result, **options)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - one bad scan must not stop the others
            reason = _reason(err, path)
            log.error("failed: %s", reason)
            log.debug("traceback of %s", path, exc_info=True)
            if stop_on_error:
                raise
            result.failed.append((str(path), reason))
            result.failed_cases[case] = reason
            continue
        result.cases.append(done)

    if labels is not None:
        _write_reports(result)
    _log_summary(result, labels is not None)
    return result


def _segment_case(
    path: Path,
    case: str,
    predictor: SlidingWindowPredictor,
    output_dir: Path,
    pairs: Mapping[str, Path | None] | None,
    result: BatchResult,
    **options: Any,
) -> dict[str, Any]:
    """Predict one scan, score it when there are labels (a row, or its case listed as
    unlabelled, added to ``result``), log its line; return ``predict_file``'s dict."""
    done = predictor.predict_file(
        path, output_dir, case=case, return_arrays=pairs is not None, **options
    )
    if pairs is not None:
        label_path = pairs[case]
        if label_path is None:
            result.missing_labels.append(case)
            log.error(
                "%s: no label for case %s in %s; segmented, not scored",
                path.name,
                case,
                result.labels_from,
            )
        else:
            result.metrics.append(_score(case, done, label_path, predictor.threshold))
    done.pop("arrays", None)
    if not done["skipped"]:
        t = done["timings"]
        log.info(
            "%s: %s in %.1f s (read %.1f, predict %.1f, write %.1f)",
            done["case"],
            done["pred"],
            t["total"],
            t["read"],
            t["predict"],
            t["write"],
        )
    return done


def _score(case: str, done: dict[str, Any], label_path: Path, threshold: float) -> dict[str, Any]:
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
            prob = read_case_volume(prob_path) if prob_path.exists() else None
        else:
            arrays = done["arrays"]
            pred = arrays["scan"].with_array(arrays["mask"], done["pred"])
            # only what is on disk, so a resumed run and evaluate score the same row
            prob = arrays["scan"].with_array(arrays["prob"]) if done.get("prob") else None
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
