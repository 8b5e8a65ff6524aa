"""Model building blocks: the DynUNet builder and the checkpoint loader."""

from __future__ import annotations

from vesselfm.models.components.checkpoint import (
    DEFAULT_CHECKPOINT,
    TRUST_KEY,
    CheckpointError,
    load_checkpoint,
    load_weights,
    read_state_dict,
    resolve_checkpoint,
    resolve_resume_checkpoint,
    trust_flag,
)
from vesselfm.models.components.network import (
    build_network,
    count_parameters,
    load_model,
    model_config,
)

__all__ = [
    "DEFAULT_CHECKPOINT",
    "TRUST_KEY",
    "CheckpointError",
    "build_network",
    "count_parameters",
    "load_checkpoint",
    "load_model",
    "load_weights",
    "model_config",
    "read_state_dict",
    "resolve_checkpoint",
    "resolve_resume_checkpoint",
    "trust_flag",
]
