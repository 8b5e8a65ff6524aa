"""Prepare ImageCAS (or any NIfTI image/label pairs) for training:
``python -m vesselfm.prepare source=<folder or zip> output=<dir>``.

``prepare(cfg)`` does the work and can be called from Python; ``main()`` is the CLI. The library
code is :mod:`vesselfm.data.prepare` (per case) and :mod:`vesselfm.data.imagecas` (discovery,
splits). See ``ImageCASDataSetPrep.md`` for the Kaggle download.
"""

from __future__ import annotations

import logging

from omegaconf import DictConfig, OmegaConf

from vesselfm.utils.cli import UserError, hydra_entrypoint

log = logging.getLogger(__name__)


def prepare(cfg: DictConfig):  # -> vesselfm.data.prepare.PrepareSummary
    """Run the preparation described by a composed ``prepare.yaml``.

    Returns:
        The :class:`~vesselfm.data.prepare.PrepareSummary` of a run that did all it was asked.

    Raises:
        UserError: bad settings, no case found, ``output=`` holding files vesselfm did not
            write (without ``overwrite=true``), or, after the good cases are prepared, a case
            that failed or a split left empty (one line naming them).
    """
    from vesselfm.data.prepare import PrepareOptions, prepare_dataset
    from vesselfm.data.preprocessing import PreprocessConfig

    source = cfg.source
    source = OmegaConf.to_container(source) if OmegaConf.is_list(source) else str(source)
    try:
        options = PrepareOptions(
            preprocess=PreprocessConfig.from_mapping(
                OmegaConf.to_container(cfg.preprocess, resolve=True)
            ),
            label_threshold=float(cfg.label_threshold),
            image_dtype=str(cfg.image_dtype),
            affine_tolerance=float(cfg.affine_tolerance),
            labels=str(cfg.get("labels", "lumen")),
        )
        summary = prepare_dataset(
            source,
            cfg.output,
            split=cfg.split,
            split_file=cfg.split_file,
            split_sheet=cfg.split_sheet,
            fold=int(cfg.fold),
            seed=int(cfg.seed),
            split_ratios=list(cfg.split_ratios),
            options=options,
            workers=int(cfg.workers),
            limit=cfg.limit,
            progress=bool(cfg.progress),
            overwrite=bool(cfg.get("overwrite", False)),
            layout=cfg.get("layout"),
            images=cfg.get("images"),
        )
    except RuntimeError as err:
        raise UserError(str(err)) from err
    summary.raise_if_incomplete()
    return summary


@hydra_entrypoint("prepare")
def main(cfg: DictConfig) -> None:
    """CLI: prepare the set and print the summary; exit status 2 when a case failed or a split
    is left empty (after the good cases are prepared)."""
    summary = prepare(cfg)
    print("\n".join(summary.lines()))


if __name__ == "__main__":
    main()
