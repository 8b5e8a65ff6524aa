"""DICOM Segmentation (DICOM-SEG) output, ``output_format=dicom_seg``, and its reader.

The writer makes, with highdicom, a Segmentation Storage object (``<case>_pred.dcm``) derived
from the CT series a :class:`~vesselfm.io.Volume` was read from (``Volume.native`` is a
:class:`~vesselfm.io.dicom.DicomHeader` whose ``sources`` are the slices' datasets in slice
order ``k``):

- ``BINARY``, one segment per :class:`~vesselfm.io.terminology.Segment` (our masks: the one
  segment ``coronary artery lumen``, SNOMED CT category ``85756007`` Tissue, type ``41801008``
  Coronary artery), algorithm type ``AUTOMATIC``, algorithm identification vesselFM and the
  package's version;
- patient, study and Frame of Reference copied from the source slices (highdicom does it), the
  source series and every instance referenced (``ReferencedSeriesSequence``, in slice order), and
  per frame its source slice (``DerivationImageSequence`` > ``SourceImageSequence``);
- one frame per source slice that holds vessel (empty slices omitted; a mask with no vessel at
  all keeps every frame, as highdicom does: a SEG needs a frame);
- over an enhanced (multi-frame) CT object (``sources`` the one object, ``frame_numbers[k]``
  the frame of slice ``k``): frame ``f`` of the SEG derives from frame ``f`` of the object
  (ReferencedSOPInstanceUID + ReferencedFrameNumber, on its position), every frame kept, since
  the SEG references the object, not its frames, and only its frames carry the series' grid.

Frames always lie on the source slices: the mask, on the Volume's grid, is taken onto each
source slice's pixels through the affines (:func:`source_frames`): voxel for pixel where the
grid is the series' own (exact), nearest neighbour where it is not (a series the reader
resampled onto a regular grid, while ``sources`` keep the slices as scanned).

The reader (:func:`read_file`, used by :func:`vesselfm.io.read_volume` for ``.dcm`` files, so by
``evaluate pred=`` and ``visualise pred=``) gives such a SEG back as a labelmap (segment number
per voxel; 0/1 for our masks) on the grid of the source series: ``(columns, rows, slices)``, the
slices being the referenced instances in the order listed (over a multi-frame object: its
frames in order along the slice normal). The slice step comes from two frames
(or, with one, from ``SpacingBetweenSlices`` along the slice normal), so the whole series' grid
is rebuilt without the series at hand.

highdicom (MGH/Harvard's library, used by TotalSegmentator and the Imaging Data Commons) writes
the SEG's many required modules and functional groups correctly and packs the 1-bit frames;
it is in the ``formats`` extra and imported only here.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from vesselfm.io.dicom import optional_module
from vesselfm.io.terminology import VESSEL, Code, Segment
from vesselfm.io.volume import VolumeError

#: voxel-to-LPS ↔ voxel-to-RAS (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: Segmentation Storage (binary/fractional) and Label Map Segmentation Storage
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
#: the SEG's series number (a fixed one, so that PACS viewers sort it after the scan's series)
SERIES_NUMBER = 1000
SERIES_DESCRIPTION = "vesselFM coronary artery lumen"
SEGMENTS_SERIES_DESCRIPTION = "vesselFM coronary artery segments"
#: largest distance (mm) between a source slice's pixel grid and the volume's for "same grid"
SAME_GRID_MM = 1e-3


@contextlib.contextmanager
def _quiet_highdicom() -> Iterator[None]:
    """highdicom logs each module it copies at INFO: a dozen lines per SEG in a run's log."""
    logger = logging.getLogger("highdicom")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def highdicom_module(where: str) -> Any:
    """highdicom, or a one-line :class:`VolumeError` naming the extra that installs it."""
    return optional_module("highdicom", where, "DICOM-SEG")


def _concept(code: Code) -> Any:
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def algorithm_identification() -> Any:
    """highdicom's AlgorithmIdentificationSequence: vesselFM, family Artificial Intelligence,
    the package's version."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    from vesselfm import __version__

    return hd.AlgorithmIdentificationSequence(
        name="vesselFM",
        family=codes.cid7162.ArtificialIntelligence,
        version=__version__,
    )


def segment_description(segment: Segment, number: int | None = None) -> Any:
    """The SegmentDescription of ``segment``: its name, category and type codes, colour
    (``RecommendedDisplayCIELabValue``), ``AUTOMATIC`` by vesselFM.

    Args:
        segment: the segment (:mod:`vesselfm.io.terminology`).
        number: its segment number in the SEG; default its label value.
    """
    import highdicom as hd

    return hd.seg.SegmentDescription(
        segment_number=int(segment.label if number is None else number),
        segment_label=segment.name,
        segmented_property_category=_concept(segment.category),
        segmented_property_type=_concept(segment.type),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm_identification(),
        display_color=hd.color.CIELabColor.from_rgb(*(round(255 * c) for c in segment.color)),
    )


def numbered(labels: np.ndarray, segments: Sequence[Segment]) -> tuple[np.ndarray, list[Segment]]:
    """``labels`` and ``segments`` renumbered 1..N in label order, as DICOM numbers segments:
    a segment model's codes present (e.g. 1 LM, 2 LAD, 9 RCA) become segments 1, 2, 3, their
    names kept (the reader maps them back by name, :func:`coded_labels`). Segments already
    numbered 1..N are returned as given.

    Raises:
        ValueError: a non-zero value of ``labels`` that no segment has.
    """
    ordered = sorted(segments, key=lambda s: int(s.label))
    codes = [int(s.label) for s in ordered]
    if codes == list(range(1, len(codes) + 1)):
        return labels, ordered
    values = set(np.unique(labels).tolist()) - {0}
    if values - set(codes):
        raise ValueError(f"label values {sorted(values - set(codes))} have no segment")
    lut = np.zeros(max(codes) + 1, dtype=np.uint8 if len(codes) <= 255 else np.uint16)
    lut[codes] = np.arange(1, len(codes) + 1)
    renumbered = [replace(s, label=i) for i, s in enumerate(ordered, start=1)]
    return lut[np.asarray(labels, dtype=np.int64)], renumbered


def coded_labels(ds: Any, array: np.ndarray) -> np.ndarray:
    """A decoded SEG's segment numbers as the codes its segments name: where every segment's
    label is an ImageCAS-X segment name (a segment model's SEG, :func:`numbered`), segment
    ``i`` becomes that segment's code; any other SEG (our lumen mask) is returned as it is."""
    from vesselfm.io.terminology import SEGMENTS

    by_name = {name: code for code, name in SEGMENTS.items()}
    items = list(ds.get("SegmentSequence") or [])
    names = {int(item.SegmentNumber): str(item.get("SegmentLabel", "")) for item in items}
    if not names or not all(name in by_name for name in names.values()):
        return array
    if all(by_name[name] == number for number, name in names.items()):
        return array
    lut = np.zeros(max(max(names), int(array.max(initial=0))) + 1, dtype=np.uint8)
    for number, name in names.items():
        lut[number] = by_name[name]
    return lut[array]


def segment_descriptions(segments: Sequence[Segment]) -> list[Any]:
    """The SegmentDescriptions of several segments, numbered by their label values, which must
    be 1, 2, … N (DICOM numbers segments from 1 without gaps).

    Raises:
        ValueError: no segments, or label values that are not 1..N.
    """
    labels = sorted(int(s.label) for s in segments)
    if not labels or labels != list(range(1, len(labels) + 1)):
        raise ValueError(f"segment label values must be 1..N for a DICOM-SEG, got {labels}")
    return [segment_description(s) for s in sorted(segments, key=lambda s: s.label)]


def _floats(values: Any) -> np.ndarray:
    return np.asarray([float(v) for v in values], dtype=np.float64)


def slice_geometry(ds: Any) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """``(origin, axes, (rows, columns))`` of a single-frame slice in LPS mm: pixel ``(column
    i, row j)`` lies at ``origin + i * axes[0] + j * axes[1]``."""
    orientation = _floats(ds.ImageOrientationPatient)
    spacing = _floats(ds.PixelSpacing)  # (between rows, between columns)
    axes = np.stack([orientation[:3] * spacing[1], orientation[3:] * spacing[0]])
    return _floats(ds.ImagePositionPatient), axes, (int(ds.Rows), int(ds.Columns))


def frame_geometry(ds: Any, number: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """:func:`slice_geometry` of frame ``number`` (1-based) of a multi-frame (enhanced CT)
    object, from its functional groups (the frame's own, else the shared ones)."""
    from vesselfm.io.dicom import _functional  # the reader's lookup, shared

    item = ds.PerFrameFunctionalGroupsSequence[number - 1]
    values = {
        keyword: _functional(ds, item, sequence, keyword)
        for sequence, keyword in (
            ("PlanePositionSequence", "ImagePositionPatient"),
            ("PlaneOrientationSequence", "ImageOrientationPatient"),
            ("PixelMeasuresSequence", "PixelSpacing"),
        )
    }
    if any(v is None for v in values.values()):
        raise ValueError(
            f"frame {number} has no {', '.join(k for k, v in values.items() if v is None)}"
        )
    orientation = _floats(values["ImageOrientationPatient"])
    spacing = _floats(values["PixelSpacing"])
    axes = np.stack([orientation[:3] * spacing[1], orientation[3:] * spacing[0]])
    return _floats(values["ImagePositionPatient"]), axes, (int(ds.Rows), int(ds.Columns))


def slice_geometries(
    sources: Sequence[Any], frame_numbers: Sequence[int] = ()
) -> list[tuple[np.ndarray, np.ndarray, tuple[int, int]]]:
    """The geometry of each source slice ``k`` (:func:`slice_geometry`): ``sources[k]`` for a
    single-frame series, frame ``frame_numbers[k]`` of the one multi-frame object
    ``sources[0]`` otherwise (:class:`~vesselfm.io.dicom.DicomHeader`)."""
    if frame_numbers:
        (ds,) = sources
        return [frame_geometry(ds, int(n)) for n in frame_numbers]
    return [slice_geometry(ds) for ds in sources]


def reversed_axes(array: np.ndarray) -> np.ndarray:
    """``array`` ``(A, B, C)`` as a contiguous ``(C, B, A)`` (volume ``(X, Y, Z)`` ↔ frames
    ``(slices, rows, columns)``), copied in two steps that each swap two axes: several times
    faster than one copy of the reversed view for 512² slices."""
    return np.ascontiguousarray(np.ascontiguousarray(array.transpose(0, 2, 1)).transpose(1, 2, 0))


def source_frames(
    mask: np.ndarray,
    affine: np.ndarray,
    sources: Sequence[Any],
    frame_numbers: Sequence[int] = (),
) -> np.ndarray:
    """The mask on each source slice's pixels: ``(slices, rows, columns)``.

    Where the volume's grid is the series' own (``mask`` is ``(columns, rows, slices)`` and each
    slice's pixels are the grid's voxels within :data:`SAME_GRID_MM`), frame ``k`` is
    ``mask[:, :, k].T``, voxel for pixel. Otherwise each pixel centre is mapped through the
    affines onto the volume's grid and takes its nearest voxel (0 outside the grid).

    Args:
        mask: ``(X, Y, Z)`` labels on the volume's grid.
        affine: the volume's voxel-to-RAS matrix.
        sources: the slices' datasets (single-frame, with position and orientation), or the one
            multi-frame object holding them.
        frame_numbers: for a multi-frame ``sources[0]``, the (1-based) frame of each slice.
    """
    mask = np.asarray(mask)
    to_lps = LPS_TO_RAS @ np.asarray(affine, dtype=np.float64)
    geometry = slice_geometries(sources, frame_numbers)
    sizes = {size for _, _, size in geometry}
    if len(sizes) != 1:
        raise ValueError(f"source slices of different sizes {sorted(sizes)}")
    rows, columns = geometry[0][2]
    if mask.shape == (columns, rows, len(geometry)) and all(
        np.abs(axes - to_lps[:3, :2].T).max() <= SAME_GRID_MM / max(rows, columns)
        and np.abs(origin - to_lps[:3, :3] @ [0, 0, k] - to_lps[:3, 3]).max() <= SAME_GRID_MM
        for k, (origin, axes, _) in enumerate(geometry)
    ):
        return reversed_axes(mask)
    to_index = np.linalg.inv(to_lps)
    frames = np.zeros((len(geometry), rows, columns), dtype=mask.dtype)
    jj, ii = np.meshgrid(np.arange(rows), np.arange(columns), indexing="ij")
    for k, (origin, axes, _) in enumerate(geometry):
        base = to_index[:3, :3] @ origin + to_index[:3, 3]
        step_i, step_j = to_index[:3, :3] @ axes[0], to_index[:3, :3] @ axes[1]
        index = np.rint(base + ii[..., None] * step_i + jj[..., None] * step_j).astype(np.int64)
        inside = np.all((index >= 0) & (index < np.asarray(mask.shape)), axis=-1)
        hit = index[inside]
        frames[k][inside] = mask[hit[:, 0], hit[:, 1], hit[:, 2]]
    return frames


def _frame_count(ds: Any) -> int:
    return int(ds.get("NumberOfFrames") or len(ds.PerFrameFunctionalGroupsSequence))


def check_sources(like: Any, target: str | os.PathLike[str]) -> tuple[Any, ...]:
    """The source datasets of the :class:`~vesselfm.io.dicom.DicomHeader` ``like`` (the
    slices, or the one multi-frame object), checked before anything is written.

    Raises:
        VolumeError: none (not a DICOM input), a series split over several multi-frame objects
            or one object holding several phases, or sources without the position, orientation
            or spacing of each slice; naming ``target``.
    """
    sources = tuple(getattr(like, "sources", ()) or ())
    if not sources:
        raise VolumeError(
            f"{target}: a DICOM-SEG references the DICOM series it was made from, and this input "
            "is not one; give a DICOM series (a folder or .zip) or choose output_format=nifti, "
            "nrrd, mha or seg.nrrd"
        )
    frame_numbers = tuple(getattr(like, "frame_numbers", ()) or ())
    if frame_numbers and len(sources) > 1:
        raise VolumeError(
            f"{target}: this series is split over {len(sources)} multi-frame (Enhanced CT) "
            "objects, and a DICOM-SEG derives from one; choose output_format=nifti, nrrd, mha or "
            "seg.nrrd"
        )
    if frame_numbers:
        count = _frame_count(sources[0])
        if len(frame_numbers) < count:
            raise VolumeError(
                f"{target}: the enhanced CT object holds {count} frames and the phase read "
                f"{len(frame_numbers)} of them (several cardiac phases in one object); a "
                "DICOM-SEG over it would need a frame per source frame at shared positions, "
                "which highdicom refuses; choose output_format=nifti, nrrd, mha or seg.nrrd"
            )
    try:
        slice_geometries(sources, frame_numbers)
    except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
        raise VolumeError(
            f"{target}: the source series lacks a slice's position, orientation or pixel "
            f"spacing ({err}); choose output_format=nifti, nrrd, mha or seg.nrrd"
        ) from err
    return sources


def build_segmentation(
    array: np.ndarray,
    affine: np.ndarray,
    sources: Sequence[Any],
    segments: Sequence[Segment] = (VESSEL,),
    frame_numbers: Sequence[int] = (),
) -> Any:
    """The highdicom Segmentation of the labelmap ``array`` (on the grid of ``affine``) over the
    source slices ``sources`` (in slice order), one segment per entry of ``segments`` (voxels
    valued with its label value).

    Over a multi-frame source (``sources`` the one enhanced CT object, ``frame_numbers[k]`` the
    frame of slice ``k``), SEG frame ``f`` is source frame ``f`` (referenced by
    ReferencedSOPInstanceUID and ReferencedFrameNumber, at its position), and every frame is
    kept, empty ones too: the SEG lists the object, not its frames, so only its frames tell the
    reader the series' grid (:func:`check_sources` refuses an object holding other frames).

    Raises:
        ValueError: values in ``array`` that no segment has, or segment labels not 1..N.
    """
    import highdicom as hd

    from vesselfm import __version__

    labels = np.asarray(array)
    if labels.dtype.kind == "f" or labels.dtype == bool:
        if labels.dtype.kind == "f" and not np.isin(labels, (0, 1)).all():
            raise ValueError("a DICOM-SEG holds labels (a 0/1 mask), not probabilities")
        labels = labels.astype(np.uint8)
    labels, segments = numbered(labels, segments)
    descriptions = segment_descriptions(segments)
    lumen = [s.name for s in segments] == [VESSEL.name]
    # the segments are numbered 1..N: any value in [0, N] has one
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > len(segments):
        raise ValueError(
            f"labels from {low} to {high}, but the segments are numbered 1..{len(segments)}"
        )
    frames = source_frames(
        labels.astype(np.uint8 if high <= 255 else np.uint16), affine, sources, frame_numbers
    )
    keep_all = not frames.any()  # a SEG needs a frame: with no vessel anywhere all are kept
    if frame_numbers:  # SEG frame f is source frame f
        on_source = np.zeros_like(frames)
        on_source[np.asarray(frame_numbers, dtype=np.int64) - 1] = frames
        frames, keep_all = on_source, True
    return hd.seg.Segmentation(
        source_images=list(sources),
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=hd.UID(),
        series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="vesselfm",
        manufacturer_model_name="vesselFM",
        software_versions=__version__,
        device_serial_number="0",
        content_label="VESSELFM",
        content_description=(
            "vesselFM coronary artery lumen segmentation"
            if lumen
            else "vesselFM coronary artery segments (ImageCAS-X codes)"
        ),
        series_description=SERIES_DESCRIPTION if lumen else SEGMENTS_SERIES_DESCRIPTION,
        omit_empty_frames=not keep_all,
    )


def write_like(
    array: np.ndarray,
    affine: np.ndarray,
    like: Any,
    target: str | os.PathLike[str],
    segments: Sequence[Segment] = (VESSEL,),
) -> None:
    """Write the mask ``array`` ``(X, Y, Z)`` (on the grid of ``affine``, voxel-to-RAS) as a
    DICOM-SEG over the series whose :class:`~vesselfm.io.dicom.DicomHeader` is ``like``.

    ``segments``: one SEG segment each (a segment model's codes present: numbered 1..N in code
    order, named and coded as :data:`~vesselfm.io.terminology.CORONARY_SEGMENTS`; read back,
    the codes return, :func:`coded_labels`).

    Raises:
        VolumeError: ``like`` holds no source series (a non-DICOM input), or highdicom is not
            installed.
        ValueError: values that are not a labelmap of ``segments``.
    """
    sources = check_sources(like, target)
    highdicom_module(str(target))
    frame_numbers = tuple(getattr(like, "frame_numbers", ()) or ())
    with _quiet_highdicom():
        seg = build_segmentation(array, affine, sources, segments, frame_numbers)
    seg.save_as(str(target), enforce_file_format=True)


def write_new(
    array: np.ndarray, affine: np.ndarray, target: str | os.PathLike[str], description: str = ""
) -> None:
    """A DICOM-SEG cannot be written without its source series
    (:func:`vesselfm.io.write_volume` refuses it first)."""
    del array, affine, description
    check_sources(None, target)


def _frame_items(ds: Any, where: str) -> list[tuple[np.ndarray, str, int | None]]:
    """``(ImagePositionPatient, source SOPInstanceUID, source frame number or None)`` of each
    frame."""
    items = []
    for n, frame in enumerate(ds.PerFrameFunctionalGroupsSequence, start=1):
        try:
            position = _floats(frame.PlanePositionSequence[0].ImagePositionPatient)
            source = frame.DerivationImageSequence[0].SourceImageSequence[0]
            number = source.get("ReferencedFrameNumber")
            items.append(
                (
                    position,
                    str(source.ReferencedSOPInstanceUID),
                    None if number is None else int(number),
                )
            )
        except (AttributeError, IndexError, KeyError, TypeError, ValueError) as err:
            raise VolumeError(
                f"{where}: frame {n} has no position or no source image; only DICOM-SEGs whose "
                "frames derive from CT slices or frames (as vesselfm writes them) are read"
            ) from err
    return items


@dataclass(frozen=True)
class _SegGrid:
    """The source series' grid of a SEG: shape ``(columns, rows, slices)``, voxel-to-LPS
    matrix, and where each slice comes from: ``uids[k]`` (single-frame slices), or, over one
    multi-frame object ``uids[0]``, its frame ``frames[k]``."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    uids: list[str]
    frames: list[int] | None = None


def _step(
    placed: list[tuple[int, np.ndarray]], slices: int, normal: np.ndarray, measures: Any, where: str
) -> np.ndarray:
    """The slice step (LPS mm) from the placed frames ``(slice, position)``: between the first
    and last slice holding a frame, else along the normal."""
    first = min(placed, key=lambda p: p[0])
    last = max(placed, key=lambda p: p[0])
    if last[0] > first[0]:
        return (last[1] - first[1]) / (last[0] - first[0])
    if slices == 1:
        return normal * float(measures.get("SliceThickness") or 1.0)
    if measures.get("SpacingBetweenSlices") is not None:
        return normal * float(measures.SpacingBetweenSlices)
    raise VolumeError(
        f"{where}: the SEG's frames lie on one slice and it has no SpacingBetweenSlices; "
        "the slice spacing of its series is unknown"
    )


def _grid(ds: Any, where: str) -> _SegGrid:
    """The source series' grid of a SEG (:class:`_SegGrid`)."""
    try:
        (series,) = ds.ReferencedSeriesSequence
        uids = [str(item.ReferencedSOPInstanceUID) for item in series.ReferencedInstanceSequence]
        shared = ds.SharedFunctionalGroupsSequence[0]
        orientation = _floats(shared.PlaneOrientationSequence[0].ImageOrientationPatient)
        measures = shared.PixelMeasuresSequence[0]
        spacing = _floats(measures.PixelSpacing)
    except (AttributeError, IndexError, KeyError, ValueError) as err:
        raise VolumeError(
            f"{where}: not a DICOM-SEG of one source series with shared orientation and pixel "
            f"spacing ({type(err).__name__}); only SEGs as vesselfm writes them are read"
        ) from err
    normal = np.cross(orientation[:3], orientation[3:])
    items = _frame_items(ds, where)
    frames: list[int] | None = None
    if any(number is not None for _, _, number in items):
        # over a multi-frame object: every frame of it is in the SEG (build_segmentation), in
        # slice order along the normal
        if len(uids) != 1 or any(uid != uids[0] or n is None for _, uid, n in items):
            raise VolumeError(
                f"{where}: frames derive from frames of several objects; only DICOM-SEGs over "
                "one multi-frame object (as vesselfm writes them) are read"
            )
        # one item per source frame (several segments: a SEG frame each)
        by_number = {int(n): position for position, _, n in items}  # type: ignore[arg-type]
        ordered = sorted(by_number.items(), key=lambda item: float(item[1] @ normal))
        steps = np.diff([float(position @ normal) for _, position in ordered])
        if (steps < 1e-3).any():
            raise VolumeError(
                f"{where}: several frames at one position; only DICOM-SEGs over one phase "
                "(as vesselfm writes them) are read"
            )
        frames = [n for n, _ in ordered]
        placed = [(k, position) for k, (_, position) in enumerate(ordered)]
        slices = len(ordered)
    else:
        slice_of = {uid: k for k, uid in enumerate(uids)}
        placed = []
        for position, uid, _ in items:
            if uid not in slice_of:
                raise VolumeError(
                    f"{where}: a frame derives from {uid}, which the SEG does not list"
                )
            placed.append((slice_of[uid], position))
        slices = len(uids)
    step = _step(placed, slices, normal, measures, where)
    first = min(placed, key=lambda p: p[0])
    affine = np.eye(4)
    affine[:3, 0] = orientation[:3] * spacing[1]
    affine[:3, 1] = orientation[3:] * spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = first[1] - first[0] * step
    return _SegGrid((int(ds.Columns), int(ds.Rows), slices), affine, uids, frames)


def _decode(seg: Any, grid: _SegGrid) -> np.ndarray:
    """The labelmap ``(slices, rows, columns)`` of a SEG on its series' grid."""
    if grid.frames is None:
        return np.asarray(
            seg.get_pixels_by_source_instance(
                grid.uids, combine_segments=True, assert_missing_frames_are_empty=True
            )
        )
    return np.asarray(
        seg.get_pixels_by_source_frame(
            grid.uids[0],
            source_frame_numbers=grid.frames,
            combine_segments=True,
            assert_missing_frames_are_empty=True,
        )
    )


def read_file(
    path: Path, dtype: Any, where: str
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], None]:
    """``(labelmap (columns, rows, slices), RAS affine, shape, None)`` of a DICOM-SEG file:
    each voxel the number of the segment holding it (0: none; segments must not overlap).

    Over single-frame slices, the slices are the referenced instances in the order listed;
    over one multi-frame (enhanced CT) object, its frames in order along the slice normal."""
    from vesselfm.io.dicom import pydicom_module

    pydicom = pydicom_module(where)
    hd = highdicom_module(where)
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(str(path))
    except FileNotFoundError as err:
        raise VolumeError(f"{where}: no such file") from err
    except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError) as err:
        raise VolumeError(f"{where}: not a readable DICOM file ({type(err).__name__})") from err
    if str(ds.get("SOPClassUID", "")) not in SEG_SOP_CLASSES:
        raise VolumeError(
            f"{where}: not a DICOM Segmentation (SOP class {ds.get('SOPClassUID', '?')}); a "
            "single .dcm file is read as a DICOM-SEG only: give a DICOM series as its folder "
            "or .zip"
        )
    grid = _grid(ds, where)
    try:
        with _quiet_highdicom():
            seg = hd.seg.Segmentation.from_dataset(ds, copy=False)
            frames = _decode(seg, grid)
    except Exception as err:  # noqa: BLE001 - highdicom and pydicom's decoders raise many kinds
        raise VolumeError(f"{where}: cannot decode the segmentation ({err})") from err
    array = coded_labels(ds, reversed_axes(frames))
    if dtype is not None:
        array = array.astype(dtype)
    elif array.max(initial=0) <= 255:
        array = array.astype(np.uint8)
    return array, LPS_TO_RAS @ grid.affine, grid.shape, None


def read_bytes(data: bytes, where: str, dtype: Any) -> Any:
    """A DICOM-SEG is read from its file."""
    raise VolumeError(f"{where}: a DICOM-SEG is read from its .dcm file, not from an archive")
