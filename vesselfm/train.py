"""Fine-tune vesselFM and test it: ``python -m vesselfm.train experiment=imagecas_finetune``.

``train(cfg)`` does the work and can be called from Python; ``main()`` is the Hydra CLI.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from vesselfm.utils.cli import UserError, hydra_entrypoint

log = logging.getLogger(__name__)


def _instantiate_group(cfg: DictConfig | None) -> list[Any]:
    """Instantiate every ``_target_`` entry of a callbacks/logger group (a dict of configs)."""
    from hydra.utils import instantiate

    if not cfg:
        return []
    return [instantiate(c) for c in cfg.values() if isinstance(c, DictConfig) and "_target_" in c]


def resolve_ckpt_path(ckpt_path: str | None, cfg: DictConfig) -> str | None:
    """``"last"`` → this task's newest ``checkpoints/last.ckpt`` under ``paths.log_dir``.

    The file is checked to load with ``weights_only=True`` (or ``model.trust_checkpoint=true``)
    before anything is built, so that a refused checkpoint fails with one line.
    """
    path = _find_ckpt_path(ckpt_path, cfg)
    if path is not None:
        from vesselfm.models import load_checkpoint, trust_flag

        trust = trust_flag(cfg.model.get("trust_checkpoint"))
        load_checkpoint(path, trust, mmap=True, key="ckpt_path")
    return path


def _find_ckpt_path(ckpt_path: str | None, cfg: DictConfig) -> str | None:
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        root = Path(cfg.paths.log_dir) / cfg.task_name
        candidates = sorted(root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise UserError(
                f"ckpt_path=last: no last.ckpt under {root}; give ckpt_path=/path/to/last.ckpt"
            )
        return str(candidates[-1])
    if not Path(ckpt_path).is_file():
        raise UserError(
            f"ckpt_path={ckpt_path}: no such file; give a Lightning .ckpt of this task, or ckpt_path=last"
        )
    return str(ckpt_path)


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

    from vesselfm.models import load_model, trust_flag
    from vesselfm.models.lit_module import VesselSegLitModule
    from vesselfm.utils.hardware import describe_threads, resolve_trainer_precision

    if cfg.get("seed") is not None:
        L.seed_everything(cfg.seed, workers=True)

    # Weights first: a missing checkpoint should fail before any data is touched.
    net = load_model(cfg.model)
    ckpt_path = resolve_ckpt_path(cfg.get("ckpt_path"), cfg)

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
        # ckpt_path passed resolve_ckpt_path's check: it loads with weights_only=True, or is trusted
        trust = trust_flag(cfg.model.get("trust_checkpoint"))
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

    if cfg.get("demo") and cfg.demo.get("cases") and trainer.is_global_zero:
        objects["demo"] = run_demo(cfg, model.model, datamodule, int(cfg.demo.cases))

    return metrics, objects


def run_demo(cfg: DictConfig, net: Any, datamodule: Any, cases: int) -> list[dict[str, Any]]:
    """Segment the first ``cases`` held-out test scans as ``vesselfm.infer`` would, then draw them.

    Writes ``<run dir>/demo/<case>_pred.nii.gz``, ``<case>_pred.stl`` and the viz outputs
    (``<case>_3d.html``, PNG overlays) beside the ground truth's.
    """
    from vesselfm.data.manifest import load_manifest
    from vesselfm.inference import SlidingWindowPredictor
    from vesselfm.viz import visualise_case

    manifest = load_manifest(datamodule.data_dir) or {}
    tests = [(cid, e) for cid, e in manifest.get("cases", {}).items() if e.get("split") == "test"]
    if not tests:
        log.warning("demo: the prepared set has no test case to segment")
        return []
    out_dir = Path(cfg.paths.output_dir) / "demo"
    inference = OmegaConf.to_container(cfg.inference, resolve=True)
    predictor = SlidingWindowPredictor.from_config(
        net, inference, preprocess=datamodule.preprocess, progress=False
    )
    results = []
    for case_id, entry in tests[:cases]:
        image = Path(entry["image_source"])
        if not image.is_file():
            log.warning("demo: case %s has no scan on disk (%s); skipped", case_id, image)
            continue
        # no mesh here: visualise_case writes <case>_pred.stl (and the ground truth's)
        written = predictor.predict_file(image, out_dir, overwrite=True, case=case_id)
        views = visualise_case(
            written["pred"],
            out_dir,
            gt_path=entry["original_label"],
            image_path=image,
            case_id=case_id,
        )
        results.append({**written, "mesh": views.get("pred_stl"), "views": views})
        log.info(
            "demo case %s: mask %s, mesh %s, 3D view %s",
            case_id,
            written["pred"],
            views.get("pred_stl"),
            views.get("html"),
        )
    return results


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
    for result in objects.get("demo", []):
        lines.append(
            f"demo segmentation: {result['pred']} (mesh {result.get('mesh')}, 3D view {result['views'].get('html')})"
        )
    print("\n".join(lines), flush=True)
    monitored = cfg.get("optimized_metric")
    return metrics.get(monitored) if monitored else None


if __name__ == "__main__":
    main()
