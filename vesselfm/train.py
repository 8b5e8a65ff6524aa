"""Fine-tune vesselFM and test it: ``python -m vesselfm.train experiment=imagecas_finetune``.

``train(cfg)`` does the work and can be called from Python; ``main()`` is the Hydra CLI.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vesselfm.utils.cli import hydra_entrypoint

log = logging.getLogger(__name__)


def _instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (a dict of configs)."""
    from hydra.utils import instantiate

    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def train(cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Fit (``cfg.train``) and test (``cfg.test``) a ``VesselSegLitModule``.

    Args:
        cfg: the composed ``train.yaml``.

    Returns:
        ``(metrics, objects)``: the logged metrics of fit and test, and the objects built
        (``cfg``, ``datamodule``, ``model``, ``trainer``, ``callbacks``, ``loggers``).
    """
    import lightning as L
    from hydra.utils import instantiate

    from vesselfm.models import load_model, resolve_resume_checkpoint, trust_flag
    from vesselfm.models.lit_module import VesselSegLitModule
    from vesselfm.utils.hardware import describe_threads, resolve_trainer_precision

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    # Weights first: a missing checkpoint should fail before any data is touched.
    net = load_model(cfg.model)
    trust = trust_flag(cfg.model.get("trust_checkpoint"))
    runs = Path(cfg.paths.log_dir) / cfg.task_name
    ckpt_path = resolve_resume_checkpoint(cfg.get("ckpt_path"), runs, trust)

    datamodule: L.LightningDataModule = instantiate(cfg.data, _recursive_=False)
    model = VesselSegLitModule(
        net=net,
        loss=instantiate(cfg.loss),
        # partials (configs/optim): the module calls them with its parameters and its trainer
        optimizer=instantiate(cfg.optimizer),
        scheduler=instantiate(cfg.scheduler) if cfg.get("scheduler") is not None else None,
        inference=OmegaConf.to_container(cfg.inference, resolve=True),
        output_dir=cfg.paths.output_dir,
        metadata={"model_name": cfg.model.name},
        # segment models (experiment=imagecasx_segments): one output channel per class
        num_classes=int(cfg.model.net.get("out_channels", 1)),
        channels_last=cfg.get("channels_last", "auto"),
    )
    callbacks = _instantiate_group(cfg.get("callbacks"))
    loggers = _instantiate_group(cfg.get("logger"))
    if cfg.get("threads") is not None:
        log.info(describe_threads(cfg.threads))
    precision = resolve_trainer_precision(
        cfg.trainer.get("precision", "auto"), cfg.trainer.get("accelerator", "auto")
    )
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, precision=precision
    )

    objects = {
        "cfg": cfg,
        "datamodule": datamodule,
        "model": model,
        "trainer": trainer,
        "callbacks": callbacks,
        "loggers": loggers,
    }
    for lg in loggers:
        lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))

    metrics: dict[str, Any] = {}
    if cfg.get("train"):
        # ckpt_path passed resolve_resume_checkpoint's check: weights_only=True, or trusted
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=not trust)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    if cfg.get("test"):
        best = None
        if cfg.get("train"):
            best = getattr(trainer.checkpoint_callback, "best_model_path", None) or None
            if best is None:
                log.warning("no best checkpoint was saved; testing the current weights")
        # best is this run's own checkpoint, which holds plain types only (VesselSegLitModule)
        trainer.test(model=model, datamodule=datamodule, ckpt_path=best, weights_only=True)
        metrics.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    if cfg.get("test") and cfg.get("ood") and cfg.ood.get("cases") and trainer.is_global_zero:
        # the tested (best) weights on the out-of-distribution phantom families
        from vesselfm.inference.ood_report import evaluate_ood, write_ood_reports

        ood = cfg.ood
        rows = evaluate_ood(
            model.model,
            shape=list(ood.shape or getattr(datamodule, "shape", None) or (96, 96, 64)),
            seed=int(ood.seed),
            cases=int(ood.cases),
            families=list(ood.families) if ood.get("families") else None,
            tta=list(ood.get("tta") or ["none"]),
            inference=OmegaConf.to_container(cfg.inference, resolve=True),
            preprocess=getattr(datamodule, "preprocess", None),
        )
        objects["ood"] = write_ood_reports(rows, cfg.paths.output_dir)

    if cfg.get("demo") and cfg.demo.get("cases") and trainer.is_global_zero:
        from vesselfm.inference.demo import run_demo

        objects["demo"] = run_demo(
            model.model,
            datamodule.data_dir,
            Path(cfg.paths.output_dir) / "demo",
            int(cfg.demo.cases),
            inference=OmegaConf.to_container(cfg.inference, resolve=True),
            preprocess=datamodule.preprocess,
        )

    return metrics, objects


@hydra_entrypoint("train")
def main(cfg: DictConfig) -> float | None:
    """CLI: train and/or test, print where the results are, return the monitored metric."""
    metrics, objects = train(cfg)
    out = Path(cfg.paths.output_dir)
    shown = {
        k: v
        for k, v in metrics.items()
        if k.startswith(("val/", "test/")) and k.split("/")[1] in {"dice", "cldice"}
    }
    lines = [f"run directory: {out}"]
    if shown:
        lines.append("metrics: " + ", ".join(f"{k}={v:.3f}" for k, v in sorted(shown.items())))
    best = getattr(objects["trainer"].checkpoint_callback, "best_model_path", "")
    if best:
        lines.append(f"best checkpoint: {best}")
    if (out / "summary.md").is_file():
        lines.append(f"test metric table: {out / 'summary.md'} (per case: {out / 'metrics.csv'})")
    if "ood" in objects:
        lines.append(f"out-of-distribution families: {objects['ood']['csv']} (summary.md)")
    for result in objects.get("demo", []):
        lines.append(
            f"demo segmentation: {result['pred']} (mesh {result.get('mesh')}, 3D view {result['views'].get('html')})"
        )
    print("\n".join(lines), flush=True)
    monitored = cfg.get("optimized_metric")
    return metrics.get(monitored) if monitored else None


if __name__ == "__main__":
    main()
