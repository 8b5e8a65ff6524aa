"""vesselFM networks and weights."""

from __future__ import annotations

from vesselfm.models.components import (
    DEFAULT_CHECKPOINT,
    CheckpointError,
    build_network,
    count_parameters,
    load_model,
    load_weights,
    read_state_dict,
    resolve_checkpoint,
)

__all__ = [
    "DEFAULT_CHECKPOINT",
    "CheckpointError",
    "build_network",
    "count_parameters",
    "load_model",
    "load_weights",
    "read_state_dict",
    "resolve_checkpoint",
]
