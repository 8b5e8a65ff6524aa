"""File-system helpers that never leave half-written outputs behind, and record what they wrote."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import signal
import socket
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

# Read once at import (os.umask can only be read by setting it, which is not thread-safe later).
_UMASK = os.umask(0o022)
os.umask(_UMASK)
# most file systems allow 255 bytes per name
NAME_MAX = 255
# atomic_path's temporary names: .<name or its hash>.<host>-<pid>.<random>.tmp<suffixes>, the
# host a hash of this machine's name, so that a run never removes another machine's temporary
# in a shared (network) folder, nor a user's hidden file
_TEMPORARY = re.compile(r"^\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.[^.]+\.tmp(\.[^/]*)?$")
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


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
        >>> with atomic_path("out/mask.npy") as tmp:  # doctest: +SKIP
        ...     np.save(tmp, mask)
    """
    target = Path(target)
    check_name_length(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(target.suffixes)
    stem = target.name
    owner = f"{_HOST}-{os.getpid()}"
    # the temporary name must fit too: long names are replaced by their hash
    if len(os.fsencode(f".{stem}.{owner}.12345678.tmp{suffix}")) > NAME_MAX:
        stem = hashlib.sha256(os.fsencode(stem)).hexdigest()[:16]
        suffix = suffix[-32:] if len(os.fsencode(suffix)) <= 32 else ""
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{stem}.{owner}.", suffix=f".tmp{suffix}", dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        # mkstemp creates 0600 files; outputs get the permissions any new file would get.
        os.chmod(tmp, 0o666 & ~_UMASK)
        # hashed before the rename (which keeps the modification time), so that the rename and
        # the record's update are one short step, safe from Ctrl-C and SIGTERM
        entry = None
        if record:
            from vesselfm.utils.outputs import file_entry

            entry = file_entry(tmp)
        with _signals_deferred():
            os.replace(tmp, target)
            if entry is not None:
                from vesselfm.utils.outputs import record_entries

                record_entries(target.parent, {target.name: entry})
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM back for a moment: an output is renamed into place and recorded,
    or neither. A signal that arrives meanwhile is passed on to the previous handler when the
    block ends (Python runs signal handlers in the main thread only, whichever thread the
    signal reached, so a handler that only takes note is enough)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    previous = {sig: signal.signal(sig, hold) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(caught):
            handler = previous[sig]
            if callable(handler):
                handler(sig, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), sig)


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove :func:`atomic_path` temporaries in ``folder`` left by processes of this machine no
    longer running (a run killed by SIGKILL or a power cut); returns what was removed."""
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for path in folder.iterdir():
        match = _TEMPORARY.match(path.name)
        if (
            match
            and match["host"] == _HOST
            and path.is_file()
            and not _process_alive(int(match["pid"]))
        ):
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
