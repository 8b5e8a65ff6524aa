"""Score predicted masks against labels: ``python -m vesselfm.evaluate pred=DIR gt=DIR output=DIR``.

Cases pair by id (:mod:`vesselfm.metrics.folders`): ``<case>_pred.nii.gz`` in ``pred`` with
``<case>.label.nii.gz`` (ImageCAS), ``<case>.coronary.nii.gz`` or ``<case>.nii.gz`` in ``gt`` (a
folder or a glob; ids that clash get their parent folder's name prefixed, as ``infer`` names its
outputs), and ``<case>_prob.nii.gz`` in ``prob`` when given (for ROC AUC and AP). Each pair must
be on one grid (:func:`vesselfm.io.check_same_grid`); a case that is not, has no label, or cannot
be read, is reported (file and reason) and skipped, the others are scored, and the run ends with a
non-zero status. Labels without a prediction are listed in the summaries
(``missing_predictions``, "scored N of M"); where ``cases=`` or ``split=`` names the expected
cases, a missing prediction stops the run before anything is scored. Scoring is at native
resolution with the label's voxel spacing. Writes ``metrics.csv``, ``summary.json`` and
``summary.md`` (see :mod:`vesselfm.metrics.report`). ImageCAS-X's metrics
(:mod:`vesselfm.metrics.imagecasx`): volumes always, ``dice_<segment>`` for segment labels;
``centerlines=`` adds centreline distances and ``local_dice.csv``/``local_dice_summary.csv``,
``image=`` their lumen HU, ``descriptors=`` ``summary_by_group.csv``.

:func:`vesselfm.metrics.folders.evaluate_folders` does the work and can be called from Python;
``evaluate(cfg)`` reads the config, ``main()`` is the CLI.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from vesselfm.io.dicom import config_selection
from vesselfm.metrics.folders import evaluate_folders, expected_cases
from vesselfm.utils.cli import UserError, hydra_entrypoint


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Run :func:`~vesselfm.metrics.folders.evaluate_folders` from the composed ``evaluate.yaml``.

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
    with config_selection(cfg):  # DICOM scans (image=): series=, phase=, dicom.resample=
        result = evaluate_folders(
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
            centerlines=cfg.get("centerlines"),
            image=cfg.get("image"),
            descriptors=cfg.get("descriptors"),
            stenoses=cfg.get("stenoses"),
            analysis=cfg.get("analysis"),
        )
    rows, errors = result.rows, result.errors
    if errors:
        first_case = next(iter(errors))
        where = f"; the other {len(rows)} are in {cfg.output}" if rows else ""
        raise UserError(
            f"{len(errors)} of {len(rows) + len(errors)} case(s) could not be scored "
            f"(case {first_case}: {errors[first_case]}){where}"
        )
    return result._asdict()


@hydra_entrypoint("evaluate")
def main(cfg: DictConfig) -> None:
    """CLI: score the folders and write the reports."""
    result = evaluate(cfg)
    if result["paths"]:
        print(result["paths"]["md"].read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
