"""Resolve and load vesselFM weights: ``hf://repo/file``, raw ``state_dict`` ``.pt``, Lightning ``.ckpt``.

Example:
    >>> net = build_network(cfg.model.net)  # doctest: +SKIP
    >>> load_weights(net, "hf://bwittmann/vesselFM/vesselFM_base.pt", model_name="vesselfm_base")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import os
import pickle
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import torch
from torch import nn

from vesselfm.utils.errors import UserError

log = logging.getLogger(__name__)

HF_SCHEME = "hf://"
DEFAULT_CHECKPOINT = "hf://bwittmann/vesselFM/vesselFM_base.pt"
LIGHTNING_PREFIX = "model."
_NO_CHECKPOINT = {"", "none", "null", "random"}


class CheckpointError(UserError):
    """Weights that cannot be found, read, or do not fit the configured network."""


def parse_hf_uri(uri: str) -> tuple[str, str]:
    """Split ``hf://owner/repo/path/to/file.pt`` into ``("owner/repo", "path/to/file.pt")``.

    Raises:
        CheckpointError: when the URI does not name a repository and a file.
    """
    parts = uri[len(HF_SCHEME) :].strip("/").split("/")
    if len(parts) < 3 or not all(parts):
        raise CheckpointError(
            f"model.checkpoint must look like hf://<owner>/<repo>/<file>, got {uri!r}"
        )
    return "/".join(parts[:2]), "/".join(parts[2:])


def resolve_checkpoint(
    spec: str | os.PathLike[str] | None,
    revision: str | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Path | None:
    """Turn a checkpoint spec into a local file, downloading from Hugging Face when needed.

    Args:
        spec: ``hf://<owner>/<repo>/<file>``, a local path, or ``None``/``"none"`` for random
            initialisation.
        revision: a branch, tag or commit of the Hugging Face repo (``None``: ``main``).
        cache_dir: Hugging Face cache directory (``None``: ``HF_HUB_CACHE``/``HF_HOME``).

    Returns:
        The local path of the weights, or ``None`` when no checkpoint is requested.

    Raises:
        CheckpointError: when the file does not exist locally, or is neither cached nor
            downloadable (offline, unknown repo or file).
    """
    if spec is None or str(spec).strip().lower() in _NO_CHECKPOINT:
        return None
    spec = str(spec)
    if not spec.startswith(HF_SCHEME):
        path = Path(spec).expanduser()
        if not path.is_file():
            raise CheckpointError(
                f"model.checkpoint={spec}: no such file; give an existing .pt/.ckpt path "
                f"or {DEFAULT_CHECKPOINT}"
            )
        return path

    repo_id, filename = parse_hf_uri(spec)
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        local = hf_hub_download(
            repo_id=repo_id,
            filename=filename,
            revision=revision,
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except LocalEntryNotFoundError as err:
        raise CheckpointError(
            f"weights {filename} of Hugging Face repo {repo_id} (revision {revision or 'main'}) "
            f"are not cached and cannot be downloaded (offline?): on a machine with internet run "
            f"`hf download {repo_id} {filename}` (or download "
            f"https://huggingface.co/{repo_id}/blob/{revision or 'main'}/{filename}), then copy "
            f"the cache here or pass model.checkpoint=/path/to/{Path(filename).name}"
        ) from err
    except (RepositoryNotFoundError, RevisionNotFoundError, EntryNotFoundError) as err:
        raise CheckpointError(
            f"model.checkpoint={spec} (revision {revision or 'main'}): "
            f"{type(err).__name__}; check the repo, file and model.revision"
        ) from err
    return Path(local)


def to_plain(value: Any, key: str = "value") -> Any:
    """``value`` as the plain types that ``torch.load(weights_only=True)`` reads back.

    Mappings become ``dict`` (OmegaConf configs resolved), lists, sets and tuple subclasses
    ``list`` (tuples stay tuples), paths ``str``, numpy numbers and arrays Python numbers and
    lists, enums their value, dataclasses ``dict``; tensors, ``str``, ``int``, ``float``, ``bool``
    and ``None`` are kept.

    Args:
        value: what is about to be stored in a checkpoint.
        key: its name, for the error.

    Raises:
        TypeError: for any other object (it would make the checkpoint need full unpickling).
    """
    if value is None or type(value) in (str, int, float, bool, bytes):
        return value
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return to_plain(value.value, key)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_plain(dataclasses.asdict(value), key)
    if type(value).__module__.startswith("omegaconf"):
        from omegaconf import OmegaConf

        return to_plain(OmegaConf.to_container(value, resolve=True), key)
    if isinstance(value, Mapping):
        return {to_plain(k, key): to_plain(v, f"{key}.{k}") for k, v in value.items()}
    if type(value) is tuple:
        return tuple(to_plain(v, f"{key}[{i}]") for i, v in enumerate(value))
    if isinstance(value, list | tuple | set | frozenset):
        return [to_plain(v, f"{key}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{key}: a {type(value).__module__}.{type(value).__qualname__} cannot be stored in a "
        f"checkpoint that loads with weights_only=True; pass dicts, lists, str, int, float or bool"
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read network weights from a raw ``state_dict`` file or a Lightning checkpoint.

    Lightning checkpoints keep the weights under ``state_dict`` with keys prefixed ``model.``
    (the LightningModule's attribute); only those keys are returned, without the prefix.
    ``weights_only=True`` is used first; a Lightning checkpoint whose extra state needs full
    unpickling is read with ``weights_only=False`` and a warning (only load files you trust).

    Raises:
        CheckpointError: when the file cannot be read or holds no weights.
    """
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        if "weights_only" in str(err) and path.suffix == ".ckpt":
            log.warning(
                "%s holds non-tensor objects; loading with weights_only=False (trust it?)", path
            )
            obj = torch.load(path, map_location="cpu", weights_only=False)
        else:
            raise CheckpointError(
                f"cannot read checkpoint {path}: {str(err).splitlines()[0]}"
            ) from err

    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        full = obj["state_dict"]
        state = {
            k[len(LIGHTNING_PREFIX) :]: v for k, v in full.items() if k.startswith(LIGHTNING_PREFIX)
        }
        if not state:
            raise CheckpointError(
                f"{path} is a Lightning checkpoint but has no keys prefixed '{LIGHTNING_PREFIX}' "
                f"(first keys: {list(full)[:3]})"
            )
        return state
    if isinstance(obj, Mapping) and all(isinstance(v, torch.Tensor) for v in obj.values()) and obj:
        return dict(obj)
    raise CheckpointError(
        f"{path} is neither a state_dict nor a Lightning checkpoint (type {type(obj).__name__})"
    )


def load_weights(
    net: nn.Module,
    state_dict: Mapping[str, torch.Tensor],
    model_name: str = "the model",
    source: str = "the checkpoint",
    max_keys: int = 5,
) -> None:
    """Load ``state_dict`` into ``net`` strictly: every key present, every shape equal.

    Raises:
        CheckpointError: one message listing the first missing, unexpected and mis-shaped keys
            and naming the model config to change.
    """
    expected = net.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    misshaped = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or misshaped:
        parts = []
        for label, keys in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("shape (ckpt vs model)", misshaped),
        ):
            if keys:
                more = f" (+{len(keys) - max_keys} more)" if len(keys) > max_keys else ""
                parts.append(f"{len(keys)} {label}: {', '.join(keys[:max_keys])}{more}")
        raise CheckpointError(
            f"{source} does not fit model={model_name}: {'; '.join(parts)}. "
            f"Choose the model config the weights were trained with (e.g. model=vesselfm_base) "
            f"or another model.checkpoint"
        )
    net.load_state_dict(state_dict, strict=True)
