"""Cohort inference through Lightning's ``Trainer.predict``: pipelined I/O, shares, status files.

The one path behind :func:`vesselfm.inference.segment_files` (and so ``python -m vesselfm.infer``),
on one device or many:

- **Shares.** The cases are sorted by case id; ``shard=K/N`` keeps every N-th case from the K-th,
  then each of the run's ``world_size`` processes (``devices`` × ``num_nodes``, Lightning's DDP,
  under ``torchrun``/SLURM or started by Lightning) keeps every ``world_size``-th case of that from
  its rank. Shares are taken before finished cases are skipped, so a rerun keeps every case on the
  same rank and shard.
- **Pipelined I/O.** DataLoader workers read and preprocess the next scans (one each:
  ``prefetch_factor=1``) while the network predicts the current one; a writer thread resamples
  the probabilities back, thresholds and writes them, so the predicting thread never waits on
  gzip. At most one prediction waits for the writer.
- **Resume.** A case is skipped when all its outputs exist and the folder's output record
  (:mod:`vesselfm.utils.outputs`) says this tool wrote them with the same weights and prediction
  settings (:func:`prediction_settings`); our outputs from other settings are redone.
- **Status.** Each process writes ``status-<rank|shard>.jsonl`` into the output folder, one line
  per case (``case``, ``state`` done/skipped/failed, ``reason``, ``seconds``, ...); at the end,
  ``run_summary.json`` merges every status file present (the latest line per case wins), so
  job-array shards merge without a coordinator.

A case that fails (unreadable, out of memory after the retries, a write error) is recorded and
the others go on.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
import queue
import re
import threading
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from vesselfm.utils.errors import UserError

if TYPE_CHECKING:
    from vesselfm.inference.batch import BatchResult
    from vesselfm.inference.predictor import SlidingWindowPredictor
    from vesselfm.io import Volume

log = logging.getLogger(__name__)

SUMMARY_NAME = "run_summary.json"
STATUS_GLOB = "status-*.jsonl"
STATES = ("done", "skipped", "failed")
_SHARD = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


# ----------------------------------------------------------------------------- shares
def parse_shard(shard: str | Sequence[int] | None) -> tuple[int, int] | None:
    """``"K/N"`` (1-based, as ``sbatch --array=1-N`` counts) → ``(K, N)``; ``None`` stays ``None``.

    Raises:
        ValueError: not ``K/N`` with ``1 <= K <= N``.
    """
    if shard is None or (isinstance(shard, str) and not shard.strip()):
        return None
    if isinstance(shard, str):
        match = _SHARD.match(shard)
        values = (int(match[1]), int(match[2])) if match else None
    else:
        values = tuple(int(v) for v in shard) if len(shard) == 2 else None
    if values is None or not 1 <= values[0] <= values[1]:
        raise ValueError(
            f"shard must be K/N with 1 <= K <= N (the K-th of N shares, e.g. "
            f"shard=$SLURM_ARRAY_TASK_ID/8), got {shard!r}"
        )
    return values  # type: ignore[return-value]


def share(
    cases: Mapping[Path, str], shard: tuple[int, int] | None, rank: int = 0, world_size: int = 1
) -> list[tuple[Path, str]]:
    """The ``(scan, case id)`` pairs of one process: the cases sorted by id, then every N-th from
    the K-th (``shard``), then every ``world_size``-th of those from ``rank``.

    Args:
        cases: every case of the run, ``{scan: case id}`` (ids unique).
        shard: ``(K, N)`` from :func:`parse_shard`, or ``None`` (one share).
        rank, world_size: this process among the run's (DDP).
    """
    ordered = sorted(((Path(p), c) for p, c in cases.items()), key=lambda pc: pc[1])
    if shard is not None:
        ordered = ordered[shard[0] - 1 :: shard[1]]
    return ordered[rank::world_size]


def status_name(shard: tuple[int, int] | None, rank: int, world_size: int) -> str:
    """``status-rank<R>.jsonl``, ``status-shard<K>of<N>.jsonl`` or both joined (a shard run on
    several devices)."""
    parts = []
    if shard is not None:
        parts.append(f"shard{shard[0]}of{shard[1]}")
    if shard is None or world_size > 1:
        parts.append(f"rank{rank}")
    return f"status-{'-'.join(parts)}.jsonl"


# ----------------------------------------------------------------------------- resume
def weights_digest(network: torch.nn.Module) -> str:
    """SHA-256 of a network's state dict (names, dtypes, shapes, values): the weights' identity,
    whichever file they came from."""
    digest = hashlib.sha256()
    for name, tensor in network.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        # flattened first: a 0-dim tensor (BatchNorm's num_batches_tracked) cannot be viewed as
        # bytes of another element size
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()


def prediction_settings(predictor: SlidingWindowPredictor) -> dict[str, Any]:
    """What a case's outputs depend on: the weights' digest, the device type, the resolved
    precision and every prediction setting (windows, TTA, post-processing, preprocessing,
    threshold). Recorded with each output; resume skips only outputs with equal settings."""
    device = predictor.compute_device()

    def plain(value: Any) -> Any:
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    settings = {
        "weights_sha256": weights_digest(predictor.network),
        "device": device.type,
        "precision": predictor.resolved_precision(device),
        "roi_size": list(predictor.roi_size),
        "overlap": predictor.overlap,
        "mode": predictor.mode,
        "sigma_scale": predictor.sigma_scale,
        "padding_mode": predictor.padding_mode,
        "threshold": predictor.threshold,
        "tta": plain(predictor.tta),
        "postprocess": plain(predictor.postprocess),
        "preprocess": predictor.preprocess.to_dict(),
    }
    if device.type == "cpu":
        settings["channels_last"] = bool(predictor.cpu.channels_last)
    for key in ("backend",):  # an engine choice, where the predictor has one
        if hasattr(predictor, key):
            settings[key] = str(getattr(predictor, key))
    return json.loads(json.dumps(settings, default=str))


def written_with(targets: Sequence[Path], settings: Mapping[str, Any]) -> bool:
    """Whether every file in ``targets`` is recorded as written under a run whose prediction
    settings are ``settings``."""
    from vesselfm.utils.outputs import read_record

    if not targets:
        return False
    record = read_record(targets[0].parent)
    for target in targets:
        entry = record["files"].get(target.name) or {}
        run = record["runs"].get(entry.get("run"), {})
        if run.get("prediction") != settings:
            return False
    return True


# ----------------------------------------------------------------------------- status files
def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds")


class StatusFile:
    """``status-<rank|shard>.jsonl``: one JSON line per case, flushed as it is written, so a run
    killed midway leaves the lines of what it finished."""

    def __init__(self, path: Path, fields: Mapping[str, Any]) -> None:
        self.path = path
        self.fields = dict(fields)
        self._fh = open(path, "w", encoding="utf-8")  # noqa: SIM115 - open for the whole run
        self._lock = threading.Lock()

    def write(self, line: Mapping[str, Any]) -> None:
        with self._lock:
            self._fh.write(json.dumps({**line, **self.fields, "finished": _now()}) + "\n")
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.close()
                from vesselfm.utils.outputs import file_entry, record_entries

                record_entries(self.path.parent, {self.path.name: file_entry(self.path)})


def read_status(output_dir: str | os.PathLike[str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """``({case: its latest status line}, [status files read])`` of every status file in
    ``output_dir``; a line cut short by a kill is ignored."""
    latest: dict[str, dict[str, Any]] = {}
    files = sorted(Path(output_dir).glob(STATUS_GLOB))
    for path in files:
        for text in path.read_text(encoding="utf-8").splitlines():
            try:
                line = json.loads(text)
            except ValueError:
                continue
            case = line.get("case")
            if case is None:
                continue
            if case not in latest or line.get("finished", "") >= latest[case].get("finished", ""):
                latest[case] = line
    return latest, [p.name for p in files]


def write_run_summary(output_dir: Path, expected: Sequence[str]) -> dict[str, Any]:
    """Merge every status file in ``output_dir`` into ``run_summary.json`` (atomic) and return it.

    Args:
        output_dir: the output folder.
        expected: every case id of the run (all shares), to list those without a status line.
    """
    from vesselfm.utils.io import atomic_path

    latest, files = read_status(output_dir)
    counts = {
        state: sorted(c for c, r in latest.items() if r.get("state") == state) for state in STATES
    }
    done = [latest[c] for c in counts["done"]]
    seconds = sum(float(r.get("seconds") or 0.0) for r in done)
    summary = {
        "expected": len(expected),
        "done": len(counts["done"]),
        "skipped": len(counts["skipped"]),
        "failed": {c: latest[c].get("reason") for c in counts["failed"]},
        "pending": sorted(set(expected) - set(latest)),
        "complete": set(expected) <= set(counts["done"]) | set(counts["skipped"]),
        "seconds_per_scan": seconds / len(done) if done else None,
        "status_files": files,
        "written": _now(),
    }
    with atomic_path(output_dir / SUMMARY_NAME) as tmp:
        tmp.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    return summary


# ----------------------------------------------------------------------------- the pipeline
@dataclasses.dataclass
class Job:
    """One case of this process's share."""

    index: int  # in the caller's input order
    path: Path
    case: str
    targets: dict[str, Any]  # the output paths: preds, probs, mesh


@dataclasses.dataclass
class _Written:
    """What writing one case leaves for its record: when its resampling ended, what scoring
    needs, and extra fields for its status line."""

    t1: float
    scored: dict[str, Any]
    extra: dict[str, Any]


def _identity(item: Any) -> Any:  # the DataLoader's collate_fn (module level: picklable)
    return item


def _grid_only(scan: Volume) -> Volume:
    # the writer needs the scan's grid and header only, not its intensities: a worker sends
    # this, so a full-size float32 scan never crosses a process boundary
    return dataclasses.replace(scan, array=np.zeros(0, np.uint8))


def _with_shape(grid: Volume, shape: tuple[int, int, int]) -> Volume:
    return dataclasses.replace(grid, array=np.broadcast_to(np.uint8(0), shape))


class ScanDataset(torch.utils.data.Dataset):
    """Reads and preprocesses one scan per item, in a DataLoader worker. A scan that cannot be
    read gives ``{"index", "error"}`` instead of raising, so the loader goes on."""

    def __init__(self, jobs: Sequence[Job], preprocess: Any) -> None:
        from vesselfm.io.dicom import current_selection

        self.jobs = list(jobs)
        self.preprocess = preprocess
        # series=/phase=/dicom.resample= in effect now: a context variable does not reach a
        # worker process started by spawn (or forkserver), so the workers are given it
        self.dicom = current_selection()

    def __len__(self) -> int:
        return len(self.jobs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        from types import SimpleNamespace

        from vesselfm.inference.predictor import SlidingWindowPredictor
        from vesselfm.io import read_volume
        from vesselfm.io.dicom import selection

        job = self.jobs[i]
        t0 = time.perf_counter()
        try:
            with selection(self.dicom.series, self.dicom.phase, self.dicom.resample):
                scan = read_volume(job.path, dtype=np.float32)
            # the predictor's own preprocessing, without the network (not sent to workers)
            prepared = SlidingWindowPredictor.preprocess_array(
                SimpleNamespace(preprocess=self.preprocess),  # type: ignore[arg-type]
                scan.array,
                scan.affine,
            )
        except Exception as err:  # noqa: BLE001 - one bad scan must not stop the loader
            return {"index": i, "error": _reason(err, job.path), "read": time.perf_counter() - t0}
        return {
            "index": i,
            "grid": _grid_only(scan),
            "shape": scan.shape,
            "prepared": torch.from_numpy(prepared),
            "read": time.perf_counter() - t0,
        }


def _reason(err: BaseException, path: Path) -> str:
    from vesselfm.inference.batch import _reason as reason

    return reason(err, path)  # type: ignore[arg-type]


class CohortRun:
    """The state one process shares between the data module, the model and the writer."""

    def __init__(
        self,
        cases: Mapping[Path, str],
        predictor: SlidingWindowPredictor,
        output_dir: Path,
        result: BatchResult,
        *,
        shard: tuple[int, int] | None,
        options: Mapping[str, Any],
        settings: Mapping[str, Any],
        pairs: Mapping[str, Path | None] | None,
        num_workers: int,
        progress: bool,
        stop_on_error: bool,
    ) -> None:
        self.cases = dict(cases)
        self.order = {Path(p): i for i, p in enumerate(self.cases)}
        self.predictor = predictor
        self.output_dir = output_dir
        self.result = result
        self.shard = shard
        self.options = dict(options)
        self.settings = dict(settings)
        self.pairs = pairs
        self.num_workers = num_workers
        self.progress = progress
        self.stop_on_error = stop_on_error
        self.jobs: list[Job] = []
        self.done: list[tuple[int, dict[str, Any]]] = []
        self.failed: list[tuple[int, str, str, str]] = []
        self.status: StatusFile | None = None
        self.rank = 0
        self.world_size = 1
        self.bar: Any = None
        self._predicted = 0
        # a segment model (more than one output class): label maps of codes, not 0/1 masks
        self.num_classes = int(self.options.get("num_classes") or 1)

    # ------------------------------------------------------------------ planning (per rank)
    def plan(self, rank: int, world_size: int) -> list[Job]:
        """This process's share, with finished cases skipped and refused ones failed."""
        from vesselfm.io import (
            check_case_id,
            check_case_outputs,
            format_of,
            output_formats_for,
            output_name,
            output_paths,
        )

        self.rank, self.world_size = rank, world_size
        name = status_name(self.shard, rank, world_size)
        fields = (
            {"rank": rank}
            if self.shard is None
            else {"shard": f"{self.shard[0]}/{self.shard[1]}", "rank": rank}
        )
        # a run of one scan says it all in its exit status and message: no status file
        if len(self.cases) > 1 or self.shard is not None or world_size > 1:
            self.status = StatusFile(self.output_dir / name, fields)
        mine = share(self.cases, self.shard, rank, world_size)
        where = f"rank {rank} of {world_size}"
        if self.shard is not None:
            where = f"shard {self.shard[0]}/{self.shard[1]}, {where}"
        log.info("%s: %d of %d case(s) (%s)", name, len(mine), len(self.cases), where)
        jobs = []
        for path, case in mine:
            index = self.order[path]
            try:
                check_case_id(path, case, "input")
                formats = output_formats_for(path, self.options["output_format"])
                per_format = [
                    output_paths(self.output_dir, case, f, format_of(path)) for f in formats
                ]
                paths = per_format[0]
                preds = [p["pred"] for p in per_format]
                probs = (
                    list(dict.fromkeys(p["prob"] for p in per_format))
                    if self.options["save_prob"]
                    else []
                )
                if probs and self.num_classes > 1:  # per-class: one 4D NIfTI, any format
                    probs = [self.output_dir / output_name(case, "probability")]
                mesh = paths["mesh"] if self.options["save_mesh"] else None
                files = [*preds, *probs] + ([mesh] if mesh else [])
                targets = {
                    "formats": formats,
                    "paths": paths,
                    "preds": preds,
                    "probs": probs,
                    "mesh": mesh,
                    "files": files,
                }
                overwrite = self.options["overwrite"]
                if check_case_outputs(files, overwrite, source=path) and written_with(
                    files, self.settings
                ):
                    self._skip(index, path, case, targets)
                    continue
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - a case refused before its work
                self._fail(index, path, case, err, 0.0)
                if self.stop_on_error:
                    raise
                continue
            jobs.append(Job(index, path, case, targets))
        self.jobs = jobs
        if self.progress and rank == 0 and len(mine) > 1:
            self.bar = _CohortBar(len(mine), initial=len(mine) - len(jobs), desc=name[7:-6])
        return jobs

    def _status(self, line: Mapping[str, Any]) -> None:
        if self.status is not None:
            self.status.write(line)

    def _skip(self, index: int, path: Path, case: str, targets: Mapping[str, Any]) -> None:
        log.info(
            "%s: outputs exist in %s, skipped (overwrite=true redoes them)", case, self.output_dir
        )
        done = self._record(path, case, targets, skipped=True)
        scored = self._score(done, None) if self.pairs is not None else {}
        self.done.append((index, done))
        self._status(
            {
                "case": case,
                "input": str(path),
                "state": "skipped",
                "reason": None,
                "seconds": 0.0,
                **scored,
            }
        )

    def _record(
        self, path: Path, case: str, targets: Mapping[str, Any], skipped: bool
    ) -> dict[str, Any]:
        paths = targets["paths"]
        wanted = (
            ["pred"]
            + (["prob"] if self.options["save_prob"] else [])
            + (["mesh"] if self.options["save_mesh"] else [])
        )
        return {
            "case": case,
            "input": path,
            "format": targets["formats"][0],
            "formats": list(targets["formats"]),
            "skipped": skipped,
            **{k: paths[k] for k in wanted},
            "preds": list(targets["preds"]),
            "files": list(targets["files"]),
        }

    def _fail(
        self, index: int, path: Path, case: str, err: BaseException | str, seconds: float
    ) -> None:
        reason = err if isinstance(err, str) else _reason(err, path)
        log.error("failed: %s", reason)
        if isinstance(err, BaseException):
            log.debug("traceback of %s", path, exc_info=err)
        self.failed.append((index, str(path), case, reason))
        self._status(
            {
                "case": case,
                "input": str(path),
                "state": "failed",
                "reason": reason,
                "seconds": round(seconds, 3),
            }
        )
        if self.bar is not None:
            self.bar.step(failed=True)

    # ------------------------------------------------------------------ writing (writer thread)
    def finish(self, item: Mapping[str, Any]) -> None:
        """Write and score one predicted case (lumen or segments); record its status."""
        job = self.jobs[item["index"]]
        if item.get("error"):
            self._fail(job.index, job.path, job.case, item["error"], item.get("read", 0.0))
            if self.stop_on_error:
                raise UserError(item["error"])
            return
        write = self._write_segments if "labels" in item else self._write_lumen
        try:
            t0 = time.perf_counter()
            written = write(item, job)
            t2 = time.perf_counter()
            done = self._record(job.path, job.case, job.targets, skipped=False)
            done["shape"] = item["shape"]
            done.update(written.extra)
            done["timings"] = {
                "read": item["read"],
                "predict": item["predict"] + (written.t1 - t0),
                "postprocess": 0.0,
                "write": t2 - written.t1,
                "total": item["read"] + item["predict"] + (t2 - t0),
            }
            scored = self._score(done, written.scored) if self.pairs is not None else {}
        except KeyboardInterrupt:
            raise
        except Exception as err:  # noqa: BLE001 - one bad case must not stop the others
            self._fail(job.index, job.path, job.case, err, time.perf_counter() - t0)
            if self.stop_on_error:
                raise
            return
        self._finished(job, done, scored)

    def _write_lumen(self, item: Mapping[str, Any], job: Job) -> _Written:
        """A lumen model's case: probabilities resampled back, thresholded, written as
        predict_file writes them (probabilities, mesh, masks)."""
        from vesselfm.data.preprocessing import resample_probabilities
        from vesselfm.inference.predictor import mesh_writer
        from vesselfm.io import write_like
        from vesselfm.utils.outputs import written_from

        targets = job.targets
        writer = mesh_writer() if targets["mesh"] is not None else None
        prob = resample_probabilities(item["prob"], item["shape"])
        mask = self.predictor.binarize(prob, item["grid"].spacing)
        t1 = time.perf_counter()
        scan = _with_shape(item["grid"], item["shape"])
        with written_from(job.path):
            if targets["probs"]:
                clipped = np.clip(np.asarray(prob, np.float32), 0.0, 1.0)
                for target in targets["probs"]:
                    write_like(clipped, scan, target)
            if writer is not None:
                writer(mask, scan.affine, targets["mesh"])
            binary = (np.asarray(mask) > 0).astype(np.uint8)
            for target in targets["preds"]:
                write_like(binary, scan, target)
        return _Written(t1, {"prob": prob, "mask": mask, "scan": scan}, {})

    def _write_segments(self, item: Mapping[str, Any], job: Job) -> _Written:
        """A segment model's case: the label map nearest back onto the scan's grid, written with
        named segments (:mod:`vesselfm.inference.segments`)."""
        from vesselfm.inference import segments
        from vesselfm.utils.outputs import written_from

        targets = job.targets
        labels = segments.nearest_onto(item["labels"], item["shape"])
        t1 = time.perf_counter()
        scan = _with_shape(item["grid"], item["shape"])
        with written_from(job.path):  # probabilities, meshes, label maps last
            for target in targets["probs"]:
                segments.write_class_probabilities(item["probs"], scan, target)
            if targets["mesh"] is not None:
                segments.write_segment_meshes(labels, scan.affine, targets["mesh"])
            segments.write_labels(labels, scan, targets["preds"])
        present = sorted(set(np.unique(labels).tolist()) - {0})
        return _Written(t1, {"prob": None, "mask": labels, "scan": scan}, {"segments": present})

    def _finished(self, job: Job, done: dict[str, Any], scored: Mapping[str, Any]) -> None:
        t = done["timings"]
        log.info(
            "%s: %s in %.1f s (read %.1f, predict %.1f, write %.1f)",
            job.case,
            done["pred"],
            t["total"],
            t["read"],
            t["predict"],
            t["write"],
        )
        self.done.append((job.index, done))
        self._predicted += 1
        self._status(
            {
                "case": job.case,
                "input": str(job.path),
                "state": "done",
                "reason": None,
                "seconds": round(t["total"], 3),
                **scored,
            }
        )
        if self.bar is not None:
            self.bar.step()

    def _score(self, done: dict[str, Any], arrays: Mapping[str, Any] | None) -> dict[str, Any]:
        """Score a case against its label (as ``evaluate`` does); its status line's fields."""
        from vesselfm.inference.batch import _score

        case = done["case"]
        label_path = self.pairs[case]
        if label_path is None:
            self.result.missing_labels.append(case)
            log.error(
                "%s: no label for case %s in %s; segmented, not scored",
                Path(done["input"]).name,
                case,
                self.result.labels_from,
            )
            return {"missing_label": True}
        if arrays is not None:
            done = {**done, "arrays": arrays}
        # a segment model's per-class probabilities are no vessel probability to rank by
        row = _score(
            case, done, label_path, self.predictor.threshold, with_prob=self.num_classes == 1
        )
        self.result.metrics.append(row)
        return {"metrics": row}


class _CohortBar:
    """The cohort's progress bar: scans done of this share, scans/hour and the ETA of the rest."""

    def __init__(self, total: int, initial: int, desc: str) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(
            total=total,
            initial=initial,
            desc=desc,
            unit="scan",
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} scans{postfix} ETA {remaining}",
        )
        self.start = time.perf_counter()
        self.new = 0
        self.bar.set_postfix_str("-- scans/h")

    def step(self, failed: bool = False) -> None:
        self.new += 1
        rate = self.new / max(time.perf_counter() - self.start, 1e-9) * 3600.0
        self.bar.set_postfix_str(f"{rate:.0f} scans/h", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


# ----------------------------------------------------------------------------- Lightning
def _lightning_classes() -> tuple[type, type, type]:
    """The data module, module and writer callback (defined lazily: Lightning imports slowly)."""
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import BasePredictionWriter

    class CohortDataModule(pl.LightningDataModule):
        def __init__(self, run: CohortRun) -> None:
            super().__init__()
            self.run = run

        def predict_dataloader(self) -> torch.utils.data.DataLoader:
            trainer = self.trainer
            jobs = self.run.plan(trainer.global_rank, trainer.world_size)
            workers = self.run.num_workers if jobs else 0
            return torch.utils.data.DataLoader(
                ScanDataset(jobs, self.run.predictor.preprocess),
                batch_size=None,
                shuffle=False,
                num_workers=workers,
                collate_fn=_identity,
                # one scan read ahead per worker: memory stays one full-size scan per worker
                prefetch_factor=1 if workers else None,
            )

        def transfer_batch_to_device(
            self, batch: Any, device: torch.device, dataloader_idx: int
        ) -> Any:
            return batch  # the predictor moves the volume (a scan's grid is not a tensor)

    class CohortModule(pl.LightningModule):
        def __init__(self, run: CohortRun, predictor: SlidingWindowPredictor) -> None:
            super().__init__()
            self.network = predictor.network  # Lightning places it on this rank's device
            self.run = run
            self.predictor = predictor

        def predict_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, Any]:
            if batch.get("error"):
                return batch
            t0 = time.perf_counter()
            try:
                if self.run.num_classes > 1:
                    from vesselfm.inference.segments import predict_segments

                    batch["labels"], batch["probs"] = predict_segments(
                        self.predictor,
                        batch.pop("prepared"),
                        self.run.num_classes,
                        probabilities=bool(self.run.options["save_prob"]),
                    )
                else:
                    prob = self.predictor.predict_volume(batch.pop("prepared")[None, None])[0, 0]
                    batch["prob"] = prob.float().cpu()
            except KeyboardInterrupt:
                raise
            except Exception as err:  # noqa: BLE001 - recorded by the writer, the others go on
                if self.run.stop_on_error:
                    raise
                batch["error"] = _reason(err, self.run.jobs[batch["index"]].path)
            batch["predict"] = time.perf_counter() - t0
            return batch

    class CohortWriter(BasePredictionWriter):
        """Hands each prediction to a writer thread (one waiting at most), named by case id."""

        def __init__(self, run: CohortRun) -> None:
            super().__init__(write_interval="batch")
            self.run = run
            self.queue: queue.Queue[Any] = queue.Queue(maxsize=1)
            self.error: BaseException | None = None
            self.thread: threading.Thread | None = None
            self.stop = threading.Event()

        def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
            self.thread = threading.Thread(target=self._loop, name="vesselfm-writer", daemon=True)
            self.thread.start()

        def _loop(self) -> None:
            while True:
                item = self.queue.get()
                if item is None:
                    return
                if self.stop.is_set() or self.error is not None:
                    continue
                try:
                    self.run.finish(item)
                except BaseException as err:  # noqa: BLE001 - handed to the predicting thread
                    self.error = err

        def write_on_batch_end(
            self,
            trainer: Any,
            pl_module: Any,
            prediction: Any,
            batch_indices: Any,
            batch: Any,
            batch_idx: int,
            dataloader_idx: int,
        ) -> None:
            if self.error is not None:
                raise self.error
            self.queue.put(prediction)

        def _join(self) -> None:
            if self.thread is not None and self.thread.is_alive():
                self.queue.put(None)
                self.thread.join()

        def on_predict_end(self, trainer: Any, pl_module: Any) -> None:
            self._join()
            if self.error is not None:
                raise self.error
            trainer.strategy.barrier("vesselfm-cohort-written")

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            self.stop.set()  # the case being written is finished (atomic), the rest dropped
            self._join()
            if isinstance(exception, KeyboardInterrupt):
                # Lightning would exit(1) here; the entrypoint says interrupted/terminated (130/143)
                from lightning.pytorch.strategies.launchers.subprocess_script import (
                    _SubprocessScriptLauncher,
                )

                launcher = trainer.strategy.launcher
                if isinstance(launcher, _SubprocessScriptLauncher):
                    import signal

                    launcher.kill(signal.SIGKILL)
                raise exception

    return CohortDataModule, CohortModule, CohortWriter


def run_cohort(run: CohortRun, devices: int, num_nodes: int) -> tuple[int, int]:
    """Predict this process's share through ``Trainer.predict``; returns ``(rank, world_size)``."""
    import signal

    import lightning.pytorch as pl

    data_cls, module_cls, writer_cls = _lightning_classes()
    device = run.predictor.compute_device()
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    distributed = devices * num_nodes > 1 or int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        strategy: Any = "ddp"
        # each rank's network is where Lightning put it (cuda:<local rank>), not inference.device
        predictor = run.predictor.in_place()
    else:
        from lightning.pytorch.strategies import SingleDeviceStrategy

        strategy = SingleDeviceStrategy(device=device)
        predictor = run.predictor
    quiet = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = quiet.level
    if not distributed:
        quiet.setLevel(logging.WARNING)  # "GPU available: ..." says nothing for one device
    sigint = signal.getsignal(signal.SIGINT)
    writer = writer_cls(run)
    trainer = pl.Trainer(
        accelerator=accelerator,
        devices=devices if distributed else 1,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,  # shares are ours: by case id, never padded
        inference_mode=False,  # the predictor runs its own inference mode
        callbacks=[writer],
        default_root_dir=str(run.output_dir),
    )
    try:
        with warnings.catch_warnings():
            # one case per batch, shares by case id, empty shares allowed: Lightning's hints on
            # batch indices and empty loaders do not apply
            warnings.filterwarnings("ignore", message=".*infer the batch indices.*")
            warnings.filterwarnings("ignore", message=".*across ranks is zero.*")
            trainer.predict(
                module_cls(run, predictor), datamodule=data_cls(run), return_predictions=False
            )
    except RuntimeError as err:
        if "DataLoader worker" not in str(err):
            raise
        # a worker killed from outside (the OOM killer, a signal sent to it alone)
        raise UserError(
            f"a loader worker reading scans for {run.output_dir} died "
            f"({str(err).strip().splitlines()[0]}); finished outputs are kept: rerun the same "
            "command to go on (num_workers=0 reads in the predicting process, with less memory)"
        ) from err
    finally:
        quiet.setLevel(level)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN and sigint is not signal.SIG_IGN:
            signal.signal(signal.SIGINT, sigint)  # Lightning ignores Ctrl-C while it shuts down
        if run.bar is not None:
            run.bar.close()
        if run.status is not None:
            run.status.close()
    return trainer.global_rank, trainer.world_size


__all__ = [
    "SUMMARY_NAME",
    "CohortRun",
    "Job",
    "ScanDataset",
    "StatusFile",
    "parse_shard",
    "prediction_settings",
    "read_status",
    "run_cohort",
    "share",
    "status_name",
    "weights_digest",
    "write_run_summary",
    "written_with",
]
