"""ImageCAS case discovery and train/val/test splits.

A *source* is the extracted Kaggle download (folders ``1-200`` … ``801-1000`` holding
``N.img.nii.gz`` + ``N.label.nii.gz``), any folder holding such pairs (searched recursively;
``images*/`` + ``labels*/`` sibling folders work too), or a zip archive of either (a plain zip,
or a multi-part Kaggle download already joined into one zip, see ``ImageCASDataSetPrep.md``).

Files or folders marked as duplicates by a browser or file manager (``1-200 (1)``,
``5.img (1).nii.gz``) are skipped with a warning.

A pair whose name gives no usable case id (``.img.nii.gz`` gives ``""``; ``.``, ``..``) is not a
case: it is listed in :attr:`Discovery.invalid` with the reason, for the caller to report. A
symbolic link loop among the files is read as any other file (the case fails when it is read); a
zip archive inside a folder that cannot be opened (a loop, no permission) is listed in
:attr:`Discovery.unreadable`. Neither stops the discovery of the other cases.

Splits: ``official`` reads ImageCAS's split file (``imageCAS_data_split.xlsx`` or a CSV export;
4 splits, the first 700 train / 50 val / 250 test); ``random`` draws 80/10/10 with a seed, and
:func:`draw_splits` draws new cases into a set whose other cases already have their split.

This module reads no image data; :mod:`vesselfm.data.prepare` does.
"""

from __future__ import annotations

import csv
import errno
import logging
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from vesselfm.io import case_id as case_id_of
from vesselfm.io import case_id_problem, is_volume_file, role_of

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
DOC = "ImageCASDataSetPrep.md"

# Sibling folder conventions for "any img/label folder" (nnU-Net, MSD and plain names).
_IMAGE_DIRS = {"images", "imagestr", "imagests", "image", "imgs", "img"}
_LABEL_DIRS = {"labels", "labelstr", "labelsts", "label", "masks", "mask", "segmentations", "seg"}
# "(1)", "(2)", ... as added by browsers and file managers to a second copy of a file.
_DUPLICATE = re.compile(r"\(\d+\)")
# Parts of an Info-ZIP split archive: the Kaggle download names its last part *.change2zip.
_SPLIT_PART = re.compile(r"\.(z\d\d|change2zip)$", re.IGNORECASE)
_RENAME_HINT = "rename the pair, e.g. to 1001.img.nii.gz and 1001.label.nii.gz"

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "tr": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "validating": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
    "ts": "test",
}
_ID_HEADERS = {
    "id",
    "case",
    "caseid",
    "case_id",
    "case id",
    "file",
    "filename",
    "file name",
    "file_name",
    "name",
    "image",
    "patient",
    "patient id",
}


@dataclass(frozen=True)
class SourceFile:
    """One NIfTI file: on disk (``member is None``) or a member of the zip archive ``path``."""

    path: str
    member: str | None = None

    def __str__(self) -> str:
        return f"{self.path}::{self.member}" if self.member else self.path

    @property
    def name(self) -> str:
        return PurePosixPath(self.member).name if self.member else Path(self.path).name

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "member": self.member}


@dataclass(frozen=True)
class Case:
    """An image/label pair of one case (ImageCAS: ``1.img.nii.gz`` + ``1.label.nii.gz`` → ``"1"``)."""

    case_id: str
    image: SourceFile
    label: SourceFile


@dataclass
class Discovery:
    """What :func:`discover_cases` found.

    Attributes:
        cases: the pairs with a valid case id, sorted by id.
        skipped: ``(path, reason)`` of files left out on purpose (duplicate-marked copies,
            unpaired files, a second pair of the same id).
        split_archive_parts: parts of multi-part zips, which must be joined first.
        invalid: ``(pair, reason)`` of pairs whose file names give no usable case id.
        unreadable: ``(path, reason)`` of archives or folders inside the source that could not
            be opened (a symbolic link loop, no permission).
    """

    cases: list[Case] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    split_archive_parts: list[str] = field(default_factory=list)
    invalid: list[tuple[Case, str]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


def case_sort_key(case_id: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order (``2`` before ``10``), then the rest alphabetically."""
    return (0, int(case_id), "") if case_id.isdigit() else (1, 0, case_id)


def is_duplicate_marked(parts: Iterable[str]) -> bool:
    """True when a path component carries a copy marker such as ``(1)``."""
    return any(_DUPLICATE.search(p) for p in parts)


def _pair(
    files: Sequence[tuple[tuple[str, ...], SourceFile]], where: str, found: Discovery
) -> None:
    """Pair ImageCAS-named files (and images*/labels* folder files) found under one source."""
    images: dict[tuple[tuple[str, ...], str], SourceFile] = {}
    labels: dict[tuple[tuple[str, ...], str], SourceFile] = {}
    for parts, src in files:
        if is_duplicate_marked(parts):
            found.skipped.append((str(src), "duplicate-marked copy"))
            continue
        name = parts[-1]
        parent = parts[:-1]
        if not is_volume_file(name):
            continue
        kind = role_of(name)
        folder = parent[-1].lower() if parent else ""
        # images*/X.nii.gz pairs with labels*/X.nii.gz (or masks/...): key both on the folder above.
        if folder in _IMAGE_DIRS and kind != "label":
            kind, parent = "image", parent[:-1] + ("\0pair",)
        elif folder in _LABEL_DIRS and kind != "image":
            kind, parent = "label", parent[:-1] + ("\0pair",)
        if kind not in ("image", "label"):
            continue
        key = (parent, case_id_of(name, kind))
        (images if kind == "image" else labels)[key] = src
    for key, img in images.items():
        lab = labels.get(key)
        if lab is None:
            found.skipped.append((str(img), "no label file beside it (expected N.label.nii.gz)"))
            continue
        found.cases.append(Case(case_id=key[1], image=img, label=lab))
    for key, lab in labels.items():
        if key not in images:
            found.skipped.append((str(lab), "no image file beside it (expected N.img.nii.gz)"))
    log.debug("%s: %d pairs", where, len(images))


def _scan_zip(path: Path, found: Discovery, inside_folder: bool = False) -> None:
    try:
        with zipfile.ZipFile(path) as zf:
            infos = [i for i in zf.infolist() if not i.is_dir()]
            with open(path, "rb") as fh:
                head = fh.read(4)
    except OSError as err:
        if not inside_folder:
            raise ValueError(f"source={path}: cannot open it ({_os_reason(err)})") from err
        # one archive the file system will not open (a symbolic link loop, no permission)
        # must not stop the discovery of the others: reported, skipped
        found.unreadable.append((str(path), f"cannot open the archive ({_os_reason(err)})"))
        return
    except zipfile.BadZipFile as err:
        hint = (
            f"if it is one part of the Kaggle multi-part download, join the parts first (see {DOC})"
        )
        raise ValueError(f"source {path} is not a readable zip archive ({err}); {hint}") from err
    if head == b"PK\x07\x08" or any(i.volume for i in infos):
        raise ValueError(
            f"source {path} is a split (multi-part) zip, or its parts joined with cat, which leaves "
            f"wrong offsets; join the parts with `zip -s 0 <last part>.zip --out joined.zip` (see {DOC})"
        )
    files = [(PurePosixPath(i.filename).parts, SourceFile(str(path), i.filename)) for i in infos]
    _pair(files, str(path), found)


def _os_reason(err: OSError) -> str:
    if err.errno == errno.ELOOP:
        return "a symbolic link loop"
    return err.strerror or type(err).__name__


def _disk_file(full: Path) -> SourceFile:
    """A file on disk, by its resolved path; a symbolic link loop (which cannot be resolved)
    keeps its absolute path, so that the case fails when it is read and names the file."""
    try:
        return SourceFile(str(full.resolve()))
    except (OSError, RuntimeError):  # RuntimeError: pathlib's "Symlink loop" before 3.13
        return SourceFile(os.path.abspath(full))


def discover_cases(source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> Discovery:
    """Find the image/label pairs of a source folder or zip archive (or a list of them).

    Args:
        source: a folder (searched recursively, zip archives inside it included) or a zip file.

    Returns:
        The pairs, sorted by case id, and the files skipped with the reason (duplicate-marked
        copies, unpaired files, repeated case ids).

    Raises:
        ValueError: the source does not exist, or holds no pair; a split archive that was not
            joined gets the commands to join it.
    """
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    found = Discovery()
    for src in sources:
        root = Path(src).expanduser()
        if not root.exists():
            if root.is_symlink():
                raise ValueError(
                    f"source={src}: a symbolic link that leads nowhere (or to itself); "
                    "give the ImageCAS folder or zip archive"
                )
            raise ValueError(
                f"source={src}: no such file or folder; give the ImageCAS folder or zip archive"
            )
        if root.is_file():
            if _SPLIT_PART.search(root.name) and _siblings_of_split(root):
                found.split_archive_parts.append(str(root))
                continue
            _scan_zip(root, found)
            continue
        disk_files: list[tuple[tuple[str, ...], SourceFile]] = []

        def unreadable_folder(err: OSError) -> None:
            found.unreadable.append(
                (str(err.filename), f"cannot list the folder ({_os_reason(err)})")
            )

        for dirpath, dirnames, filenames in os.walk(root, onerror=unreadable_folder):
            rel = Path(dirpath).relative_to(root).parts
            dirnames.sort()
            for d in [d for d in dirnames if _DUPLICATE.search(d)]:
                found.skipped.append((str(Path(dirpath, d)), "duplicate-marked folder"))
                dirnames.remove(d)
            for name in sorted(filenames):
                full = Path(dirpath, name)
                if _SPLIT_PART.search(name):
                    found.split_archive_parts.append(str(full))
                elif name.lower().endswith(".zip"):
                    if _DUPLICATE.search(name):
                        found.skipped.append((str(full), "duplicate-marked archive"))
                    elif not full.with_suffix(".z01").exists():
                        _scan_zip(full, found, inside_folder=True)
                    else:
                        found.split_archive_parts.append(str(full))
                elif is_volume_file(name):  # other files are never opened
                    disk_files.append((rel + (name,), _disk_file(full)))
        _pair(disk_files, str(root), found)

    # A name that gives no usable id is not a case: reported by the caller, never written.
    valid: list[Case] = []
    for case in found.cases:
        problem = case_id_problem(case.case_id)
        if problem is None:
            valid.append(case)
        else:
            found.invalid.append((case, f"image {case.image}: {problem}; {_RENAME_HINT}"))
    # One case id, one pair. A case both extracted and inside its archive is one case (the
    # files on disk are read); two pairs on disk, or in two archives, with one id are refused:
    # most often a download copied twice, whose halves would land in train and test.
    by_id: dict[str, list[Case]] = {}
    for case in sorted(valid, key=lambda c: (c.image.member is not None, str(c.image))):
        by_id.setdefault(case.case_id, []).append(case)
    clashes = []
    unique: dict[str, Case] = {}
    for case_id, group in by_id.items():
        on_disk = [c for c in group if c.image.member is None]
        archives = {c.image.path for c in group if c.image.member is not None}
        if len(on_disk) > 1 or (not on_disk and len(archives) > 1):
            clashes.append((case_id, group))
            continue
        unique[case_id] = group[0]
        for other in group[1:]:
            found.skipped.append(
                (str(other.image), f"case {case_id} is read from {group[0].image}")
            )
    if clashes:
        case_id, group = clashes[0]
        more = f" (and {len(clashes) - 1} more ids)" if len(clashes) > 1 else ""
        raise ValueError(
            f"source={source}: case id {case_id} is found {len(group)} times "
            f"({', '.join(str(c.image) for c in group)}){more}; keep one copy of each case "
            "(a download copied twice?) or rename them"
        )
    found.cases = sorted(unique.values(), key=lambda c: case_sort_key(c.case_id))
    for path, reason in found.skipped:
        log.warning("skipped %s: %s", path, reason)
    for path, reason in found.unreadable:
        log.warning("could not read %s: %s", path, reason)
    for _, reason in found.invalid:
        log.warning("not a case: %s", reason)
    if not found.cases and not found.invalid:
        if found.split_archive_parts:
            raise ValueError(
                f"source={source}: found only parts of a multi-part zip ({Path(found.split_archive_parts[0]).name}, ...); "
                f"join them into one zip or extract them first, as {DOC} explains"
            )
        raise ValueError(
            f"source={source}: no image/label pairs found; expected N.img.nii.gz + N.label.nii.gz "
            "files (ImageCAS layout), images*/ + labels*/ folders, or a zip archive of them"
        )
    if found.split_archive_parts:
        log.warning(
            "ignored %d multi-part archive file(s) (e.g. %s): join them first to use their cases (see %s)",
            len(found.split_archive_parts),
            found.split_archive_parts[0],
            DOC,
        )
    return found


def _siblings_of_split(path: Path) -> bool:
    stem = path.name.rsplit(".", 1)[0]
    return any(path.parent.glob(f"{glob_escape(stem)}.[zZ][0-9][0-9]"))


def glob_escape(text: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", text)


# --------------------------------------------------------------------------------------- splits


def normalise_case_id(value: Any) -> str | None:
    """A split-table cell as a case id (``1``, ``1.0``, ``"1"``, ``"1.img.nii.gz"`` → ``"1"``)."""
    if value is None:
        return None
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else str(value)
    text = str(value).strip()
    if not text:
        return None
    if re.fullmatch(r"\d+(\.0+)?", text):
        return str(int(float(text)))
    # an image or label name gives its case; any other text is an id as it stands (a split
    # entry "x_pred" names the case x_pred, not x)
    role = role_of(text)
    return case_id_of(text, role if role in ("image", "label") else "image")


def _split_value(value: Any, where: str) -> str | None:
    if value is None or str(value).strip() == "":
        return None
    key = str(value).strip().lower()
    if key not in _SPLIT_ALIASES:
        raise ValueError(
            f"{where}: unknown split value {value!r}; expected one of train/training, "
            "val/validation, test/testing"
        )
    return _SPLIT_ALIASES[key]


def _fold_column(header: Sequence[Any], fold: int) -> int | None:
    pattern = re.compile(rf"(split|fold)[\s_\-]*0*{fold}", re.IGNORECASE)
    for j, cell in enumerate(header):
        if cell is not None and pattern.fullmatch(str(cell).strip()):
            return j
    return None


def parse_split_rows(rows: Sequence[Sequence[Any]], fold: int, where: str) -> dict[str, str]:
    """Read one fold of a split table given as rows of cells.

    The header row (searched in the first 20 rows) has a ``Split-<fold>`` or ``fold_<fold>``
    column and, optionally, an id column (``id``, ``case``, ``FileName`` ...; else the first
    column). Values: train/training, val/validation, test/testing.

    Returns:
        ``{case_id: "train" | "val" | "test"}``.
    """
    for i, row in enumerate(rows[:20]):
        col = _fold_column(row, fold)
        if col is None:
            continue
        id_col = next(
            (
                j
                for j, c in enumerate(row)
                if c is not None and str(c).strip().lower() in _ID_HEADERS
            ),
            0 if col != 0 else None,
        )
        if id_col is None:
            raise ValueError(f"{where}: no case id column beside column {row[col]!r}")
        out: dict[str, str] = {}
        for k, r in enumerate(rows[i + 1 :], start=i + 2):
            if len(r) <= max(col, id_col):
                continue
            case_id = normalise_case_id(r[id_col])
            split = _split_value(r[col], f"{where} row {k}")
            if case_id is None or split is None:
                continue
            if case_id in out and out[case_id] != split:
                raise ValueError(
                    f"{where} row {k}: case {case_id} listed twice with different splits"
                )
            out[case_id] = split
        if not out:
            raise ValueError(f"{where}: column {row[col]!r} holds no train/val/test entries")
        return out
    available = sorted(
        {
            str(c)
            for r in rows[:20]
            for c in r
            if c is not None and re.match(r"(split|fold)", str(c), re.I)
        }
    )
    raise ValueError(
        f"{where}: no column for fold={fold} (expected a header 'Split-{fold}' or 'fold_{fold}'); "
        f"found {available or 'no split columns'}"
    )


def _read_table(path: Path) -> dict[str, list[list[Any]]]:
    """Sheets of an xlsx (name → rows) or the one table of a CSV (``{"csv": rows}``)."""
    if path.suffix.lower() in {".xlsx", ".xlsm"}:
        import openpyxl

        wb = openpyxl.load_workbook(path, read_only=True, data_only=True)
        try:
            return {
                ws.title: [list(r) for r in ws.iter_rows(values_only=True)] for ws in wb.worksheets
            }
        finally:
            wb.close()
    if path.suffix.lower() in {".csv", ".tsv", ".txt"}:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            sample = fh.read(4096)
            fh.seek(0)
            try:
                dialect = csv.Sniffer().sniff(sample, delimiters=",;\t")
            except csv.Error:
                dialect = csv.excel
            return {"csv": [list(r) for r in csv.reader(fh, dialect)]}
    raise ValueError(
        f"split_file={path}: expected an .xlsx workbook or a .csv export, got {path.suffix!r}"
    )


def read_official_split(
    path: str | os.PathLike[str],
    fold: int = 1,
    sheet: str | None = None,
    case_ids: Iterable[str] | None = None,
) -> tuple[dict[str, str], str]:
    """Read fold ``fold`` (1..4) of ImageCAS's split file (``imageCAS_data_split.xlsx`` or CSV).

    The workbook may hold several sheets (the Kaggle one: ``v1`` with old patient ids and
    ``v2-latest`` with case ids 1-1000). Without ``sheet``, the sheet whose ids overlap
    ``case_ids`` most is used (ties: a sheet named ``*latest*``, then the last one).

    Returns:
        ``({case_id: split}, sheet name)``.

    Raises:
        ValueError: unreadable file, no column for the fold, unknown split values.
    """
    if not 1 <= int(fold) <= 4:
        raise ValueError(f"fold must be 1, 2, 3 or 4 (ImageCAS has four splits), got {fold}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(
            f"split_file={path}: no such file; give imageCAS_data_split.xlsx or its CSV export"
        )
    try:
        sheets = _read_table(path)
    except ValueError:
        raise
    except Exception as err:  # noqa: BLE001 - openpyxl/csv raise many types on bad files
        raise ValueError(
            f"split_file={path}: cannot read it ({type(err).__name__}: {err})"
        ) from err
    if sheet is not None:
        if sheet not in sheets:
            raise ValueError(f"split_sheet={sheet!r} not in {path.name}; sheets: {sorted(sheets)}")
        sheets = {sheet: sheets[sheet]}
    wanted = set(case_ids or ())
    candidates: list[tuple[tuple[int, int, int], str, dict[str, str]]] = []
    errors: list[str] = []
    for order, (name, rows) in enumerate(sheets.items()):
        where = f"{path.name}" + (f" sheet {name!r}" if name != "csv" else "")
        try:
            table = parse_split_rows(rows, int(fold), where)
        except ValueError as err:
            errors.append(str(err))
            continue
        rank = (len(wanted & set(table)), int("latest" in name.lower()), order)
        candidates.append((rank, name, table))
    if not candidates:
        raise ValueError(errors[0] if len(errors) == 1 else "; ".join(errors))
    _, name, table = max(candidates, key=lambda c: c[0])
    counts = {s: sum(v == s for v in table.values()) for s in SPLITS}
    log.info(
        "official split %s%s fold %d: %d train / %d val / %d test",
        path.name,
        f" (sheet {name})" if name != "csv" else "",
        fold,
        counts["train"],
        counts["val"],
        counts["test"],
    )
    return table, name


def _check_ratios(ratios: Sequence[float]) -> list[float]:
    ratios = [float(r) for r in ratios]
    if len(ratios) != 3 or min(ratios) < 0 or sum(ratios) <= 0:
        raise ValueError(
            f"split_ratios must be 3 non-negative numbers (train, val, test), got {list(ratios)}"
        )
    return ratios


def split_sizes(n: int, ratios: Sequence[float] = (0.8, 0.1, 0.1)) -> dict[str, int]:
    """How many of ``n`` cases a random split puts in train, val and test.

    The shares are rounded; with 3 or more cases, val and test get at least one case each
    (when their ratio is not 0).
    """
    ratios = _check_ratios(ratios)
    total = sum(ratios)
    n_val = int(round(n * ratios[1] / total))
    n_test = int(round(n * ratios[2] / total))
    if n >= 3:
        n_val = max(n_val, 1 if ratios[1] > 0 else 0)
        n_test = max(n_test, 1 if ratios[2] > 0 else 0)
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def draw_splits(
    case_ids: Sequence[str],
    seed: int = 0,
    ratios: Sequence[float] = (0.8, 0.1, 0.1),
    existing: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Draw new cases into train/val/test at random, beside cases that already have a split.

    The cases already placed (``existing``: cases per split) never move; the new ones fill each
    split up towards its share of the whole set (:func:`split_sizes` of all cases), val first,
    then test, the rest train. Without ``existing`` this is :func:`random_split`.

    Args:
        case_ids: the new cases (their order does not matter).
        seed: seed of the draw.
        ratios: train/val/test shares of the whole set.
        existing: cases per split already in the set.

    Returns:
        ``{case_id: "train" | "val" | "test"}`` for the new cases.
    """
    have = {s: int((existing or {}).get(s, 0)) for s in SPLITS}
    ids = sorted(set(case_ids), key=case_sort_key)
    target = split_sizes(len(ids) + sum(have.values()), ratios)
    n_val = min(max(0, target["val"] - have["val"]), len(ids))
    n_test = min(max(0, target["test"] - have["test"]), len(ids) - n_val)
    order = np.random.default_rng(int(seed)).permutation(len(ids))
    out: dict[str, str] = {}
    for rank, idx in enumerate(order):
        out[ids[idx]] = "val" if rank < n_val else "test" if rank < n_val + n_test else "train"
    return out


def random_split(
    case_ids: Sequence[str], seed: int = 0, ratios: Sequence[float] = (0.8, 0.1, 0.1)
) -> dict[str, str]:
    """Split case ids at random into train/val/test (default 80/10/10), reproducibly.

    The result depends only on the set of ids and ``seed``, not on their order. With 3 or
    more cases, val and test get at least one case each (when their ratio is not 0).
    """
    return draw_splits(case_ids, seed=seed, ratios=ratios)


def find_split_file(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
) -> Path | None:
    """``imageCAS_data_split.xlsx`` (or ``.csv``) at the top of a source folder, if there is one."""
    sources = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    for src in sources:
        root = Path(src).expanduser()
        folder = root if root.is_dir() else root.parent
        for name in ("imageCAS_data_split.xlsx", "imageCAS_data_split.csv"):
            if (folder / name).is_file():
                return folder / name
    return None
