"""The NIfTI-1/2 reader and writer behind :mod:`vesselfm.io.volume` (the only code that uses nibabel).

A ``.nii.gz`` is inflated straight into the array's buffer, with ISA-L (``isal.igzip``, 2-3x
faster, the same API) when it is installed: decompression is most of the time of reading a CTA.
"""

from __future__ import annotations

import gzip
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np

from vesselfm.io.volume import VolumeError, error_reason

GZIP_MAGIC = b"\x1f\x8b"
_NIFTI2_HEADER_SIZE = 540


@dataclass(frozen=True)
class NiftiHeader:
    """What an output "like" a NIfTI input needs: the image class and a copy of its header."""

    image_class: type
    header: Any


def _gzip_module() -> Any:
    """ISA-L's gzip (``isal.igzip``) when installed, else ``gzip``."""
    try:
        from isal import igzip
    except ImportError:
        return gzip
    return igzip


def _image(fileobj: IO[bytes], where: str) -> Any:
    """The image of an open file (header read; the data are read on access)."""
    try:
        head = fileobj.read(4)
        fileobj.seek(0)
        sizes = {int.from_bytes(head, "little"), int.from_bytes(head, "big")}
        klass = nib.Nifti2Image if _NIFTI2_HEADER_SIZE in sizes else nib.Nifti1Image
        return klass.from_file_map(klass.make_file_map({"image": fileobj, "header": fileobj}))
    except Exception as err:  # noqa: BLE001 - nibabel, gzip and zlib raise many types
        raise VolumeError(f"{where}: unreadable, not a NIfTI file ({error_reason(err)})") from err


def _array(image: Any, dtype: Any, where: str) -> np.ndarray:
    """The voxel array, the header's scaling applied (see :func:`vesselfm.io.read_volume`)."""
    try:
        proxy = image.dataobj
        if dtype is not None:
            return np.asarray(proxy, dtype=dtype)
        raw = np.asanyarray(proxy.get_unscaled())
        slope = float(getattr(proxy, "slope", 1.0))
        inter = float(getattr(proxy, "inter", 0.0))
    except Exception as err:  # noqa: BLE001 - truncated gzip (EOFError, zlib.error), short files (OSError)
        raise VolumeError(
            f"{where}: unreadable or truncated, the voxel data cannot be read ({error_reason(err)})"
        ) from err
    if slope == 1.0 and inter == 0.0:
        return raw
    # scaled in the smallest exact type, never float64: a 512×512×275 scan is 144 MB as int16,
    # 577 MB as float64
    if raw.dtype.kind in "iu" and slope.is_integer() and inter.is_integer():
        return raw.astype(np.int32) * int(slope) + int(inter)
    return raw.astype(np.float32) * np.float32(slope) + np.float32(inter)


def _read(fileobj: IO[bytes], where: str, dtype: Any) -> tuple[np.ndarray, np.ndarray, tuple, Any]:
    image = _image(fileobj, where)
    array = _array(image, dtype, where)
    native = NiftiHeader(image_class=type(image), header=image.header.copy())
    return array, np.asarray(image.affine, dtype=np.float64), tuple(image.shape), native


def read_file(
    path: Path, dtype: Any, where: str
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], NiftiHeader]:
    """``(array, affine, header shape, native header)`` of a ``.nii``/``.nii.gz`` file."""
    gz = path.name.lower().endswith(".gz")
    try:
        if not gz:
            with open(path, "rb") as fh:
                if fh.read(2) == GZIP_MAGIC:
                    raise VolumeError(
                        f"{where}: the file is gzip-compressed but named .nii; rename it to "
                        f"{path.name}.gz"
                    )
        opener = _gzip_module().open if gz else open
        with opener(path, "rb") as fileobj:
            return _read(fileobj, where, dtype)
    except FileNotFoundError as err:
        raise VolumeError(f"{where}: no such file") from err
    except IsADirectoryError as err:
        raise VolumeError(f"{where}: a folder, not a file") from err
    except OSError as err:
        raise VolumeError(f"{where}: unreadable ({error_reason(err)})") from err


def read_bytes(
    data: bytes, where: str, dtype: Any
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], NiftiHeader]:
    """:func:`read_file` of a file's content (``where`` ends in ``.gz``: gzip-compressed)."""
    if where.lower().endswith(".gz"):
        try:
            data = _gzip_module().decompress(data)
        except Exception as err:  # noqa: BLE001 - gzip, zlib and EOF errors
            raise VolumeError(
                f"{where}: unreadable or truncated, it cannot be inflated ({error_reason(err)})"
            ) from err
    return _read(io.BytesIO(data), where, dtype)


def write_like(
    array: np.ndarray, affine: np.ndarray, like: NiftiHeader, target: str | os.PathLike[str]
) -> None:
    """Write ``array`` as a NIfTI with ``like``'s header, ``affine`` and qform/sform codes."""
    reference = like.header
    shape = tuple(int(s) for s in array.shape)
    header = reference.copy()
    header.set_data_shape(shape)
    header.set_data_dtype(array.dtype)
    # Our values are the stored values: no intensity scaling, no calibration range of the CT.
    header.set_slope_inter(None, None)
    header["cal_min"] = 0
    header["cal_max"] = 0
    header["intent_code"] = 0
    out = like.image_class(array, affine, header=header)
    qform, qcode = reference.get_qform(coded=True)
    sform, scode = reference.get_sform(coded=True)
    out.set_qform(qform if qform is not None else affine, code=int(qcode or 0))
    out.set_sform(sform if sform is not None else affine, code=int(scode or 0))
    nib.save(out, str(target))


def write_new(
    array: np.ndarray, affine: np.ndarray, target: str | os.PathLike[str], description: str = ""
) -> None:
    """Write ``array`` as a new NIfTI-1 file: ``affine`` as qform and sform (code 1, scanner),
    mm units, ``scl_slope`` 1 and ``scl_inter`` 0, ``description`` in ``descrip`` (79 bytes).

    nibabel writes ``.nii.gz`` deterministically (no timestamp, no file name in the gzip header).
    """
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    img.header.set_slope_inter(1.0, 0.0)
    img.header["descrip"] = description.encode()[:79]
    nib.save(img, str(target))
