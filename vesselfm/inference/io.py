"""NIfTI in and out for inference: validated reading, geometry-exact atomic writing, input discovery.

Reading refuses what would give a wrong or meaningless segmentation (not a NIfTI, truncated
data, 2D or 4D volumes, non-finite voxels) with one line naming the file. Writing copies the
input's header, so the prediction has the input's shape, affine and qform/sform codes, and goes
through :func:`vesselfm.utils.io.atomic_path`, so an interrupted run leaves no partial file.

Volumes are NumPy arrays in NIfTI voxel order ``(X, Y, Z)``.
"""

from __future__ import annotations

import glob
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from vesselfm.utils.errors import UserError
from vesselfm.utils.io import atomic_path

log = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii.gz", ".nii")
# ImageCAS names its files N.img.nii.gz / N.label.nii.gz; both belong to case N.
ROLE_SUFFIXES = (".img", ".label")
PRED_SUFFIX = "_pred.nii.gz"
PROB_SUFFIX = "_prob.nii.gz"
MESH_SUFFIX = "_pred.stl"


@dataclass
class Scan:
    """A scan read for inference.

    Attributes:
        path: the file it came from.
        data: intensities ``(X, Y, Z)`` float32 (HU for CT), scaling (``scl_slope``) applied.
        affine: 4×4 voxel-to-world matrix (mm).
        image: the nibabel image, kept so that outputs can copy its header.
    """

    path: Path
    data: np.ndarray
    affine: np.ndarray
    image: nib.Nifti1Image

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis."""
        from vesselfm.data.preprocessing import spacing_from_affine

        return spacing_from_affine(self.affine)


def is_nifti(path: str | os.PathLike[str]) -> bool:
    """Whether the file name ends in ``.nii`` or ``.nii.gz``."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def case_id(path: str | os.PathLike[str]) -> str:
    """The case id of a scan file: ``1.img.nii.gz`` → ``1``; ``scan.nii.gz`` → ``scan``.

    The ``.nii.gz``/``.nii`` suffix is removed, then an ImageCAS role suffix (``.img``,
    ``.label``), so that a scan and its label share the id.
    """
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    for role in ROLE_SUFFIXES:
        if name.endswith(role) and len(name) > len(role):
            return name[: -len(role)]
    return name


def _is_label_file(path: Path) -> bool:
    return path.name.lower().endswith(tuple(f".label{s}" for s in NIFTI_SUFFIXES))


def find_inputs(spec: str | os.PathLike[str]) -> list[Path]:
    """The NIfTI files named by ``input=``: a file, a folder (not recursive) or a glob pattern.

    In a folder or glob, ImageCAS label files (``*.label.nii.gz``) are left out, so a raw
    ImageCAS folder can be given as is.

    Returns:
        Sorted, de-duplicated paths.

    Raises:
        UserError: nothing matches, the file is not a NIfTI, or the folder holds no NIfTI.
    """
    spec = str(spec)
    path = Path(spec).expanduser()
    if path.is_file():
        if not is_nifti(path):
            raise UserError(
                f"input={spec}: expected a .nii or .nii.gz file (.mha/.nrrd are not supported; "
                f"convert them to NIfTI first)"
            )
        return [path]
    if path.is_dir():
        found = [
            p for p in path.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith(".")
        ]
        kind = "folder"
    elif glob.has_magic(spec):
        found = [
            Path(p)
            for p in glob.glob(os.path.expanduser(spec))
            if Path(p).is_file() and is_nifti(p)
        ]
        kind = "pattern"
    else:
        raise UserError(
            f"input={spec}: no such file or folder; give a NIfTI file, a folder or a glob"
        )
    scans = sorted({p for p in found if not _is_label_file(p)})
    if not scans:
        raise UserError(
            f"input={spec}: the {kind} holds no .nii/.nii.gz scans; point input= at NIfTI files"
        )
    if len(scans) < len(found):
        log.info("input=%s: left out %d *.label.nii(.gz) files", spec, len(found) - len(scans))
    return scans


def load_scan(path: str | os.PathLike[str]) -> Scan:
    """Read and validate a 3D NIfTI scan.

    A trailing singleton 4th dimension ``(X, Y, Z, 1)`` is squeezed.

    Raises:
        UserError: one line naming the file when it is not a NIfTI, is truncated or unreadable,
            is not 3D, or holds non-finite voxels.
    """
    path = Path(path)
    try:
        image = nib.load(str(path))
    except FileNotFoundError as err:
        raise UserError(f"{path}: no such file") from err
    except Exception as err:  # noqa: BLE001 - nibabel raises many types for a bad file
        raise UserError(f"{path}: not a readable NIfTI file ({_reason(err)})") from err
    if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
        raise UserError(
            f"{path}: expected a NIfTI-1/2 image, got {type(image).__name__}; convert it to NIfTI"
        )

    shape = tuple(int(s) for s in image.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise UserError(
            f"{path}: expected a 3D volume (X, Y, Z), got {len(image.shape)}D shape {tuple(image.shape)}; "
            f"give one 3D scan per file"
        )
    if min(shape) < 1:
        raise UserError(f"{path}: empty volume, shape {shape}")
    try:
        data = np.asarray(image.dataobj, dtype=np.float32).reshape(shape)
    except Exception as err:  # noqa: BLE001 - truncated gzip (EOFError, zlib.error), short files (OSError)
        raise UserError(
            f"{path}: cannot read the voxel data, the file is truncated or corrupt ({_reason(err)})"
        ) from err

    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - np.count_nonzero(finite))
        raise UserError(
            f"{path}: {bad} of {data.size} voxels are NaN or infinite; fix or re-export the scan"
        )
    affine = np.asarray(image.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise UserError(
            f"{path}: the affine is singular or non-finite; fix the header (qform/sform)"
        )
    return Scan(path=path, data=data, affine=affine, image=image)


def _reason(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def like_reference(data: np.ndarray, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    """A NIfTI image holding ``data`` with ``reference``'s header, affine and qform/sform codes.

    Args:
        data: ``(X, Y, Z)`` array of the reference's spatial shape; its dtype is the file's.
        reference: the input scan's image.
    """
    shape = tuple(int(s) for s in reference.shape[:3])
    if tuple(data.shape) != shape:
        raise ValueError(f"output shape {tuple(data.shape)} differs from the input's {shape}")
    header = reference.header.copy()
    header.set_data_shape(shape)
    header.set_data_dtype(data.dtype)
    # Our values are the stored values: no intensity scaling, no calibration range of the CT.
    header.set_slope_inter(None, None)
    header["cal_min"] = 0
    header["cal_max"] = 0
    header["intent_code"] = 0
    out = type(reference)(data, reference.affine, header=header)
    qform, qcode = reference.header.get_qform(coded=True)
    sform, scode = reference.header.get_sform(coded=True)
    out.set_qform(qform if qform is not None else reference.affine, code=int(qcode or 0))
    out.set_sform(sform if sform is not None else reference.affine, code=int(scode or 0))
    return out


def save_like(data: np.ndarray, reference: nib.Nifti1Image, target: str | os.PathLike[str]) -> Path:
    """Write ``data`` as a NIfTI with ``reference``'s geometry, atomically (temp name, then rename)."""
    image = like_reference(data, reference)
    target = Path(target)
    with atomic_path(target) as tmp:
        nib.save(image, str(tmp))
    return target


def save_prediction(
    mask: np.ndarray, reference: nib.Nifti1Image, target: str | os.PathLike[str]
) -> Path:
    """Write a binary mask as uint8 0/1 with the reference's geometry (``<case>_pred.nii.gz``)."""
    return save_like((np.asarray(mask) > 0).astype(np.uint8), reference, target)


def save_probabilities(
    prob: np.ndarray, reference: nib.Nifti1Image, target: str | os.PathLike[str]
) -> Path:
    """Write a probability map as float32 in [0, 1] with the reference's geometry (``<case>_prob.nii.gz``)."""
    return save_like(np.clip(np.asarray(prob, dtype=np.float32), 0.0, 1.0), reference, target)


def output_paths(output_dir: str | os.PathLike[str], case: str) -> dict[str, Path]:
    """``{"pred", "prob", "mesh"}`` paths of a case's outputs in ``output_dir``."""
    output_dir = Path(output_dir)
    return {
        "pred": output_dir / f"{case}{PRED_SUFFIX}",
        "prob": output_dir / f"{case}{PROB_SUFFIX}",
        "mesh": output_dir / f"{case}{MESH_SUFFIX}",
    }


def ensure_writable_dir(path: str | os.PathLike[str], key: str = "output") -> Path:
    """Create ``path`` if needed and check that files can be created in it.

    Raises:
        UserError: naming ``key`` when the folder cannot be created or written.
    """
    import tempfile

    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vesselfm-write-test-"):
            pass
    except OSError as err:
        raise UserError(
            f"{key}={path} is not a writable folder ({_reason(err)}); choose another {key}="
        ) from err
    return path
