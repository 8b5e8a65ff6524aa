"""Training transforms: MONAI dictionary transforms keyed ``image``/``label``.

The default augmentation is the published vesselFM fine-tune's pipeline (its
``configs/data/default_finetune.yaml``): zoom, affine shear, flips, Gaussian smoothing, Gaussian
noise and histogram shift, with the same probabilities and ranges. It runs on a crop that is
already normalised with the case's percentile range (the fine-tune's intensity scaling; the
same mapping ``infer`` applies), and ends with a centre crop to the patch size.

``configs/data/imagecas.yaml`` holds the same list as YAML (``_target_`` entries), so each
transform can be changed or removed from the command line; :data:`DEFAULT_AUGMENTATIONS` is the
Python copy used when ``augment=True`` is passed from code (a test keeps the two equal).

No Lightning, no Hydra: ``_target_`` entries are resolved here with :func:`locate`.
"""

from __future__ import annotations

import copy
import importlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

KEYS = ["image", "label"]

# The published fine-tune's augmentation (vesselFM, configs/data/default_finetune.yaml), keyed
# image/label. Its RandGaussianNoised has mean 0.3, std 0.01: kept as published (in effect a
# brightness shift of the [0, 1] image on 20 % of the crops).
DEFAULT_AUGMENTATIONS: list[dict[str, Any]] = [
    {
        "_target_": "monai.transforms.RandZoomd",
        "keys": KEYS,
        "prob": 0.3,
        "min_zoom": 1.0,
        "max_zoom": 1.3,
        "mode": ["trilinear", "nearest"],
        "padding_mode": "constant",
    },
    {
        "_target_": "monai.transforms.RandAffined",
        "keys": KEYS,
        "prob": 0.3,
        "shear_range": [0.4, 0.4, 0.4],
        "mode": ["bilinear", "nearest"],
        "padding_mode": "zeros",
    },
    {"_target_": "monai.transforms.RandFlipd", "keys": KEYS, "prob": 0.3, "spatial_axis": 0},
    {"_target_": "monai.transforms.RandFlipd", "keys": KEYS, "prob": 0.3, "spatial_axis": 1},
    {
        "_target_": "monai.transforms.RandGaussianSmoothd",
        "keys": ["image"],
        "prob": 0.2,
        "sigma_x": [0.0, 0.5],
        "sigma_y": [0.0, 0.5],
        "sigma_z": [0.0, 0.5],
    },
    {"_target_": "monai.transforms.RandGaussianNoised", "keys": ["image"], "prob": 0.2, "mean": 0.3, "std": 0.01},
    {"_target_": "monai.transforms.RandHistogramShiftd", "keys": ["image"], "prob": 0.3, "num_control_points": [5, 10]},
]


def locate(path: str) -> Any:
    """The object named by a dotted path (``monai.transforms.RandFlipd``)."""
    module, _, name = str(path).rpartition(".")
    if not module:
        raise ValueError(f"_target_ must be a dotted path like monai.transforms.RandFlipd, got {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"_target_ {path!r} cannot be imported: {err}") from err


def instantiate_transform(config: Mapping[str, Any]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Build one transform from ``{"_target_": "monai.transforms.X", **kwargs}`` (nested ones too)."""

    def build(value: Any) -> Any:
        if isinstance(value, Mapping):
            kwargs = {k: build(v) for k, v in value.items() if k != "_target_"}
            return locate(value["_target_"])(**kwargs) if "_target_" in value else kwargs
        if isinstance(value, (list, tuple)):
            return [build(v) for v in value]
        return value

    if not isinstance(config, Mapping) or "_target_" not in config:
        raise ValueError(f"each augmentation needs a _target_ (e.g. monai.transforms.RandFlipd), got {config!r}")
    return build(config)


def augmentation_configs(augment: bool | Sequence[Any] | Mapping[str, Any] | None) -> list[dict[str, Any]]:
    """``True`` → the published pipeline; ``False``/``None`` → none; a list (or a name → config
    mapping, ``null`` entries dropped) → those transforms, in order."""
    if augment is None or augment is False:
        return []
    if augment is True:
        return copy.deepcopy(DEFAULT_AUGMENTATIONS)
    if isinstance(augment, Mapping):
        return [dict(v) for v in augment.values() if v is not None]
    if isinstance(augment, (list, tuple)):
        return [dict(v) for v in augment if v is not None]
    raise TypeError(f"data.augment must be true, false, or a list of _target_ transforms, got {type(augment).__name__}")


def train_transforms(
    augment: bool | Sequence[Any] | Mapping[str, Any] | None, patch_size: Sequence[int]
) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """The training pipeline: the augmentations, a centre crop to ``patch_size``, float32 tensors.

    Input: ``{"image": (1, X, Y, Z) float32 normalised, "label": (1, X, Y, Z) 0/1}`` (a crop
    of at least ``patch_size``). Output: the same keys as float32 ``torch.Tensor`` of shape
    ``(1, *patch_size)``, the label still 0/1.
    """
    from monai.transforms import CenterSpatialCropd, Compose, EnsureTyped, SpatialPadd

    transforms = [instantiate_transform(c) for c in augmentation_configs(augment)]
    transforms += [
        CenterSpatialCropd(keys=KEYS, roi_size=list(patch_size)),
        SpatialPadd(keys=KEYS, spatial_size=list(patch_size)),
        EnsureTyped(keys=KEYS, data_type="tensor", dtype=torch.float32, track_meta=False),
    ]
    return Compose(transforms)


__all__ = [
    "DEFAULT_AUGMENTATIONS",
    "KEYS",
    "augmentation_configs",
    "instantiate_transform",
    "locate",
    "train_transforms",
]
