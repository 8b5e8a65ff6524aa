"""NIfTI in and out for inference: validated reading, geometry-exact atomic writing, input discovery.

Case ids are computed here, for ``infer`` and ``evaluate`` alike: :func:`case_id` from a file
name, :func:`unique_case_ids` over a run's files (ids that clash get their parent folder's name
prefixed, ``<parent>_<name>``, repeated upwards until unique), :func:`find_labels` and
:func:`match_label` to pair labels with cases by the same rule.

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
from collections import defaultdict
from collections.abc import Callable, Container, Iterable, Mapping, Sequence
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
# a label's name: <case>.label.nii.gz, <case>_label.nii.gz or <case>.nii.gz, preferred in this order
# when one folder holds several for a case (the plain one is then the image)
LABEL_ROLES = (".label", "_label")
PRED_SUFFIX = "_pred.nii.gz"
PROB_SUFFIX = "_prob.nii.gz"
MESH_SUFFIX = "_pred.stl"
# what vesselfm writes per case: <case>_pred.<ext>, <case>_prob.<ext>; never read as a scan or label
OUTPUT_ROLES = ("_pred", "_prob")
GZIP_MAGIC = b"\x1f\x8b"


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


def _strip_nifti(name: str) -> str:
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def is_output_name(path: str | os.PathLike[str]) -> bool:
    """Whether the file name is one of vesselfm's per-case outputs: ``<case>_pred.nii.gz``,
    ``<case>_prob.nii.gz`` (or ``.nii``). Such files are never taken as scans or labels."""
    name = Path(path).name
    stem = _strip_nifti(name)
    return stem != name and any(
        stem.endswith(role) and len(stem) > len(role) for role in OUTPUT_ROLES
    )


def _is_label_file(path: Path) -> bool:
    return path.name.lower().endswith(tuple(f".label{s}" for s in NIFTI_SUFFIXES))


def _folder_names(path: Path) -> list[str]:
    """The names of ``path``'s folders, nearest first (``/d/pat/a/ct.nii.gz`` → a, pat, d)."""
    absolute = Path(os.path.normpath(os.path.abspath(path)))
    return [parent.name for parent in absolute.parents if parent.name]


def _id_at_depth(base: str, folders: Sequence[str], depth: int) -> str:
    return "_".join([*reversed(folders[:depth]), base])


def unique_case_ids(
    paths: Sequence[str | os.PathLike[str]],
    id_of: Callable[[Path], str] = case_id,
    key: str = "input",
) -> dict[Path, str]:
    """The case id of every file of a run, unique within the run.

    Files whose ids (``id_of``) clash get their parent folder's name prefixed,
    ``<parent>_<id>``; where that still clashes, the next folder up, and so on
    (``pat/a/ct.nii.gz``, ``pat/b/ct.nii.gz`` → ``a_ct``, ``b_ct``; ``x/a/ct.nii.gz``,
    ``y/a/ct.nii.gz`` → ``x_a_ct``, ``y_a_ct``). Files whose ids do not clash keep them.

    Args:
        paths: the run's files (distinct paths).
        id_of: the id of one file from its name (:func:`case_id` for scans).
        key: the config key named in the error.

    Returns:
        ``{path: id}`` for every path, in the order given.

    Raises:
        UserError: files whose folders cannot tell them apart (``1.img.nii.gz`` and ``1.nii.gz``
            in one folder), listing them.
    """
    paths = [Path(p) for p in paths]
    base = {p: id_of(p) for p in paths}
    folders = {p: _folder_names(p) for p in paths}
    depth = dict.fromkeys(paths, 0)
    while True:
        ids = {p: _id_at_depth(base[p], folders[p], depth[p]) for p in paths}
        groups: dict[str, list[Path]] = defaultdict(list)
        for p, value in ids.items():
            groups[value].append(p)
        clashes = [group for group in groups.values() if len(group) > 1]
        if not clashes:
            return ids
        deeper = False
        for group in clashes:
            for p in group:
                if depth[p] < len(folders[p]):
                    depth[p] += 1
                    deeper = True
        if not deeper:
            shown = "; ".join(
                f"{base[group[0]]!r}: " + ", ".join(str(p) for p in group) for group in clashes[:3]
            )
            raise UserError(
                f"{key}: files map to the same case id and their folders do not tell them apart "
                f"({shown}); rename one of each, or leave one out of {key}="
            )


def renamed_cases(ids: Mapping[Path, str], id_of: Callable[[Path], str] = case_id) -> list[str]:
    """``"<file> -> <id>"`` for each file whose id :func:`unique_case_ids` prefixed."""
    return [f"{p} -> {value}" for p, value in ids.items() if value != id_of(p)]


def _discover(spec: str, key: str, what: str) -> tuple[list[Path], str]:
    """NIfTI files named by a file, a folder (not recursive, hidden files left out) or a glob."""
    path = Path(spec).expanduser()
    if path.is_file():
        if not is_nifti(path):
            raise UserError(
                f"{key}={spec}: expected a .nii or .nii.gz file (.mha/.nrrd are not supported; "
                f"convert them to NIfTI first)"
            )
        return [path], "file"
    if path.is_dir():
        found = [
            p for p in path.iterdir() if p.is_file() and is_nifti(p) and not p.name.startswith(".")
        ]
        return found, "folder"
    if glob.has_magic(spec):
        found = [
            Path(p)
            for p in glob.glob(os.path.expanduser(spec))
            if Path(p).is_file() and is_nifti(p)
        ]
        return found, "pattern"
    raise UserError(f"{key}={spec}: no such file or folder; give {what}")


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder)
    except OSError:
        return False


def _static_root(spec: str) -> Path:
    """The folder a folder or glob ``input=`` reads from: the deepest one without wildcards."""
    parts = []
    for part in Path(spec).expanduser().parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def find_inputs(
    spec: str | os.PathLike[str], output_dir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """The NIfTI files named by ``input=``: a file, a folder (not recursive) or a glob pattern.

    In a folder or glob, ImageCAS label files (``*.label.nii.gz``) are left out, so a raw
    ImageCAS folder can be given as is, and so are vesselfm's own outputs: every file inside
    ``output_dir`` and every ``<case>_pred``/``<case>_prob`` NIfTI (so that a rerun with the
    output folder inside the input never segments its own predictions).

    Returns:
        Sorted, de-duplicated paths.

    Raises:
        UserError: nothing matches, the file is not a NIfTI or is one of our outputs, or the
            folder holds no NIfTI scan.
    """
    spec = str(spec)
    found, kind = _discover(spec, "input", "a NIfTI file, a folder or a glob")
    if kind == "file":
        if is_output_name(found[0]):
            raise UserError(
                f"input={spec}: <case>_pred/<case>_prob files are vesselfm's outputs, not scans; "
                f"give the scan (rename the file if it really is one)"
            )
        return found
    named_ours = [p for p in found if is_output_name(p)]
    if named_ours:
        log.info("input=%s: left out %d <case>_pred/_prob file(s)", spec, len(named_ours))
    found = [p for p in found if not is_output_name(p)]
    # an output folder inside the input (vesselfm_pred/ under a glob's folder) is not read at
    # all; one that is the input folder itself (output= input=) holds scans too
    if output_dir is not None:
        outputs = Path(output_dir).expanduser().resolve()
        root = _static_root(spec).resolve()
        if outputs != root and outputs.is_relative_to(root):
            inside = [p for p in found if _inside(p, outputs)]
            if inside:
                log.warning(
                    "input=%s: left out %d file(s) inside output=%s (e.g. %s): outputs are never "
                    "inputs; choose an output= outside the input to segment them",
                    spec,
                    len(inside),
                    output_dir,
                    inside[0].name,
                )
            left_out = set(inside)
            found = [p for p in found if p not in left_out]
    scans = sorted({p for p in found if not _is_label_file(p)})
    if not scans:
        raise UserError(
            f"input={spec}: the {kind} holds no .nii/.nii.gz scans; point input= at NIfTI files"
        )
    if len(scans) < len(found):
        log.info("input=%s: left out %d *.label.nii(.gz) files", spec, len(found) - len(scans))
    return scans


def label_case_id(path: str | os.PathLike[str]) -> str:
    """The case id of a label file: ``1.label.nii.gz``, ``1_label.nii.gz``, ``1.nii.gz`` → ``1``."""
    stem = _strip_nifti(Path(path).name)
    for role in LABEL_ROLES:
        if stem.endswith(role) and len(stem) > len(role):
            return stem[: -len(role)]
    return stem


def _label_rank(path: Path) -> int:
    stem = _strip_nifti(path.name)
    for rank, role in enumerate(LABEL_ROLES):
        if stem.endswith(role) and len(stem) > len(role):
            return rank
    return len(LABEL_ROLES)


def label_files(
    paths: Iterable[str | os.PathLike[str]],
    exclude: Iterable[str | os.PathLike[str]] = (),
    key: str = "label",
) -> dict[str, Path]:
    """Label files by case id (:func:`unique_case_ids` over :func:`label_case_id`).

    Scans (``*.img.nii.gz``, the ``exclude`` files) and our outputs are not labels. Where one
    folder holds several files of a case, ``<case>.label`` wins over ``<case>_label`` over
    ``<case>`` (the plain one is then the case's image).
    """
    excluded = {Path(p).resolve() for p in exclude}
    best: dict[tuple[Path, str], Path] = {}
    for p in sorted(Path(q) for q in paths):
        stem = _strip_nifti(p.name)
        if stem.endswith(".img") or is_output_name(p) or p.resolve() in excluded:
            continue
        slot = (p.parent, label_case_id(p))
        if slot not in best or _label_rank(p) < _label_rank(best[slot]):
            best[slot] = p
    ids = unique_case_ids(list(best.values()), id_of=label_case_id, key=key)
    return {value: p for p, value in ids.items()}


def find_labels(
    spec: str | os.PathLike[str],
    key: str = "label",
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> dict[str, Path]:
    """The label files named by ``<key>=`` (a folder, not recursive, or a glob), by case id.

    Ids follow the rule of :func:`unique_case_ids`, so per-patient folders
    (``gt='pat/*/ct.label.nii.gz'``) pair with the predictions ``infer`` wrote for
    ``input='pat/*/ct.nii.gz'``; see :func:`match_label`.

    Raises:
        UserError: no such folder, or no label in it.
    """
    spec = str(spec)
    found, _ = _discover(spec, key, "an existing folder of NIfTI files (or a quoted glob)")
    labels = label_files(found, exclude=exclude, key=key)
    if not labels:
        raise UserError(
            f"{key}={spec}: no NIfTI labels found; expected <case>.label.nii.gz or "
            "<case>.nii.gz files"
        )
    return labels


def match_label(case: str, labels: Mapping[str, Path], taken: Container[Path] = ()) -> Path | None:
    """The label of ``case``: the one with that id, else the only one (not in ``taken``, the
    labels other cases paired with by id) whose id with its folder names prefixed (``a_ct`` for
    ``pat/a/ct.label.nii.gz``) is ``case``: the labels of a subset of the patients clash less
    than the scans did."""
    if case in labels:
        return labels[case]
    candidates = []
    for path in labels.values():
        if path in taken:
            continue
        base, folders = label_case_id(path), _folder_names(path)
        if any(_id_at_depth(base, folders, d) == case for d in range(1, len(folders) + 1)):
            candidates.append(path)
    return candidates[0] if len(candidates) == 1 else None


def gzip_named_nii(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is named ``.nii`` but holds gzip-compressed data (a ``.nii.gz``)."""
    path = Path(path)
    if not path.name.lower().endswith(".nii"):
        return False
    try:
        with open(path, "rb") as fh:
            return fh.read(2) == GZIP_MAGIC
    except OSError:
        return False


def load_scan(path: str | os.PathLike[str]) -> Scan:
    """Read and validate a 3D NIfTI scan.

    A trailing singleton 4th dimension ``(X, Y, Z, 1)`` is squeezed.

    Raises:
        UserError: one line naming the file when it is not a NIfTI, is truncated or unreadable,
            is not 3D, or holds non-finite voxels.
    """
    path = Path(path)
    if gzip_named_nii(path):
        raise UserError(
            f"{path}: the file is gzip-compressed but named .nii; rename it to {path.name}.gz"
        )
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


def check_output_dir(
    path: str | os.PathLike[str],
    key: str = "output",
    files: Sequence[str] = (),
    overwrite: bool = False,
) -> Path:
    """Check, without writing anything, that ``path`` can be the output folder and that the
    ``files`` to be written there may be (re)written.

    Raises:
        UserError: one line naming ``key``: ``path`` (or the nearest existing folder above it)
            is a file or not writable, or one of ``files`` exists and was not written by vesselfm
            (unless ``overwrite``).
    """
    from vesselfm.utils.outputs import check_overwrite

    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise UserError(f"{key}={path} is a file, not a folder; choose another {key}=")
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UserError(
            f"{key}={path}: {existing} is a file, so the folder cannot be created; "
            f"choose another {key}="
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{key}={path} is not writable ({existing}); choose another {key}=")
    check_overwrite([path / name for name in files], overwrite, key)
    return path


def check_case_outputs(
    targets: Sequence[Path], overwrite: bool, source: str | os.PathLike[str] | None = None
) -> bool:
    """Checks on one case's outputs, before it is predicted; ``True`` when it is done already.

    Every name must fit the file system. Without ``overwrite``, an existing output that vesselfm
    did not write (not in the folder's record, or changed since) is refused, and so is one that
    the record says was made from another input than ``source`` (two inputs with one case id
    in runs of their own); a case whose outputs all exist and are ours is done (resume).

    Raises:
        UserError: a name too long, or an output that is not ours or not this input's, naming
            the file.
    """
    from vesselfm.utils.io import check_name_length
    from vesselfm.utils.outputs import check_overwrite, recorded_source, source_identity

    for target in targets:
        try:
            check_name_length(target, "output")
        except ValueError as err:
            raise UserError(str(err)) from err
    if overwrite:
        return False
    existing = [t for t in targets if t.exists()]
    check_overwrite(existing, overwrite=False, key="output")
    if source is not None:
        this = source_identity(source)
        for target in existing:
            made_from = recorded_source(target)
            if made_from is not None and made_from != this:
                raise UserError(
                    f"{target} was made from {made_from['path']}, not from {this['path']} (or "
                    "that file changed since); two inputs with one case id? choose another "
                    "output=, or pass overwrite=true to redo it from this input"
                )
    return len(existing) == len(targets)
