"""Case ids from file names, per role: the one rule every entrypoint and library module uses.

A volume file's name is ``<stem><ext>`` with ``<ext>`` one of :data:`EXTENSIONS`, matched
case-insensitively (``S.NII.GZ`` is a NIfTI). The stem may end in a role tag; the id is the stem
without it:

================  ==========================================  ===============================
role              names                                       examples
================  ==========================================  ===============================
``image``         ``<id>.img<ext>``, ``<id>_0000<ext>``,      ``1.img.nii.gz`` → ``1``,
                  ``<id><ext>``                               ``x_0000.nii.gz`` → ``x``,
                                                              ``ct_0001.nii.gz`` → ``ct_0001``
``label``         ``<id>.label<ext>``, ``<id>.coronary<ext>``, ``1.label.nii.gz`` → ``1``,
                  ``<id><ext>``                               ``7.coronary.nii.gz`` → ``7``
``prediction``    ``<id>_pred<ext>``                          ``1_pred.nii.gz`` → ``1``
``probability``   ``<id>_prob<ext>``                          ``1_prob.nii.gz`` → ``1``
================  ==========================================  ===============================

Only nnU-Net's first channel suffix ``_0000`` is a tag. Tags, like extensions, are matched
case-insensitively; the id keeps the case of the name. The ids ``""``, ``.`` and ``..`` are
refused (:func:`case_id_problem`), and ids that clash within a run get their parent folder's
name prefixed (:func:`unique_case_ids`).

``<ext>`` is ``.nii.gz``, ``.nii`` (NIfTI), ``.nrrd`` (NRRD), ``.seg.nrrd`` (3D Slicer
segmentation), ``.mha`` or ``.mhd`` (MetaImage); and, for a prediction only, ``.dcm`` (a DICOM-SEG,
``<id>_pred.dcm``): any other ``.dcm`` is one slice of a DICOM series, read with its folder, never
a volume of its own (:data:`PREDICTION_EXTENSIONS`). New formats are added to :data:`EXTENSIONS`
(longest first) and to the readers of :mod:`vesselfm.io.volume`; nothing else here changes.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from vesselfm.utils.errors import UserError

Role = Literal["image", "label", "prediction", "probability"]

#: The volume file extensions read, longest first so that a longer one wins (``.seg.nrrd``
#: before ``.nrrd``: ``1_pred.seg.nrrd`` is case ``1``). A ``.mhd``'s data file (``.raw``, ``.zraw``) is not a volume file.
EXTENSIONS: tuple[str, ...] = (".seg.nrrd", ".nii.gz", ".nrrd", ".nii", ".mha", ".mhd")
#: Extensions that name a volume only as a prediction, ``<id>_pred<ext>``: ``.dcm``, our DICOM-SEG
#: (a DICOM series' slices are ``.dcm`` files too; they are read with their folder, not one by one)
PREDICTION_EXTENSIONS: tuple[str, ...] = (".dcm",)
#: Per role, the tags a stem may end in (all but prediction/probability may also have none).
ROLE_TAGS: Mapping[str, tuple[str, ...]] = {
    "image": (".img", "_0000"),
    "label": (".label", ".coronary"),
    "prediction": ("_pred",),
    "probability": ("_prob",),
}
ROLES: tuple[str, ...] = tuple(ROLE_TAGS)
#: The roles of what vesselfm writes per case; such files are never read as scans or labels.
OUTPUT_ROLES: tuple[str, ...] = ("prediction", "probability")


def split_extension(name: str) -> tuple[str, str]:
    """``(stem, ext)`` of a file name; ``ext`` is ``""`` when no :data:`EXTENSIONS` entry matches
    (nor a :data:`PREDICTION_EXTENSIONS` one after a ``_pred`` stem).

    ``"1.img.nii.gz"`` → ``("1.img", ".nii.gz")``; ``"S.NII.GZ"`` → ``("S", ".NII.GZ")``;
    ``"1_pred.dcm"`` → ``("1_pred", ".dcm")``; ``"IM0001.dcm"`` → ``("IM0001.dcm", "")``.
    """
    lower = name.lower()
    for ext in EXTENSIONS:
        if lower.endswith(ext):
            return name[: -len(ext)], name[-len(ext) :]
    for ext in PREDICTION_EXTENSIONS:
        if lower.endswith(ext) and _tag(name[: -len(ext)], "prediction") is not None:
            return name[: -len(ext)], name[-len(ext) :]
    return name, ""


def is_volume_file(path: str | os.PathLike[str]) -> bool:
    """Whether the file name ends in one of :data:`EXTENSIONS` (case-insensitive)."""
    return split_extension(Path(path).name)[1] != ""


def _tag(stem: str, role: str) -> str | None:
    lower = stem.lower()
    for tag in ROLE_TAGS[role]:
        if lower.endswith(tag):
            return tag
    return None


def role_of(path: str | os.PathLike[str]) -> str | None:
    """The role a file's name tags it with, ``None`` for a plain name (``<id><ext>``).

    Output tags are looked at first: ``x_0000_pred.nii.gz`` is a prediction.
    """
    stem = split_extension(Path(path).name)[0]
    for role in (*OUTPUT_ROLES, "image", "label"):
        if _tag(stem, role) is not None:
            return role
    return None


def case_id(path: str | os.PathLike[str], role: Role | None = None) -> str:
    """The case id of a file name in ``role``.

    Args:
        path: a file (only its name is used).
        role: ``image``, ``label``, ``prediction`` or ``probability``: only that role's tags are
            removed. ``None``: the role the name is tagged with (:func:`role_of`), so that
            ``1.img.nii.gz``, ``1.label.nii.gz`` and ``1_pred.nii.gz`` all give ``1``.

    Returns:
        The id, possibly ``""``, ``.`` or ``..``: check it with :func:`case_id_problem`.

    Raises:
        ValueError: an unknown role.
    """
    if role is None:
        role = role_of(path)  # type: ignore[assignment]
    elif role not in ROLE_TAGS:
        raise ValueError(f"role must be one of {list(ROLES)}, got {role!r}")
    stem, ext = split_extension(Path(path).name)
    if not ext and "::" in stem:  # one study of a DICOM cohort folder: <folder>_<study key>
        folder, study = stem.split("::", 1)
        return f"{folder[:-4] if folder.lower().endswith('.zip') else folder}_{study}"
    if not ext and stem.lower().endswith(".zip"):
        stem = stem[:-4]  # a DICOM study in a zip: study.zip -> study
    tag = _tag(stem, role) if role is not None else None
    return stem[: -len(tag)] if tag else stem


def case_id_problem(case: str) -> str | None:
    """Why ``case`` cannot name a case (or a case folder), or ``None`` when it can.

    Refused: ``""`` (from ``.img.nii.gz``), ``.`` and ``..`` (they name a folder itself or its
    parent), ids holding a path separator or a NUL, and ids longer than a file name may be.
    """
    if case == "":
        return "its name gives an empty case id, which cannot name a case folder"
    if case in (".", ".."):
        where = "the split folder itself" if case == "." else "the folder above it"
        return f"its name gives the case id {case!r}, which would name {where}, not a case folder"
    if "\0" in case or any(sep and sep in case for sep in (os.sep, os.altsep)):
        return f"its name gives the case id {case!r}, which holds a path separator"
    size = len(os.fsencode(case))
    if size > 255:
        return f"its name gives a case id of {size} bytes, more than the 255 a folder name may have"
    return None


def check_case_id(path: str | os.PathLike[str], case: str, key: str) -> str:
    """``case`` when it can name a case; else a :class:`UserError` naming ``key`` and the file."""
    problem = case_id_problem(case)
    if problem is not None:
        raise UserError(f"{key}: {path}: {problem}; rename the file")
    return case


def _folder_names(path: Path) -> list[str]:
    """The names of ``path``'s folders, nearest first (``/d/pat/a/ct.nii.gz`` → a, pat, d)."""
    absolute = Path(os.path.normpath(os.path.abspath(path)))
    return [parent.name for parent in absolute.parents if parent.name]


def prefixed_ids(path: Path, base: str) -> list[str]:
    """``base`` with 1, 2, … of ``path``'s folder names prefixed (``a_ct``, ``pat_a_ct``, …)."""
    folders = _folder_names(path)
    return [_id_at_depth(base, folders, d) for d in range(1, len(folders) + 1)]


def _id_at_depth(base: str, folders: Sequence[str], depth: int) -> str:
    return "_".join([*reversed(folders[:depth]), base])


def unique_case_ids(
    paths: Sequence[str | os.PathLike[str]], role: Role = "image", key: str = "input"
) -> dict[Path, str]:
    """The case id of every file of a run, unique within the run.

    Files whose ids (:func:`case_id` in ``role``) clash get their parent folder's name
    prefixed, ``<parent>_<id>``; where that still clashes, the next folder up, and so on
    (``pat/a/ct.nii.gz``, ``pat/b/ct.nii.gz`` → ``a_ct``, ``b_ct``; ``x/a/ct.nii.gz``,
    ``y/a/ct.nii.gz`` → ``x_a_ct``, ``y_a_ct``). Files whose ids do not clash keep them.

    Args:
        paths: the run's files (distinct paths).
        role: the role of the files, for :func:`case_id`.
        key: the config key named in the error.

    Returns:
        ``{path: id}`` for every path, in the order given.

    Raises:
        UserError: a name that gives a refused id (``""``, ``.``, ``..``), or files whose
            folders cannot tell them apart (``1.img.nii.gz`` and ``1.nii.gz`` in one folder),
            listing them.
    """
    paths = [Path(p) for p in paths]
    base = {p: check_case_id(p, case_id(p, role), key) for p in paths}
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


def renamed_cases(ids: Mapping[Path, str], role: Role = "image") -> list[str]:
    """``"<file> -> <id>"`` for each file whose id :func:`unique_case_ids` prefixed."""
    return [f"{p} -> {value}" for p, value in ids.items() if value != case_id(p, role)]
