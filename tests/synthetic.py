"""Small synthetic volumes for every test: tubes, balls, vessel trees, CTA-like scans, NIfTI files.

Built from exact geometry so that each test knows what its metric, mesh or segmentation must
give. Affines are scanner-like on purpose (flipped axes, anisotropic voxels, an offset, distinct
qform/sform codes), so that a slip in geometry handling shows up instead of passing by accident.

The conftests expose these as fixtures (``tree``, ``case``, ``scan_file``, ``write_nifti``, …);
tests that need a function directly import it: ``from synthetic import save_nifti``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

# Flipped in-plane axes (diag(-sx, -sy, sz)), 0.75 x 0.625 x 1.25 mm voxels, an offset origin:
# the default of save_nifti.
FLIPPED_AFFINE = np.array(
    [
        [-0.75, 0.0, 0.0, 40.5],
        [0.0, -0.625, 0.0, -12.25],
        [0.0, 0.0, 1.25, -80.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)
# x flipped only (det < 0, an LPS-ish frame), 0.4 x 0.5 x 0.8 mm voxels, an offset origin: the
# viz tests' millimetre checks use tolerances of one voxel (0.8 mm).
ANISO_AFFINE = np.array(
    [
        [-0.4, 0.0, 0.0, 30.0],
        [0.0, 0.5, 0.0, -12.0],
        [0.0, 0.0, 0.8, 100.0],
        [0.0, 0.0, 0.0, 1.0],
    ]
)


# ----------------------------------------------------------------------------- shapes (boolean)
def _grid(shape: tuple[int, int, int]) -> np.ndarray:
    """Voxel-centre coordinates, shape ``(*shape, 3)``."""
    return np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1).astype(
        float
    )


def tube(shape: tuple[int, int, int], p0, p1, radius: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius`` of the segment ``p0``-``p1`` (voxel units)."""
    grid = _grid(shape)
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    d = p1 - p0
    t = np.clip(((grid - p0) @ d) / (d @ d), 0.0, 1.0)
    closest = p0 + t[..., None] * d
    return np.linalg.norm(grid - closest, axis=-1) <= radius


def ball(shape: tuple[int, int, int], centre, radius: float) -> np.ndarray:
    """Voxels whose centre lies within ``radius`` of ``centre`` (voxel units)."""
    return np.linalg.norm(_grid(shape) - np.asarray(centre, float), axis=-1) <= radius


class Tree:
    """A vessel tree label (48³: a trunk along z with one side branch) and damaged copies.

    A cut trunk has two components, a missing branch lowers recall only, an extra blob adds a
    component. All boolean.
    """

    SHAPE = (48, 48, 48)

    def __init__(self, shape: tuple[int, int, int] = SHAPE) -> None:
        self.trunk = tube(shape, (24, 24, 4), (24, 24, 43), 2.5)
        self.branch = tube(shape, (24, 24, 24), (38, 30, 36), 1.8)
        self.label = self.trunk | self.branch
        self.cut = self.label.copy()
        self.cut[:, :, 12:14] = False  # below the branch point: splits the trunk in two
        self.no_branch = self.trunk.copy()
        self.blob = ball(shape, (8, 38, 10), 3.0)
        self.extra_blob = self.label | self.blob

    def prob(self, mask: np.ndarray, seed: int = 0) -> np.ndarray:
        """A float32 probability map whose 0.5-threshold is exactly ``mask``."""
        rng = np.random.default_rng(seed)
        p = np.where(mask, rng.uniform(0.55, 1.0, mask.shape), rng.uniform(0.0, 0.45, mask.shape))
        return p.astype(np.float32)


def tube_tree(shape: tuple[int, int, int] = (56, 48, 40)) -> np.ndarray:
    """A trunk along z that splits into two curved branches; radius about 2.5 voxels."""
    grid = np.indices(shape, dtype=np.float64)
    out = np.zeros(shape, dtype=bool)
    x0, y0 = shape[0] / 2, shape[1] / 2
    zs = np.arange(shape[2], dtype=np.float64)
    split = shape[2] * 0.45
    for sign in (-1.0, 1.0):
        # centre line: straight below the split, bending by sign * 0.02 * dz^2 above it
        cx = x0 + sign * 0.02 * np.clip(zs - split, 0, None) ** 2
        cy = y0 + 0.15 * (zs - split).clip(0)
        for z, (x, y) in enumerate(zip(cx, cy, strict=True)):
            if 2 <= z < shape[2] - 2:
                out[..., z] |= (grid[0, ..., z] - x) ** 2 + (grid[1, ..., z] - y) ** 2 <= 2.5**2
    return out


# ----------------------------------------------------------------------------- CTA-like scans
def tube_phantom(
    shape: tuple[int, int, int] = (48, 40, 32), seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """An int16 HU volume with a few bright tubes along Z and one oblique, and its uint8 label."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    label = np.zeros(shape, dtype=bool)
    for cx, cy, r in ((0.3, 0.3, 2.5), (0.7, 0.4, 2.0), (0.5, 0.75, 3.0)):
        label |= (x - cx * shape[0]) ** 2 + (y - cy * shape[1]) ** 2 <= r**2
    # an oblique tube, so that the label is not symmetric under any flip
    t = z / shape[2]
    label |= (x - (0.15 + 0.6 * t) * shape[0]) ** 2 + (y - 0.55 * shape[1]) ** 2 <= 2.0**2
    image = np.where(label, 350.0, -50.0) + rng.normal(0, 25, shape)
    image[: shape[0] // 6] = -1000.0  # air on one side: an asymmetric intensity histogram
    return image.astype(np.int16), label.astype(np.uint8)


def hu_image(label: np.ndarray, seed: int = 0) -> np.ndarray:
    """An int16 HU image around a label: soft tissue, some air, a contrast-filled lumen."""
    rng = np.random.default_rng(seed)
    image = rng.normal(40, 20, label.shape).astype(np.int16)
    image[:4] = -1000
    image[label.astype(bool)] = 400
    return image


# ----------------------------------------------------------------------------- files
def save_nifti(
    path: str | Path,
    data: np.ndarray,
    affine: np.ndarray = FLIPPED_AFFINE,
    qform_code: int = 1,
    sform_code: int = 2,
) -> Path:
    """Write ``data`` as NIfTI with the given affine and qform/sform codes (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = nib.Nifti1Image(data, affine)
    image.set_qform(affine, code=qform_code)
    image.set_sform(affine, code=sform_code)
    nib.save(image, str(path))
    return path


@dataclass
class CaseFiles:
    """The files of one case in the ImageCAS layout: ``<id>.img.nii.gz``, ``<id>.label.nii.gz``."""

    image: Path
    label: Path


def write_case(
    folder: str | Path,
    case_id: str,
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray = FLIPPED_AFFINE,
) -> CaseFiles:
    """Write one case into ``folder`` in the ImageCAS layout, both files on ``affine``."""
    folder = Path(folder)
    return CaseFiles(
        image=save_nifti(folder / f"{case_id}.img.nii.gz", image, affine),
        label=save_nifti(folder / f"{case_id}.label.nii.gz", label, affine),
    )


def empty_files(root: Path, *names: str) -> list[Path]:
    """Empty files at ``root/<name>``, folders made (for tests of ids and discovery, which look
    at names only)."""
    paths = []
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
        paths.append(path)
    return paths


# --- DICOM CT series (pydicom), for the DICOM reader, writer and infer tests ---

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
AXIAL = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0))
# rows along -x and columns along +z... an oblique one: rotated about z by 30 degrees and flipped
_C, _S = np.cos(np.pi / 6), np.sin(np.pi / 6)
OBLIQUE = ((-_C, -_S, 0.0), (-_S, _C, 0.0))
SPACING = (0.7, 0.6, 1.25)  # along i (columns), j (rows), k (slices)
ORIGIN = (-20.0, 30.0, -100.0)


def lps_affine(orientation=AXIAL, spacing=SPACING, origin=ORIGIN) -> np.ndarray:
    row, col = np.asarray(orientation[0]), np.asarray(orientation[1])
    affine = np.eye(4)
    affine[:3, 0] = row * spacing[0]
    affine[:3, 1] = col * spacing[1]
    affine[:3, 2] = np.cross(row, col) * spacing[2]
    affine[:3, 3] = origin
    return affine


def series_affine(orientation=AXIAL, tilt: float = 0.0) -> np.ndarray:
    """The voxel-to-LPS matrix of a series :func:`write_series` writes: :func:`lps_affine`, its
    slices shifted along the column direction by ``tan(tilt)`` times the slice step (a gantry
    tilted by ``tilt`` degrees: the stack is not along the slices' normal)."""
    affine = lps_affine(orientation)
    affine[:3, 2] += np.asarray(orientation[1]) * SPACING[2] * np.tan(np.radians(tilt))
    return affine


def analytic_image(
    affine: np.ndarray, shape: tuple[int, int, int], centre=(-14.0, 34.0, -93.0), radius=4.0
) -> np.ndarray:
    """HU of an analytic phantom defined in LPS mm at each voxel of ``affine``: a linear ramp
    (:func:`analytic_hu`), which linear interpolation reproduces exactly, plus 400 HU inside a
    ball (``centre``, ``radius`` mm); int16."""
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in shape), indexing="ij"), axis=-1)
    world = grid @ affine[:3, :3].T + affine[:3, 3]
    return np.rint(analytic_hu(world, centre, radius)).astype(np.int16)


def analytic_hu(world: np.ndarray, centre=(-14.0, 34.0, -93.0), radius=4.0) -> np.ndarray:
    """The analytic phantom's HU at LPS points ``(..., 3)`` (see :func:`analytic_image`)."""
    ramp = 3.0 * world[..., 0] - 4.0 * world[..., 1] + 5.0 * world[..., 2] + 700.0
    inside = np.linalg.norm(world - np.asarray(centre), axis=-1) <= radius
    return ramp + 400.0 * inside


def write_series(
    folder: Path,
    image: np.ndarray,
    *,
    orientation=AXIAL,
    study: str | None = None,
    series: str | None = None,
    number: int = 1,
    modality: str = "CT",
    skip: tuple[int, ...] = (),
    phase: float | None = None,
    trigger_time: float | None = None,
    prefix: str = "",
    image_type: tuple[str, ...] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    patient: str = "P001",
    date: str = "20260101",
    tilt: float = 0.0,
    transfer_syntax: str | None = None,
) -> str:
    """``image`` (X, Y, Z) in HU as a CT Image Storage series written with pydicom, one file per
    slice (in reverse order on disk); returns the SeriesInstanceUID. Voxel ``(i, j, k)`` lies at
    ``series_affine(orientation, tilt) @ (i, j, k, 1)`` in LPS. ``transfer_syntax``: a
    compressed one (RLE Lossless, JPEG 2000 Lossless, ...) pydicom encodes the slices in."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study = study or "1.2.826.0.1.3680043.8.498.1"
    series = series or generate_uid()
    # one frame of reference per study, derived from its UID so every series of it shares one
    frame_of_reference = generate_uid(entropy_srcs=[study, "frame of reference"])
    affine = series_affine(orientation, tilt)
    for k in reversed(range(image.shape[2])):
        if k in skip:
            continue
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.PatientName = "Phantom^Coronary"
        ds.PatientID = patient
        ds.PatientBirthDate = "19600101"
        ds.PatientSex = "O"
        ds.StudyInstanceUID = study
        ds.StudyID = "1"
        ds.StudyDate, ds.StudyTime = date, "080000"
        ds.SeriesDate, ds.SeriesTime = "20260101", "080500"
        ds.ContentDate, ds.ContentTime = "20260101", "080500"
        ds.AccessionNumber = "A0001"
        ds.ReferringPhysicianName = ""
        ds.Manufacturer = "vesselfm phantom"
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.BodyPartExamined = "HEART"
        ds.KVP = 100
        ds.WindowCenter, ds.WindowWidth = 300, 800
        ds.SeriesInstanceUID = series
        ds.SeriesNumber = number
        ds.SeriesDescription = f"series {number}"
        ds.Modality = modality
        ds.ImageType = list(image_type)
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*orientation[0], *orientation[1])]
        ds.ImagePositionPatient = [f"{v:.4f}" for v in (affine @ [0, 0, k, 1])[:3]]
        ds.SliceLocation = f"{(affine @ [0, 0, k, 1])[2]:.4f}"
        ds.PixelSpacing = [SPACING[1], SPACING[0]]  # between rows, between columns
        ds.SliceThickness = SPACING[2]
        ds.RescaleSlope = 1
        ds.RescaleIntercept = -1024
        if phase is not None:
            ds.NominalPercentageOfCardiacPhase = phase
        if trigger_time is not None:
            ds.TriggerTime = trigger_time
        ds.Rows, ds.Columns = image.shape[1], image.shape[0]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
        ds.PixelRepresentation = 1
        stored = (image[:, :, k].astype(np.int32) + 1024).astype(np.int16)
        ds.PixelData = np.ascontiguousarray(stored.T).tobytes()  # (rows, columns)
        if transfer_syntax is not None:
            ds.compress(transfer_syntax)
        ds.save_as(folder / f"{prefix}{number}_{k:03d}.dcm", enforce_file_format=True)
    return series
