"""The output record: which files in a folder vesselfm wrote, so that it never overwrites others.

Every file vesselfm writes goes through :func:`vesselfm.utils.io.atomic_path`, which records it
in ``.vesselfm-outputs.json`` in the file's own folder: its content hash and size, and the run
that wrote it (the tool, its settings, the checkpoint's hash). A file that is not in its folder's
record, or whose content no longer matches the recorded hash, was not written by vesselfm (or was
changed since): the entrypoints refuse to overwrite it unless the user says ``overwrite=true``.

The record is plain JSON::

    {"version": 1,
     "runs": {"<run id>": {"tool": "vesselfm.infer", "started": "...", "settings": {...},
                           "checkpoint": {"source": "...", "sha256": "..."}}},
     "files": {"1_pred.nii.gz": {"sha256": "...", "size": 1234, "run": "<run id>"}}}

Updates are merged under an exclusive lock on the folder, so several processes (prepare's
workers, DDP ranks) can record into one folder.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import uuid
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from vesselfm.utils.errors import UserError

RECORD_NAME = ".vesselfm-outputs.json"
RECORD_VERSION = 1
# the run the files of this process are recorded under (set by the entrypoints)
_RUN: dict[str, Any] = {}
# the input the files being written are made from (see written_from)
_SOURCE: dict[str, Any] | None = None


def file_sha256(path: str | os.PathLike[str], chunk: int = 1 << 22) -> str:
    """The SHA-256 of a file's content, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def start_run(
    tool: str,
    settings: Mapping[str, Any] | None = None,
    checkpoint: Mapping[str, Any] | None = None,
) -> str:
    """Name the run that the files written from now on belong to; returns its id.

    Args:
        tool: e.g. ``"vesselfm.infer"``.
        settings: the run's settings as plain JSON-able values (the resolved config).
        checkpoint: e.g. ``{"source": "hf://...", "sha256": "..."}`` for the weights used.
    """
    _RUN.clear()
    _RUN.update(
        id=uuid.uuid4().hex[:12],
        tool=tool,
        started=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        settings=_jsonable(settings or {}),
        checkpoint=_jsonable(checkpoint) if checkpoint else None,
    )
    return _RUN["id"]


def set_run_checkpoint(checkpoint: Mapping[str, Any]) -> None:
    """Add the checkpoint (source and hash) to the current run, once the weights are known."""
    if not _RUN:
        start_run("vesselfm")
    _RUN["checkpoint"] = _jsonable(checkpoint)


def fork_run(**fields: Any) -> str:
    """Start a new run with the current run's tool, settings and checkpoint plus ``fields``
    (e.g. ``prediction={...}``: what the outputs depend on); returns its id. Files recorded
    before keep the run they were written under, so a later run in the same process with other
    fields never rewrites what an earlier run recorded."""
    run = _current_run()
    start_run(run["tool"], run.get("settings"), run.get("checkpoint"))
    _RUN.update({key: _jsonable(value) for key, value in fields.items()})
    return _RUN["id"]


def current_run() -> dict[str, Any]:
    """The run the files written now are recorded under (a copy; ``id`` included)."""
    return _current_run()


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _current_run() -> dict[str, Any]:
    if not _RUN:
        start_run("vesselfm (Python API)")
    return dict(_RUN)


def record_path(folder: str | os.PathLike[str]) -> Path:
    """``<folder>/.vesselfm-outputs.json``."""
    return Path(folder) / RECORD_NAME


def read_record(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The record of ``folder`` (an empty one where there is none).

    Raises:
        UserError: the record exists but is not ours or is damaged.
    """
    path = record_path(folder)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"version": RECORD_VERSION, "runs": {}, "files": {}}
    try:
        record = json.loads(text)
        if not isinstance(record.get("files"), dict) or not isinstance(record.get("runs"), dict):
            raise ValueError("no 'files'/'runs' tables")
    except (ValueError, AttributeError) as err:
        raise UserError(
            f"{path}: not a vesselfm output record ({err}); move it away (every file in "
            f"{Path(folder)} then counts as not written by vesselfm)"
        ) from err
    return record


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on ``folder`` (flock on the directory: no lock file left behind)."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no other writer is expected
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def file_entry(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A file's record entry: content hash, size, modification time, and the input it was made
    from (see :func:`written_from`)."""
    stat = Path(path).stat()
    entry = {"sha256": file_sha256(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    if _SOURCE is not None:
        entry["source"] = dict(_SOURCE)
    return entry


def source_identity(path: str | os.PathLike[str]) -> dict[str, Any]:
    """What identifies an input file: its resolved path, size and modification time (for one
    study of a DICOM cohort folder, ``<folder>::<study>``, the folder's)."""
    from vesselfm.io.dicom import study_reference

    resolved = Path(path).resolve()
    reference = study_reference(path)
    stat = (reference[0] if reference is not None else resolved).stat()
    return {"path": str(resolved), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


@contextlib.contextmanager
def written_from(path: str | os.PathLike[str]) -> Iterator[None]:
    """Record the files written inside this block as made from the input ``path``, so that a
    resumed run can tell an output of this input from one of another input with the same id."""
    global _SOURCE
    previous, _SOURCE = _SOURCE, source_identity(path)
    try:
        yield
    finally:
        _SOURCE = previous


def recorded_source(path: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The input a recorded file was made from (``None``: not recorded, or no input named)."""
    path = Path(path)
    entry = read_record(path.parent)["files"].get(path.name)
    return entry.get("source") if entry else None


def record_entries(
    folder: str | os.PathLike[str], entries: Mapping[str, Mapping[str, Any]]
) -> None:
    """Add ``{name: file_entry}`` of files in ``folder`` to its record, under the current run."""
    folder = Path(folder)
    run = _current_run()
    run_id = run.pop("id")
    with _locked(folder):
        record = read_record(folder)
        record["version"] = RECORD_VERSION
        record["runs"][run_id] = run
        for name, entry in entries.items():
            record["files"][name] = {**entry, "run": run_id}
        # runs no file refers to any more are dropped
        used = {e.get("run") for e in record["files"].values()}
        record["runs"] = {k: v for k, v in record["runs"].items() if k in used}
        _write_record(folder, record)


def _write_record(folder: Path, record: Mapping[str, Any]) -> None:
    # called under _locked(folder); the rename keeps readers from seeing half a record
    tmp = folder / f".{RECORD_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, record_path(folder))


def forget_files(paths: Iterable[str | os.PathLike[str]]) -> None:
    """Drop files (all in one folder) from their record, e.g. after removing them."""
    paths = [Path(p) for p in paths]
    if not paths or not record_path(paths[0].parent).exists():
        return
    folder = paths[0].parent
    with _locked(folder):
        record = read_record(folder)
        for p in paths:
            record["files"].pop(p.name, None)
        _write_record(folder, record)


def written_by_us(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is in its folder's record with the content recorded there.

    Size and modification time equal to the record's are taken as unchanged content (as make
    and rsync do); otherwise the content's hash decides.
    """
    path = Path(path)
    return _matches(path, read_record(path.parent)["files"].get(path.name))


def _matches(path: Path, entry: Mapping[str, Any] | None) -> bool:
    if not entry or not path.is_file():
        return False
    stat = path.stat()
    if stat.st_size != entry.get("size"):
        return False
    if stat.st_mtime_ns == entry.get("mtime_ns"):
        return True
    if file_sha256(path) != entry.get("sha256"):
        return False
    # the same content under a new time (a copy, a restored backup): remember the new time, so
    # that the next check need not hash the file again
    try:
        with _locked(path.parent):
            record = read_record(path.parent)
            current = record["files"].get(path.name)
            if current and current.get("sha256") == entry.get("sha256"):
                current["mtime_ns"] = stat.st_mtime_ns
                _write_record(path.parent, record)
    except OSError:  # a read-only folder: the check still holds, it is just not remembered
        pass
    return True


def foreign_files(paths: Iterable[str | os.PathLike[str]]) -> list[Path]:
    """The paths among ``paths`` that exist but were not written by vesselfm (or were changed)."""
    return [Path(p) for p in paths if Path(p).exists() and not written_by_us(p)]


def check_overwrite(
    paths: Iterable[str | os.PathLike[str]], overwrite: bool, key: str = "output"
) -> None:
    """Refuse to overwrite files vesselfm did not write, unless ``overwrite``.

    Raises:
        UserError: one line naming the first such file, how many there are, and the fixes.
    """
    if overwrite:
        return
    foreign = foreign_files(paths)
    if foreign:
        more = f" (and {len(foreign) - 1} more)" if len(foreign) > 1 else ""
        raise UserError(
            f"{foreign[0]} exists and was not written by vesselfm{more} (not in "
            f"{record_path(foreign[0].parent)}, or changed since); choose another {key}=, move "
            f"it away, or pass overwrite=true to replace it"
        )


def foreign_files_in(folder: str | os.PathLike[str], recursive: bool = True) -> list[Path]:
    """Files under ``folder`` that vesselfm did not write (its records and temporary files aside)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    records: dict[Path, dict[str, Any]] = {}
    foreign = []
    for p in folder.rglob("*") if recursive else folder.iterdir():
        if not p.is_file() or p.name == RECORD_NAME or _is_temporary(p):
            continue
        if p.parent not in records:
            records[p.parent] = read_record(p.parent)["files"]
        if not _matches(p, records[p.parent].get(p.name)):
            foreign.append(p)
    return sorted(foreign)


def _is_temporary(path: Path) -> bool:
    from vesselfm.utils.io import _TEMPORARY

    return bool(_TEMPORARY.match(path.name)) or path.name.startswith(f".{RECORD_NAME}.")
