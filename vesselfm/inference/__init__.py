"""Whole-volume inference: sliding window, TTA, post-processing.

- :class:`SlidingWindowPredictor`: one predictor for validation/test in training and for
  ``python -m vesselfm.infer``. Files are read and written with :mod:`vesselfm.io`.
- :func:`segment_files` → :class:`BatchResult`: many scans with one predictor, scored against
  their labels when given; what ``python -m vesselfm.infer``, the training demo
  (:mod:`~vesselfm.inference.demo`) and the notebook run. It runs
  :mod:`~vesselfm.inference.cohort`: Lightning predict on one or many devices, loader workers
  reading ahead, a writer thread, shares (``shard=K/N``), status files and a run summary.
- :mod:`~vesselfm.inference.tta`, :mod:`~vesselfm.inference.postprocess`: test-time
  augmentation and connected-component filtering (both off by default).
- :func:`read_checkpoint_metadata`: the preprocessing and threshold a training checkpoint records;
  :func:`resolve_preprocess_and_threshold`: those, or explicit values, or the defaults.

Nothing here imports Hydra; Lightning is imported by :mod:`~vesselfm.inference.cohort` when a
run starts.
"""

from __future__ import annotations

from vesselfm.inference.batch import BatchResult, case_ids, default_output_dir, segment_files
from vesselfm.inference.metadata import read_checkpoint_metadata, resolve_preprocess_and_threshold
from vesselfm.inference.postprocess import PostprocessConfig, filter_components, postprocess_mask
from vesselfm.inference.predictor import CPUConfig, SlidingWindowPredictor, resolve_device
from vesselfm.inference.tta import TTAConfig

__all__ = [
    "BatchResult",
    "CPUConfig",
    "PostprocessConfig",
    "SlidingWindowPredictor",
    "TTAConfig",
    "case_ids",
    "default_output_dir",
    "filter_components",
    "postprocess_mask",
    "read_checkpoint_metadata",
    "resolve_device",
    "resolve_preprocess_and_threshold",
    "segment_files",
]
