"""Whole-volume inference: sliding window, TTA, post-processing, NIfTI in and out.

- :class:`SlidingWindowPredictor`: one predictor for validation/test in training and for
  ``python -m vesselfm.infer``.
- :mod:`~vesselfm.inference.io`: validated NIfTI reading, geometry-exact atomic writing,
  input discovery and case ids.
- :mod:`~vesselfm.inference.tta`, :mod:`~vesselfm.inference.postprocess`: test-time
  augmentation and connected-component filtering (both off by default).
- :func:`read_checkpoint_metadata`: the preprocessing and threshold a training checkpoint records.

Nothing here imports Lightning or Hydra.
"""

from __future__ import annotations

from vesselfm.inference.io import (
    Scan,
    case_id,
    find_inputs,
    load_scan,
    output_paths,
    save_prediction,
    save_probabilities,
)
from vesselfm.inference.metadata import read_checkpoint_metadata
from vesselfm.inference.postprocess import PostprocessConfig, filter_components, postprocess_mask
from vesselfm.inference.predictor import CPUConfig, SlidingWindowPredictor, resolve_device
from vesselfm.inference.tta import TTAConfig

__all__ = [
    "CPUConfig",
    "PostprocessConfig",
    "Scan",
    "SlidingWindowPredictor",
    "TTAConfig",
    "case_id",
    "filter_components",
    "find_inputs",
    "load_scan",
    "output_paths",
    "postprocess_mask",
    "read_checkpoint_metadata",
    "resolve_device",
    "save_prediction",
    "save_probabilities",
]
