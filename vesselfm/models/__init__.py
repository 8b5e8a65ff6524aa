"""vesselFM networks and weights."""

from __future__ import annotations

from vesselfm.models.components import (
    DEFAULT_CHECKPOINT,
    TRUST_KEY,
    CheckpointError,
    build_network,
    count_parameters,
    load_checkpoint,
    load_model,
    load_weights,
    model_config,
    read_state_dict,
    resolve_checkpoint,
    resolve_resume_checkpoint,
    trust_flag,
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
