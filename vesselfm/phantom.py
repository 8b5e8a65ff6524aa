"""Write synthetic coronary CTA phantoms in the ImageCAS layout: ``python -m vesselfm.phantom``.

``python -m vesselfm.phantom output=<dir> n=<cases> shape=[X,Y,Z] seed=<int>`` writes
``<dir>/1-200/1.img.nii.gz`` and ``1.label.nii.gz``, ... (see ``vesselfm.data.phantom``);
``layout=imagecasx`` writes the ImageCAS-X layout instead (``vesselfm.data.phantom.imagecasx``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vesselfm.utils.cli import UserError, hydra_entrypoint


def _options(cfg: DictConfig) -> dict[str, Any]:
    """Check the config and turn it into ``write_phantom_dataset`` keyword arguments."""
    if OmegaConf.is_missing(cfg, "output") or cfg.output in (None, ""):
        raise UserError(
            "output is required: the dataset folder to write, e.g. output=data/phantoms"
        )
    shape = OmegaConf.to_object(cfg.shape) if OmegaConf.is_list(cfg.shape) else cfg.shape
    if not isinstance(shape, list) or len(shape) != 3:
        raise UserError(
            f"shape must be 3 integers [X,Y,Z] (voxels), got {shape!r}; e.g. shape=[512,512,256]"
        )
    spacing = cfg.get("spacing")
    if spacing is not None:
        spacing = OmegaConf.to_object(spacing) if OmegaConf.is_list(spacing) else spacing
        if not isinstance(spacing, list) or len(spacing) != 3:
            raise UserError(
                f"spacing must be 3 voxel sizes [sx,sy,sz] in mm or null, got {spacing!r}"
            )
        spacing = tuple(spacing)
    style = str(cfg.get("style", "ct"))
    if style not in ("ct", "randomised"):
        raise UserError(
            f"style must be one of ['ct', 'randomised'], got {style!r}; e.g. style=randomised"
        )
    if style == "randomised" and str(cfg.get("layout", "imagecas")) == "imagecasx":
        raise UserError(
            "style=randomised adds labelled tubes that are no coronary segment, so it cannot "
            "write layout=imagecasx; use style=ct with layout=imagecasx"
        )
    options: dict[str, Any] = {
        "output": Path(str(cfg.output)),
        "n": cfg.n,
        "shape": tuple(shape),
        "seed": cfg.seed,
        "start_index": cfg.start_index,
        "progress": bool(cfg.progress),
        "noise_std": cfg.noise_std,
        "stenoses": cfg.stenoses,
        "calcifications": cfg.calcifications,
        "streaks": bool(cfg.streaks),
        "style": style,
        "overwrite": bool(cfg.get("overwrite", False)),
    }
    if spacing is not None:
        options["spacing"] = spacing
    return options


def phantom(cfg: DictConfig) -> list[tuple[Path, Path]]:
    """Write the phantom dataset described by ``cfg`` (the composed ``phantom.yaml``).

    Returns:
        ``[(image_path, label_path), ...]``.

    Raises:
        UserError, ValueError: a missing output or a bad option (one line, naming the key).
    """
    from vesselfm.data.phantom import write_phantom_dataset

    return write_phantom_dataset(**_options(cfg), layout=str(cfg.get("layout", "imagecas")))


@hydra_entrypoint("phantom")
def main(cfg: DictConfig) -> None:
    """CLI: write the phantoms."""
    phantom(cfg)


if __name__ == "__main__":
    main()
