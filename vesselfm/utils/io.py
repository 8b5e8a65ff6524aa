"""File-system helpers that never leave half-written outputs behind, and record what they wrote."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

# Read once at import (os.umask can only be read by setting it, which is not thread-safe later).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
# most file systems allow 255 bytes per name
NAME_MAX = 255
# atomic_path's temporary names: .<name or its hash>.<pid>.<random>.tmp<suffixes>
_TEMPORARY = re.compile(r"^\..+\.(?P<pid>\d+)\.[^.]+\.tmp(\.[^/]*)?$")


def check_name_length(target: str | os.PathLike[str], key: str = "output") -> None:
    """Refuse an output name the file system cannot hold, before any work is done.

    Raises:
        ValueError: the name is longer than 255 bytes.
    """
    name = Path(target).name
    if len(os.fsencode(name)) > NAME_MAX:
        raise ValueError(
            f"{key}: the output name {name[:40]}... is {len(os.fsencode(name))} bytes, more than "
            f"the {NAME_MAX} a file name may have; rename the input or choose a shorter case id"
        )


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike[str], record: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The temporary file keeps ``target``'s suffixes (``.nii.gz``, ``.npy``) so that writers which
    infer the format from the name still work. On any exception the temporary file is removed
    and ``target`` is left untouched, so an interrupted run never leaves a half-written output.
    A file written here is recorded in its folder's ``.vesselfm-outputs.json``
    (:mod:`vesselfm.utils.outputs`) unless ``record=False``.

    Example:
        >>> with atomic_path("out/1_pred.nii.gz") as tmp:  # doctest: +SKIP
        ...     nib.save(img, tmp)
    """
    target = Path(target)
    check_name_length(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    stem = target.name
    # the temporary name must fit too: long names are replaced by their hash
    if len(os.fsencode(f".{stem}.{os.getpid()}.12345678.tmp{suffix}")) > NAME_MAX:
        stem = hashlib.sha256(os.fsencode(stem)).hexdigest()[:16]
        suffix = suffix[-32:] if len(os.fsencode(suffix)) <= 32 else ""
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{stem}.{os.getpid()}.", suffix=f".tmp{suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; outputs get the permissions any new file would get.
        if tmp.exists():
            os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if record:
        from vesselfm.utils.outputs import record_files

        record_files([target])


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove :func:`atomic_path` temporaries in ``folder`` left by processes no longer running
    (a run killed by SIGKILL or a power cut); returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if match and path.is_file() and not _process_alive(int(match["pid"])):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
