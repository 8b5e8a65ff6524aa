"""Segment vessels in NIfTI scans: ``python -m vesselfm.infer input=scan.nii.gz``.

``infer(cfg)`` does the work and can be called from Python; ``main()`` is the Hydra CLI.
A file that fails is reported and skipped while the others go on; the run exits non-zero if
any failed, or (with ``label=``) if a case had no label to be scored against.

Checks about the run (inputs, case ids, labels, the output folder) run before its first write,
checks about a case (its output names, outputs vesselfm did not write) before that case's first
write. Case ids are unique per run (:func:`vesselfm.io.unique_case_ids`); with ``label=``, each
case is scored as ``evaluate`` scores it (:func:`vesselfm.metrics.folders.score_volumes`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vesselfm.utils.cli import UserError, hydra_entrypoint

log = logging.getLogger(__name__)


def default_output_dir(spec: str) -> Path:
    """``vesselfm_pred/`` in the input's folder (the folder itself when ``input=`` is one)."""
    from vesselfm.io import static_root

    path = Path(spec).expanduser()
    if path.is_dir():
        return path / "vesselfm_pred"
    if path.is_file():
        return path.parent / "vesselfm_pred"
    return static_root(path) / "vesselfm_pred"  # a glob: the deepest folder without wildcards


def _resolve_preprocess_and_threshold(cfg: DictConfig) -> tuple[Any, float]:
    """Preprocessing and threshold: explicit keys first, then the checkpoint's record, then defaults."""
    from vesselfm.data.preprocessing import PreprocessConfig
    from vesselfm.inference import read_checkpoint_metadata
    from vesselfm.models import trust_flag

    meta = read_checkpoint_metadata(
        cfg.model.get("checkpoint"),
        cfg.model.get("revision"),
        cfg.model.get("cache_dir"),
        trust_checkpoint=trust_flag(cfg.model.get("trust_checkpoint")),
    )
    if cfg.get("preprocess") is not None:
        preprocess = PreprocessConfig.from_mapping(
            OmegaConf.to_container(cfg.preprocess, resolve=True)
        )
    else:
        preprocess = meta.get("preprocess") or PreprocessConfig()
        if meta.get("preprocess") is not None:
            log.info("preprocessing from the checkpoint: %s", preprocess.to_dict())
    if cfg.get("threshold") is not None:
        threshold = float(cfg.threshold)
    elif meta.get("threshold") is not None:
        threshold = float(meta["threshold"])
        log.info("threshold %.3f from the checkpoint", threshold)
    else:
        threshold = float(cfg.inference.threshold)
    return preprocess, threshold


def _score(case: str, result: dict[str, Any], label_path: Path, threshold: float) -> dict[str, Any]:
    """``{"case": case, **compute_metrics(...)}`` of a case's prediction against its label file,
    by :func:`vesselfm.metrics.folders.score_volumes`, as ``evaluate`` scores it: from the arrays
    just predicted, or (a case skipped because its outputs exist) from the files it left, with its
    probabilities when they were saved."""
    from vesselfm.io import output_paths
    from vesselfm.metrics.folders import CaseError, read_case_volume, score_volumes

    try:
        label = read_case_volume(label_path)
        if result["skipped"]:
            pred = read_case_volume(result["pred"])
            prob_path = output_paths(result["pred"].parent, case)["prob"]
            prob = read_case_volume(prob_path) if prob_path.exists() else None
        else:
            arrays = result["arrays"]
            pred = arrays["scan"].with_array(arrays["mask"], result["pred"])
            prob = arrays["scan"].with_array(arrays["prob"])
        return score_volumes(case, pred, label, prob, threshold)
    except CaseError as err:
        raise UserError(str(err)) from err


def infer(cfg: DictConfig) -> dict[str, Any]:
    """Segment every scan named by ``cfg.input`` and write the outputs into ``cfg.output``.

    Args:
        cfg: the composed ``infer.yaml``.

    Returns:
        ``{"output": dir, "results": [per-case dicts], "failed": [(file, reason)],
        "metrics": [rows] | None, "reports": {...} | None}``.

    Raises:
        UserError: bad input or output, clashing case ids the folders cannot tell apart, weights
            missing, or any scan failed or (with ``label=``) had no label (after all the others
            were processed).
    """
    from tqdm.auto import tqdm

    from vesselfm.inference import SlidingWindowPredictor
    from vesselfm.io import (
        check_output_dir,
        ensure_writable_dir,
        find_inputs,
        find_labels,
        match_label,
        renamed_cases,
        unique_case_ids,
    )
    from vesselfm.metrics.report import REPORT_FILES
    from vesselfm.models import load_model
    from vesselfm.utils.io import remove_stale_temporaries

    overwrite = bool(cfg.overwrite)
    output_dir = Path(
        str(cfg.output) if cfg.get("output") else default_output_dir(str(cfg.input))
    ).expanduser()
    # our own outputs (inside output=, or named <case>_pred/_prob) are never inputs
    inputs = find_inputs(cfg.input, output_dir=output_dir)
    cases = unique_case_ids(inputs)
    renamed = renamed_cases(cases)
    if renamed:
        log.info(
            "%d input(s) share their file's case id with another; their folders' names are "
            "prefixed (<parent>_<name>):",
            len(renamed),
        )
        for line in renamed:
            log.info("  renamed: %s", line)
    labels = None
    if cfg.get("label"):
        labels = find_labels(cfg.label, key="label", exclude=inputs)
    # with label=, the reports are replaced at the end: refused now if they are not ours
    check_output_dir(output_dir, "output", REPORT_FILES if labels is not None else (), overwrite)

    preprocess, threshold = _resolve_preprocess_and_threshold(cfg)
    network = load_model(cfg.model)
    inference_cfg = OmegaConf.to_container(cfg.inference, resolve=True)
    inference_cfg["threshold"] = threshold
    progress = bool(cfg.get("progress", True))
    predictor = SlidingWindowPredictor.from_config(
        network, inference_cfg, preprocess=preprocess, progress=progress
    )
    device = predictor.compute_device()
    # the first write of the run: every check about the run has passed
    output_dir = ensure_writable_dir(output_dir)
    for stale in remove_stale_temporaries(output_dir):
        log.info("removed %s, a temporary file of an interrupted run", stale)
    if device.type == "cpu" and cfg.get("threads") is not None:
        from vesselfm.utils.hardware import describe_threads

        log.info(describe_threads(cfg.threads))
    log.info(
        "%d scan(s) -> %s | model=%s on %s | threshold %.3f | TTA %s | post-processing %s",
        len(inputs),
        output_dir,
        cfg.model.get("name"),
        device,
        threshold,
        f"{len(predictor.tta)} passes" if predictor.tta.enabled else "off",
        "on" if predictor.postprocess.enabled else "off",
    )

    results: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    failed_cases: dict[str, str] = {}
    unlabelled: list[str] = []
    rows: list[dict[str, Any]] = []
    bar = tqdm(inputs, desc="scans", unit="scan", disable=not progress or len(inputs) < 2)
    for path in bar:
        bar.set_postfix_str(path.name)
        case = cases[path]
        try:
            result = predictor.predict_file(
                path,
                output_dir,
                save_prob=bool(cfg.save_prob),
                overwrite=overwrite,
                save_mesh=bool(cfg.save_mesh),
                case=case,
                return_arrays=labels is not None,
            )
            if labels is not None:
                label_path = match_label(case, labels)
                if label_path is None:
                    unlabelled.append(case)
                    log.error(
                        "%s: no label for case %s in label=%s; segmented, not scored",
                        path.name,
                        case,
                        cfg.label,
                    )
                else:
                    rows.append(_score(case, result, label_path, threshold))
            result.pop("arrays", None)
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - one bad scan must not stop the others
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            if not isinstance(err, UserError | ValueError | OSError):
                reason = f"{type(err).__name__}: {reason}"
            if str(path) not in reason:
                reason = f"{path}: {reason}"
            log.error("failed: %s", reason)
            log.debug("traceback of %s", path, exc_info=True)
            if os.environ.get("VESSELFM_DEBUG", "").lower() in {"1", "true", "yes"}:
                raise
            failed.append((str(path), reason))
            failed_cases[case] = reason
            continue
        results.append(result)
        if not result["skipped"]:
            t = result["timings"]
            log.info(
                "%s: %s in %.1f s (read %.1f, predict %.1f, write %.1f)",
                result["case"],
                result["pred"],
                t["total"],
                t["read"],
                t["predict"],
                t["write"],
            )

    reports = None
    if labels is not None:
        from vesselfm.metrics import write_reports

        reports = write_reports(
            rows,
            output_dir,
            expected=len(inputs),
            missing={"missing_labels": unlabelled},
            failed=failed_cases,
        )
        log.info(
            "metrics of %d of %d case(s): %s",
            len(rows),
            len(inputs),
            ", ".join(str(p) for p in reports.values()),
        )

    done = sum(not r["skipped"] for r in results)
    skipped = sum(r["skipped"] for r in results)
    scored = f"; scored {len(rows)} of {len(inputs)}" if labels is not None else ""
    log.info(
        "summary: %d segmented, %d skipped (outputs exist), %d failed%s; outputs in %s",
        done,
        skipped,
        len(failed),
        scored,
        output_dir,
    )
    for _, reason in failed:
        log.info("  failed: %s", reason)
    if unlabelled:
        log.info("  no label (not scored): %s", ", ".join(unlabelled))
    if failed:
        if len(inputs) == 1:
            raise UserError(failed[0][1])
        raise UserError(
            f"{len(failed)} of {len(inputs)} scans failed (first: {failed[0][1]}); see the log above"
        )
    if unlabelled:
        shown = ", ".join(unlabelled[:10]) + (" ..." if len(unlabelled) > 10 else "")
        raise UserError(
            f"label={cfg.label}: {len(unlabelled)} of {len(inputs)} case(s) have no label, so "
            f"they were segmented but not scored ({shown}); add their labels or leave label= out"
        )
    return {
        "output": output_dir,
        "results": results,
        "failed": failed,
        "metrics": rows or None,
        "reports": reports,
        "threshold": threshold,
        "preprocess": preprocess,
    }


@hydra_entrypoint("infer")
def main(cfg: DictConfig) -> None:
    """CLI: segment the scans, log a summary, exit non-zero if any scan failed."""
    infer(cfg)


if __name__ == "__main__":
    main()
