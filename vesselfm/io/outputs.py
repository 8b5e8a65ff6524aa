"""Output names (``<case>_pred.nii.gz``/``.nrrd``/``.mha``/``.seg.nrrd``/``.dcm`` (DICOM-SEG),
``<case>_prob.<same>`` (NIfTI beside a DICOM-SEG), ``<case>_pred.stl``), finding them again, and
the checks that an output folder and a case's outputs may be written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

from vesselfm.io.names import ROLE_TAGS, case_id, check_case_id, is_volume_file, role_of
from vesselfm.io.volume import (
    OUTPUT_FORMATS,
    check_output_format,
    error_reason,
    probability_format,
)
from vesselfm.utils.errors import UserError

#: the extension of the volumes vesselfm writes in NIfTI (the default output format)
OUTPUT_EXTENSION = ".nii.gz"
MESH_EXTENSION = ".stl"


def output_name(case: str, role: str, ext: str = OUTPUT_EXTENSION) -> str:
    """The file name of a case's output: ``output_name("1", "prediction")`` → ``1_pred.nii.gz``."""
    if role not in ("prediction", "probability"):
        raise ValueError(f"role must be one of ['prediction', 'probability'], got {role!r}")
    return f"{case}{ROLE_TAGS[role][0]}{ext}"


def output_paths(
    output_dir: str | os.PathLike[str],
    case: str,
    output_format: str = "nifti",
    input_format: str | None = None,
) -> dict[str, Path]:
    """``{"pred", "prob", "mesh"}`` paths of a case's outputs in ``output_dir``, the volumes in
    ``output_format`` (one of :data:`~vesselfm.io.volume.OUTPUT_FORMATS`: ``<case>_pred.nii.gz``,
    ``.nrrd``, ``.mha``, ``.seg.nrrd`` or ``.dcm``). A ``seg.nrrd`` or a DICOM-SEG holds the mask
    only: the probabilities beside it are ``<case>_prob.nii.gz`` for an ``input_format`` ``nifti``
    or ``dicom`` (or ``None``), else ``<case>_prob.nrrd``
    (:func:`~vesselfm.io.volume.probability_format`).

    Raises:
        ValueError: an unknown ``output_format``, listing the known ones.
    """
    output_dir = Path(output_dir)
    fmt = check_output_format(output_format) or "nifti"
    ext = OUTPUT_FORMATS[fmt]
    prob_ext = OUTPUT_FORMATS[probability_format(fmt, input_format)]
    return {
        "pred": output_dir / output_name(case, "prediction", ext),
        "prob": output_dir / output_name(case, "probability", prob_ext),
        "mesh": output_dir / output_name(case, "prediction", MESH_EXTENSION),
    }


def find_outputs(folder: str | os.PathLike[str], role: str, key: str) -> dict[str, Path]:
    """``{case: file}`` of the ``<case>_pred``/``<case>_prob`` volume files in ``folder`` (not
    recursive, hidden files left out), our DICOM-SEGs (``<case>_pred.dcm``) and Slicer
    segmentations (``<case>_pred.seg.nrrd``) among them. Where a case has several (one run
    with ``output_format=[dicom_seg,seg.nrrd]``), the last by name is taken: they hold one mask.

    Raises:
        UserError: a file whose name gives a refused id (``_pred.nii.gz``).
    """
    found: dict[str, Path] = {}
    for p in sorted(Path(folder).iterdir()):
        if p.is_file() and not p.name.startswith(".") and is_volume_file(p) and role_of(p) == role:
            # sorted, so that <case>_pred.nii.gz wins over <case>_pred.nii
            found[check_case_id(p, case_id(p, role), key)] = p  # type: ignore[arg-type]
    return found


def ensure_writable_dir(path: str | os.PathLike[str], key: str = "output") -> Path:
    """Create ``path`` if needed and check that files can be created in it.

    Raises:
        UserError: naming ``key`` when the folder cannot be created or written.
    """
    path = Path(path).expanduser()
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".vesselfm-write-test-"):
            pass
    except OSError as err:
        raise UserError(
            f"{key}={path} is not a writable folder ({error_reason(err)}); choose another {key}="
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
