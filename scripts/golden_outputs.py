"""Record, and compare, the outputs of every entrypoint on fixed phantoms (golden outputs).

A refactor that must not change behaviour (issue #15) is checked by running this script on the
code before and after, then comparing the two records:

    python scripts/golden_outputs.py record --work /tmp/golden-before --out before.json
    # ... change the code ...
    python scripts/golden_outputs.py record --work /tmp/golden-after --out after.json
    python scripts/golden_outputs.py compare before.json after.json

``record`` runs, through the command lines users run (``python -m vesselfm.X``), in one work
folder: ``phantom`` (4 small cases), ``prepare`` on them, a shrunk ``train experiment=phantom_demo``
(3 training phantoms, 3 epochs of 8 steps, then its test metrics and demo segmentation), ``infer``
with the demo's best checkpoint on the phantoms (with ``label=``, probabilities and meshes), and
``evaluate`` on those predictions. Every file written is digested by content: arrays (NIfTI,
``.npy``, checkpoint tensors) by the sha256 of their bytes plus shape, dtype and affine; CSV and
JSON by their values (keys holding times, dates, paths or hosts left out); STL, PNG and HTML by
their bytes with run-specific ids removed. ``compare`` lists every file and value that differs
(numbers within a relative 1e-9 count as equal) and exits 1 when any does.

Everything runs with ``threads=2`` and fixed seeds, so a record is reproducible on one machine;
records from different CPUs may differ in the last bits of trained weights.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# Keys whose values change from run to run (or machine to machine), not with behaviour.
VOLATILE = re.compile(
    r"(time|date|duration|second|elapsed|path|dir|host|version|created|started|finished|"
    r"pid|user|python|torch|cpu|device|threads|command|argv|cwd|source|checkpoint_sha|mtime)",
    re.IGNORECASE,
)
# Run-specific tokens inside text outputs (plotly's div ids, uuids, absolute work paths).
RUN_TOKENS = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SKIP_NAMES = {".vesselfm-outputs.json", "hparams.yaml"}
SKIP_PARTS = {".hydra", "__pycache__"}
SKIP_SUFFIXES = {".log", ".yaml", ".tmp"}


def run(work: Path, module: str, *overrides: str) -> None:
    """Run ``python -m vesselfm.<module> overrides...`` and stop on failure."""
    env = {k: v for k, v in os.environ.items() if k not in {"VESSELFM_DEBUG", "HYDRA_FULL_ERROR"}}
    env.update(HF_HUB_OFFLINE="1", VESSELFM_ROOT=str(work / "root"), PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", f"vesselfm.{module}", *overrides, "threads=2"]
    if module not in {"train", "evaluate"}:
        cmd.append("progress=false")
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False)
    took = time.perf_counter() - start
    print(f"  {module}: exit {proc.returncode} in {took:.0f} s", flush=True)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def record(work: Path) -> None:
    """Run every entrypoint on fixed phantoms inside ``work``."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    raw = work / "raw"
    run(work, "phantom", f"output={raw}", "n=4", "shape=[64,64,48]", "seed=3")
    run(work, "prepare", f"source={raw}", f"output={work / 'prepared'}", "workers=1")
    demo = work / "demo_run"
    run(
        work,
        "train",
        "experiment=phantom_demo",
        f"hydra.run.dir={demo}",
        "seed=0",
        "trainer.max_epochs=3",
        "data.n_train=3",
        "data.n_val=1",
        "data.n_test=2",
        "data.shape=[64,64,48]",
        "data.samples_per_epoch=16",
    )
    ckpt = sorted((demo / "checkpoints").glob("step*.ckpt"))[-1]
    run(
        work,
        "infer",
        f"input={raw}/*/*.img.nii.gz",
        f"output={work / 'infer'}",
        "model=tiny",
        f"model.checkpoint={ckpt}",
        f"label={raw}/*/*.label.nii.gz",
        "save_prob=true",
        "save_mesh=true",
        "inference.roi_size=[32,32,32]",
    )
    run(
        work,
        "evaluate",
        f"pred={work / 'infer'}",
        f"gt={raw}/*/*.label.nii.gz",
        f"prob={work / 'infer'}",
        f"output={work / 'evaluate'}",
    )


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _array_digest(array: np.ndarray) -> dict[str, Any]:
    array = np.ascontiguousarray(array)
    return {"shape": list(array.shape), "dtype": str(array.dtype), "sha": _sha(array.tobytes())}


def _scalar(value: str) -> Any:
    try:
        return float(value)
    except ValueError:
        return value


def _clean(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in sorted(value.items()) if not VOLATILE.search(str(k))}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def digest(path: Path, work: Path) -> Any:
    """A content digest of one output file that ignores what changes from run to run.

    Paths inside CSV and JSON files are written relative to ``work`` (as ``<work>/...``).
    """
    name = path.name.lower()
    if name.endswith((".nii.gz", ".nii")):
        # nibabel directly, not vesselfm.io: the digest must not depend on the code it checks
        import nibabel as nib

        img = nib.load(str(path))
        out = _array_digest(np.asanyarray(img.dataobj))
        out["affine"] = np.round(img.affine, 6).tolist()
        out["zooms"] = [round(float(z), 6) for z in img.header.get_zooms()]
        return out
    if name.endswith(".npy"):
        return _array_digest(np.load(path, mmap_mode="r"))
    if name.endswith(".ckpt") or name.endswith(".pt"):
        import torch

        state = torch.load(path, map_location="cpu", weights_only=False)
        state = state.get("state_dict", state)
        return {
            k: _array_digest(v.numpy()) for k, v in sorted(state.items()) if hasattr(v, "numpy")
        }
    if name.endswith(".csv"):
        text = path.read_text().replace(str(work), "<work>")
        rows = list(csv.reader(text.splitlines()))
        if not rows:
            return []
        keep = [i for i, h in enumerate(rows[0]) if not VOLATILE.search(h)]
        return [[_scalar(r[i]) if i < len(r) else None for i in keep] for r in rows]
    if name.endswith(".json"):
        return _clean(json.loads(path.read_text().replace(str(work), "<work>")))
    data = path.read_bytes()
    if name.endswith(".gz"):
        data = gzip.decompress(data)
    if name.endswith(".stl"):
        data = data[80:]  # the header is free text
    if name.endswith((".html", ".md", ".txt")):
        text = RUN_TOKENS.sub("<id>", data.decode("utf-8", "replace"))
        return {"sha": _sha(text.encode()), "size": len(text)}
    return {"sha": _sha(data), "size": len(data)}


def collect(work: Path) -> dict[str, Any]:
    """Digest every output under ``work`` by its path relative to it."""
    out: dict[str, Any] = {}
    for path in sorted(work.rglob("*")):
        rel = path.relative_to(work)
        if not path.is_file() or path.name in SKIP_NAMES or path.suffix in SKIP_SUFFIXES:
            continue
        if SKIP_PARTS & set(rel.parts) or rel.parts[0] == "root":
            continue
        out[rel.as_posix()] = digest(path, work)
    return out


def _differences(a: Any, b: Any, where: str, out: list[str]) -> None:
    if isinstance(a, dict) and isinstance(b, dict):
        for key in sorted(set(a) | set(b)):
            if key not in a or key not in b:
                out.append(f"{where}/{key}: only in {'after' if key not in a else 'before'}")
            else:
                _differences(a[key], b[key], f"{where}/{key}", out)
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _differences(x, y, f"{where}[{i}]", out)
    elif isinstance(a, float) and isinstance(b, float):
        if not (a == b or (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-9)):
            out.append(f"{where}: {a!r} -> {b!r}")
    elif a != b:
        out.append(f"{where}: {str(a)[:120]} -> {str(b)[:120]}")


def compare(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Every difference between two records, one line each."""
    out: list[str] = []
    _differences(before, after, "", out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="run the entrypoints and write a record")
    rec.add_argument("--work", type=Path, required=True, help="work folder (emptied first)")
    rec.add_argument("--out", type=Path, required=True, help="the record (JSON)")
    rec.add_argument("--digest-only", action="store_true", help="re-digest an existing work folder")
    cmp = sub.add_parser("compare", help="list the differences between two records")
    cmp.add_argument("before", type=Path)
    cmp.add_argument("after", type=Path)
    args = parser.parse_args()
    if args.command == "record":
        if not args.digest_only:
            record(args.work.resolve())
        args.out.write_text(json.dumps(collect(args.work.resolve()), indent=1, sort_keys=True))
        print(f"wrote {args.out}")
        return
    diffs = compare(json.loads(args.before.read_text()), json.loads(args.after.read_text()))
    for line in diffs:
        print(line)
    print(f"{len(diffs)} difference(s)")
    sys.exit(1 if diffs else 0)


if __name__ == "__main__":
    main()
