"""Cohort inference (``vesselfm.inference.cohort``): shares, status files, DDP, shards, resume.

One cohort of 6 small phantoms (and a broken file) serves every test: the single-process run
through the Python API is the reference every other run's bytes are compared with. Every run
uses one torch thread: on a CPU the probabilities' last bits depend on the thread count (the
order of float sums), and two DDP ranks on two cores get one thread each.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from cli import TINY_INFER, run_cli, start_cli
from synthetic import save_nifti, tube_phantom

from vesselfm.data.preprocessing import PreprocessConfig
from vesselfm.inference import SlidingWindowPredictor, segment_files
from vesselfm.inference.cohort import (
    parse_shard,
    read_status,
    share,
    status_name,
    weights_digest,
    write_run_summary,
)
from vesselfm.utils.outputs import read_record

CASES = [f"p{i}" for i in range(6)]


def _predictor(weights: Path, threshold: float = 0.5) -> SlidingWindowPredictor:
    """The network and settings of ``TINY_INFER`` with ``model.checkpoint=weights``."""
    from omegaconf import OmegaConf

    from vesselfm.models import build_network
    from vesselfm.utils.cli import _compose

    cfg = _compose("infer", ["input=x", *TINY_INFER])
    net = build_network(OmegaConf.to_container(cfg.model.net, resolve=True))
    net.load_state_dict(torch.load(weights))
    inference = {**OmegaConf.to_container(cfg.inference, resolve=True), "threshold": threshold}
    return SlidingWindowPredictor.from_config(
        net.eval(), inference, preprocess=PreprocessConfig(in_plane_size=32)
    )


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """``scans/p0..p5.img.nii.gz`` (small phantoms of different shapes), tiny weights, and the
    reference: the single-process run's outputs (``ref/``)."""
    root = tmp_path_factory.mktemp("cohort")
    for i, case in enumerate(CASES):
        image, _ = tube_phantom((40 + 2 * i, 36, 20 + i), seed=i)
        save_nifti(root / "scans" / f"{case}.img.nii.gz", image)
    from omegaconf import OmegaConf

    from vesselfm.models import build_network
    from vesselfm.utils.cli import _compose

    cfg = _compose("infer", ["input=x", *TINY_INFER])
    torch.manual_seed(0)
    net = build_network(OmegaConf.to_container(cfg.model.net, resolve=True))
    torch.save(net.state_dict(), root / "tiny.pt")
    scans = sorted((root / "scans").iterdir())
    result = segment_files(
        scans, _predictor(root / "tiny.pt"), root / "ref", progress=False, num_workers=1
    )
    assert result.segmented == 6 and result.failed == []
    return {"root": root, "scans": root / "scans", "weights": root / "tiny.pt", "ref": root / "ref"}


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.glob("*_pred.nii.gz"))
    }


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


# ----------------------------------------------------------------------------- pure functions
def test_shares_are_disjoint_cover_every_case_and_follow_the_sorted_ids() -> None:
    cases = {Path(f"/d/{c}.nii.gz"): c for c in ["e", "a", "d", "b", "c"]}  # unsorted input
    by_rank = [[c for _, c in share(cases, None, r, 2)] for r in range(2)]
    assert by_rank == [["a", "c", "e"], ["b", "d"]]
    shards = [[c for _, c in share(cases, parse_shard(f"{k}/2"))] for k in (1, 2)]
    assert shards == [["a", "c", "e"], ["b", "d"]]
    # a shard run on 2 devices splits its own share again
    assert [c for _, c in share(cases, (1, 2), 1, 2)] == ["c"]
    assert parse_shard(" 3 / 8 ") == (3, 8) and parse_shard(None) is None
    for bad in ("0/2", "3/2", "1", "a/b"):
        with pytest.raises(ValueError, match=r"^shard must be K/N with 1 <= K <= N"):
            parse_shard(bad)
    assert status_name(None, 1, 2) == "status-rank1.jsonl"
    assert status_name((2, 4), 0, 1) == "status-shard2of4.jsonl"
    assert status_name((2, 4), 1, 2) == "status-shard2of4-rank1.jsonl"


def test_the_weights_digest_takes_0_dim_buffers_and_tells_every_value_apart() -> None:
    # BatchNorm keeps num_batches_tracked as a 0-dim int64 buffer: viewing it as bytes unflattened
    # raised (a network with BatchNorm could not be segmented with at all)
    net = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.BatchNorm3d(2))
    first = weights_digest(net)
    assert len(first) == 64 and weights_digest(net) == first
    net[1].num_batches_tracked += 1
    assert weights_digest(net) != first
    net[1].num_batches_tracked -= 1
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0, 0] += 1e-3
    assert weights_digest(net) != first


def test_the_summary_merges_every_status_file_the_latest_line_winning(tmp_path: Path) -> None:
    lines = {
        "status-shard1of2.jsonl": [
            {"case": "a", "state": "failed", "reason": "x", "seconds": 1, "finished": "2026-01-01"},
            {"case": "a", "state": "done", "reason": None, "seconds": 2, "finished": "2026-01-02"},
        ],
        "status-shard2of2.jsonl": [
            {
                "case": "b",
                "state": "failed",
                "reason": "b.nii.gz: bad",
                "seconds": 0.5,
                "finished": "2026-01-01",
            },
            {
                "case": "c",
                "state": "skipped",
                "reason": None,
                "seconds": 0,
                "finished": "2026-01-01",
            },
        ],
    }
    for name, rows in lines.items():
        text = "".join(json.dumps(r) + "\n" for r in rows)
        (tmp_path / name).write_text(text + '{"case": "d", "sta')  # a line cut short by a kill
    latest, files = read_status(tmp_path)
    assert files == sorted(lines) and latest["a"]["state"] == "done" and "d" not in latest
    summary = write_run_summary(tmp_path, ["a", "b", "c", "d"])
    assert json.loads((tmp_path / "run_summary.json").read_text()) == summary
    assert (summary["expected"], summary["done"], summary["skipped"]) == (4, 1, 1)
    assert summary["failed"] == {"b": "b.nii.gz: bad"} and summary["pending"] == ["d"]
    assert summary["complete"] is False and summary["seconds_per_scan"] == 2.0


# ----------------------------------------------------------------------------- runs
def test_shards_write_each_case_once_with_the_reference_bytes_and_resume_by_settings(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    scans = sorted(cohort["scans"].iterdir())
    out = tmp_path / "out"
    predictor = _predictor(cohort["weights"])
    for k in (1, 2):
        result = segment_files(scans, predictor, out, shard=f"{k}/2", progress=False)
        assert (result.segmented, result.skipped, result.failed) == (3, 0, [])
    one = _lines(out / "status-shard1of2.jsonl")
    two = _lines(out / "status-shard2of2.jsonl")
    assert [r["case"] for r in one] == ["p0", "p2", "p4"]
    assert [r["case"] for r in two] == ["p1", "p3", "p5"]
    assert {r["state"] for r in one + two} == {"done"} and {r["shard"] for r in two} == {"2/2"}
    assert _digests(out) == _digests(cohort["ref"])
    summary = json.loads((out / "run_summary.json").read_text())  # the last shard's merge
    assert (summary["done"], summary["pending"], summary["complete"]) == (6, [], True)

    # resume: same weights and settings skip, another threshold redoes the case
    again = segment_files(scans[:2], predictor, out, shard="1/2", progress=False)
    assert [(r["case"], r["skipped"]) for r in again.cases] == [("p0", True)]
    other = segment_files(scans[:2], _predictor(cohort["weights"], 0.7), out, progress=False)
    assert [(r["case"], r["skipped"]) for r in other.cases] == [("p0", False), ("p1", False)]
    record = read_record(out)
    run = record["runs"][record["files"]["p0_pred.nii.gz"]["run"]]
    assert run["prediction"]["threshold"] == 0.7
    assert (
        run["prediction"]["weights_sha256"]
        == hashlib.sha256(
            b"".join(
                f"{n}|{t.dtype}|{tuple(t.shape)}".encode()
                + t.contiguous().view(torch.uint8).numpy().tobytes()
                for n, t in torch.load(cohort["weights"]).items()
            )
        ).hexdigest()
    )


@pytest.mark.slow
def test_two_gloo_processes_write_each_case_once_and_a_bad_scan_is_in_the_summary(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for scan in cohort["scans"].iterdir():
        (scans / scan.name).symlink_to(scan)
    (scans / "p3x.nii.gz").write_text("not an image")  # between p3 and p4 in sorted order
    out = tmp_path / "out"
    proc = run_cli(
        "vesselfm.infer",
        f"input={scans}",
        f"output={out}",
        *TINY_INFER,
        f"model.checkpoint={cohort['weights']}",
        "inference.device=cpu",
        "devices=2",
        "num_workers=1",
        "threads=1",
        cwd=tmp_path,
        timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "1 of 7 scans failed" in errors[0] and "p3x" in errors[0]
    rank0, rank1 = _lines(out / "status-rank0.jsonl"), _lines(out / "status-rank1.jsonl")
    # sorted ids p0 p1 p2 p3 p3x p4 p5: every other one per rank
    assert [r["case"] for r in rank0] == ["p0", "p2", "p3x", "p5"]
    assert [r["case"] for r in rank1] == ["p1", "p3", "p4"]
    states = {r["case"]: r["state"] for r in rank0 + rank1}
    assert states == {**dict.fromkeys(CASES, "done"), "p3x": "failed"}
    assert _digests(out) == _digests(cohort["ref"])  # the single process's bytes
    summary = json.loads((out / "run_summary.json").read_text())
    assert summary["done"] == 6 and list(summary["failed"]) == ["p3x"]
    assert "p3x.nii.gz" in summary["failed"]["p3x"] and summary["complete"] is False
    assert summary["status_files"] == ["status-rank0.jsonl", "status-rank1.jsonl"]


@pytest.mark.slow
def test_a_run_killed_midway_is_resumed_doing_only_the_missing_cases(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    status = out / "status-rank0.jsonl"
    args = [
        f"input={cohort['scans']}",
        f"output={out}",
        *TINY_INFER,
        f"model.checkpoint={cohort['weights']}",
        "num_workers=1",
        "threads=1",
    ]
    proc = start_cli("vesselfm.infer", *args, cwd=tmp_path, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (status.exists() and len(status.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "ended before 2 cases"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    finished = sorted(p.name.split("_")[0] for p in out.glob("*_pred.nii.gz"))
    assert 2 <= len(finished) < 6, finished

    result = segment_files(
        sorted(cohort["scans"].iterdir()), _predictor(cohort["weights"]), out, progress=False
    )
    assert sorted(r["case"] for r in result.cases if r["skipped"]) == finished
    redone = _lines(status)
    assert sorted(r["case"] for r in redone if r["state"] == "done") == sorted(
        set(CASES) - set(finished)
    )
    assert _digests(out) == _digests(cohort["ref"])
    assert not list(out.glob(".*.tmp*"))  # the killed run's temporary file was removed
