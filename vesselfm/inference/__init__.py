"""Whole-volume inference: sliding window, TTA, post-processing.

- :class:`SlidingWindowPredictor`: one predictor for validation/test in training and for
  ``python -m vesselfm.infer``. Files are read and written with :mod:`vesselfm.io`.
- :mod:`~vesselfm.inference.tta`, :mod:`~vesselfm.inference.postprocess`: test-time
  augmentation and connected-component filtering (both off by default).
- :func:`read_checkpoint_metadata`: the preprocessing and threshold a training checkpoint records.

Nothing here imports Lightning or Hydra.
"""

from __future__ import annotations

from vesselfm.inference.metadata import read_checkpoint_metadata
from vesselfm.inference.postprocess import PostprocessConfig, filter_components, postprocess_mask
from vesselfm.inference.predictor import CPUConfig, SlidingWindowPredictor, resolve_device
from vesselfm.inference.tta import TTAConfig

__all__ = [
    "CPUConfig",
    "PostprocessConfig",
    "SlidingWindowPredictor",
    "TTAConfig",
    "filter_components",
    "postprocess_mask",
    "read_checkpoint_metadata",
    "resolve_device",
]
