"""Segment vessels in scans: ``python -m vesselfm.infer input=scan.nii.gz`` (or ``.nrrd``, ``.mha``,
``.mhd``; ``output_format=nifti|nrrd|mha|seg.nrrd`` or a list, default the input's own format).

``infer(cfg)`` builds a predictor from the config and calls the Python API that does the work,
:func:`vesselfm.inference.segment_files` (Lightning predict: ``devices=``, ``num_nodes=``,
``shard=K/N``); ``main()`` is the Hydra CLI. A segment checkpoint (more than one output class,
``experiment=imagecasx_segments``) is recognised from the checkpoint and writes label maps of
the ImageCAS-X codes (:mod:`vesselfm.inference.segments`). A failed scan is skipped while the
others go on; the run exits 2 if any failed, or (``label=``) if a case had no label.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from vesselfm.utils.cli import hydra_entrypoint

log = logging.getLogger(__name__)


def infer(cfg: DictConfig) -> dict[str, Any]:
    """Segment every scan named by ``cfg.input`` and write the outputs into ``cfg.output``.

    Args:
        cfg: the composed ``infer.yaml``.

    Returns:
        ``{"output": dir, "results": [per-case dicts], "failed": [(file, reason)],
        "metrics": [rows] | None, "reports": {...} | None, "threshold", "preprocess"}``.

    Raises:
        UserError: bad input, output, case ids or weights (before any write), or any scan failed
            or (with ``label=``) had no label (after all the others were processed).
    """
    from vesselfm.inference import (
        SlidingWindowPredictor,
        case_ids,
        default_output_dir,
        resolve_preprocess_and_threshold,
        segment_files,
    )
    from vesselfm.inference.metadata import model_metadata, use_checkpoint_classes
    from vesselfm.io import check_output_dir, check_output_formats, find_inputs, find_labels
    from vesselfm.metrics.report import REPORT_FILES
    from vesselfm.models import load_model
    from vesselfm.utils.errors import UserError

    overwrite = bool(cfg.overwrite)
    try:
        chosen = cfg.get("output_format")
        if isinstance(chosen, ListConfig):
            chosen = OmegaConf.to_container(chosen, resolve=True)
        output_format = check_output_formats(chosen)
    except ValueError as err:
        raise UserError(str(err)) from err
    output = str(cfg.output) if cfg.get("output") else default_output_dir(str(cfg.input))
    output_dir = Path(output).expanduser()
    # our own outputs (inside output=, or named <case>_pred/_prob) are never inputs
    inputs = find_inputs(cfg.input, output_dir=output_dir)
    cases = case_ids(inputs)
    labels = find_labels(cfg.label, key="label", exclude=inputs) if cfg.get("label") else None
    # every check about the run before the weights load (segment_files checks this again)
    check_output_dir(output_dir, "output", REPORT_FILES if labels is not None else (), overwrite)

    # one read of the checkpoint for its preprocessing, threshold and classes (load_model reads
    # the weights)
    metadata = model_metadata(OmegaConf.to_container(cfg.model, resolve=True))
    preprocess = cfg.get("preprocess")
    preprocess, threshold = resolve_preprocess_and_threshold(
        cfg.model,
        None if preprocess is None else OmegaConf.to_container(preprocess, resolve=True),
        cfg.get("threshold"),
        default_threshold=cfg.inference.threshold,
        metadata=metadata,
    )
    inference = {**OmegaConf.to_container(cfg.inference, resolve=True), "threshold": threshold}
    progress = bool(cfg.get("progress", True))
    use_checkpoint_classes(cfg.model, metadata.get("num_classes"))
    predictor = SlidingWindowPredictor.from_config(
        load_model(cfg.model), inference, preprocess=preprocess, progress=progress
    )
    if predictor.compute_device().type == "cpu" and cfg.get("threads") is not None:
        from vesselfm.utils.hardware import describe_threads

        log.info(describe_threads(cfg.threads))
    from vesselfm.io.dicom import config_selection

    with config_selection(cfg):  # DICOM inputs only: series=, phase=, dicom.resample=
        result = segment_files(
            cases,
            predictor,
            output_dir,
            labels=labels,
            labels_from=f"label={cfg.label}",
            save_prob=bool(cfg.save_prob),
            save_mesh=bool(cfg.save_mesh),
            overwrite=overwrite,
            progress=progress,
            output_format=output_format,
            devices=cfg.get("devices", 1),
            num_nodes=cfg.get("num_nodes", 1),
            shard=None if cfg.get("shard") is None else str(cfg.shard),
            num_workers=cfg.get("num_workers", "auto"),
        )
    if result.rank != 0:
        return {"output": result.output_dir, "results": result.cases, "failed": result.failed}
    result.raise_for_errors()
    return {
        "output": result.output_dir,
        "results": result.cases,
        "failed": result.failed,
        "metrics": result.metrics or None,
        "reports": result.reports,
        "threshold": threshold,
        "preprocess": preprocess,
    }


@hydra_entrypoint("infer")
def main(cfg: DictConfig) -> None:
    """CLI: segment the scans, log a summary, exit non-zero if any scan failed."""
    infer(cfg)


if __name__ == "__main__":
    main()
