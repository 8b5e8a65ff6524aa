"""Which files a key names: scans for ``input=``, labels for ``label=``/``gt=``.

A key names a file, a folder (not recursive, hidden files left out) or a glob pattern. Scans
and labels are told apart by the role tags of :mod:`vesselfm.io.names`; vesselfm's own outputs
(``<case>_pred``, ``<case>_prob``) are never taken as either.
"""

from __future__ import annotations

import glob
import logging
import os
from collections.abc import Container, Iterable, Mapping
from pathlib import Path

from vesselfm.io.names import (
    EXTENSIONS,
    OUTPUT_ROLES,
    ROLE_TAGS,
    case_id,
    is_volume_file,
    prefixed_ids,
    role_of,
    unique_case_ids,
)
from vesselfm.utils.errors import UserError

log = logging.getLogger(__name__)

_ALLOWED = ", ".join(EXTENSIONS)


def is_output_name(path: str | os.PathLike[str]) -> bool:
    """Whether the file is named as one of vesselfm's per-case outputs (``<case>_pred.nii.gz``,
    ``<case>_prob.nii.gz``). Such files are never taken as scans or labels."""
    return is_volume_file(path) and role_of(path) in OUTPUT_ROLES


def list_volumes(spec: str, key: str, what: str) -> tuple[list[Path], str]:
    """The volume files named by a file, a folder (not recursive, hidden files left out) or a
    glob, and which of the three ``spec`` is.

    Raises:
        UserError: ``spec`` is a file of another format, or names nothing.
    """
    path = Path(spec).expanduser()
    if path.is_file():
        if not is_volume_file(path):
            raise UserError(
                f"{key}={spec}: expected a volume file ({_ALLOWED}; a .mhd, not its data file)"
            )
        return [path], "file"
    if path.is_dir():
        found = [
            p
            for p in path.iterdir()
            if p.is_file() and is_volume_file(p) and not p.name.startswith(".")
        ]
        return found, "folder"
    if glob.has_magic(spec):
        found = [
            Path(p)
            for p in glob.glob(os.path.expanduser(spec))
            if Path(p).is_file() and is_volume_file(p)
        ]
        return found, "pattern"
    raise UserError(f"{key}={spec}: no such file or folder; give {what}")


def _inside(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder)
    except OSError:
        return False


def static_root(spec: str | os.PathLike[str]) -> Path:
    """The folder a folder or glob reads from: the deepest one without wildcards."""
    parts = []
    for part in Path(spec).expanduser().parts:
        if glob.has_magic(part):
            break
        parts.append(part)
    return Path(*parts) if parts else Path(".")


def _is_segmentation(path: Path) -> bool:
    return path.name.lower().endswith(".seg.nrrd")


def _dicom_input(path: Path) -> Path | None:
    """``path`` when it is one DICOM case: a ``.zip`` file, or a folder that holds no volume
    files (a folder of NIfTI/NRRD files is many cases) and holds DICOM files (recursively)."""
    if path.is_file() and path.name.lower().endswith(".zip"):
        return path
    if not path.is_dir():
        return None
    if any(p.is_file() and is_volume_file(p) for p in path.iterdir()):
        return None
    from vesselfm.io.dicom import holds_dicom

    return path if holds_dicom(path) else None


def _dicom_matches(spec: str) -> list[Path]:
    """The DICOM cases of a glob's matches: its folders that are DICOM inputs and its ``.zip``
    files that hold DICOM files, one case per study (:func:`vesselfm.io.dicom.cases`)."""
    from vesselfm.io.dicom import cases, zip_holds_dicom

    found: list[Path] = []
    for match in sorted(glob.glob(os.path.expanduser(spec))):
        path = Path(match)
        if path.is_file() and not (path.name.lower().endswith(".zip") and zip_holds_dicom(path)):
            continue
        if _dicom_input(path) is not None:
            found.extend(cases(path))
    return found


def find_inputs(
    spec: str | os.PathLike[str], output_dir: str | os.PathLike[str] | None = None
) -> list[Path]:
    """The scans named by ``input=``: a file, a folder (not recursive) or a glob pattern.

    A DICOM folder (one holding no volume files and DICOM files, searched recursively) or
    ``.zip`` is one case per study: itself for one study, else one study reference
    ``<folder>::<study key>`` per study (:func:`vesselfm.io.dicom.cases`; case id
    ``<folder>_<PatientID>_<StudyDate>``), never one case for the whole folder. A glob's
    matches may be such folders and zips too (``input='/data/pat*/dicom'``).

    In a folder or glob, label files (``*.label.nii.gz``, ``*.coronary.nii.gz``, Slicer
    segmentations ``*.seg.nrrd``) are left out,
    so a raw ImageCAS folder can be given as is, and so are vesselfm's own outputs: every file
    inside ``output_dir`` and every ``<case>_pred``/``<case>_prob`` file (so that a rerun with
    the output folder inside the input never segments its own predictions).

    Returns:
        Sorted, de-duplicated paths.

    Raises:
        UserError: nothing matches, the file is not a volume file or is one of our outputs, or
            the folder holds no scan.
    """
    spec = str(spec)
    dicom = _dicom_input(Path(spec).expanduser())
    if dicom is not None:
        from vesselfm.io.dicom import cases

        studies = cases(dicom)
        if len(studies) == 1:
            log.info("input=%s: a DICOM study, one case (%s)", spec, case_id(dicom))
        else:
            log.info(
                "input=%s: a DICOM cohort of %d studies, one case each (%s)",
                spec,
                len(studies),
                ", ".join(case_id(p) for p in studies),
            )
        return studies
    single = Path(spec).expanduser()
    if single.is_file() and not is_volume_file(single):
        from vesselfm.io.dicom import is_dicom_file

        if is_dicom_file(single):
            raise UserError(
                f"input={spec}: one DICOM file (a single 2D image or object), not a 3D scan; "
                "give the folder or .zip that holds the whole CT series"
            )
    found, kind = list_volumes(spec, "input", "a volume file, a folder or a glob")
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
        root = static_root(spec).resolve()
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
    # labels, and segmentations by their format (a Slicer .seg.nrrd), are not scans
    scans = sorted({p for p in found if role_of(p) != "label" and not _is_segmentation(p)})
    studies = _dicom_matches(spec) if kind == "pattern" else []
    if studies:
        log.info("input=%s: %d DICOM case(s) among the matches", spec, len(studies))
        return [*scans, *studies]
    if not scans:
        raise UserError(
            f"input={spec}: the {kind} holds no scans ({_ALLOWED}, or DICOM files); point "
            "input= at volume files or a DICOM folder or .zip"
        )
    if len(scans) < len(found):
        log.info(
            "input=%s: left out %d label file(s) (*.label, *.coronary, *.seg.nrrd)",
            spec,
            len(found) - len(scans),
        )
    return scans


def _label_rank(path: Path) -> int:
    """``<case>.label`` before ``<case>.coronary`` before ``<case>`` (then the case's image)."""
    stem_tags = ROLE_TAGS["label"]
    lower = path.name.lower()
    for rank, tag in enumerate(stem_tags):
        if any(lower.endswith(f"{tag}{ext}") for ext in EXTENSIONS):
            return rank
    return len(stem_tags)


def label_files(
    paths: Iterable[str | os.PathLike[str]],
    exclude: Iterable[str | os.PathLike[str]] = (),
    key: str = "label",
) -> dict[str, Path]:
    """Label files by case id (:func:`~vesselfm.io.names.unique_case_ids` in the label role).

    Scans (``*.img``, ``*_0000``, the ``exclude`` files) and our outputs are not labels. Where
    one folder holds several files of a case, ``<case>.label`` wins over ``<case>.coronary``
    over ``<case>`` (the plain one is then the case's image).
    """
    excluded = {Path(p).resolve() for p in exclude}
    best: dict[tuple[Path, str], Path] = {}
    for p in sorted(Path(q) for q in paths):
        if role_of(p) not in (None, "label") or p.resolve() in excluded:
            continue
        slot = (p.parent, case_id(p, "label"))
        if slot not in best or _label_rank(p) < _label_rank(best[slot]):
            best[slot] = p
    ids = unique_case_ids(list(best.values()), role="label", key=key)
    return {value: p for p, value in ids.items()}


def find_labels(
    spec: str | os.PathLike[str],
    key: str = "label",
    exclude: Iterable[str | os.PathLike[str]] = (),
) -> dict[str, Path]:
    """The label files named by ``<key>=`` (a folder, not recursive, or a glob), by case id.

    Ids follow the rule of :func:`~vesselfm.io.names.unique_case_ids`, so per-patient folders
    (``gt='pat/*/ct.label.nii.gz'``) pair with the predictions ``infer`` wrote for
    ``input='pat/*/ct.nii.gz'``; see :func:`match_label`.

    Raises:
        UserError: no such folder, or no label in it.
    """
    spec = str(spec)
    found, _ = list_volumes(spec, key, "an existing folder of volume files (or a quoted glob)")
    labels = label_files(found, exclude=exclude, key=key)
    if not labels:
        raise UserError(
            f"{key}={spec}: no labels found; expected <case>.label.nii.gz, "
            "<case>.coronary.nii.gz or <case>.nii.gz files (or .nii, .nrrd, .mha, .mhd)"
        )
    return labels


def match_label(case: str, labels: Mapping[str, Path], taken: Container[Path] = ()) -> Path | None:
    """The label of ``case``: the one with that id, else the only one (not in ``taken``, the
    labels other cases paired with by id) whose id with its folder names prefixed (``a_ct`` for
    ``pat/a/ct.label.nii.gz``) is ``case``: the labels of a subset of the patients clash less
    than the scans did."""
    if case in labels:
        return labels[case]
    candidates = [
        path
        for path in labels.values()
        if path not in taken and case in prefixed_ids(path, case_id(path, "label"))
    ]
    return candidates[0] if len(candidates) == 1 else None


def pair_labels(
    cases: Iterable[str], labels: Mapping[str, Path]
) -> tuple[dict[str, Path | None], list[str]]:
    """Pair case ids with label files, the one rule ``infer label=`` and ``evaluate`` share.

    By id first; then each case left may take the one label (not paired by id, nor by an
    earlier case) whose id with its folder names prefixed is the case's (:func:`match_label`).

    Args:
        cases: case ids, in the order ties are settled (``evaluate``: natural order).
        labels: label files by case id (:func:`find_labels`).

    Returns:
        ``(pairs, unpaired)``: every case's label (``None`` where it has none), and the ids of
        the labels no case paired with, in ``labels``' order.
    """
    cases = list(cases)
    taken = {labels[case] for case in cases if case in labels}
    pairs: dict[str, Path | None] = {}
    for case in cases:
        label = match_label(case, labels, taken=taken)
        if label is not None:
            taken.add(label)
        pairs[case] = label
    return pairs, [case for case, path in labels.items() if path not in taken]
