"""vesselfm: vesselFM for coronary CT angiography (ImageCAS).

The package is organised as plain, framework-free building blocks (``models``, ``data``,
``inference``, ``metrics``, ``viz``) composed by thin Hydra entrypoints
(``python -m vesselfm.train``, ``infer``, ``evaluate``, ``prepare``, ``phantom``).
"""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
