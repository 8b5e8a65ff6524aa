"""Look at a segmentation: ``python -m vesselfm.visualise pred=<file> [gt=<file>] [image=<file or DICOM folder/zip>] output=<dir>``.

Writes STL meshes, a self-contained interactive 3D page and PNG overlays through
:func:`vesselfm.viz.visualise_case`; see ``configs/visualise.yaml`` for the options.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from vesselfm.utils.cli import UserError, hydra_entrypoint

log = logging.getLogger(__name__)


def visualise(cfg: DictConfig) -> dict[str, Path]:
    """Run :func:`vesselfm.viz.visualise_case` with the options of ``visualise.yaml``.

    Returns:
        The paths written, keyed as :func:`vesselfm.viz.visualise_case` keys them.
    """
    from vesselfm.io.dicom import config_selection

    if cfg.get("pred") in (None, ""):
        raise UserError("pred= is required: give the prediction file, e.g. pred=out/1_pred.nii.gz")
    pred = Path(str(cfg.pred))
    if not pred.is_file():
        raise UserError(f"pred={pred}: no such file; give the path of a <case>_pred volume file")
    output = Path(str(cfg.output)) if cfg.get("output") else pred.parent / "viz"
    with config_selection(cfg):  # a DICOM image=: series=, phase=, dicom.resample=
        written = _visualise(cfg, pred, output)
    for key, path in written.items():
        log.info("%s: %s", key, path)
    return written


def _visualise(cfg: DictConfig, pred: Path, output: Path) -> dict[str, Path]:
    from vesselfm.viz import visualise_case

    return visualise_case(
        pred,
        output,
        gt_path=cfg.get("gt"),
        image_path=cfg.get("image"),
        case_id=cfg.get("case_id"),
        threshold=float(cfg.threshold),
        step_size=int(cfg.step_size),
        smooth_iterations=int(cfg.smooth_iterations),
        html_step_size=None if cfg.get("html_step_size") is None else int(cfg.html_step_size),
        html_max_faces=int(cfg.html_max_faces),
        html_smooth_iterations=int(cfg.html_smooth_iterations),
        stl=bool(cfg.stl),
        html=bool(cfg.html),
        png=bool(cfg.png),
        overwrite=bool(cfg.get("overwrite", False)),
        segments=None if cfg.get("segments") is None else bool(cfg.segments),
    )


@hydra_entrypoint("visualise")
def main(cfg: DictConfig) -> None:
    visualise(cfg)


if __name__ == "__main__":
    main()
