"""Data: ImageCAS discovery and preparation, shared preprocessing, the prepared set's manifest,
datasets and DataModules, loader tuning, transforms, phantoms.

``imagecas`` (discovery, splits), ``preprocessing`` (one resampling and normalisation),
``prepare`` (raw pairs to a prepared set), ``manifest`` (the prepared set's ``manifest.json``),
``datasets`` (patches and volumes of a prepared set), ``loading`` (loader workers, label bits),
``datamodules`` (Lightning DataModules), ``transforms`` (augmentation), ``phantom/`` (synthetic
coronary CTA: anatomy, trees, CT realism, writing).

Imports are lazy (PEP 562): ``import vesselfm.data`` loads neither torch nor Lightning until a
name that needs them is used, so the command-line tools start quickly.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ImageCASDataModule": "vesselfm.data.datamodules",
    "PhantomDataModule": "vesselfm.data.datamodules",
    "PreprocessConfig": "vesselfm.data.preprocessing",
    "PrepareOptions": "vesselfm.data.prepare",
    "prepare_dataset": "vesselfm.data.prepare",
    "discover_cases": "vesselfm.data.imagecas",
    "read_official_split": "vesselfm.data.imagecas",
    "random_split": "vesselfm.data.imagecas",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'vesselfm.data' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
