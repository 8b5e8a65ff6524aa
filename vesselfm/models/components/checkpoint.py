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
import re
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
TRUST_KEY = "model.trust_checkpoint"
# What torch's restricted unpickler says when a file needs more than weights_only=True allows
# (as opposed to a truncated or foreign file, which no setting would read).
_REFUSALS = (
    "GLOBAL",
    "add_safe_globals",
    "Trying to call reduce",
    "Can only build",
    "Can only create new object",
    "Unsupported operand",
)
# torch.save writes a zip archive (since 1.6) or, legacy, a pickle stream starting with PROTO
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


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


def trust_flag(value: Any, key: str = TRUST_KEY) -> bool:
    """``model.trust_checkpoint`` as a bool; ``None`` (key absent) is ``False``.

    Raises:
        CheckpointError: for anything but a bool, so that ``"no"`` never reads as true.
    """
    if value is None:
        return False
    if not isinstance(value, bool):
        raise CheckpointError(f"{key} must be true or false, got {value!r}")
    return value


def _refusal(err: BaseException) -> str | None:
    """The line of torch's ``weights_only`` error that names what was refused, or ``None``."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        line = line.split("WeightsUnpickler error:")[-1].strip()
        if any(marker in line for marker in _REFUSALS):
            found = re.search(r"GLOBAL ([\w.]+?)\.?(?:\s|$)", line)
            return f"a pickled {found.group(1)}" if found else line.rstrip(".")
    return None


def _torch_detail(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    detail = next((line for line in lines if "WeightsUnpickler error:" in line), None)
    if detail is not None:
        detail = detail.split("WeightsUnpickler error:")[-1].strip()
    return detail or (lines[0] if lines else type(err).__name__)


def load_checkpoint(
    path: str | os.PathLike[str],
    trust_checkpoint: bool = False,
    mmap: bool = False,
    key: str = "model.checkpoint",
) -> Any:
    """``torch.load`` a checkpoint with ``weights_only=True``; full unpickling only on opt-in.

    ``weights_only=True`` rebuilds tensors and plain containers only, so a file cannot run code
    while it is read. Our own checkpoints hold nothing else (see :func:`to_plain`). A file that
    needs full unpickling (pickled classes or functions: anything may run) is refused unless
    ``trust_checkpoint`` (``model.trust_checkpoint=true``) is set; then it is read with
    ``weights_only=False`` and a warning.

    Args:
        path: a local ``.pt``/``.ckpt`` file.
        trust_checkpoint: allow full unpickling of this file.
        mmap: map the tensors instead of reading them (zip checkpoints only; when only the small
            non-tensor entries are needed).
        key: the config key that named the file, for messages.

    Returns:
        The unpickled object, tensors on the CPU.

    Raises:
        CheckpointError: the file cannot be read, or needs full unpickling and is not trusted.
    """
    path = Path(path)
    try:
        with path.open("rb") as f:
            head = f.read(4)
    except OSError as err:
        raise CheckpointError(f"cannot read checkpoint {path} ({key}): {err}") from err
    mmap = mmap and head == _ZIP_MAGIC
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        if not head.startswith((_ZIP_MAGIC, _PICKLE_PROTO)):
            raise CheckpointError(
                f"cannot read checkpoint {path} ({key}): not a file written by torch.save"
            ) from err
        reason = _refusal(err)
        if reason is None:
            raise CheckpointError(
                f"cannot read checkpoint {path} ({key}): {_torch_detail(err)}"
            ) from err
        if not trust_checkpoint:
            raise CheckpointError(
                f"checkpoint {path} ({key}) holds pickled Python objects ({reason}) that "
                f"torch.load(weights_only=True) refuses: unpickling them could run arbitrary "
                f"code on this machine. Only if you trust the file, set {TRUST_KEY}=true"
            ) from err
    log.warning(
        "%s=true: loading %s with weights_only=False (%s); this runs any code the file holds",
        TRUST_KEY,
        path,
        reason,
    )
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=mmap)
    except Exception as err:  # noqa: BLE001 - any unpickling failure is the file's, not ours
        raise CheckpointError(
            f"cannot read checkpoint {path} ({key}) even with {TRUST_KEY}=true: "
            f"{type(err).__name__}: {_torch_detail(err)}"
        ) from err


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


def read_state_dict(
    path: str | os.PathLike[str], trust_checkpoint: bool = False
) -> dict[str, torch.Tensor]:
    """Read network weights from a raw ``state_dict`` file or a Lightning checkpoint.

    Lightning checkpoints keep the weights under ``state_dict`` with keys prefixed ``model.``
    (the LightningModule's attribute); only those keys are returned, without the prefix.
    The file is read with ``weights_only=True`` (see :func:`load_checkpoint`); one that needs
    full unpickling is refused unless ``trust_checkpoint`` is set.

    Raises:
        CheckpointError: when the file cannot be read, needs full unpickling and is not
            trusted, or holds no weights.
    """
    path = Path(path)
    obj = load_checkpoint(path, trust_checkpoint)

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


def resolve_resume_checkpoint(
    ckpt_path: str | os.PathLike[str] | None, runs_root: str | os.PathLike[str], trust: bool
) -> str | None:
    """The Lightning checkpoint to resume or test from (``ckpt_path=``), checked to load.

    ``"last"`` is the newest ``checkpoints/last.ckpt`` under ``runs_root`` (the task's runs,
    ``<paths.log_dir>/<task_name>``). The file is loaded once (mapped, tensors not read) with
    ``weights_only=True``, or fully when ``trust`` (``model.trust_checkpoint=true``), so that a
    refused checkpoint fails with one line before anything is built.

    Args:
        ckpt_path: ``None``/``""``/``"null"`` (none), ``"last"``, or a ``.ckpt`` path.
        runs_root: where ``"last"`` is looked for.
        trust: allow a checkpoint that needs full unpickling.

    Returns:
        The checkpoint's path, or ``None``.

    Raises:
        UserError: no ``last.ckpt`` under ``runs_root``, or no such file.
        CheckpointError: the file cannot be read, or needs unpickling and is not trusted.
    """
    if ckpt_path in (None, "", "null"):
        return None
    if ckpt_path == "last":
        root = Path(runs_root)
        candidates = sorted(root.glob("**/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
        if not candidates:
            raise UserError(
                f"ckpt_path=last: no last.ckpt under {root}; give ckpt_path=/path/to/last.ckpt"
            )
        path = str(candidates[-1])
    elif not Path(ckpt_path).is_file():
        raise UserError(
            f"ckpt_path={ckpt_path}: no such file; give a Lightning .ckpt of this task, or ckpt_path=last"
        )
    else:
        path = str(ckpt_path)
    load_checkpoint(path, trust, mmap=True, key="ckpt_path")
    return path
