"""The DICOM CT series reader behind :mod:`vesselfm.io.volume` (the only code that uses pydicom).

A DICOM input is a folder (searched recursively) or a ``.zip`` holding one study's files, one
slice per file. pydicom reads what scanners export and is pure Python; it is an optional
dependency (``pip install "vesselfm[formats]"``), imported only when DICOM is read.

What is read: every file is opened with ``pydicom.dcmread``; files that are not DICOM, that hold
no pixel data (structured reports, PDFs, presentation states), localizers (``ImageType`` holds
``LOCALIZER``) and secondary captures are left out, with one warning counting them. The slices
are grouped by ``SeriesInstanceUID``; the series found are logged, and the one read is
``series=`` (a SeriesInstanceUID or SeriesNumber) when given, else the CT series with the most
slices.

What stops with one line naming the input: no image series, several studies, an unknown
``series=``, slices of another orientation or size, a gap or uneven spacing between slices,
several slices at one position (several cardiac phases: ``phase=`` picks one, the
NominalPercentageOfCardiacPhase, else the TriggerTime), a tilted gantry (slices not stacked along
their normal).

Frames: DICOM patient coordinates are LPS. With ``r`` and ``c`` the two rows of
``ImageOrientationPatient`` (the directions in which the column and the row index grow),
``PixelSpacing = (Δrow, Δcol)`` and ``p_k`` the ``ImagePositionPatient`` of slice ``k`` (sorted
along ``n = r × c``), voxel ``(i, j, k)`` (column ``i``, row ``j``, slice ``k``) lies at
``p_0 + i Δcol r + j Δrow c + k (p_{K-1} - p_0) / (K - 1)``: the array is ``(columns, rows,
slices)``, ``pixel_array`` (rows, columns) transposed. :attr:`~vesselfm.io.Volume.affine` is RAS,
``diag(-1, -1, 1, 1)`` times that LPS matrix; the conversion is done here and nowhere else.
"""

from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
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
#: slices whose positions differ by less than this (mm) are at the same position
_SAME_POSITION_MM = 1e-3
#: allowed deviation of a slice step from the mean step: this fraction of it
_SPACING_TOLERANCE = 0.01
#: |sin| of the angle between the slice normal and the stack direction beyond which it is a tilt
_TILT_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Selection:
    """Which series and phase of a DICOM input to read (``series=``, ``phase=``)."""

    series: str | None = None
    phase: float | None = None


_NO_SELECTION = Selection()
_selection: contextvars.ContextVar[Selection | None] = contextvars.ContextVar(
    "vesselfm_dicom_selection", default=None
)


@contextlib.contextmanager
def selection(series: Any = None, phase: Any = None) -> Iterator[Selection]:
    """Within the block, DICOM inputs are read with ``series=`` and ``phase=`` (the infer keys);
    explicit arguments of :func:`read_file` win."""
    chosen = Selection(
        series=None if series is None else str(series).strip(),
        phase=None if phase is None else float(phase),
    )
    token = _selection.set(chosen)
    try:
        yield chosen
    finally:
        _selection.reset(token)


@dataclass(frozen=True)
class DicomHeader:
    """What a later DICOM-SEG output needs of the series read (the seam for ``dicom_seg``)."""

    study_uid: str
    series_uid: str
    series_number: str
    description: str
    sop_instance_uids: tuple[str, ...]
    patient_id: str
    phase: float | None = None
    #: the slices' datasets in slice order (``k``), pixel data dropped: what a DICOM-SEG
    #: references (patient, study, frame of reference, each instance's position)
    sources: tuple[Any, ...] = ()


def pydicom_module(where: str) -> Any:
    """pydicom, or a one-line :class:`VolumeError` naming the extra that installs it."""
    try:
        import pydicom
    except ImportError as err:
        raise VolumeError(
            f"{where}: reading DICOM needs pydicom, which is not installed; {INSTALL_HINT}"
        ) from err
    return pydicom


def _looks_dicom(head: bytes) -> bool:
    return len(head) >= 132 and head[128:132] == b"DICM"


def holds_dicom(folder: Path, limit: int = 64) -> bool:
    """Whether a folder (recursively) holds a DICOM file (``DICM`` at byte 128), looking at up to
    ``limit`` files."""
    seen = 0
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            try:
                with open(os.path.join(root, name), "rb") as f:
                    if _looks_dicom(f.read(132)):
                        return True
            except OSError:
                pass
            seen += 1
            if seen >= limit:
                return False
    return False


def _sources(path: Path, where: str) -> Iterator[tuple[str, Any]]:
    """``(name, file or file-like)`` of every file of the input."""
    if path.is_dir():
        for root, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith("."):
                    full = os.path.join(root, name)
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
            yield f"{where}::{info.filename}", io.BytesIO(archive.read(info))


def _text(ds: Any, keyword: str) -> str:
    value = ds.get(keyword, "")
    return "" if value is None else str(value).strip()


def _skip_reason(ds: Any) -> str | None:
    if "PixelData" not in ds:
        return "no pixel data"
    if _text(ds, "SOPClassUID").startswith(_SECONDARY_CAPTURE):
        return "secondary capture"
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    if "LOCALIZER" in image_type:
        return "localizer"
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        return "multi-frame"
    if "ImageOrientationPatient" not in ds or "ImagePositionPatient" not in ds:
        return "no position"
    return None


def _read_slices(path: Path, where: str) -> list[Any]:
    pydicom = pydicom_module(where)
    from pydicom.errors import InvalidDicomError

    slices: list[Any] = []
    skipped: dict[str, int] = defaultdict(int)
    for name, source in _sources(path, where):
        try:
            ds = pydicom.dcmread(source, stop_before_pixels=False, force=False)
        except (InvalidDicomError, EOFError, OSError, ValueError, TypeError, AttributeError):
            skipped["not DICOM"] += 1
            continue
        reason = _skip_reason(ds)
        if reason is not None:
            skipped[reason] += 1
            continue
        ds.filename = name
        slices.append(ds)
    if skipped:
        counts = ", ".join(f"{n} {why}" for why, n in sorted(skipped.items()))
        log.warning(
            "%s: left out %d file(s) that are not image slices (%s)",
            where,
            sum(skipped.values()),
            counts,
        )
    return slices


def _choose_series(slices: list[Any], where: str, series: str | None) -> list[Any]:
    if not slices:
        raise VolumeError(
            f"{where}: no DICOM image series found (no file with pixel data and a position); "
            "give the folder or .zip of a CT series"
        )
    studies = sorted({_text(ds, "StudyInstanceUID") for ds in slices})
    if len(studies) > 1:
        raise VolumeError(
            f"{where}: holds {len(studies)} studies ({', '.join(studies)}); give one study per "
            "folder or .zip"
        )
    groups: dict[str, list[Any]] = defaultdict(list)
    for ds in slices:
        groups[_text(ds, "SeriesInstanceUID")].append(ds)
    rows = []
    for uid, group in groups.items():
        first = group[0]
        rows.append((uid, _text(first, "SeriesNumber"), _text(first, "Modality"), group))
    rows.sort(key=lambda r: (-len(r[3]), r[1], r[0]))
    for uid, number, modality, group in rows:
        log.info(
            "%s: series %s (%s, %s): %d slices, %s",
            where,
            number or "?",
            modality or "?",
            _text(group[0], "SeriesDescription") or "no description",
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


def _phase_of(ds: Any) -> float | None:
    for keyword in ("NominalPercentageOfCardiacPhase", "TriggerTime"):
        value = ds.get(keyword)
        if value is not None and str(value).strip() != "":
            return float(value)
    return None


def _fmt(values: Any) -> str:
    return ", ".join(f"{v:g}" for v in values)


def _pick_phase(
    slices: list[Any], positions: np.ndarray, where: str, phase: float | None
) -> tuple[list[Any], float | None]:
    """The slices of one phase when several share a position (else all of them)."""
    order = np.argsort(positions, kind="stable")
    gaps = np.diff(positions[order])
    if not (gaps < _SAME_POSITION_MM).any():
        if phase is not None:
            log.info("%s: phase=%g ignored: the series holds one phase", where, phase)
        return slices, None
    phases = [_phase_of(ds) for ds in slices]
    known = sorted({p for p in phases if p is not None})
    if phase is None or None in phases:
        what = f"phases {_fmt(known)}" if known and None not in phases else "no phase tags"
        hint = "choose one with phase=" if known and None not in phases else "give one phase"
        raise VolumeError(f"{where}: several slices at the same position ({what}); {hint}")
    kept = [ds for ds, p in zip(slices, phases, strict=True) if abs(p - phase) < 1e-6]
    if not kept:
        raise VolumeError(f"{where}: no phase {phase:g}; the phases are {_fmt(known)}")
    return kept, phase


def _geometry(slices: list[Any], where: str) -> tuple[list[Any], np.ndarray]:
    """The slices sorted along their normal, and the voxel-to-LPS matrix."""
    first = slices[0]
    orientation = np.asarray([float(v) for v in first.ImageOrientationPatient])
    for ds in slices[1:]:
        other = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        if not np.allclose(other, orientation, atol=1e-4):
            raise VolumeError(f"{where}: slices of different orientations; give one series")
        if (int(ds.Rows), int(ds.Columns)) != (int(first.Rows), int(first.Columns)):
            raise VolumeError(f"{where}: slices of different sizes; give one series")
    row_dir, col_dir = orientation[:3], orientation[3:]
    normal = np.cross(row_dir, col_dir)
    if abs(np.linalg.norm(normal) - 1.0) > 1e-3:
        raise VolumeError(f"{where}: ImageOrientationPatient is not two orthonormal directions")
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in slices])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    slices = [slices[i] for i in order]
    positions, along = positions[order], along[order]
    spacing = [float(v) for v in first.PixelSpacing]  # (between rows, between columns)
    affine = np.eye(4)
    affine[:3, 0] = row_dir * spacing[1]  # column index i
    affine[:3, 1] = col_dir * spacing[0]  # row index j
    affine[:3, 3] = positions[0]
    if len(slices) == 1:
        thickness = float(first.get("SliceThickness") or 1.0) or 1.0
        affine[:3, 2] = normal * thickness
        return slices, affine
    steps = np.diff(along)
    mean = (along[-1] - along[0]) / (len(slices) - 1)
    if np.abs(steps - mean).max() > max(_SPACING_TOLERANCE * abs(mean), 1e-3):
        shown = _fmt(np.round(along, 3))
        raise VolumeError(
            f"{where}: the slices are not evenly spaced (a missing slice or uneven spacing); "
            f"positions along the normal (mm): {shown}"
        )
    stack = (positions[-1] - positions[0]) / (len(slices) - 1)
    sine = np.linalg.norm(np.cross(stack / np.linalg.norm(stack), normal))
    if sine > _TILT_TOLERANCE:
        raise VolumeError(
            f"{where}: gantry tilt ({np.degrees(np.arcsin(min(sine, 1.0))):.2f} degrees: the "
            "slices are not stacked along their normal); resample the series first"
        )
    affine[:3, 2] = stack
    return slices, affine


def _pixels(slices: list[Any], where: str, dtype: Any) -> np.ndarray:
    slopes = [float(ds.get("RescaleSlope", 1) or 1) for ds in slices]
    intercepts = [float(ds.get("RescaleIntercept", 0) or 0) for ds in slices]
    try:
        raw = [ds.pixel_array for ds in slices]
    except Exception as err:  # noqa: BLE001 - pydicom's decoders raise many kinds
        raise VolumeError(f"{where}: cannot decode the pixel data ({err})") from err
    if raw[0].ndim != 2:
        raise VolumeError(f"{where}: slices of shape {raw[0].shape}; expected greyscale 2D slices")
    exact = all(s.is_integer() and i.is_integer() for s, i in zip(slopes, intercepts, strict=True))
    work = np.float64 if not exact else np.int64
    array = np.empty((raw[0].shape[1], raw[0].shape[0], len(slices)), dtype=work)
    for k, (pixels, slope, intercept) in enumerate(zip(raw, slopes, intercepts, strict=True)):
        # pixel_array is (rows, columns): transposed to (columns, rows) = (i, j)
        array[:, :, k] = (pixels.T.astype(work) * (int(slope) if exact else slope)) + (
            int(intercept) if exact else intercept
        )
    if dtype is not None:
        return array.astype(dtype)
    if exact and array.min() >= np.iinfo(np.int16).min and array.max() <= np.iinfo(np.int16).max:
        return array.astype(np.int16)
    if exact:
        return array.astype(np.int32)
    return array.astype(np.float32)


def read_file(
    path: Path,
    dtype: Any,
    where: str,
    series: str | None = None,
    phase: float | None = None,
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], DicomHeader]:
    """``(array (columns, rows, slices), RAS affine, shape, header)`` of a DICOM folder or zip.

    ``series``/``phase`` default to the ones :func:`selection` set (``series=``, ``phase=``).
    """
    if not path.exists():
        raise VolumeError(f"{where}: no such file or folder")
    chosen = _selection.get() or _NO_SELECTION
    series = chosen.series if series is None else str(series)
    phase = chosen.phase if phase is None else float(phase)
    slices = _choose_series(_read_slices(path, where), where, series)
    first = slices[0]
    normal = np.cross(
        [float(v) for v in first.ImageOrientationPatient[:3]],
        [float(v) for v in first.ImageOrientationPatient[3:]],
    )
    along = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds in slices]) @ normal
    slices, used_phase = _pick_phase(slices, along, where, phase)
    slices, affine_lps = _geometry(slices, where)
    array = _pixels(slices, where, dtype)
    for ds in slices:  # the header keeps the tags, not a second copy of the pixels
        del ds.PixelData
    header = DicomHeader(
        study_uid=_text(first, "StudyInstanceUID"),
        series_uid=_text(first, "SeriesInstanceUID"),
        series_number=_text(first, "SeriesNumber"),
        description=_text(first, "SeriesDescription"),
        sop_instance_uids=tuple(_text(ds, "SOPInstanceUID") for ds in slices),
        patient_id=_text(first, "PatientID"),
        phase=used_phase,
        sources=tuple(slices),
    )
    return array, LPS_TO_RAS @ affine_lps, tuple(array.shape), header


def read_bytes(data: bytes, where: str, dtype: Any) -> Any:
    """A DICOM series is a folder or a zip on disk, never one file's bytes."""
    raise VolumeError(f"{where}: a DICOM series is read from its folder or .zip, not from bytes")
