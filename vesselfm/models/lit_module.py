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
import numpy as np
import torch
from torch import nn

from vesselfm.models.components.checkpoint import to_plain
from vesselfm.models.schedulers import SCHEDULER_INTERVALS

log = logging.getLogger(__name__)

VAL_METRICS = ("dice", "cldice")


def segment_name(code: int) -> str:
    """The Dice column name of segment ``code``: ImageCAS-X's name (``LAD``, ``R_PDA``), or
    ``class<code>`` beyond its 14 codes."""
    from vesselfm.data.imagecasx import SEGMENTS

    name = SEGMENTS.get(int(code))
    return name.replace("-", "_") if name else f"class{int(code)}"


def segment_scores(pred: np.ndarray, truth: np.ndarray, num_classes: int) -> dict[str, float]:
    """Dice per segment (``dice_<name>``) of two class maps, for the segments present in
    ``truth`` (an absent one has no column), and ``dice``: their mean (``nan`` when none is
    present). A segment the prediction misses scores 0."""
    pred = np.asarray(pred).ravel()
    truth = np.asarray(truth).ravel()
    n = int(num_classes)
    # one pass: the confusion counts of every (truth, pred) pair
    counts = np.bincount(
        np.clip(truth, 0, n - 1) * n + np.clip(pred, 0, n - 1), minlength=n * n
    ).reshape(n, n)
    row: dict[str, float] = {}
    for code in range(1, n):
        gt, pr = counts[code].sum(), counts[:, code].sum()
        if gt == 0:
            continue
        row[f"dice_{segment_name(code)}"] = float(2.0 * counts[code, code] / (gt + pr))
    values = list(row.values())
    row["dice"] = float(np.mean(values)) if values else float("nan")
    return row


def check_labels(data_dir: str | Path, num_classes: int) -> None:
    """Raise ``ValueError`` (one line) when the prepared set at ``data_dir`` holds labels of the
    other kind: ``labels=segments`` for a 1-class model, lumen masks for a segment model."""
    from vesselfm.data.manifest import load_manifest

    manifest = load_manifest(Path(data_dir)) or {}
    labels = str(manifest.get("labels", "lumen"))
    wanted = "segments" if int(num_classes) > 1 else "lumen"
    if labels != wanted:
        kind = f"a {num_classes}-class segment model" if wanted == "segments" else "a lumen model"
        raise ValueError(
            f"data.data_dir={data_dir} was prepared with labels={labels}, and {kind} needs "
            f"labels={wanted}: prepare it with python -m vesselfm.prepare ... labels={wanted} "
            "into another output folder"
        )


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
        num_classes: 1 (the default): binary vessel logits, sigmoid. More: a segment model
            (``experiment=imagecasx_segments``, 15 = background + ImageCAS-X's codes 1..14):
            labels hold the codes, the loss sees class indices (softmax, ``to_onehot_y``), and
            validation/test score the argmax by Dice per segment (``dice_<name>``) and ``dice``,
            the mean over the segments present in the ground truth. The prepared set must have
            been prepared with ``labels=segments`` (``labels=lumen`` for 1 class).
        channels_last: run the training forward (and so its backward) through
            :func:`vesselfm.inference.channels_last.channels_last_view` of the network:
            ``"auto"`` (the default) on a CPU only, ``True`` / ``False`` always / never (a
            non-CPU device never uses it: the view is built for oneDNN's CPU kernels). Same
            weights and loss up to float rounding; on the 2-core AVX2 box a step of the tiny
            model (2 x 48^3, fp32) takes 0.53 s instead of 0.68 s, where oneDNN's convolution
            backward on ``NCDHW`` tensors is most of the step.

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
        num_classes: int = 1,
        channels_last: bool | str = "auto",
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
        self.num_classes = int(num_classes)
        if self.num_classes < 1:
            raise ValueError(f"model.num_classes must be >= 1, got {num_classes}")
        self.metadata = to_plain(
            {**dict(metadata or {}), "num_classes": self.num_classes}, "metadata"
        )
        self._val_rows: list[dict[str, Any]] = []
        self._test_rows: list[dict[str, Any]] = []
        if channels_last not in (True, False, "auto"):
            raise ValueError(f"channels_last must be auto, true or false, got {channels_last!r}")
        self.channels_last = channels_last

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

    def training_network(self) -> nn.Module:
        """The network the training step runs: ``self.model`` or, on a CPU with
        ``channels_last`` on, its channels-last view (rebuilt per step, so it always carries
        the model's current train/eval mode; building it copies no tensor)."""
        if self.channels_last is False or self.device.type != "cpu":
            return self.model
        from vesselfm.inference.channels_last import channels_last_view

        return channels_last_view(self.model)

    @property
    def segments(self) -> bool:
        """Whether this is a segment model (more than one output class)."""
        return self.num_classes > 1

    def setup(self, stage: str) -> None:
        """Refuse a prepared set whose labels (``labels=`` in its manifest) do not suit the
        model: segment codes for a lumen model or lumen masks for a segment model."""
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer else None
        data_dir = getattr(datamodule, "data_dir", None)
        if data_dir is not None:
            check_labels(data_dir, self.num_classes)

    # ------------------------------------------------------------------ training
    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        # ImageCASDataModule's batches travel as float16 images and packed labels, restored in
        # its on_after_batch_transfer; loaders used without it still train in float32
        if "label_bits" in batch:
            from vesselfm.data.loading import unpacked_batch

            batch = unpacked_batch(batch)
        image, label = batch["image"].float(), batch["label"].float()
        logits = self.training_network()(image)
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

    def _predict_classes(self, image: torch.Tensor) -> torch.Tensor:
        """The argmax class map ``(B, X, Y, Z)`` int64 of a segment model over whole volumes."""
        from monai.inferers import sliding_window_inference

        cfg = self.inference_cfg
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                logits = sliding_window_inference(
                    image.float(),
                    roi_size=tuple(cfg.get("roi_size", (128, 128, 128))),
                    sw_batch_size=int(cfg.get("sw_batch_size", 1)),
                    predictor=self.model,
                    overlap=float(cfg.get("overlap", 0.25)),
                    mode=str(cfg.get("mode", "gaussian")),
                )
            return logits.argmax(dim=1)
        finally:
            self.model.train(was_training)

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        from vesselfm.metrics import compute_metrics

        if self.segments:
            classes = self._predict_classes(batch["image"]).cpu().numpy()
            for i in range(classes.shape[0]):
                truth = batch["label"][i, 0].cpu().numpy().round().astype(np.int64)
                row = segment_scores(classes[i], truth, self.num_classes)
                self._val_rows.append({"case": str(batch["case"][i]), **row})
            return
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

        if self.segments:
            classes = self._predict_classes(batch["image"])
            for i in range(classes.shape[0]):
                shape = tuple(int(s) for s in batch["original_shape"][i])
                # nearest back onto the scan's grid: the codes stay codes
                native = torch.nn.functional.interpolate(
                    classes[i][None, None].float(), size=shape, mode="nearest-exact"
                )[0, 0]
                truth = np.rint(read_volume(batch["original_label"][i]).array).astype(np.int64)
                row = segment_scores(native.cpu().numpy().astype(np.int64), truth, self.num_classes)
                self._test_rows.append({"case": str(batch["case"][i]), **row})
            return
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
