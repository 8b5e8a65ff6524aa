"""The user-error type, importable without Hydra (library modules raise it; the CLI reports it)."""

from __future__ import annotations


class UserError(RuntimeError):
    """An error caused by the user's input or environment, reported as one line.

    The message must name what was wrong, where (file or config key), and the fix.
    """
