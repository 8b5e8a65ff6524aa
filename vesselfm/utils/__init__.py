"""Small helpers shared by the entrypoints: CLI error handling, logging, atomic writes."""

from __future__ import annotations

from vesselfm.utils.cli import UserError, hydra_entrypoint
from vesselfm.utils.io import atomic_path

__all__ = ["UserError", "atomic_path", "hydra_entrypoint"]
