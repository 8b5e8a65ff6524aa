"""``VesselSegLitModule``: vesselFM's DynUNet trained with patches, validated and tested on whole volumes.

Validation and test use the same :class:`~vesselfm.inference.SlidingWindowPredictor` as
``python -m vesselfm.infer`` and the same metric functions as ``python -m vesselfm.evaluate``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import nn

from vesselfm.models.components.checkpoint import to_plain
from vesselfm.models.schedulers import SCHEDULER_INTERVALS

log = logging.getLogger(__name__)

VAL_METRICS = ("dice", "cldice")


def describe_factory(factory: Callable[..., Any] | None) -> dict[str, Any] | None:
    """A plain record of an optimizer/scheduler factory for the checkpoint's hyperparameters:
    ``{"_target_": "module.name", **bound keyword arguments}`` (a ``functools.partial``, as
    Hydra's ``_partial_: true`` builds), else just its name."""
    if factory is None:
        return None
    func = getattr(factory, "func", factory)
    name = getattr(func, "__qualname__", type(func).__qualname__)
    record: dict[str, Any] = {"_target_": f"{getattr(func, '__module__', '')}.{name}"}
    record.update(getattr(factory, "keywords", None) or {})
    return record


class VesselSegLitModule(L.LightningModule):
    """Binary vessel segmentation with a 3D network emitting one logit channel.

    Args:
        net: the network ``(B, 1, X, Y, Z) -> (B, 1, X, Y, Z)`` logits; kept as ``self.model``
            so checkpoint keys carry the ``model.`` prefix vesselFM's checkpoints use.
        loss: a loss on logits and binary targets.
        optimizer: a partial optimizer (``torch.optim.AdamW`` with lr and weight decay bound),
            called with the parameters.
        scheduler: a partial scheduler factory, called as ``scheduler(optimizer=...,
            trainer=...)`` and returning Lightning's lr-scheduler config (e.g.
            :func:`vesselfm.models.schedulers.warmup_cosine` with warmup, eta_min and interval
            bound); ``None`` keeps the learning rate constant.
        inference: the ``inference`` config group (sliding window, threshold) for validation/test.
        output_dir: where test writes ``metrics.csv``, ``summary.json`` and ``summary.md``.
        metadata: extra facts stored in every checkpoint under ``"vesselfm"`` (e.g. the model
            config's name), beside the preprocessing and threshold ``infer`` reads back.

    ``inference``, ``output_dir`` and ``metadata`` are stored in checkpoints as plain dicts,
    lists, str and numbers (OmegaConf configs resolved, paths as str), so that our checkpoints
    load with ``torch.load(weights_only=True)``; other objects raise ``TypeError``.
    ``optimizer`` and ``scheduler`` are recorded as ``{"_target_": ..., **bound arguments}``.

    Example:
        >>> module = VesselSegLitModule(net, DiceCELoss(sigmoid=True), partial(AdamW, lr=1e-3),
        ...     partial(warmup_cosine, warmup=0, eta_min=1e-7, interval="epoch"))  # doctest: +SKIP
    """

    def __init__(
        self,
        net: nn.Module,
        loss: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Mapping[str, Any]] | None = None,
        inference: Mapping[str, Any] | None = None,
        output_dir: str | Path | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"], logger=False)
        self.hparams["optimizer"] = describe_factory(optimizer)
        self.hparams["scheduler"] = describe_factory(scheduler)
        # Checkpoints hold only plain types (they load with weights_only=True): convert now, so
        # that an unstorable argument fails here and not at the first checkpoint, epochs later.
        self.hparams.update(to_plain(dict(self.hparams), "VesselSegLitModule"))
        self.model = net.train()
        self.loss_fn = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # a bound interval is checked now, not when fit starts (after the data are prepared)
        interval = (getattr(scheduler, "keywords", None) or {}).get("interval", "epoch")
        if interval not in SCHEDULER_INTERVALS:
            raise ValueError(
                f"scheduler.interval must be one of {SCHEDULER_INTERVALS}, got {interval!r}"
            )
        self.inference_cfg = dict(inference or {})
        self.threshold = float(self.inference_cfg.get("threshold", 0.5))
        self.output_dir = Path(output_dir) if output_dir is not None else None
        self._predictor = None
        self.metadata = to_plain(dict(metadata or {}), "metadata")
        self._val_rows: list[dict[str, Any]] = []
        self._test_rows: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ building blocks
    @property
    def predictor(self):  # noqa: ANN201 - imported lazily to keep Lightning out of inference
        """The sliding-window predictor over ``self.model``, built once."""
        if self._predictor is None:
            from vesselfm.inference import SlidingWindowPredictor

            cfg = {k: v for k, v in self.inference_cfg.items() if k not in {"device", "sw_device"}}
            # Inside Lightning the network already sits on its device: predict there.
            self._predictor = SlidingWindowPredictor.from_config(self.model, cfg)
        return self._predictor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # ImageCASDataModule's batches travel as float16 images and packed labels, restored in
        # its on_after_batch_transfer; loaders used without it still train in float32
        if "label_bits" in batch:
            from vesselfm.data.loading import unpacked_batch

            batch = unpacked_batch(batch)
        image, label = batch["image"].float(), batch["label"].float()
        logits = self.model(image)
        loss = self.loss_fn(logits, label)
        self.log(
            "train/loss",
            loss,
            on_step=True,
            on_epoch=True,
            prog_bar=True,
            batch_size=batch["image"].shape[0],
        )
        return loss

    def _predict(self, image: torch.Tensor) -> torch.Tensor:
        was_training = self.model.training
        self.model.eval()
        try:
            return self.predictor.predict_volume(image)
        finally:
            self.model.train(was_training)

    def on_validation_epoch_start(self) -> None:
        self._val_rows = []

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        from vesselfm.metrics import compute_metrics

        prob = self._predict(batch["image"])
        for i in range(prob.shape[0]):
            values = compute_metrics(
                prob[i, 0].float().cpu().numpy(),
                batch["label"][i, 0].cpu().numpy() >= 0.5,
                spacing=tuple(float(s) for s in batch["spacing"][i]),
                threshold=self.threshold,
                metrics=VAL_METRICS,
            )
            self._val_rows.append({"case": str(batch["case"][i]), **values})

    def on_validation_epoch_end(self) -> None:
        self._log_means("val", self._val_rows, prog_bar=True)

    def _gather_rows(self, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """All ranks' rows, one per case (DistributedSampler repeats cases to even out ranks)."""
        if self._trainer is not None and self.trainer.world_size > 1:
            gathered: list[list[dict[str, Any]]] = [None] * self.trainer.world_size  # type: ignore[list-item]
            torch.distributed.all_gather_object(gathered, rows)
            rows = [row for part in gathered for row in part]
        return sorted({r["case"]: r for r in rows}.values(), key=lambda r: r["case"])

    def _log_means(
        self, stage: str, rows: list[dict[str, Any]], prog_bar: bool = False
    ) -> list[dict[str, Any]]:
        """Log ``<stage>/<metric>``: the mean over the cases where the metric is defined.

        Every rank gathers all rows and logs the same values without a further reduction, so the
        logged names never differ between ranks (a metric undefined on one rank's cases would
        otherwise leave the ranks' all-reduce calls unmatched).
        """
        from vesselfm.metrics import summarize

        rows = self._gather_rows(rows)
        for name, stats in summarize(rows).items():
            if stats.get("mean") is not None:
                self.log(
                    f"{stage}/{name}",
                    float(stats["mean"]),
                    prog_bar=prog_bar and name in VAL_METRICS,
                    sync_dist=False,
                )
        return rows

    # ------------------------------------------------------------------ test (native resolution)
    def on_test_epoch_start(self) -> None:
        self._test_rows = []

    def test_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        from vesselfm.data.preprocessing import resample_probabilities
        from vesselfm.io import read_volume
        from vesselfm.metrics import compute_metrics

        prob = self._predict(batch["image"])
        for i in range(prob.shape[0]):
            shape = tuple(int(s) for s in batch["original_shape"][i])
            spacing = tuple(float(s) for s in batch["original_spacing"][i])
            native = resample_probabilities(prob[i, 0].float().cpu(), shape)
            label = read_volume(batch["original_label"][i]).array  # (X, Y, Z, 1) squeezed
            # the same mask infer would write: threshold, then inference.postprocess
            mask = self.predictor.binarize(native, spacing)
            values = compute_metrics(
                mask, label >= 0.5, spacing=spacing, threshold=0.5, prob=native
            )
            self._test_rows.append({"case": str(batch["case"][i]), **values})

    def on_test_epoch_end(self) -> None:
        from vesselfm.metrics import write_reports

        rows = self._log_means("test", self._test_rows)
        if self.trainer.is_global_zero and self.output_dir is not None and rows:
            paths = write_reports(rows, self.output_dir)
            log.info(
                "test metrics for %d cases: %s",
                len(rows),
                ", ".join(str(p) for p in paths.values()),
            )

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        optimizer = self.optimizer_factory(params=self.model.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": optimizer}
        scheduler = self.scheduler_factory(optimizer=optimizer, trainer=self.trainer)
        return {"optimizer": optimizer, "lr_scheduler": dict(scheduler)}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record what ``infer`` needs to reproduce training's preprocessing and threshold."""
        meta: dict[str, Any] = {**self.metadata, "threshold": self.threshold}
        datamodule = (
            getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        )
        preprocess = getattr(datamodule, "preprocess", None)
        if preprocess is not None:
            meta["preprocess"] = preprocess.to_dict()
        checkpoint["vesselfm"] = to_plain(meta, "checkpoint['vesselfm']")
