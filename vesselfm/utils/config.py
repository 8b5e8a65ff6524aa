"""Plain-mapping → frozen-dataclass config conversion with one error style."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def checked_fields(cls: type, cfg: Mapping[str, Any] | None, key: str) -> dict[str, Any]:
    """``cfg`` as a dict of ``cls``'s dataclass fields; unknown keys raise, listing the allowed ones.

    Args:
        cls: a dataclass.
        cfg: the config mapping (``None``: all defaults).
        key: the config key it came from, for the message (e.g. ``"inference.tta"``).

    Raises:
        ValueError: ``cfg`` has keys that are not fields of ``cls``.
    """
    values = dict(cfg or {})
    allowed = sorted(cls.__dataclass_fields__)
    unknown = sorted(set(values) - set(allowed))
    if unknown:
        raise ValueError(f"unknown {key} keys {unknown}; allowed: {allowed}")
    return values
