"""Inference for segment models (``experiment=imagecasx_segments``): a label map with the codes.

A segment model emits one logit per class (15: background and ImageCAS-X's codes 1..14). At full
size 15 float32 channels would not fit the 4 GiB inference budget (512x512x275 voxels: 4.3 GB), so
:func:`predict_classes` stitches the sliding windows' softmax probabilities per class into a
**float16** accumulator on the CPU (2 bytes a voxel a class) and takes the argmax in slabs; the
label map is uint8 with the codes. Probabilities per class (float16, the windows' weighted mean)
come back only when asked for.

:func:`segment_file` runs a scan end to end: the prepared set's preprocessing (as
``SlidingWindowPredictor.preprocess_array``), the classes, nearest back onto the scan's grid, and
``<case>_segments.nii.gz`` plus ``<case>_segments.seg.nrrd`` (3D Slicer: one named, coloured
segment per code present). :data:`CORONARY_SEGMENTS` names them; the DICOM-SEG writer takes the
same table (``vesselfm.io.dicom_seg.write_like(..., segments=CORONARY_SEGMENTS)``).

Codes: every segment's type is SNOMED CT 41801008 *Coronary artery* (the generic code the lumen
mask uses). Per-artery SNOMED codes (left main, LAD, ...) could not be verified against DICOM
CID 3015 / the SNOMED browser from here, so none is invented; the segment names carry the artery.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vesselfm.io.terminology import VESSEL, Segment

log = logging.getLogger(__name__)

# distinct colours (RGB 0..255) for the 14 ImageCAS-X codes, left tree warm, right tree cool
_COLOURS: dict[int, tuple[int, int, int]] = {
    1: (230, 25, 75),  # LM
    2: (245, 130, 48),  # LAD
    3: (255, 225, 25),  # LCx
    4: (250, 190, 212),  # D1
    5: (170, 110, 40),  # D2
    6: (128, 0, 0),  # OM1
    7: (210, 245, 60),  # OM2
    8: (240, 50, 230),  # IM
    9: (0, 130, 200),  # RCA
    10: (70, 240, 240),  # R-PDA
    11: (0, 0, 128),  # R-PLA
    12: (60, 180, 75),  # L-PDA
    13: (0, 128, 128),  # L-PLA
    14: (128, 128, 128),  # Other
}


def coronary_segments() -> tuple[Segment, ...]:
    """The 14 ImageCAS-X segments as :class:`~vesselfm.io.terminology.Segment` (label value =
    code, ImageCAS-X's name, a colour; category and type those of the lumen mask)."""
    from vesselfm.data.imagecasx import SEGMENTS

    return tuple(
        Segment(
            label=code,
            name=name,
            color=tuple(c / 255 for c in _COLOURS[code]),  # type: ignore[arg-type]
            category=VESSEL.category,
            type=VESSEL.type,
        )
        for code, name in sorted(SEGMENTS.items())
    )


CORONARY_SEGMENTS: tuple[Segment, ...] = coronary_segments()


def _starts(size: int, roi: int, overlap: float) -> list[int]:
    """Window starts along one axis: every ``roi * (1 - overlap)`` voxels, the last flush."""
    if size <= roi:
        return [0]
    step = max(int(roi * (1.0 - overlap)), 1)
    starts = list(range(0, size - roi + 1, step))
    if starts[-1] != size - roi:
        starts.append(size - roi)
    return starts


def gaussian_weight(roi: Sequence[int], sigma_scale: float = 0.125) -> torch.Tensor:
    """A window's blending weight: a Gaussian centred on the window, sigma ``sigma_scale`` times
    its size per axis, peak 1, floored at 1e-3 (MONAI's ``mode="gaussian"``, without importing
    MONAI for inference)."""
    weight = torch.ones(())
    for n in roi:
        i = torch.arange(int(n), dtype=torch.float32) - (int(n) - 1) / 2
        weight = weight[..., None] * torch.exp(-(i**2) / (2 * (sigma_scale * int(n)) ** 2))
    return (weight / weight.max()).clamp_min(1e-3)


@torch.no_grad()
def predict_classes(
    net: nn.Module,
    image: torch.Tensor | np.ndarray,
    num_classes: int,
    roi_size: Sequence[int] = (128, 128, 128),
    overlap: float = 0.25,
    sw_batch_size: int = 1,
    probabilities: bool = False,
    slab: int = 16,
) -> tuple[np.ndarray, np.ndarray | None]:
    """The argmax class map of a segment model over a whole volume, stitched in float16.

    Args:
        net: ``(B, 1, *roi) -> (B, num_classes, *roi)`` logits (run on its own device).
        image: ``(X, Y, Z)`` prepared (normalised) intensities.
        num_classes: output channels (15 for ImageCAS-X).
        roi_size, overlap, sw_batch_size: the sliding window (as ``inference.*``).
        probabilities: also return the per-class probabilities ``(C, X, Y, Z)`` float16.
        slab: X-planes per step of the argmax (bounds its float32 temporary).

    Returns:
        ``(labels, probs)``: ``(X, Y, Z)`` uint8 codes and the probabilities or ``None``.
    """
    volume = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    if volume.ndim != 3:
        raise ValueError(f"predict_classes expects an (X, Y, Z) volume, got {tuple(volume.shape)}")
    shape = tuple(int(s) for s in volume.shape)
    roi = tuple(min(int(r), s) for r, s in zip(roi_size, shape, strict=True))
    device = next(net.parameters()).device
    weight = gaussian_weight(roi)
    acc = torch.zeros((num_classes, *shape), dtype=torch.float16)
    wsum = torch.zeros(shape, dtype=torch.float32) if probabilities else None
    corners = [
        (x, y, z)
        for x in _starts(shape[0], roi[0], overlap)
        for y in _starts(shape[1], roi[1], overlap)
        for z in _starts(shape[2], roi[2], overlap)
    ]
    was_training = net.training
    net.eval()
    try:
        for i in range(0, len(corners), max(int(sw_batch_size), 1)):
            batch = corners[i : i + max(int(sw_batch_size), 1)]
            windows = torch.stack(
                [volume[x : x + roi[0], y : y + roi[1], z : z + roi[2]] for x, y, z in batch]
            )[:, None]
            logits = net(windows.to(device)).float().cpu()
            if logits.shape[1] != num_classes:
                raise ValueError(
                    f"the network emits {logits.shape[1]} channels, expected {num_classes}"
                )
            probs = torch.softmax(logits, dim=1) * weight
            for (x, y, z), p in zip(batch, probs, strict=True):
                where = (slice(x, x + roi[0]), slice(y, y + roi[1]), slice(z, z + roi[2]))
                acc[(slice(None), *where)] += p.half()
                if wsum is not None:
                    wsum[where] += weight
    finally:
        net.train(was_training)
    # the argmax of the weighted sums is the argmax of the weighted means (same weight per voxel)
    labels = np.empty(shape, dtype=np.uint8)
    for x in range(0, shape[0], slab):
        labels[x : x + slab] = acc[:, x : x + slab].float().argmax(0).numpy().astype(np.uint8)
    if wsum is None:
        return labels, None
    for c in range(num_classes):
        acc[c] = (acc[c].float() / wsum.clamp_min(1e-6)).half()
    return labels, acc.numpy()


def nearest_onto(labels: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """``labels`` resampled onto ``shape`` by nearest neighbour (codes stay codes)."""
    if tuple(labels.shape) == tuple(shape):
        return labels
    t = torch.from_numpy(np.ascontiguousarray(labels))[None, None].float()
    out = torch.nn.functional.interpolate(
        t, size=tuple(int(s) for s in shape), mode="nearest-exact"
    )
    return out[0, 0].numpy().astype(np.uint8)


def write_segments_nrrd(
    labels: np.ndarray,
    affine: np.ndarray,
    like: Any,
    target: str | os.PathLike[str],
    segments: Sequence[Segment] = CORONARY_SEGMENTS,
) -> Path:
    """A 3D Slicer ``.seg.nrrd`` of the label map ``labels`` with one named, coloured segment per
    code present (the fields of :mod:`vesselfm.io.slicer`, one ``Segment<i>_*`` block each)."""
    import nrrd

    from vesselfm.io.slicer import SEGMENTATION_FIELDS, _geometry, segment_fields
    from vesselfm.utils.io import atomic_path

    labels = np.asarray(labels).astype(np.uint8, copy=False)
    present = set(np.unique(labels).tolist()) - {0}
    known = {s.label for s in segments}
    if present - known:
        raise ValueError(f"{target}: label values {sorted(present - known)} have no segment")
    header: dict[str, Any] = {
        "type": "unsigned char",
        "dimension": 3,
        **_geometry(affine, like),
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
        **SEGMENTATION_FIELDS,
    }
    for index, segment in enumerate(s for s in segments if s.label in present):
        header.update(segment_fields(labels, segment, index))
    target = Path(target)
    with atomic_path(target) as tmp:
        nrrd.write(str(tmp), labels, header, index_order="F")
    return target


def segment_file(
    net: nn.Module,
    path: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    preprocess: Any,
    num_classes: int = 15,
    inference: dict[str, Any] | None = None,
    probabilities: bool = False,
) -> dict[str, Path]:
    """Segment the scan at ``path`` into ``output_dir``: ``<case>_segments.nii.gz`` (uint8 codes
    on the scan's grid), ``<case>_segments.seg.nrrd`` (named segments) and, with
    ``probabilities``, ``<case>_segments_prob.npy``: float16 ``(C, X, Y, Z)`` per-class
    probabilities on the prepared grid.

    ``preprocess`` is the prepared set's :class:`~vesselfm.data.preprocessing.PreprocessConfig`
    (a checkpoint's ``vesselfm.preprocess``).
    """
    from vesselfm.data.preprocessing import (
        intensity_range,
        normalize_intensity,
        resample_image,
        target_shape,
    )
    from vesselfm.io import read_volume, write_like
    from vesselfm.io.frames import spacing_from_affine
    from vesselfm.io.names import case_id

    cfg = dict(inference or {})
    volume = read_volume(path)
    image = np.asarray(volume.array, dtype=np.float32)
    shape = target_shape(image.shape, spacing_from_affine(volume.affine), preprocess)
    resampled = resample_image(image, shape)
    prepared = np.asarray(
        normalize_intensity(resampled, intensity_range(resampled, preprocess), preprocess),
        dtype=np.float32,
    )
    del resampled
    labels, probs = predict_classes(
        net,
        prepared,
        num_classes,
        roi_size=cfg.get("roi_size", (128, 128, 128)),
        overlap=float(cfg.get("overlap", 0.25)),
        sw_batch_size=int(cfg.get("sw_batch_size", 1)),
        probabilities=probabilities,
    )
    labels = nearest_onto(labels, image.shape)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    case = case_id(path)
    written = {
        "labels": write_like(labels, volume, out / f"{case}_segments.nii.gz"),
        "seg_nrrd": write_segments_nrrd(
            labels, volume.affine, volume.native, out / f"{case}_segments.seg.nrrd"
        ),
    }
    if probs is not None:
        written["probabilities"] = out / f"{case}_segments_prob.npy"
        np.save(written["probabilities"], probs)
    present = sorted(set(np.unique(labels).tolist()) - {0})
    log.info("%s: %d segments (codes %s) -> %s", path, len(present), present, out)
    return written


__all__ = [
    "CORONARY_SEGMENTS",
    "coronary_segments",
    "nearest_onto",
    "predict_classes",
    "segment_file",
    "write_segments_nrrd",
]
