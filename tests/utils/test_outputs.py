"""The output record: every file written through atomic_path is recorded; others are foreign."""

from __future__ import annotations

import json
import os

import pytest
from cli import dead_pid, start_code

from vesselfm.utils import outputs
from vesselfm.utils.errors import UserError
from vesselfm.utils.io import _HOST, atomic_path, remove_stale_temporaries
from vesselfm.utils.outputs import (
    RECORD_NAME,
    check_overwrite,
    foreign_files_in,
    read_record,
    start_run,
    written_by_us,
)


def _write(path, text="x"):
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def test_atomic_writes_are_recorded_with_hash_size_and_run(tmp_path):
    run = start_run("vesselfm.test", {"threshold": 0.5}, {"source": "w.pt", "sha256": "ab"})
    _write(tmp_path / "1_pred.nii.gz", "abc")
    record = json.loads((tmp_path / RECORD_NAME).read_text())
    entry = record["files"]["1_pred.nii.gz"]
    assert entry["size"] == 3 and len(entry["sha256"]) == 64 and entry["run"] == run
    assert record["runs"][run]["tool"] == "vesselfm.test"
    assert record["runs"][run]["settings"] == {"threshold": 0.5}
    assert record["runs"][run]["checkpoint"] == {"source": "w.pt", "sha256": "ab"}
    assert written_by_us(tmp_path / "1_pred.nii.gz")


def test_a_file_we_did_not_write_is_foreign_and_refused(tmp_path):
    _write(tmp_path / "ours.txt")
    (tmp_path / "theirs.txt").write_text("a real scan")
    assert not written_by_us(tmp_path / "theirs.txt")
    assert foreign_files_in(tmp_path) == [tmp_path / "theirs.txt"]
    with pytest.raises(UserError, match=r"theirs\.txt exists and was not written by vesselfm"):
        check_overwrite([tmp_path / "ours.txt", tmp_path / "theirs.txt"], overwrite=False)
    check_overwrite([tmp_path / "ours.txt"], overwrite=False)  # ours: fine
    check_overwrite([tmp_path / "theirs.txt"], overwrite=True)  # the user said so


def test_a_changed_output_is_no_longer_ours(tmp_path):
    path = tmp_path / "1_pred.nii.gz"
    _write(path, "abc")
    path.write_text("abd")  # same size, new content and time
    assert not written_by_us(path)
    # the same bytes back under a new modification time: the hash decides
    path.write_text("abc")
    os.utime(path, ns=(1, 1))
    assert written_by_us(path)


@pytest.mark.slow
def test_records_from_several_processes_merge(tmp_path):
    code = (
        "import sys\nfrom pathlib import Path\nfrom vesselfm.utils.io import atomic_path\n"
        "for i in range(20):\n"
        "    with atomic_path(Path(sys.argv[1]) / f'{sys.argv[2]}_{i}.txt') as t:\n"
        "        t.write_text('x')\n"
    )
    procs = [start_code(code, str(tmp_path), name) for name in "ab"]
    assert all(p.wait(timeout=120) == 0 for p in procs)
    files = read_record(tmp_path)["files"]
    assert len(files) == 40 and foreign_files_in(tmp_path) == []


def test_a_damaged_record_is_one_clear_error(tmp_path):
    (tmp_path / RECORD_NAME).write_text("{not json")
    with pytest.raises(UserError, match=r"not a vesselfm output record.*move it away"):
        read_record(tmp_path)


def test_long_names_get_a_short_temporary_name(tmp_path):
    target = tmp_path / ("c" * 230 + "_pred.nii.gz")  # 242 bytes: the old temporary name had 260
    _write(target)
    assert target.is_file() and written_by_us(target)


def test_a_name_too_long_for_the_file_system_fails_before_writing(tmp_path):
    with pytest.raises(ValueError, match="more than the 255"):
        _write(tmp_path / ("c" * 250 + "_pred.nii.gz"))
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_processes_are_removed(tmp_path):
    pid = dead_pid()
    stale = tmp_path / f".1_pred.nii.gz.{_HOST}-{pid}.abcd1234.tmp.nii.gz"
    stale.write_text("half")
    live = tmp_path / f".2_pred.nii.gz.{_HOST}-{os.getpid()}.abcd1234.tmp.nii.gz"
    live.write_text("being written")
    # another machine's, in a shared folder: its pid means nothing here
    elsewhere = tmp_path / f".3_pred.nii.gz.0badc0de-{pid}.abcd1234.tmp.nii.gz"
    elsewhere.write_text("being written on another host")
    other = tmp_path / ".hidden.tmp"  # not ours by name
    other.write_text("x")
    notes = tmp_path / f".notes.{pid}.v1.tmp"  # a user's file of a similar shape
    notes.write_text("x")
    assert remove_stale_temporaries(tmp_path) == [stale]
    assert live.exists() and other.exists() and elsewhere.exists() and notes.exists()


def test_ctrl_c_waits_until_an_output_is_renamed_and_recorded(tmp_path):
    import signal

    from vesselfm.utils.io import _signals_deferred

    with pytest.raises(KeyboardInterrupt):
        with _signals_deferred():
            os.kill(os.getpid(), signal.SIGINT)  # held back
            _write(tmp_path / "1_pred.nii.gz")  # so this completes
        pytest.fail("the signal should arrive when the block ends")
    assert written_by_us(tmp_path / "1_pred.nii.gz")


def test_a_copied_output_is_hashed_once_then_known_by_its_new_time(tmp_path, monkeypatch):
    path = tmp_path / "1_prob.nii.gz"
    _write(path, "abc")
    os.utime(path, ns=(5, 5))  # as cp -r or a restored backup leaves it
    assert written_by_us(path)
    assert read_record(tmp_path)["files"][path.name]["mtime_ns"] == 5
    monkeypatch.setattr(outputs, "file_sha256", lambda p: pytest.fail("hashed again"))
    assert written_by_us(path)


def test_outputs_remember_the_input_they_were_made_from(tmp_path):
    scan = tmp_path / "a" / "ct.nii.gz"
    scan.parent.mkdir()
    scan.write_text("patient a")
    with outputs.written_from(scan):
        _write(tmp_path / "ct_pred.nii.gz")
    assert outputs.recorded_source(tmp_path / "ct_pred.nii.gz") == outputs.source_identity(scan)
    _write(tmp_path / "other.txt")  # outside the block: no input named
    assert outputs.recorded_source(tmp_path / "other.txt") is None


def test_python_api_runs_are_recorded_too(tmp_path, monkeypatch):
    monkeypatch.setattr(outputs, "_RUN", {})
    _write(tmp_path / "a.txt")
    (run,) = read_record(tmp_path)["runs"].values()
    assert run["tool"] == "vesselfm (Python API)"


def test_unrecorded_writes_stay_out_of_the_record(tmp_path):
    with atomic_path(tmp_path / "scratch.txt", record=False) as tmp:
        tmp.write_text("x")
    assert not (tmp_path / RECORD_NAME).exists()
