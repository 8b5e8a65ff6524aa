"""The NRRD and MetaImage (``.nrrd``, ``.mha``, ``.mhd``) reader and writer behind
:mod:`vesselfm.io.volume` (the only code that uses SimpleITK).

SimpleITK is the one well-kept reader of the ITK formats (the one nnU-Net uses); it is an optional
dependency (``pip install "vesselfm[formats]"``), imported only when such a file is read or
written.

Frames: ITK images are LPS. With ``D`` the direction matrix, ``s`` the spacing and ``o`` the
origin, the voxel-to-LPS matrix has the columns ``D[:, a] * s[a]`` and the translation ``o``;
:attr:`~vesselfm.io.Volume.affine` is RAS (nibabel's frame), ``diag(-1, -1, 1, 1) @ affine_lps``.
The conversion is done here and nowhere else. Arrays are in ITK index order ``(i, j, k)``, as
NIfTI arrays are in theirs (``sitk.GetArrayFromImage`` gives ``(k, j, i)``: transposed here).
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vesselfm.io.volume import VolumeError

#: voxel-to-LPS ↔ voxel-to-RAS (its own inverse)
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
INSTALL_HINT = 'pip install "vesselfm[formats]"'
# Metadata that describes the file's layout (written by ITK from the image itself) or ITK's own
# bookkeeping: never copied onto an output, where it could contradict the output's pixel type.
_LAYOUT_KEY = re.compile(
    r"^(ITK_|NRRD_|ElementType|ElementSpacing|ElementDataFile|DimSize|NDims|Offset|"
    r"TransformMatrix|CenterOfRotation|AnatomicalOrientation|CompressedData|BinaryData|"
    r"ObjectType|HeaderSize|ElementNumberOfChannels|ElementByteOrderMSB)"
)


@dataclass(frozen=True)
class ItkHeader:
    """What an output "like" an ITK input needs: its exact geometry and its free-text metadata.

    Geometry is kept as SimpleITK gave it (not recomputed from the affine), so that an output of
    the same format has bit-identical origin, spacing and direction. For NRRD the file's own
    geometry fields are kept too (``nrrd_geometry``: ``space``, ``space directions``, ``space
    origin`` as pynrrd parses them): ITK recomputes ``space directions`` from spacing and
    direction when it writes, which can move them by one unit in the last place.
    """

    origin: tuple[float, ...]
    spacing: tuple[float, ...]
    direction: tuple[float, ...]
    pixel_type: str
    metadata: dict[str, str] = field(default_factory=dict)
    nrrd_geometry: dict[str, Any] | None = None


_NRRD_GEOMETRY = ("space", "space directions", "space origin", "space units")


def _nrrd_geometry(path: Path) -> dict[str, Any] | None:
    """The geometry fields of a 3D NRRD's header (pynrrd), ``None`` when pynrrd is missing or
    the header has none of its own (then the output is written by SimpleITK)."""
    try:
        import nrrd

        header = nrrd.read_header(str(path))
    except Exception:  # noqa: BLE001 - optional exactness; SimpleITK already read the file
        return None
    if header.get("dimension") != 3 or "space directions" not in header:
        return None
    return {k: header[k] for k in _NRRD_GEOMETRY if k in header}


def sitk_module(where: str) -> Any:
    """SimpleITK, or a one-line :class:`VolumeError` naming the extra that installs it."""
    try:
        import SimpleITK as sitk
    except ImportError as err:
        raise VolumeError(
            f"{where}: reading and writing .nrrd/.mha/.mhd needs SimpleITK, which is not "
            f"installed; {INSTALL_HINT}"
        ) from err
    return sitk


def _reason(err: BaseException) -> str:
    """The useful line of a SimpleITK error (its last one, without ITK's source location)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    line = re.sub(r"^(\[\w+\]\s*)+", "", lines[-1])
    line = re.sub(r"^\w+::ERROR:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", line)
    return line


def lps_affine(image: Any) -> np.ndarray:
    """The voxel-to-LPS matrix (mm) of the first three axes of a SimpleITK image."""
    n = image.GetDimension()
    affine = np.eye(4)
    if n < 3:
        return affine  # refused as not 3D by the caller; any non-singular matrix will do
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(n, n)[:3, :3]
    spacing = np.asarray(image.GetSpacing(), dtype=np.float64)[:3]
    affine[:3, :3] = direction * spacing  # column a scaled by spacing[a]
    affine[:3, 3] = np.asarray(image.GetOrigin(), dtype=np.float64)[:3]
    return affine


def geometry_from_affine(
    affine_ras: np.ndarray,
) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...]]:
    """``(origin, spacing, direction)`` of an ITK image with the voxel-to-RAS matrix given."""
    lps = LPS_TO_RAS @ np.asarray(affine_ras, dtype=np.float64)
    matrix = lps[:3, :3]
    spacing = np.linalg.norm(matrix, axis=0)
    direction = matrix / spacing
    return (
        tuple(float(v) for v in lps[:3, 3]),
        tuple(float(v) for v in spacing),
        tuple(float(v) for v in direction.ravel()),
    )


def _read_image(sitk: Any, path: Path, where: str) -> Any:
    if not path.exists():
        raise VolumeError(f"{where}: no such file")
    if path.is_dir():
        raise VolumeError(f"{where}: a folder, not a file")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        raise VolumeError(
            f"{where}: unreadable or truncated, not a valid {path.suffix.lower()} file "
            f"({_reason(err)})"
        ) from err


def _from_image(
    sitk: Any, image: Any, dtype: Any, where: str, path: Path
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], ItkHeader]:
    components = image.GetNumberOfComponentsPerPixel()
    if components != 1:
        raise VolumeError(
            f"{where}: {components} values per voxel (a vector or colour image); give a scalar "
            "volume (one value per voxel)"
        )
    array = sitk.GetArrayFromImage(image)
    array = array.transpose(tuple(range(array.ndim))[::-1])  # (k, j, i) -> (i, j, k), a view
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    native = ItkHeader(
        origin=tuple(image.GetOrigin()),
        spacing=tuple(image.GetSpacing()),
        direction=tuple(image.GetDirection()),
        pixel_type=image.GetPixelIDTypeAsString(),
        metadata={k: image.GetMetaData(k) for k in image.GetMetaDataKeys()},
        nrrd_geometry=_nrrd_geometry(path) if path.suffix.lower() == ".nrrd" else None,
    )
    affine = LPS_TO_RAS @ lps_affine(image)
    return array, affine, tuple(int(s) for s in image.GetSize()), native


def read_file(
    path: Path, dtype: Any, where: str
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], ItkHeader]:
    """``(array (i, j, k), RAS affine, shape, native header)`` of a ``.nrrd``/``.mha``/``.mhd``."""
    sitk = sitk_module(where)
    return _from_image(sitk, _read_image(sitk, path, where), dtype, where, path)


def read_bytes(
    data: bytes, where: str, dtype: Any
) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], ItkHeader]:
    """:func:`read_file` of a file's content (SimpleITK reads files only: through a temporary
    one). A ``.mhd`` needs its data file beside it, so it is refused here."""
    name = where.rsplit("::", 1)[-1]
    suffix = Path(name).suffix.lower()
    if suffix == ".mhd":
        raise VolumeError(
            f"{where}: a .mhd header keeps its voxels in a separate file, which cannot be read "
            "from inside an archive; extract the archive, or convert the case to .mha"
        )
    sitk = sitk_module(where)
    with tempfile.TemporaryDirectory(prefix="vesselfm-itk-") as tmp:
        path = Path(tmp) / f"volume{suffix}"
        path.write_bytes(data)
        return _from_image(sitk, _read_image(sitk, path, where), dtype, where, path)


def _image(sitk: Any, array: np.ndarray) -> Any:
    array = np.asarray(array)
    # (i, j, k) -> (k, j, i), C-contiguous for SimpleITK
    return sitk.GetImageFromArray(np.ascontiguousarray(array.transpose(2, 1, 0)))


def _write(sitk: Any, image: Any, target: str | os.PathLike[str]) -> None:
    try:
        sitk.WriteImage(image, str(target), True)  # compressed: masks shrink 100-fold
    except RuntimeError as err:
        raise OSError(f"{target}: SimpleITK could not write it ({_reason(err)})") from err


def write_like(array: np.ndarray, like: ItkHeader, target: str | os.PathLike[str]) -> None:
    """Write ``array`` ``(i, j, k)`` with ``like``'s exact origin, spacing and direction and its
    free-text metadata (not the fields that describe the file's layout)."""
    if like.nrrd_geometry is not None and str(target).lower().endswith(".nrrd"):
        _write_nrrd(array, like.nrrd_geometry, target)
        return
    sitk = sitk_module(str(target))
    image = _image(sitk, array)
    image.SetOrigin(like.origin)
    image.SetSpacing(like.spacing)
    image.SetDirection(like.direction)
    for key, value in like.metadata.items():
        if not _LAYOUT_KEY.match(key):
            image.SetMetaData(key, value)
    _write(sitk, image, target)


def _write_nrrd(
    array: np.ndarray, geometry: dict[str, Any], target: str | os.PathLike[str]
) -> None:
    """A gzip NRRD of ``array`` ``(i, j, k)`` with the input's geometry fields, value for value."""
    import nrrd

    header = {**geometry, "kinds": ["domain"] * 3, "encoding": "gzip"}
    try:
        nrrd.write(str(target), np.asarray(array), header, index_order="F")
    except Exception as err:  # noqa: BLE001 - pynrrd raises its own and numpy errors
        raise OSError(f"{target}: pynrrd could not write it ({err})") from err


def write_new(
    array: np.ndarray, affine: np.ndarray, target: str | os.PathLike[str], description: str = ""
) -> None:
    """Write ``array`` ``(i, j, k)`` as a new ITK file whose voxel-to-RAS matrix is ``affine``
    (converted to LPS origin, spacing and direction); ``description`` as NRRD ``content``."""
    sitk = sitk_module(str(target))
    image = _image(sitk, array)
    origin, spacing, direction = geometry_from_affine(affine)
    image.SetOrigin(origin)
    image.SetSpacing(spacing)
    image.SetDirection(direction)
    if description and str(target).lower().endswith(".nrrd"):
        image.SetMetaData("NRRD_content", description)
    _write(sitk, image, target)
