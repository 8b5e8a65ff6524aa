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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from vesselfm.io.terminology import CORONARY_SEGMENTS, Segment, segments_present
from vesselfm.utils.errors import UserError

if TYPE_CHECKING:
    from vesselfm.inference.predictor import SlidingWindowPredictor
    from vesselfm.io import Volume

log = logging.getLogger(__name__)


def coronary_segments() -> tuple[Segment, ...]:
    """The 14 ImageCAS-X segments (:data:`vesselfm.io.terminology.CORONARY_SEGMENTS`)."""
    return CORONARY_SEGMENTS


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
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        return _stitch(
            net, device, image, num_classes, roi_size, overlap, sw_batch_size, probabilities, slab
        )
    finally:
        net.train(was_training)


def _stitch(
    forward: Any,
    device: torch.device,
    image: torch.Tensor | np.ndarray,
    num_classes: int,
    roi_size: Sequence[int],
    overlap: float,
    sw_batch_size: int,
    probabilities: bool,
    slab: int = 16,
    sigma_scale: float = 0.125,
    mode: str = "gaussian",
) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`predict_classes` with any ``forward`` (windows on ``device`` -> logits)."""
    volume = torch.as_tensor(np.asarray(image), dtype=torch.float32)
    if volume.ndim != 3:
        raise ValueError(f"predict_classes expects an (X, Y, Z) volume, got {tuple(volume.shape)}")
    original = tuple(int(s) for s in volume.shape)
    roi = tuple(int(r) for r in roi_size)
    # a volume smaller than the window is padded with zeros on both sides to one window, as
    # MONAI's sliding window pads it (cval 0), so the network sees the window size it was built
    # for; the result is cropped back
    before = [max(r - s, 0) // 2 for r, s in zip(roi, original, strict=True)]
    after = [max(r - s, 0) - b for r, s, b in zip(roi, original, before, strict=True)]
    if any(before) or any(after):
        volume = torch.nn.functional.pad(
            volume, (before[2], after[2], before[1], after[1], before[0], after[0])
        )
    shape = tuple(int(s) for s in volume.shape)
    weight = gaussian_weight(roi, sigma_scale) if mode == "gaussian" else torch.ones(roi)
    acc = torch.zeros((num_classes, *shape), dtype=torch.float16)
    wsum = torch.zeros(shape, dtype=torch.float32) if probabilities else None
    corners = [
        (x, y, z)
        for x in _starts(shape[0], roi[0], overlap)
        for y in _starts(shape[1], roi[1], overlap)
        for z in _starts(shape[2], roi[2], overlap)
    ]
    step = max(int(sw_batch_size), 1)
    for i in range(0, len(corners), step):
        batch = corners[i : i + step]
        windows = torch.stack(
            [volume[x : x + roi[0], y : y + roi[1], z : z + roi[2]] for x, y, z in batch]
        )[:, None]
        logits = forward(windows.to(device))
        if isinstance(logits, list | tuple):  # deep supervision: the full-resolution head
            logits = logits[0]
        logits = logits.float().cpu()
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
    # the argmax of the weighted sums is the argmax of the weighted means (same weight per voxel)
    crop = tuple(slice(b, b + s) for b, s in zip(before, original, strict=True))
    acc, wsum = acc[(slice(None), *crop)], None if wsum is None else wsum[crop]
    labels = np.empty(original, dtype=np.uint8)
    for x in range(0, original[0], slab):
        labels[x : x + slab] = acc[:, x : x + slab].float().argmax(0).numpy().astype(np.uint8)
    if wsum is None:
        return labels, None
    probs = np.empty((num_classes, *original), dtype=np.float16)
    for c in range(num_classes):
        probs[c] = (acc[c].float() / wsum.clamp_min(1e-6)).half().numpy()
    return labels, probs


def check_segment_predictor(predictor: SlidingWindowPredictor) -> None:
    """Refuse settings a segment model does not use: TTA and connected-component clean-up act
    on one vessel probability, not on 15 classes.

    Raises:
        UserError: ``inference.tta`` or ``inference.postprocess`` switched on.
    """
    if predictor.tta.enabled:
        raise UserError(
            "inference.tta is for lumen models; a segment model (ImageCAS-X codes) predicts "
            "without test-time augmentation: leave inference.tta off"
        )
    if predictor.postprocess.enabled:
        raise UserError(
            "inference.postprocess is for lumen models; a segment model (ImageCAS-X codes) keeps "
            "every voxel's argmax: set inference.postprocess.min_size=0 and keep_largest=null"
        )


def predict_segments(
    predictor: SlidingWindowPredictor,
    prepared: torch.Tensor | np.ndarray,
    num_classes: int,
    probabilities: bool = False,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A segment model's label map of a prepared volume with ``predictor``'s network, device,
    precision (autocast), channels-last view, windows (``roi_size``, ``overlap``, the window
    batch of the device, ``mode``, ``sigma_scale``) and CPU threads; the classes are stitched in
    float16 on the CPU (:func:`predict_classes`).

    Args:
        predictor: the lumen predictor built from the config (its network emits
            ``num_classes`` logits).
        prepared: ``(X, Y, Z)`` on the prepared grid, normalised.
        num_classes: the network's output channels.
        probabilities: also return the per-class probabilities ``(C, X, Y, Z)`` float16.

    Returns:
        ``(labels, probs)`` on the prepared grid: uint8 codes, float16 probabilities or ``None``.
    """
    with predictor.window_runner() as run, torch.inference_mode():
        labels, probs = _stitch(
            run.forward,
            run.device,
            prepared,
            num_classes,
            predictor.roi_size,
            predictor.overlap,
            run.batch,
            probabilities,
            sigma_scale=predictor.sigma_scale,
            mode=predictor.mode,
        )
    return labels, probs


def network_classes(network: nn.Module) -> int:
    """The number of output channels of ``network``: its ``out_channels`` (MONAI's DynUNet),
    else the last 3D convolution's; 1 when neither is found."""
    value = getattr(network, "out_channels", None)
    if isinstance(value, int):
        return value
    convs = [m for m in network.modules() if isinstance(m, nn.Conv3d)]
    return int(convs[-1].out_channels) if convs else 1


def checkpoint_classes(model_cfg: Mapping[str, Any]) -> int | None:
    """The number of output classes the weights of ``model.checkpoint`` were trained for, or
    ``None`` when there are none to read (``checkpoint: null``, or weights that tell none).

    Read from what training records (``checkpoint["vesselfm"]["num_classes"]``, else the
    Lightning hyper-parameter ``num_classes``), else from the output head's weight shape, so a
    raw state dict of a segment model is recognised too: the ``num_classes`` of
    :func:`vesselfm.inference.metadata.read_checkpoint_metadata` (one memory-mapped read, which
    also gives the preprocessing and threshold; infer reads it once for all three).

    Raises:
        CheckpointError: the checkpoint cannot be read (see
            :func:`vesselfm.models.load_checkpoint`).
    """
    from vesselfm.inference.metadata import model_metadata

    return model_metadata(model_cfg).get("num_classes")


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
    code present (:func:`vesselfm.io.slicer.write_like` with ``segments=``)."""
    from vesselfm.io import slicer
    from vesselfm.utils.io import atomic_path

    labels = np.asarray(labels).astype(np.uint8, copy=False)
    try:
        present = segments_present(labels, tuple(segments))
    except ValueError as err:
        raise ValueError(f"{target}: {err}") from err
    target = Path(target)
    with atomic_path(target) as tmp:
        slicer.write_like(labels, affine, like, tmp, segments=present)
    return target


def write_labels(labels: np.ndarray, scan: Volume, targets: Sequence[Path]) -> list[Path]:
    """The label map ``labels`` (uint8 codes on ``scan``'s grid) into each of ``targets``
    (:func:`vesselfm.io.write_like`): codes as values in NIfTI/NRRD/MHA; in a ``.seg.nrrd`` or
    DICOM-SEG one named, coloured, coded segment per code present
    (:data:`~vesselfm.io.terminology.CORONARY_SEGMENTS`)."""
    from vesselfm.io import write_like

    labels = np.asarray(labels).astype(np.uint8, copy=False)
    present = segments_present(labels)
    # a DICOM-SEG needs a segment even when nothing was found: the first one, empty
    segments = present or [CORONARY_SEGMENTS[0]]
    return [write_like(labels, scan, target, segments=segments) for target in targets]


def write_class_probabilities(probs: np.ndarray, scan: Volume, target: Path) -> Path:
    """Per-class probabilities ``(C, x, y, z)`` (float16, the prepared grid) resampled back onto
    ``scan``'s grid, class by class, and written as one 4D NIfTI ``(X, Y, Z, C)`` float32 with the
    scan's affine (4 bytes a voxel a class: 4.3 GB for a 512 x 512 x 275 scan and 15 classes)."""
    from vesselfm.data.preprocessing import resample_probabilities
    from vesselfm.io import write_volume

    out = np.empty((*scan.shape, probs.shape[0]), dtype=np.float32)
    for c in range(probs.shape[0]):
        out[..., c] = resample_probabilities(
            torch.from_numpy(np.asarray(probs[c], dtype=np.float32)), scan.shape
        )
    return write_volume(out, scan.affine, target, description="vesselFM class probabilities")


def mesh_name(target: Path, segment: Segment) -> Path:
    """``<case>_pred_<name>.stl`` beside ``<case>_pred.stl`` (``R-PDA`` -> ``R_PDA``;
    :func:`vesselfm.viz.mesh.segment_stl_path`, as ``visualise`` names them)."""
    from vesselfm.viz.mesh import segment_stl_path

    return segment_stl_path(target, segment.name)


def write_segment_meshes(labels: np.ndarray, affine: np.ndarray, target: Path) -> list[Path]:
    """``target`` (``<case>_pred.stl``: the whole tree, as a lumen model's) and one STL per
    segment present, :func:`mesh_name` (scanner mm through ``affine``)."""
    from vesselfm.viz import mask_to_stl

    labels = np.asarray(labels)
    written = [mask_to_stl(labels > 0, affine, target)]
    for segment in segments_present(labels):
        written.append(mask_to_stl(labels == segment.label, affine, mesh_name(target, segment)))
    return written


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
    "check_segment_predictor",
    "checkpoint_classes",
    "coronary_segments",
    "mesh_name",
    "nearest_onto",
    "network_classes",
    "predict_classes",
    "predict_segments",
    "segment_file",
    "write_class_probabilities",
    "write_labels",
    "write_segment_meshes",
    "write_segments_nrrd",
]
