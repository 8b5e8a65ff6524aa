"""The DICOM CT reader behind :mod:`vesselfm.io.volume` (the only code that uses pydicom).

A DICOM input is a folder (searched recursively; hidden files and vesselfm's output folders, those
holding a ``.vesselfm-outputs.json``, left out) or a ``.zip``. pydicom reads what scanners
export and is pure Python; it is an optional dependency (``pip install "vesselfm[formats]"``),
imported only when DICOM is read.

What is read: every file's header is read once (pixels only for the series chosen); files that
are not DICOM or cannot be parsed, that hold no image (structured reports, PDFs, presentation
states), localizers (``ImageType`` holds ``LOCALIZER``), secondary captures and multi-frame
objects other than enhanced CT are left out, with one warning counting them. Enhanced and
legacy converted enhanced CT objects (multi-frame, ``1.2.840.10008.5.1.4.1.1.2.1`` and
``.2.2``) are read frame by frame from their functional groups (plane position, plane
orientation, pixel measures, pixel value transformation; per frame or shared).

Studies: a folder or zip holding several studies (``StudyInstanceUID``) is a cohort: one case
per study, referenced as ``<folder or zip>::<study key>`` (:func:`cases`,
:func:`study_reference`). The study key is ``<PatientID>_<StudyDate>``; where that is not
unique in the folder (two studies of a patient on one day) or the date is missing, the last 8
digits of the StudyInstanceUID are added (``<PatientID>_<StudyDate>_<digits>``), and where even
that clashes, the whole UID. PatientID characters other than letters, digits, ``.``, ``-`` and
``_`` become ``-`` (an empty PatientID is ``anonymous``). The case id is
``<folder>_<study key>`` (:func:`vesselfm.io.names.case_id`). A folder of one study stays one
case named after the folder.

Series and phase: the series of the study are logged; the one read is ``series=`` (a
SeriesInstanceUID or SeriesNumber) when given, else the CT series with the most slices. Where
several slices share a position (an ECG-gated multi-phase series), one cardiac phase is read:
``phase=`` (its NominalPercentageOfCardiacPhase, else TriggerTime), else the phase with the most
complete coverage (the most slice positions; then evenly spaced ones; then the phase closest to
75 %, where coronary CTA is usually reconstructed, the lower of two equally close; for
TriggerTime in ms, the lowest). The phases found and the choice are logged.

Geometry: a gap or uneven spacing between slices stops with one line unless
``dicom.resample=true`` (:func:`selection`); a tilted gantry (slices not stacked along their
normal) is always resampled. Resampling puts the volume on a regular grid orthogonal to the
slices (in-plane axes and spacing of the slices, the slice step the median one along the
normal), covering every slice, by linear interpolation along the stack between the two nearest
slices (bilinear in-plane); voxels outside the data hold the series' minimum; the array is
float32. It is logged, and :attr:`DicomHeader.resampled` says why. A DICOM-SEG still references
the source slices (:attr:`DicomHeader.sources`), mapped from the volume's grid by the affines.

What stops with one line naming the input: no image series, one image only, an unknown
``series=`` or ``phase=``, slices of another orientation or size, several studies read as one
input (outside ``infer``), a gap or uneven spacing without ``dicom.resample=true``, several
slices at one position without phase tags, pixel data that cannot be decoded (naming the file).

Frames: DICOM patient coordinates are LPS. With ``r`` and ``c`` the two rows of
``ImageOrientationPatient`` (the directions in which the column and the row index grow),
``PixelSpacing = (Δrow, Δcol)`` and ``p_k`` the ``ImagePositionPatient`` of slice ``k`` (sorted
along ``n = r × c``), voxel ``(i, j, k)`` (column ``i``, row ``j``, slice ``k``) lies at
``p_0 + i Δcol r + j Δrow c + k (p_{K-1} - p_0) / (K - 1)``: the array is ``(columns, rows,
slices)``, ``pixel_array`` (rows, columns) transposed. :attr:`~vesselfm.io.Volume.affine` is RAS,
``diag(-1, -1, 1, 1)`` times that LPS matrix; the conversion is done here and nowhere else.

Compressed transfer syntaxes: pydicom decodes RLE Lossless and Deflated Explicit VR Little Endian
itself; JPEG (baseline, extended, lossless), JPEG-LS and JPEG 2000 need the pylibjpeg plugins
that the ``formats`` extra installs (``pylibjpeg``, ``pylibjpeg-libjpeg``,
``pylibjpeg-openjpeg``). A file that cannot be decoded stops with one line naming it.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import math
import os
import re
import zipfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vesselfm.io.volume import VolumeError

log = logging.getLogger(__name__)

#: voxel-to-LPS ↔ voxel-to-RAS (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
INSTALL_HINT = 'pip install "vesselfm[formats]"'
#: SOP classes of secondary captures (1.2.840.10008.5.1.4.1.1.7 and its .1-.4 multi-frame kinds)
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"
#: Enhanced CT Image Storage and Legacy Converted Enhanced CT Image Storage (multi-frame)
ENHANCED_CT = ("1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
#: the separator of a study reference, ``<folder or zip>::<study key>``
STUDY_SEPARATOR = "::"
#: slices whose positions differ by less than this (mm) are at the same position
_SAME_POSITION_MM = 1e-3
#: allowed deviation of a slice step from the median step: this fraction of it
_SPACING_TOLERANCE = 0.01
#: |tan| of the angle between the slice normal and the stack direction beyond which it is a tilt
_TILT_TOLERANCE = 1e-3
#: the cardiac phase (%) a tie between equally complete phases goes to (mid-diastole)
PREFERRED_PHASE = 75.0


@dataclass(frozen=True)
class Selection:
    """Which series and phase of a DICOM input to read, and whether to resample a series with
    gaps or uneven spacing (``series=``, ``phase=``, ``dicom.resample=``)."""

    series: str | None = None
    phase: float | None = None
    resample: bool = False


_NO_SELECTION = Selection()
_selection: contextvars.ContextVar[Selection | None] = contextvars.ContextVar(
    "vesselfm_dicom_selection", default=None
)


@contextlib.contextmanager
def selection(series: Any = None, phase: Any = None, resample: Any = False) -> Iterator[Selection]:
    """Within the block, DICOM inputs are read with ``series=``, ``phase=`` and
    ``dicom.resample=`` (the keys of infer, evaluate and visualise); explicit arguments of
    :func:`read_file` win."""
    chosen = Selection(
        series=None if series is None else str(series).strip(),
        phase=None if phase is None else float(phase),
        resample=bool(resample),
    )
    token = _selection.set(chosen)
    try:
        yield chosen
    finally:
        _selection.reset(token)


def current_selection() -> Selection:
    """The :class:`Selection` in effect (:func:`selection`'s, else the defaults): what a worker
    process is given, since a context variable does not cross into it."""
    return _selection.get() or _NO_SELECTION


def config_selection(cfg: Any) -> contextlib.AbstractContextManager[Selection]:
    """:func:`selection` from an entrypoint's config: its ``series``, ``phase`` and
    ``dicom.resample`` keys (``configs/dicom/selection.yaml``; absent keys are the defaults)."""
    dicom = cfg.get("dicom") or {}
    return selection(
        series=cfg.get("series"),
        phase=cfg.get("phase"),
        resample=bool(dicom.get("resample", False)),
    )


@dataclass(frozen=True)
class DicomHeader:
    """What a DICOM-SEG output needs of the series read (the seam for ``dicom_seg``).

    ``sources`` are the source slices' datasets, pixel data dropped, in slice order (along the
    slice normal): a DICOM-SEG references them (patient, study, frame of reference, each
    instance's position). For a single-frame series, ``sources[k]`` is slice ``k`` and
    ``sop_instance_uids[k]`` its SOPInstanceUID; ``frame_numbers`` is empty. For an enhanced
    (multi-frame) CT object, ``sources`` holds the one dataset (one per object where a series
    is split over several), ``sop_instance_uids[k]`` is the UID of the object holding slice
    ``k`` and ``frame_numbers[k]`` the (1-based) frame of slice ``k`` in it: a SEG
    references slice ``k`` by ReferencedSOPInstanceUID plus ReferencedFrameNumber, and takes the
    frame's position from its PerFrameFunctionalGroupsSequence item (``frame_numbers[k] - 1``).

    When the volume was resampled (``resampled`` says why: gantry tilt, gaps or uneven
    spacing), its voxels are no longer the source pixels: slice ``k`` of the volume is not
    ``sources[k]``, and a SEG maps the mask onto each source slice by the affines.
    """

    study_uid: str
    series_uid: str
    series_number: str
    description: str
    sop_instance_uids: tuple[str, ...]
    patient_id: str
    phase: float | None = None
    sources: tuple[Any, ...] = ()
    frame_numbers: tuple[int, ...] = ()
    resampled: str = ""


@dataclass(eq=False)
class _Image:
    """One 2D image: a single-frame file, or one frame of an enhanced CT object."""

    #: the tags the reader looks at (the file's dataset, or the frame's tags gathered)
    tags: Any
    #: the file (or ``zip::member``) it is in, for messages
    name: str
    #: how to read the file again, with its pixels: a path, or a zip member's name
    source: str
    #: the file's dataset without pixels (what :attr:`DicomHeader.sources` holds)
    dataset: Any
    #: the 0-based frame in a multi-frame object, ``None`` for a single-frame file
    frame: int | None = None


def optional_module(name: str, where: str, purpose: str) -> Any:
    """The module ``name`` of the ``formats`` extra, or a one-line :class:`VolumeError`
    (``<where>: <purpose> needs <name>, which is not installed; pip install ...``)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise VolumeError(
            f"{where}: {purpose} needs {name}, which is not installed; {INSTALL_HINT}"
        ) from err


def pydicom_module(where: str) -> Any:
    """pydicom, or a one-line :class:`VolumeError` naming the extra that installs it."""
    return optional_module("pydicom", where, "reading DICOM")


def _looks_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def is_dicom_file(path: Path) -> bool:
    """Whether a file starts like a DICOM file (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            return _looks_dicom(f.read(132))
    except OSError:
        return False


def _walk(folder: Path) -> Iterator[str]:
    """Every file under ``folder``, sorted, hidden files and folders left out, and so are
    vesselfm's output folders (those holding its ``.vesselfm-outputs.json``: the default output
    folder of a DICOM folder is inside it)."""
    from vesselfm.utils.outputs import RECORD_NAME

    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(
            d
            for d in dirs
            if not d.startswith(".") and not os.path.exists(os.path.join(root, d, RECORD_NAME))
        )
        for name in sorted(files):
            if not name.startswith("."):
                yield os.path.join(root, name)


def holds_dicom(folder: Path, limit: int = 64) -> bool:
    """Whether a folder (recursively) holds a DICOM file (``DICM`` at byte 128), looking at up to
    ``limit`` files."""
    for seen, path in enumerate(_walk(folder)):
        if seen >= limit:
            return False
        if is_dicom_file(Path(path)):
            return True
    return False


def zip_holds_dicom(path: Path, limit: int = 64) -> bool:
    """Whether a zip holds a DICOM file among its first ``limit`` members."""
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist()[:limit]:
                if not info.is_dir():
                    with archive.open(info) as member:
                        if _looks_dicom(member.read(132)):
                            return True
    except (zipfile.BadZipFile, OSError):
        return False
    return False


def study_reference(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """``(folder or zip, study key)`` of a study reference ``<folder or zip>::<study key>``
    (one study of a cohort folder, as :func:`cases` names it), ``None`` for any other path."""
    path = Path(path)
    name = path.name
    if STUDY_SEPARATOR not in name or path.exists():
        return None
    container_name, key = name.split(STUDY_SEPARATOR, 1)
    container = path.parent / container_name
    if not key or not (
        container.is_dir() or (container.is_file() and container_name.lower().endswith(".zip"))
    ):
        return None
    return container, key


def _members(path: Path, where: str) -> Iterator[tuple[str, str]]:
    """``(name for messages, source)`` of every file of a folder (source: its path) or zip
    (source: the member's name)."""
    if path.is_dir():
        for full in _walk(path):
            yield full, full
        return
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as err:
        raise VolumeError(f"{where}: not a readable zip archive ({err})") from err
    with archive:
        for info in archive.infolist():
            if info.is_dir() or Path(info.filename).name.startswith("."):
                continue
            yield f"{path}::{info.filename}", info.filename


def _signature(path: Path) -> tuple[Any, ...]:
    """What changes when a folder's or zip's files change (names, sizes, times)."""
    if not path.is_dir():
        stat = path.stat()
        return (stat.st_size, stat.st_mtime_ns)
    items = []
    for full in _walk(path):
        try:
            stat = os.stat(full)
        except OSError:
            continue
        items.append((full, stat.st_size, stat.st_mtime_ns))
    return tuple(items)


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _skip_reason(ds: Any) -> str | None:
    sop_class = _text(ds, "SOPClassUID")
    if "Rows" not in ds or "Columns" not in ds:
        return "no image"
    if sop_class.startswith(_SECONDARY_CAPTURE):
        return "secondary capture"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return "localizer"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1 or "PerFrameFunctionalGroupsSequence" in ds:
        return None if sop_class in ENHANCED_CT else "multi-frame"
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        return "no position"
    return None


#: the study, series and patient tags a frame of an enhanced object takes from its dataset
_FRAME_TAGS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SeriesNumber",
    "SeriesDescription",
    "Modality",
    "PatientID",
    "StudyDate",
    "Rows",
    "Columns",
    "ImageType",
    "RescaleSlope",
    "RescaleIntercept",
)


def _functional(ds: Any, frame_item: Any, sequence: str, keyword: str) -> Any:
    """``keyword`` of the functional group ``sequence``: the frame's own, else the shared one."""
    shared = ds.get("SharedFunctionalGroupsSequence")
    for item in (frame_item, shared[0] if shared else None):
        if item is None:
            continue
        group = item.get(sequence)
        if group and keyword in group[0]:
            return group[0].get(keyword)
    return None


def _frames(ds: Any, name: str, source: str) -> list[_Image]:
    """The frames of an enhanced CT object, each with its position, orientation, spacing,
    rescale and cardiac phase gathered from the functional groups."""
    from pydicom.dataset import Dataset

    per_frame = ds.get("PerFrameFunctionalGroupsSequence") or []
    count = int(ds.get("NumberOfFrames", len(per_frame)) or len(per_frame))
    images = []
    for f in range(count):
        item = per_frame[f] if f < len(per_frame) else None
        tags = Dataset()
        for keyword in _FRAME_TAGS:
            if keyword in ds:
                setattr(tags, keyword, ds.get(keyword))
        for sequence, keyword in (
            ("PlanePositionSequence", "ImagePositionPatient"),
            ("PlaneOrientationSequence", "ImageOrientationPatient"),
            ("PixelMeasuresSequence", "PixelSpacing"),
            ("PixelMeasuresSequence", "SliceThickness"),
            ("PixelValueTransformationSequence", "RescaleSlope"),
            ("PixelValueTransformationSequence", "RescaleIntercept"),
            ("CardiacSynchronizationSequence", "NominalPercentageOfCardiacPhase"),
        ):
            value = _functional(ds, item, sequence, keyword)
            if value is not None:
                setattr(tags, keyword, value)
        delay = _functional(
            ds, item, "CardiacSynchronizationSequence", "NominalCardiacTriggerDelayTime"
        )
        if delay is not None:
            tags.TriggerTime = delay
        images.append(_Image(tags=tags, name=name, source=source, dataset=ds, frame=f))
    return images


def _dcmread(pydicom: Any, path: Path, source: str, pixels: bool) -> Any:
    if path.is_dir():
        return pydicom.dcmread(source, stop_before_pixels=not pixels)
    with zipfile.ZipFile(path) as archive:
        data = archive.read(source)
    return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=not pixels)


#: the images of the last folder or zip read (a cohort's cases are read one after another)
_INDEX_CACHE: dict[tuple[str, tuple[Any, ...]], list[_Image]] = {}


def _index(path: Path, where: str) -> list[_Image]:
    """Every image of a folder or zip (headers only), the files that are not left out with
    one warning; cached for the last folder read, until its files change."""
    pydicom = pydicom_module(where)
    from pydicom.errors import InvalidDicomError

    key = (str(path.resolve()), _signature(path))
    if key in _INDEX_CACHE:
        return _INDEX_CACHE[key]
    images: list[_Image] = []
    skipped: dict[str, int] = defaultdict(int)
    unreadable: list[str] = []
    for name, source in _members(path, where):
        try:
            ds = _dcmread(pydicom, path, source, pixels=False)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError):
            skipped["not DICOM or unreadable"] += 1
            unreadable.append(name)
            continue
        reason = _skip_reason(ds)
        if reason is not None:
            skipped[reason] += 1
            continue
        if "PerFrameFunctionalGroupsSequence" in ds or int(ds.get("NumberOfFrames", 1) or 1) > 1:
            frames = _frames(ds, name, source)
            placed = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
            if not frames or not all(k in f.tags for f in frames for k in placed):
                skipped["no position"] += 1
                continue
            images.extend(frames)
        else:
            images.append(_Image(tags=ds, name=name, source=source, dataset=ds))
    if skipped:
        counts = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
        example = f"; e.g. {unreadable[0]}" if unreadable else ""
        log.warning(
            "%s: left out %d file(s) that are not image slices (%s%s)",
            where,
            sum(skipped.values()),
            counts,
            example,
        )
    _INDEX_CACHE.clear()
    _INDEX_CACHE[key] = images
    return images


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.")


def study_keys(images: list[Any]) -> dict[str, str]:
    """The key of every study (by StudyInstanceUID) of a folder: ``<PatientID>_<StudyDate>``,
    with the UID's last 8 digits added where that is not unique or the date is missing, and
    the whole UID where even that clashes (see the module's docstring)."""
    first: dict[str, Any] = {}
    for image in images:
        tags = getattr(image, "tags", image)
        first.setdefault(_text(tags, "StudyInstanceUID"), tags)
    base: dict[str, str] = {}
    dated: dict[str, bool] = {}
    for uid, tags in first.items():
        patient = _safe(_text(tags, "PatientID")) or "anonymous"
        date = _safe(_text(tags, "StudyDate"))
        base[uid] = f"{patient}_{date}" if date else patient
        dated[uid] = bool(date)
    counts = defaultdict(int)
    for value in base.values():
        counts[value] += 1
    keys = {
        uid: value if dated[uid] and counts[value] == 1 else f"{value}_{uid.replace('.', '')[-8:]}"
        for uid, value in base.items()
    }
    counts = defaultdict(int)
    for value in keys.values():
        counts[value] += 1
    return {
        uid: f"{base[uid]}_{_safe(uid)}" if counts[value] > 1 else value
        for uid, value in keys.items()
    }


def cases(path: Path) -> list[Path]:
    """The cases of a DICOM folder or zip: ``[path]`` for one study, else one study reference
    ``<path>::<study key>`` per study (:func:`study_reference`), sorted by key."""
    where = str(path)
    images = _index(path, where)
    if not images:  # one line before any case is read
        raise _no_image_series(where)
    keys = study_keys(images)
    if len(keys) <= 1:
        return [path]
    for uid, key in sorted(keys.items(), key=lambda kv: kv[1]):
        count = sum(_text(i.tags, "StudyInstanceUID") == uid for i in images)
        log.info("%s: study %s (%d images, %s)", where, key, count, uid)
    return [path.parent / f"{path.name}{STUDY_SEPARATOR}{key}" for key in sorted(keys.values())]


def _no_image_series(where: str) -> VolumeError:
    return VolumeError(
        f"{where}: no DICOM image series found (no file with an image and a position); "
        "give the folder or .zip of a CT series"
    )


def _choose_study(images: list[_Image], where: str, key: str | None) -> list[_Image]:
    if not images:
        raise _no_image_series(where)
    keys = study_keys(images)
    if key is None:
        if len(keys) > 1:
            shown = ", ".join(sorted(keys.values()))
            raise VolumeError(
                f"{where}: holds {len(keys)} studies ({shown}); infer reads each as a case, "
                f"elsewhere name one as {where}{STUDY_SEPARATOR}<study>"
            )
        return images
    uids = [uid for uid, value in keys.items() if value == key]
    if not uids:
        shown = ", ".join(sorted(keys.values()))
        raise VolumeError(f"{where}: no study {key!r}; the studies are {shown}")
    return [i for i in images if _text(i.tags, "StudyInstanceUID") == uids[0]]


def _choose_series(images: list[_Image], where: str, series: str | None) -> list[_Image]:
    groups: dict[str, list[_Image]] = defaultdict(list)
    for image in images:
        groups[_text(image.tags, "SeriesInstanceUID")].append(image)
    rows = []
    for uid, group in groups.items():
        first = group[0].tags
        rows.append((uid, _text(first, "SeriesNumber"), _text(first, "Modality"), group))
    rows.sort(key=lambda r: (-len(r[3]), r[1], r[0]))
    for uid, number, modality, group in rows:
        log.info(
            "%s: series %s (%s, %s): %d slices, %s",
            where,
            number or "?",
            modality or "?",
            _text(group[0].tags, "SeriesDescription") or "no description",
            len(group),
            uid,
        )
    if series is not None:
        picked = [r for r in rows if series in (r[0], r[1])]
        if not picked:
            known = ", ".join(f"{r[1] or '?'} ({r[0]})" for r in rows)
            raise VolumeError(f"{where}: no series {series!r}; the series are {known}")
        if len(picked) > 1:
            raise VolumeError(
                f"{where}: series={series} names {len(picked)} series; give the SeriesInstanceUID"
            )
        chosen = picked[0]
    else:
        ct = [r for r in rows if r[2].upper() == "CT"]
        if not ct:
            raise VolumeError(
                f"{where}: no CT series (modalities {', '.join(sorted({r[2] or '?' for r in rows}))}); "
                "choose one with series="
            )
        chosen = ct[0]
    log.info(
        "%s: reading series %s (%d slices, %s)", where, chosen[1] or "?", len(chosen[3]), chosen[0]
    )
    return chosen[3]


def _phase_of(tags: Any) -> float | None:
    for keyword in ("NominalPercentageOfCardiacPhase", "TriggerTime"):
        value = tags.get(keyword)
        if value is not None and str(value).strip() != "":
            return float(value)
    return None


def _fmt(values: Any) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _normal(tags: Any) -> np.ndarray:
    iop = [float(v) for v in tags.ImageOrientationPatient]
    return np.cross(iop[:3], iop[3:])


def _along(images: list[_Image]) -> np.ndarray:
    normal = _normal(images[0].tags)
    positions = np.asarray([[float(v) for v in i.tags.ImagePositionPatient] for i in images])
    return positions @ normal


def _coverage(along: np.ndarray) -> tuple[int, bool]:
    """(distinct positions, whether they are evenly spaced) of one phase's slices."""
    distinct = np.unique(np.round(along / _SAME_POSITION_MM).astype(np.int64))
    if len(distinct) < 3:
        return len(distinct), True
    steps = np.diff(distinct * _SAME_POSITION_MM)
    even = np.abs(steps - steps.mean()).max() <= max(_SPACING_TOLERANCE * steps.mean(), 1e-3)
    return len(distinct), bool(even)


def _pick_phase(
    images: list[_Image], where: str, phase: float | None
) -> tuple[list[_Image], float | None]:
    """The images of one phase when several share a position (else all of them)."""
    along = _along(images)
    if not (np.diff(np.sort(along)) < _SAME_POSITION_MM).any():
        if phase is not None:
            log.info("%s: phase=%g ignored: the series holds one phase", where, phase)
        return images, None
    phases = [_phase_of(i.tags) for i in images]
    if None in phases:
        raise VolumeError(
            f"{where}: several slices at the same position and no phase tags "
            "(NominalPercentageOfCardiacPhase, TriggerTime) to tell them apart; give one phase "
            "per series (or choose another with series=)"
        )
    by_phase: dict[float, list[int]] = defaultdict(list)
    for n, p in enumerate(phases):
        by_phase[p].append(n)  # type: ignore[index]
    known = sorted(by_phase)
    if phase is not None:
        picked = [p for p in known if abs(p - phase) < 1e-6]
        if not picked:
            raise VolumeError(f"{where}: no phase {phase:g}; the phases are {_fmt(known)}")
        chosen = picked[0]
        how = "phase="
    else:
        percent = all(
            "NominalPercentageOfCardiacPhase" in images[n].tags for n in range(len(images))
        )

        def rank(p: float) -> tuple[float, ...]:
            count, even = _coverage(along[by_phase[p]])
            tie = (abs(p - PREFERRED_PHASE), p) if percent else (p,)
            return (-count, not even, *tie)

        chosen = min(known, key=rank)
        how = (
            "the most complete coverage; ties: closest to 75 %"
            if percent
            else "the most complete coverage; ties: the lowest trigger time"
        )
    shown = ", ".join(f"{p:g} ({_coverage(along[by_phase[p]])[0]} positions)" for p in known)
    log.info(
        "%s: %d cardiac phases share the slice positions: %s; reading phase %g (%s); "
        "another with phase=",
        where,
        len(known),
        shown,
        chosen,
        how,
    )
    return [images[n] for n in by_phase[chosen]], chosen


@dataclass(frozen=True)
class _Grid:
    """The slices' geometry (LPS): in-plane axes and spacing, each slice's offset from the
    first (in-plane ``a``, ``b`` along ``r``, ``c``; ``s`` along the normal)."""

    origin: np.ndarray
    row_dir: np.ndarray
    col_dir: np.ndarray
    normal: np.ndarray
    spacing: tuple[float, float]  # (between rows, between columns)
    a: np.ndarray
    b: np.ndarray
    s: np.ndarray


def _geometry(images: list[_Image], where: str) -> tuple[list[_Image], _Grid]:
    """The images sorted along their normal, and their geometry."""
    first = images[0].tags
    orientation = np.asarray([float(v) for v in first.ImageOrientationPatient])
    for image in images[1:]:
        other = np.asarray([float(v) for v in image.tags.ImageOrientationPatient])
        if not np.allclose(other, orientation, atol=1e-4):
            raise VolumeError(f"{where}: slices of different orientations; give one series")
        if (int(image.tags.Rows), int(image.tags.Columns)) != (int(first.Rows), int(first.Columns)):
            raise VolumeError(f"{where}: slices of different sizes; give one series")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3:
        raise VolumeError(f"{where}: ImageOrientationPatient is not two orthonormal directions")
    if "PixelSpacing" not in first:
        raise VolumeError(f"{where}: {images[0].name} has no PixelSpacing; re-export the series")
    if len(images) == 1:
        raise VolumeError(
            f"{where}: holds one image slice ({images[0].name}), not a 3D series; give the "
            "folder or .zip of the whole series"
        )
    positions = np.asarray([[float(v) for v in i.tags.ImagePositionPatient] for i in images])
    order = np.argsort(positions @ normal, kind="stable")
    images = [images[i] for i in order]
    rel = positions[order] - positions[order][0]
    steps = np.diff(rel @ normal)
    if (steps < _SAME_POSITION_MM).any():
        raise VolumeError(
            f"{where}: several slices at the same position in one phase; give one phase per "
            "series (or choose another with series=)"
        )
    spacing = (float(first.PixelSpacing[0]), float(first.PixelSpacing[1]))
    grid = _Grid(
        origin=positions[order][0],
        row_dir=row_dir,
        col_dir=col_dir,
        normal=normal,
        spacing=spacing,
        a=rel @ row_dir,
        b=rel @ col_dir,
        s=rel @ normal,
    )
    return images, grid


def _irregular(grid: _Grid) -> tuple[str, str]:
    """``(gaps, tilt)``: why the slices are not a regular grid ('' where they are)."""
    steps = np.diff(grid.s)
    median = float(np.median(steps))
    gaps = ""
    bad = np.flatnonzero(np.abs(steps - median) > max(_SPACING_TOLERANCE * median, 1e-3))
    if len(bad):
        k = int(bad[0])
        gaps = (
            f"the slices are not evenly spaced (a missing slice or uneven spacing): the median "
            f"step is {median:.4g} mm, {len(bad)} step(s) differ, e.g. {steps[k]:.4g} mm after "
            f"slice {k}"
        )
    offsets = np.hypot(grid.a, grid.b)
    tilt = ""
    if (offsets > np.maximum(_TILT_TOLERANCE * np.abs(grid.s), 1e-3)).any():
        angle = math.degrees(math.atan2(float(offsets[-1]), float(grid.s[-1])))
        tilt = f"gantry tilt of {angle:.2f} degrees (slices not stacked along their normal)"
    return gaps, tilt


def _stack_affine(grid: _Grid) -> np.ndarray:
    """The voxel-to-LPS matrix of evenly spaced slices stacked along their normal."""
    affine = np.eye(4)
    affine[:3, 0] = grid.row_dir * grid.spacing[1]  # column index i
    affine[:3, 1] = grid.col_dir * grid.spacing[0]  # row index j
    k = len(grid.s) - 1
    affine[:3, 2] = (
        grid.a[-1] * grid.row_dir + grid.b[-1] * grid.col_dir + grid.s[-1] * grid.normal
    ) / k
    affine[:3, 3] = grid.origin
    return affine


def resample_stack(stack: np.ndarray, grid: _Grid, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Slices at any offsets onto a regular grid orthogonal to them.

    Args:
        stack: ``(columns, rows, slices)`` in slice order (along the normal).
        grid: the slices' geometry.
        step: the slice spacing of the grid (mm along the normal).

    Returns:
        ``(array, voxel-to-LPS)``: float32, the in-plane spacing and axes of the slices, ``step``
        along the normal from the first slice, covering every slice in-plane; each voxel is the
        linear interpolation, along the line through the slices' offsets, between the two
        nearest slices (bilinear in-plane); voxels outside the data hold ``stack``'s minimum.
    """
    from scipy.ndimage import affine_transform

    drow, dcol = grid.spacing
    columns, rows, count = stack.shape
    x0, y0 = float(grid.a.min()), float(grid.b.min())
    out_columns = columns + math.ceil((float(grid.a.max()) - x0) / dcol - 1e-2)
    out_rows = rows + math.ceil((float(grid.b.max()) - y0) / drow - 1e-2)
    out_slices = math.floor(float(grid.s[-1]) / step + 1e-2) + 1
    fill = float(stack.min())
    # slice-major copies: each step reads and writes whole contiguous planes
    planes = np.ascontiguousarray(np.moveaxis(stack, 2, 0), dtype=np.float32)
    out = np.empty((out_slices, out_columns, out_rows), dtype=np.float32)
    index = np.arange(count, dtype=np.float64)
    for m in range(out_slices):
        kf = float(np.interp(m * step, grid.s, index))
        k0 = min(int(math.floor(kf)), count - 2)
        # the in-plane offset of the stack at kf, linear between the two slices
        a = float(np.interp(kf, index, grid.a))
        b = float(np.interp(kf, index, grid.b))
        # rounded to 1e-3 voxel: positions are stored to about 1e-4 mm, so a slice exactly on the
        # grid must not fall a hair outside it (and out of the interpolation)
        t = round(kf - k0, 3)
        offset = (round((x0 - a) / dcol, 3), round((y0 - b) / drow, 3))
        # linear along the stack at one in-plane position = blend the two slices, then shift
        plane = (
            planes[k0]
            if t == 0
            else planes[k0] * np.float32(1 - t) + planes[k0 + 1] * np.float32(t)
        )
        affine_transform(
            plane,
            np.eye(2),
            offset=offset,
            output_shape=(out_columns, out_rows),
            output=out[m],
            order=1,
            mode="constant",
            cval=fill,
        )
    out = np.ascontiguousarray(np.moveaxis(out, 0, 2))
    affine = np.eye(4)
    affine[:3, 0] = grid.row_dir * dcol
    affine[:3, 1] = grid.col_dir * drow
    affine[:3, 2] = grid.normal * step
    affine[:3, 3] = grid.origin + x0 * grid.row_dir + y0 * grid.col_dir
    return out, affine


def _decoded(images: list[_Image], path: Path, where: str) -> list[np.ndarray]:
    """Each image's pixels (rows, columns), each file read once."""
    pydicom = pydicom_module(where)
    by_source: dict[str, Any] = {}
    out = []
    for image in images:
        if image.source not in by_source:
            ds = None
            try:
                ds = _dcmread(pydicom, path, image.source, pixels=True)
                by_source[image.source] = ds.pixel_array
            except Exception as err:  # noqa: BLE001 - pydicom's decoders raise many kinds
                syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
                if syntax is not None and syntax.is_compressed:
                    fix = f"install its decoder ({INSTALL_HINT}) or re-export it uncompressed"
                    what = f" ({syntax.name})"
                else:
                    fix = "the file is truncated or corrupt: re-export the series"
                    what = ""
                reason = (
                    str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                )
                raise VolumeError(
                    f"{image.name}: cannot decode the pixel data{what} ({reason}); {fix}"
                ) from err
        pixels = by_source[image.source]
        out.append(pixels[image.frame] if image.frame is not None and pixels.ndim == 3 else pixels)
        if out[-1].ndim != 2:
            raise VolumeError(
                f"{image.name}: an image of shape {out[-1].shape}; expected greyscale 2D slices"
            )
    return out


def _pixels(images: list[_Image], path: Path, where: str) -> np.ndarray:
    """``(columns, rows, slices)`` in HU: int16/int32 for integer rescales, else float32."""
    slopes = [float(i.tags.get("RescaleSlope", 1) or 1) for i in images]
    intercepts = [float(i.tags.get("RescaleIntercept", 0) or 0) for i in images]
    raw = _decoded(images, path, where)
    integer = raw[0].dtype.kind in "iu"
    exact = integer and all(
        s.is_integer() and i.is_integer() for s, i in zip(slopes, intercepts, strict=True)
    )
    work: Any = np.float64
    if exact:  # int32 (half int64's memory) unless the rescaled range could overflow it
        info = np.iinfo(raw[0].dtype)
        bound = max(-int(info.min), int(info.max)) * max(abs(s) for s in slopes)
        work = np.int32 if bound + max(abs(i) for i in intercepts) < 2**31 else np.int64
    array = np.empty((raw[0].shape[1], raw[0].shape[0], len(images)), dtype=work)
    for k, (pixels, slope, intercept) in enumerate(zip(raw, slopes, intercepts, strict=True)):
        # pixel_array is (rows, columns): transposed to (columns, rows) = (i, j)
        array[:, :, k] = (pixels.T.astype(work) * (int(slope) if exact else slope)) + (
            int(intercept) if exact else intercept
        )
    if exact and array.min() >= np.iinfo(np.int16).min and array.max() <= np.iinfo(np.int16).max:
        return array.astype(np.int16)
    if exact:
        return array.astype(np.int32)
    return array.astype(np.float32)


def _as_dtype(array: np.ndarray, dtype: Any) -> np.ndarray:
    if dtype is None:
        return array
    if np.dtype(dtype).kind in "iu" and array.dtype.kind == "f":
        array = np.rint(array)
    return array.astype(dtype)


def read_file(
    path: Path,
    dtype: Any,
    where: str,
    series: str | None = None,
    phase: float | None = None,
    resample: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], DicomHeader]:
    """``(array (columns, rows, slices), RAS affine, shape, header)`` of a DICOM folder or zip,
    or of one study of it (``<folder or zip>::<study key>``, :func:`study_reference`).

    ``series``/``phase``/``resample`` default to the ones :func:`selection` set (``series=``,
    ``phase=``, ``dicom.resample=``).
    """
    chosen = _selection.get() or _NO_SELECTION
    series = chosen.series if series is None else str(series)
    phase = chosen.phase if phase is None else float(phase)
    resample = chosen.resample if resample is None else bool(resample)
    reference = study_reference(path)
    container, key = reference if reference is not None else (path, None)
    if not container.exists():
        raise VolumeError(f"{where}: no such file or folder")
    images = _choose_study(_index(container, where), where, key)
    images = _choose_series(images, where, series)
    images, used_phase = _pick_phase(images, where, phase)
    images, grid = _geometry(images, where)
    gaps, tilt = _irregular(grid)
    if gaps and not resample:
        raise VolumeError(
            f"{where}: {gaps}; set dicom.resample=true (Python: read_volume(..., resample=True)) "
            "to resample it onto a regular grid"
        )
    array = _pixels(images, container, where)
    resampled = "; ".join(r for r in (tilt, gaps) if r)
    if resampled:
        steps = np.diff(grid.s)
        step = float(np.median(steps)) if gaps else float(grid.s[-1] / (len(grid.s) - 1))
        array, affine_lps = resample_stack(array, grid, step)
        log.warning(
            "%s: %s: resampled onto a regular grid orthogonal to the slices, %d x %d x %d voxels "
            "of %.4g x %.4g x %.4g mm (linear interpolation)",
            where,
            resampled,
            *array.shape,
            grid.spacing[1],
            grid.spacing[0],
            step,
        )
    else:
        affine_lps = _stack_affine(grid)
    array = _as_dtype(array, dtype)
    first = images[0].tags
    multi = any(i.frame is not None for i in images)
    # one dataset per file: the enhanced object(s), or every slice
    sources = tuple({id(i.dataset): i.dataset for i in images}.values())
    for ds in sources:  # the header keeps the tags, not a second copy of the pixels
        if "PixelData" in ds:
            del ds.PixelData
    header = DicomHeader(
        study_uid=_text(first, "StudyInstanceUID"),
        series_uid=_text(first, "SeriesInstanceUID"),
        series_number=_text(first, "SeriesNumber"),
        description=_text(first, "SeriesDescription"),
        sop_instance_uids=tuple(_text(i.tags, "SOPInstanceUID") for i in images),
        patient_id=_text(first, "PatientID"),
        phase=used_phase,
        sources=sources,
        frame_numbers=tuple(1 + (i.frame or 0) for i in images) if multi else (),
        resampled=resampled,
    )
    return array, LPS_TO_RAS @ affine_lps, tuple(array.shape), header


def read_bytes(data: bytes, where: str, dtype: Any) -> Any:
    """A DICOM series is a folder or a zip on disk, never one file's bytes."""
    raise VolumeError(f"{where}: a DICOM series is read from its folder or .zip, not from bytes")
