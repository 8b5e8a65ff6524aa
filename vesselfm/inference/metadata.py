"""What our training checkpoints record for inference: preprocessing, threshold, model name.

``VesselSegLitModule.on_save_checkpoint`` stores
``checkpoint["vesselfm"] = {"preprocess": PreprocessConfig.to_dict(), "threshold": float,
"model_name": str}``; :func:`read_checkpoint_metadata` reads it back so that ``infer`` resamples,
normalises and thresholds exactly as training did; :func:`resolve_preprocess_and_threshold`
picks between it, explicit values and the defaults.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vesselfm.data.preprocessing import PreprocessConfig

log = logging.getLogger(__name__)

METADATA_KEY = "vesselfm"


def read_checkpoint_metadata(
    path: str | os.PathLike[str] | None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """The ``"vesselfm"`` metadata of a Lightning ``.ckpt`` and the output classes of any
    weights, from one memory-mapped read of the file; ``{}`` when there is nothing to tell.

    Args:
        path: a ``model.checkpoint`` spec (local path or ``hf://owner/repo/file``); ``None``
            gives ``{}``. A raw ``state_dict`` ``.pt`` or a checkpoint without metadata gives
            at most its ``num_classes``.
        revision, cache_dir: as for :func:`vesselfm.models.resolve_checkpoint`.
        trust_checkpoint: ``model.trust_checkpoint``: allow a file that needs full unpickling
            (it may run code); otherwise it is refused (see :func:`vesselfm.models.load_checkpoint`).

    Returns:
        ``{"preprocess": PreprocessConfig, "threshold": float, "model_name": str,
        "num_classes": int, ...}`` with only the keys the file tells: ``preprocess`` (validated,
        a :class:`~vesselfm.data.preprocessing.PreprocessConfig`), ``threshold`` and
        ``model_name`` from a ``.ckpt``'s record; ``num_classes`` from that record, else
        Lightning's hyper-parameter, else the output head's weight shape (DynUNet's
        ``output_block.conv.conv.weight``, ``(classes, filters, 1, 1, 1)``), so a raw state dict
        of a segment model is recognised too. An exported model's come from its ``<name>.json``.

    Raises:
        CheckpointError: the file cannot be read, needs full unpickling and is not trusted, or
            its metadata is malformed.
    """
    if path is None or str(path) == "":
        return {}
    if Path(str(path)).suffix.lower() in {".onnx", ".xml"}:
        return _exported_metadata(path)  # python -m vesselfm.export wrote <name>.json beside it
    # Imported here: vesselfm.models builds networks with Hydra, which inference does not need.
    from vesselfm.models import CheckpointError, load_checkpoint, resolve_checkpoint

    local = resolve_checkpoint(path, revision, cache_dir)
    if local is None:
        return {}
    local = Path(local)
    # mmap: the tensors are not read, only the small metadata dict (and the head's shape) is.
    ckpt = load_checkpoint(local, trust_checkpoint, mmap=True)
    if not isinstance(ckpt, Mapping):
        return {}
    meta: dict[str, Any] = {}
    raw = ckpt.get(METADATA_KEY) if local.suffix == ".ckpt" else None
    if raw:
        if not isinstance(raw, dict):
            raise CheckpointError(
                f"{local}: checkpoint['{METADATA_KEY}'] must be a dict, got {type(raw).__name__}"
            )
        meta = _parsed(dict(raw), f"{local}: malformed checkpoint['{METADATA_KEY}']")
    classes = _classes(ckpt)
    if classes is not None:
        meta["num_classes"] = classes
    return meta


def _classes(ckpt: Mapping[str, Any]) -> int | None:
    """The output classes a loaded checkpoint tells (see :func:`read_checkpoint_metadata`)."""
    meta = ckpt.get(METADATA_KEY)
    if isinstance(meta, Mapping) and meta.get("num_classes") is not None:
        return int(meta["num_classes"])
    hparams = ckpt.get("hyper_parameters")
    if isinstance(hparams, Mapping) and hparams.get("num_classes") is not None:
        return int(hparams["num_classes"])
    state = ckpt.get("state_dict", ckpt)
    if isinstance(state, Mapping):
        for key, value in state.items():
            if str(key).endswith("output_block.conv.conv.weight") and hasattr(value, "shape"):
                return int(value.shape[0])
    return None


def _exported_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The preprocessing, threshold and model name an exported model's ``<name>.json`` records."""
    from vesselfm.inference.backends import read_record

    record = read_record(path)
    keys = ("preprocess", "threshold", "model_name", "num_classes")
    meta = {k: record[k] for k in keys if record.get(k) is not None}
    meta = _parsed(meta, f"{Path(path).with_suffix('.json')}: malformed record")
    if "num_classes" in meta:
        meta["num_classes"] = int(meta["num_classes"])
    return meta


def _parsed(meta: dict[str, Any], malformed: str) -> dict[str, Any]:
    """``meta`` with its preprocessing as a :class:`PreprocessConfig` and its threshold a float;
    :class:`~vesselfm.models.CheckpointError` ``"<malformed> (<why>)"`` when they are not."""
    from vesselfm.models import CheckpointError

    try:
        if meta.get("preprocess") is not None:
            meta["preprocess"] = PreprocessConfig.from_mapping(meta["preprocess"])
        if meta.get("threshold") is not None:
            meta["threshold"] = float(meta["threshold"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{malformed} ({err})") from err
    return meta


def model_metadata(model: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`read_checkpoint_metadata` of a ``model/*.yaml`` config's ``checkpoint`` (with its
    ``revision``, ``cache_dir`` and ``trust_checkpoint``)."""
    from vesselfm.models import trust_flag

    return read_checkpoint_metadata(
        model.get("checkpoint"),
        model.get("revision"),
        model.get("cache_dir"),
        trust_checkpoint=trust_flag(model.get("trust_checkpoint")),
    )


def resolve_preprocess_and_threshold(
    model: Mapping[str, Any],
    preprocess: Mapping[str, Any] | PreprocessConfig | None = None,
    threshold: float | None = None,
    default_threshold: float = 0.5,
    metadata: Mapping[str, Any] | None = None,
) -> tuple[PreprocessConfig, float]:
    """The preprocessing and threshold to infer with: explicit values first, then the
    checkpoint's record (:func:`read_checkpoint_metadata`), then the defaults.

    Args:
        model: a ``model/*.yaml`` config as a mapping (``checkpoint``, ``revision``,
            ``cache_dir``, ``trust_checkpoint``).
        preprocess: ``preprocess=``; ``None``: the checkpoint's, else vesselFM's
            (``PreprocessConfig()``).
        threshold: ``threshold=``; ``None``: the checkpoint's, else ``default_threshold``.
        default_threshold: ``inference.threshold``.
        metadata: what :func:`read_checkpoint_metadata` read from ``model.checkpoint`` already
            (``None``: read it here).

    Returns:
        ``(preprocess, threshold)``; what came from the checkpoint is logged.

    Raises:
        CheckpointError: the checkpoint's metadata cannot be read (see
            :func:`read_checkpoint_metadata`).
        ValueError: ``preprocess`` holds an unknown key or a bad value.
    """
    meta = model_metadata(model) if metadata is None else metadata
    if preprocess is not None:
        if not isinstance(preprocess, PreprocessConfig):
            preprocess = PreprocessConfig.from_mapping(preprocess)
    else:
        preprocess = meta.get("preprocess") or PreprocessConfig()
        if meta.get("preprocess") is not None:
            log.info("preprocessing from the checkpoint: %s", preprocess.to_dict())
    if threshold is not None:
        threshold = float(threshold)
    elif meta.get("threshold") is not None:
        threshold = float(meta["threshold"])
        log.info("threshold %.3f from the checkpoint", threshold)
    else:
        threshold = float(default_threshold)
    return preprocess, threshold


def use_checkpoint_classes(model: Any, found: int | None) -> int:
    """Size the head to ``found``, the output classes of ``model.checkpoint`` (``num_classes`` of
    :func:`read_checkpoint_metadata`: what training recorded, else the head's shape), before the
    network is built: a segment checkpoint (15 classes, ``experiment=imagecasx_segments`` or
    ``phantom_segments``) then loads into a 15-channel head without a model key to change, in
    ``infer`` and ``export`` alike. Without weights, ``model.net.out_channels`` as configured.

    Args:
        model: the ``model`` config node (a ``DictConfig``; ``model.net.out_channels`` is set).
        found: the checkpoint's classes, ``None`` when it tells none.

    Returns:
        The number of output classes the network will have (1: a lumen model).
    """
    from omegaconf import open_dict

    classes = int(model.net.get("out_channels", 1))
    if found is not None and found != classes:
        with open_dict(model):
            model.net.out_channels = found
        classes = found
    if classes > 1:
        log.info(
            "model.checkpoint=%s is a segment model (%d classes): label maps of the ImageCAS-X "
            "codes",
            model.get("checkpoint"),
            classes,
        )
    return classes
