"""Reading a volume file into a format-neutral :class:`Volume`, and writing outputs like it.

:func:`read_volume` is the only reader of image files in vesselfm. It refuses, with one line
naming the file, what would give a wrong or meaningless result: a file that is not a volume of a
known format (NIfTI ``.nii``/``.nii.gz``; NRRD ``.nrrd``; MetaImage ``.mha``/``.mhd``, through
SimpleITK), a truncated one, a 2D or 4D volume (a trailing singleton 4th axis is squeezed),
an empty one, non-finite voxels, a non-finite or singular affine. :func:`write_like` writes an
array on the grid of a volume that was read, in that volume's format and with its header, so
an output has the input's shape, affine and orientation codes (or, in another format, the
input's affine, so that it lies on the input's voxels); it writes through
:func:`vesselfm.utils.io.atomic_path`, so an interrupted run leaves no partial file.

Frames: :attr:`Volume.affine` maps voxel indices to the NIfTI world frame (RAS, as nibabel
reports it) in mm, whatever the file's format; a format with another frame (LPS for ITK, NRRD,
DICOM) is converted in its reader and writer, here and nowhere else.

Volumes are NumPy arrays in the file's voxel order ``(X, Y, Z)``.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vesselfm.io.names import EXTENSIONS, PREDICTION_EXTENSIONS, split_extension
from vesselfm.utils.errors import UserError

if TYPE_CHECKING:
    from vesselfm.io.terminology import Segment

#: the formats :func:`read_volume` reads, by extension (lower case); ``mha`` is MetaImage, in one
#: file (``.mha``) or a header with a data file beside it (``.mhd`` + ``.raw``/``.zraw``)
FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".seg.nrrd": "seg.nrrd",
    ".nrrd": "nrrd",
    ".mha": "mha",
    ".mhd": "mha",
    # a DICOM-SEG: read as a volume when named <case>_pred.dcm (or given as a file)
    ".dcm": "dicom_seg",
}
assert set(FORMATS) == set(EXTENSIONS) | set(PREDICTION_EXTENSIONS)
#: the module of :mod:`vesselfm.io` that reads and writes each format (``read_file``,
#: ``read_bytes``, ``write_like``, ``write_new``)
CODECS: dict[str, str] = {
    "nifti": "vesselfm.io.nifti",
    "nrrd": "vesselfm.io.itk",
    "mha": "vesselfm.io.itk",
    "seg.nrrd": "vesselfm.io.slicer",
    "dicom": "vesselfm.io.dicom",
    "dicom_seg": "vesselfm.io.dicom_seg",
}
#: the values of ``output_format=`` and the extension of the files written in each
OUTPUT_FORMATS: dict[str, str] = {
    "nifti": ".nii.gz",
    "nrrd": ".nrrd",
    "mha": ".mha",
    "seg.nrrd": ".seg.nrrd",
    "dicom_seg": ".dcm",
}
#: the output format of an input of each format when ``output_format=`` is not given
DEFAULT_OUTPUT_FORMAT: dict[str, str] = {
    "nifti": "nifti",
    "nrrd": "nrrd",
    "mha": "mha",
    "seg.nrrd": "seg.nrrd",
    "dicom": "dicom_seg",
}
#: formats that hold a labelmap only: probabilities of an output in one are written in the
#: input's own image format instead (NIfTI for NIfTI and DICOM input, else NRRD)
MASK_ONLY_FORMATS: frozenset[str] = frozenset({"seg.nrrd", "dicom_seg"})
#: output formats that reference the DICOM series the input was (``dicom_seg``)
NEEDS_DICOM_INPUT: frozenset[str] = frozenset({"dicom_seg"})
#: the extensions written (a ``.mhd`` is never written: its data file could not be replaced
#: atomically with it)
WRITE_EXTENSIONS: tuple[str, ...] = tuple(e for e in FORMATS if e != ".mhd")


class VolumeError(UserError, ValueError):
    """A volume file that cannot be read or used; the message is one line naming the file."""


@dataclass(frozen=True, eq=False)
class Volume:
    """A volume read by :func:`read_volume`.

    Attributes:
        array: voxels ``(X, Y, Z)``, the file's scaling applied; in the stored dtype (integer
            scaling in int32, float scaling in float32) unless :func:`read_volume` was asked for
            another.
        affine: 4×4 float64 voxel-index-to-world matrix, RAS mm (nibabel's frame).
        where: the file, for messages (``archive.zip::member`` for a member of an archive).
        format: the file's format (``"nifti"``, ``"nrrd"``, ``"mha"``, ``"seg.nrrd"``,
            ``"dicom"`` for a series, ``"dicom_seg"`` for a DICOM-SEG).
        path: the file on disk, ``None`` for one read from bytes.
        native: the format's header, kept for :func:`write_like`; opaque to callers.

    Example:
        >>> vol = read_volume("1.img.nii.gz", dtype=np.float32)  # doctest: +SKIP
        >>> vol.array.shape, vol.spacing  # doctest: +SKIP
        ((512, 512, 275), (0.39, 0.39, 0.5))
    """

    array: np.ndarray
    affine: np.ndarray
    where: str
    format: str = "nifti"
    path: Path | None = None
    native: Any = field(default=None, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """The voxel grid's shape ``(X, Y, Z)``."""
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis: the column norms of the affine."""
        from vesselfm.io.frames import spacing_from_affine

        return spacing_from_affine(self.affine)

    @property
    def name(self) -> str:
        """The file's name (``where``'s last part)."""
        return Path(self.where.rsplit("::", 1)[-1]).name

    def with_array(self, array: np.ndarray, path: str | os.PathLike[str] | None = None) -> Volume:
        """This volume's grid and header holding ``array`` (e.g. a mask predicted for it),
        named ``path`` in messages when given."""
        array = np.asarray(array)
        if tuple(array.shape) != self.shape:
            raise ValueError(
                f"array shape {tuple(array.shape)} differs from the grid's {self.shape} ({self.where})"
            )
        if path is None:
            return dataclasses.replace(self, array=array)
        return dataclasses.replace(self, array=array, where=str(path), path=Path(path))


def error_reason(err: BaseException) -> str:
    """``"<type>: <first line>"`` of an exception, for one-line messages."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _codec(fmt: str) -> Any:
    import importlib

    return importlib.import_module(CODECS[fmt])


def is_dicom_input(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is read as a DICOM series: a folder, a ``.zip`` file, or one study of a
    cohort folder or zip (``<folder>::<study key>``, :func:`vesselfm.io.dicom.study_reference`)."""
    path = Path(path)
    if path.is_dir() or (path.name.lower().endswith(".zip") and not path.is_dir()):
        return True
    from vesselfm.io.dicom import study_reference

    return study_reference(path) is not None


def format_of(path: str | os.PathLike[str]) -> str | None:
    """The format of a file by its name (``"nifti"``, ``"nrrd"``, ``"mha"``; ``"dicom"`` for a
    folder or a ``.zip``), ``None`` if none."""
    if is_dicom_input(path):
        return "dicom"
    ext = split_extension(Path(path).name)[1].lower()
    return FORMATS.get(ext)


def check_output_format(value: Any, key: str = "output_format") -> str | None:
    """``value`` as an output format (``None``: each input's own, :data:`DEFAULT_OUTPUT_FORMAT`).

    Raises:
        ValueError: not one of :data:`OUTPUT_FORMATS`, listing them.
    """
    if value is None:
        return None
    fmt = str(value).strip().lower()
    if isinstance(value, str) and fmt in OUTPUT_FORMATS:
        return fmt
    allowed = "|".join(OUTPUT_FORMATS)
    raise ValueError(
        f"{key} must be one of {allowed} (or null: the input's own format), got {value!r}"
    )


def check_output_formats(value: Any, key: str = "output_format") -> tuple[str, ...] | None:
    """``value`` (one format or a list of them) as a tuple of output formats, duplicates
    dropped, in the order given; ``None``: each input's own.

    Raises:
        ValueError: an empty list, or a value not in :data:`OUTPUT_FORMATS`, listing them.
    """
    if value is None:
        return None
    if isinstance(value, str):
        return (check_output_format(value, key),)  # type: ignore[return-value]
    if isinstance(value, Sequence) and not isinstance(value, bytes):
        formats = [check_output_format(v, key) if v is not None else None for v in value]
        if formats and None not in formats:
            return tuple(dict.fromkeys(formats))  # type: ignore[arg-type]
    allowed = "|".join(OUTPUT_FORMATS)
    raise ValueError(
        f"{key} must be one of {allowed}, or a list of them (null: the input's own format), "
        f"got {value!r}"
    )


def _not_dicom(where: str | os.PathLike[str], fmt: str) -> VolumeError:
    others = "|".join(f for f in OUTPUT_FORMATS if f not in NEEDS_DICOM_INPUT)
    return VolumeError(
        f"{where}: output_format={fmt} needs a DICOM series input (a folder or .zip): a "
        f"DICOM-SEG references the series it was made from, and this input has none; choose "
        f"output_format={others}"
    )


def _check_input_for(path: str | os.PathLike[str], fmt: str) -> str:
    if fmt in NEEDS_DICOM_INPUT and format_of(path) != "dicom":
        raise _not_dicom(path, fmt)
    return fmt


def output_format_for(path: str | os.PathLike[str], output_format: str | None = None) -> str:
    """The format of the outputs of the input ``path``: ``output_format`` when given, else the
    input's own (:data:`DEFAULT_OUTPUT_FORMAT`; NIfTI for a name of no known format).

    Raises:
        ValueError: an unknown ``output_format``, listing the known ones.
        VolumeError: ``dicom_seg`` for an input that is not a DICOM series.
    """
    chosen = check_output_format(output_format)
    if chosen is not None:
        return _check_input_for(path, chosen)
    return DEFAULT_OUTPUT_FORMAT.get(format_of(path) or "nifti", "nifti")


def output_formats_for(path: str | os.PathLike[str], output_format: Any = None) -> tuple[str, ...]:
    """:func:`output_format_for` of one format or a list (:func:`check_output_formats`)."""
    chosen = check_output_formats(output_format)
    if chosen is None:
        return (output_format_for(path),)
    return tuple(_check_input_for(path, fmt) for fmt in chosen)


def probability_format(output_format: str, input_format: str | None) -> str:
    """The format of ``<case>_prob`` beside a ``<case>_pred`` in ``output_format``: the same,
    unless that format holds labelmaps only (``seg.nrrd``, ``dicom_seg``): then NIfTI for a
    NIfTI or DICOM input (or one of unknown format), else NRRD."""
    if output_format not in MASK_ONLY_FORMATS:
        return output_format
    return "nifti" if input_format in (None, "nifti", "dicom") else "nrrd"


def _format(where: str, name: str) -> str:
    ext = split_extension(name)[1].lower()
    if not ext and name.lower().endswith(tuple(PREDICTION_EXTENSIONS)):
        ext = next(e for e in PREDICTION_EXTENSIONS if name.lower().endswith(e))
    if not ext:
        allowed = ", ".join(EXTENSIONS)
        raise VolumeError(f"{where}: not a volume file of a known format; expected {allowed}")
    return FORMATS[ext]


def _validated(
    array: np.ndarray, affine: np.ndarray, header_shape: tuple[int, ...], where: str
) -> tuple[np.ndarray, np.ndarray]:
    """The checks every volume passes, whatever its format."""
    shape = tuple(int(s) for s in header_shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise VolumeError(
            f"{where}: expected a 3D volume (X, Y, Z), got {len(header_shape)}D shape "
            f"{tuple(header_shape)}; give one 3D scan per file"
        )
    if min(shape) < 1:
        raise VolumeError(f"{where}: empty volume, shape {shape}")
    array = array.reshape(shape)
    if array.dtype.kind in "fc":
        finite = np.isfinite(array)
        if not finite.all():
            bad = int(array.size - np.count_nonzero(finite))
            raise VolumeError(
                f"{where}: {bad} of {array.size} voxels are NaN or infinite; fix or re-export "
                "the file"
            )
    affine = np.asarray(affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(
            f"{where}: the affine is not finite or singular; fix the header (qform/sform)"
        )
    return array, affine


def read_volume(
    path: str | os.PathLike[str],
    dtype: np.dtype | type | None = None,
    *,
    series: str | None = None,
    phase: float | None = None,
    resample: bool | None = None,
) -> Volume:
    """Read and validate a 3D volume file, or a DICOM series (a folder or a ``.zip``).

    Args:
        path: a file named with one of :data:`~vesselfm.io.names.EXTENSIONS`, a DICOM-SEG
            ``.dcm`` (:mod:`vesselfm.io.dicom_seg`: its labelmap on its series' grid), or a
            folder or ``.zip`` of a DICOM study (:mod:`vesselfm.io.dicom`).
        series: DICOM only: the SeriesInstanceUID or SeriesNumber to read; ``None``: the one
            :func:`vesselfm.io.dicom.selection` set, else the CT series with the most slices.
        phase: DICOM only: the cardiac phase (NominalPercentageOfCardiacPhase, else
            TriggerTime) where several slices share a position.
        resample: DICOM only: resample a series with gaps or uneven slice spacing onto a
            regular grid (``dicom.resample=``) instead of stopping; ``None``: as
            :func:`vesselfm.io.dicom.selection` set, else ``False``.
        dtype: the array's dtype, the file's scaling applied in it (``np.float32`` for
            intensities); ``None`` keeps the stored dtype (scaled files: int32 for integer
            scaling, else float32), the smallest exact array.

    Returns:
        The :class:`Volume`.

    Raises:
        VolumeError: one line naming the file: no such file, not a volume of a known format,
            truncated or corrupt, not 3D, empty, NaN or infinite voxels, a non-finite or
            singular affine.
    """
    path = Path(path)
    where = str(path)
    if is_dicom_input(path):
        fmt = "dicom"
        array, affine, header_shape, native = _codec(fmt).read_file(
            path, dtype, where, series=series, phase=phase, resample=resample
        )
    else:
        fmt = _format(where, path.name)
        array, affine, header_shape, native = _codec(fmt).read_file(path, dtype, where)
    array, affine = _validated(array, affine, header_shape, where)
    return Volume(array=array, affine=affine, where=where, format=fmt, path=path, native=native)


def read_volume_bytes(data: bytes, name: str, dtype: np.dtype | type | None = None) -> Volume:
    """:func:`read_volume` of a file's bytes (a member of a zip archive).

    Args:
        data: the file's content, compressed as its name says (``.nii.gz``: gzip).
        name: where it came from (``archive.zip::1-200/1.img.nii.gz``), for its format and
            for messages.
        dtype: as for :func:`read_volume`.
    """
    fmt = _format(name, name.rsplit("::", 1)[-1])
    array, affine, header_shape, native = _codec(fmt).read_bytes(data, name, dtype)
    array, affine = _validated(array, affine, header_shape, name)
    return Volume(array=array, affine=affine, where=name, format=fmt, native=native)


def _write_format(target: Path) -> str:
    ext = split_extension(target.name)[1].lower()
    if not ext and target.name.lower().endswith(tuple(PREDICTION_EXTENSIONS)):
        ext = next(e for e in PREDICTION_EXTENSIONS if target.name.lower().endswith(e))
    if ext not in WRITE_EXTENSIONS:
        raise ValueError(
            f"{target}: volumes are written as {', '.join(WRITE_EXTENSIONS)}; name it so"
        )
    return FORMATS[ext]


def write_like(
    array: np.ndarray,
    like: Volume,
    target: str | os.PathLike[str],
    segments: Sequence[Segment] | None = None,
) -> Path:
    """Write ``array`` on ``like``'s grid, atomically, in the format ``target``'s name says.

    The file holds ``array``'s values in its dtype, unscaled, on ``like``'s voxels. In ``like``'s
    own format (or another one read by the same library: NRRD and MetaImage) it keeps ``like``'s
    header: NIfTI qform/sform and their codes (no intensity scaling or calibration range of the
    input); ITK origin, spacing and direction exactly, and the free-text metadata. In another
    format it is a new file with ``like``'s affine (:func:`write_volume`), so it lies on the
    same voxels in world coordinates (to NIfTI's float32 precision when written as NIfTI).

    Args:
        array: ``(X, Y, Z)`` of ``like``'s shape (uint8 0/1 for a mask, float32 for
            probabilities).
        like: the volume the output belongs to (the input scan).
        target: the output file, named ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mha``, ``.seg.nrrd``
            (a 3D Slicer segmentation) or ``.dcm`` (a DICOM-SEG over ``like``'s DICOM series:
            :mod:`vesselfm.io.dicom_seg`; its frames lie on the series' slices).
        segments: for a ``.seg.nrrd`` or ``.dcm``, the segments of the label map ``array``
            (:class:`~vesselfm.io.terminology.Segment`, named and coded); ``None``: our one lumen
            segment. Other formats hold the values only.

    Returns:
        ``target``.

    Raises:
        ValueError: ``array``'s shape is not ``like``'s, or ``target``'s name is not one of a
            format written.
        VolumeError: writing NRRD/MetaImage without SimpleITK installed; a ``.dcm`` for a
            ``like`` that is not a DICOM series.
    """
    from vesselfm.utils.io import atomic_path

    array = np.asarray(array)
    target = Path(target)
    if tuple(array.shape) != like.shape:
        raise ValueError(f"output shape {tuple(array.shape)} differs from the input's {like.shape}")
    fmt = _write_format(target)
    if fmt in MASK_ONLY_FORMATS:  # its own writer, given the input's header when it has one
        if fmt in NEEDS_DICOM_INPUT:
            if like.format != "dicom":
                raise _not_dicom(like.where, fmt)
            native = like.native
            _codec(fmt).check_sources(native, target)  # naming the target, not its temporary
        else:
            native = like.native if CODECS.get(like.format) == "vesselfm.io.itk" else None
        with atomic_path(target) as tmp:
            if segments is None:
                _codec(fmt).write_like(array, like.affine, native, tmp)
            else:
                _codec(fmt).write_like(array, like.affine, native, tmp, segments=segments)
        return target
    if like.native is None or CODECS[fmt] != CODECS.get(like.format):
        return write_volume(array, like.affine, target)
    codec = _codec(fmt)
    with atomic_path(target) as tmp:
        if fmt == "nifti":
            codec.write_like(array, like.affine, like.native, tmp)
        else:
            codec.write_like(array, like.native, tmp)
    return target


def write_volume(
    array: np.ndarray,
    affine: np.ndarray,
    target: str | os.PathLike[str],
    description: str = "",
) -> Path:
    """Write ``array`` as a new volume file (no input to copy a header from), atomically.

    Args:
        array: ``(X, Y, Z)`` values, stored in their dtype, unscaled.
        affine: ``(4, 4)`` voxel-to-world matrix in mm (RAS, as nibabel reports it).
        target: the file; its extension picks the format (``.nii.gz``, ``.nii``, ``.nrrd``,
            ``.mha``).
        description: a short free text stored in the header where the format has a place.

    Returns:
        ``target``.

    Raises:
        ValueError: ``target``'s extension is not a format this function writes.
        VolumeError: writing NRRD/MetaImage without SimpleITK installed.
    """
    from vesselfm.utils.io import atomic_path

    target = Path(target)
    fmt = _write_format(target)
    if fmt in NEEDS_DICOM_INPUT:  # no input, so no series to reference
        raise _not_dicom(target, fmt)
    codec = _codec(fmt)
    with atomic_path(target) as tmp:
        codec.write_new(np.asarray(array), np.asarray(affine, dtype=np.float64), tmp, description)
    return target
