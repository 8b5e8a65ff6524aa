"""What our training checkpoints record for inference: preprocessing, threshold, model name.

``VesselSegLitModule.on_save_checkpoint`` stores
``checkpoint["vesselfm"] = {"preprocess": PreprocessConfig.to_dict(), "threshold": float,
"model_name": str}``; :func:`read_checkpoint_metadata` reads it back so that ``infer`` resamples,
normalises and thresholds exactly as training did.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from vesselfm.data.preprocessing import PreprocessConfig

METADATA_KEY = "vesselfm"


def read_checkpoint_metadata(
    path: str | os.PathLike[str] | None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    trust_checkpoint: bool = False,
) -> dict[str, Any]:
    """The ``"vesselfm"`` metadata of a Lightning ``.ckpt``, or ``{}`` for other weights.

    Args:
        path: a ``model.checkpoint`` spec (local path or ``hf://owner/repo/file``); ``None``,
            a raw ``state_dict`` ``.pt`` or a checkpoint without metadata give ``{}``.
        revision, cache_dir: as for :func:`vesselfm.models.resolve_checkpoint`.
        trust_checkpoint: ``model.trust_checkpoint``: allow a file that needs full unpickling
            (it may run code); otherwise it is refused (see :func:`vesselfm.models.load_checkpoint`).

    Returns:
        ``{"preprocess": PreprocessConfig, "threshold": float, "model_name": str, ...}`` with
        only the keys the checkpoint holds; ``preprocess`` is validated and returned as a
        :class:`~vesselfm.data.preprocessing.PreprocessConfig`.

    Raises:
        CheckpointError: the file cannot be read, needs full unpickling and is not trusted, or
            its metadata is malformed.
    """
    if path is None or not str(path).endswith(".ckpt"):
        return {}  # raw state_dict files carry no metadata
    # Imported here: vesselfm.models builds networks with Hydra, which inference does not need.
    from vesselfm.models import CheckpointError, load_checkpoint, resolve_checkpoint

    local = resolve_checkpoint(path, revision, cache_dir)
    if local is None or Path(local).suffix != ".ckpt":
        return {}
    local = Path(local)
    # mmap: the tensors are not read, only the small metadata dict is.
    ckpt = load_checkpoint(local, trust_checkpoint, mmap=True)
    raw = ckpt.get(METADATA_KEY) if isinstance(ckpt, dict) else None
    if not raw:
        return {}
    if not isinstance(raw, dict):
        raise CheckpointError(
            f"{local}: checkpoint['{METADATA_KEY}'] must be a dict, got {type(raw).__name__}"
        )
    meta: dict[str, Any] = dict(raw)
    try:
        if meta.get("preprocess") is not None:
            meta["preprocess"] = PreprocessConfig.from_mapping(meta["preprocess"])
        if meta.get("threshold") is not None:
            meta["threshold"] = float(meta["threshold"])
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{local}: malformed checkpoint['{METADATA_KEY}'] ({err})") from err
    return meta
