"""Benchmark ``vesselfm.metrics.compute_metrics`` against the whole-volume reference evaluator.

The reference is how vesselFM scores a case: scikit-learn's ``confusion_matrix``,
``roc_auc_score`` and ``average_precision_score`` on every voxel, scikit-image's ``skeletonize``
(clDice) and ``label`` / ``euler_number`` (Betti numbers, TopCoW's formulas) on the whole volume,
plus MONAI's ``compute_hausdorff_distance(percentile=95)`` and
``compute_average_surface_distance(symmetric=True)`` for the surface distances.

Both run on the same synthetic pair, each in a fresh process, so that the peak memory of each
(resident set above what the loaded inputs already take) is measured alone. Prints the speed
ratio, both peaks, and every metric side by side with their difference.

    python scripts/bench_metrics.py                       # 512 x 512 x 275, the ImageCAS size
    python scripts/bench_metrics.py --shape 256 256 275   # smaller
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THRESHOLD = 0.5


def _status_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, from /proc/self/status."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak() -> None:
    """Reset the peak resident set (VmHWM) to the current one (Linux >= 4.0)."""
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def _tube_label(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Fallback vessel tree: random tortuous tubes of radius 1-3 voxels in the central region."""
    from scipy import ndimage as ndi

    centre = np.zeros(shape, bool)
    lo, hi = np.array(shape) * 0.25, np.array(shape) * 0.75
    for _ in range(12):
        p = rng.uniform(lo, hi)
        d = rng.normal(size=3)
        for _ in range(int(0.6 * max(shape))):
            d = d / np.linalg.norm(d) + rng.normal(scale=0.15, size=3)
            p = np.clip(p + d / np.linalg.norm(d), 0, np.array(shape) - 1)
            centre[tuple(p.astype(int))] = True
    return ndi.binary_dilation(centre, ndi.generate_binary_structure(3, 1), iterations=2)


def make_pair(
    shape: tuple[int, int, int], seed: int = 0, vessel_fraction: float = 0.002
) -> tuple[np.ndarray, np.ndarray, tuple, str]:
    """A label and a float32 probability map with realistic errors: blurred edges, noise, a
    missed segment (a cut vessel), false-positive blobs and speckle.

    The label is a ``vesselfm.data.phantom`` coronary tree (random tubes without it), dilated
    until vessels fill ``vessel_fraction`` of the volume, as ImageCAS labels do (about 0.2 %).
    """
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    try:
        from vesselfm.data.phantom import generate_phantom

        ph = generate_phantom(shape=shape, seed=seed)
        label, spacing, source = ph.label.astype(bool), tuple(ph.spacing), "vesselfm.data.phantom"
    except ImportError:
        label, spacing, source = _tube_label(shape, rng), (0.4, 0.4, 0.5), "random tubes"
    grown = 0
    while label.mean() < vessel_fraction and grown < 10:
        label = ndi.binary_dilation(label, ndi.generate_binary_structure(3, 1))
        grown += 1
    if grown:
        source += f", dilated {grown}x"

    s = ndi.gaussian_filter(label.astype(np.float32), 1.0)
    idx = np.argwhere(label)
    for k in rng.choice(len(idx), 3, replace=False):  # missed segments
        c = idx[k]
        s[tuple(slice(max(0, v - 6), v + 6) for v in c)] *= 0.2
    for _ in range(20):  # false-positive blobs near the tree
        c = idx[rng.integers(len(idx))] + rng.integers(-15, 16, 3)
        c = np.clip(c, 3, np.array(shape) - 4)
        s[tuple(slice(v - 2, v + 3) for v in c)] = 0.9
    noise = rng.standard_normal(shape, dtype=np.float32)
    logit = 12.0 * (s - 0.45) + 1.2 * noise
    del noise
    prob = (1.0 / (1.0 + np.exp(-logit))).astype(np.float32)
    return prob, label.astype(np.uint8), spacing, source


def _worker(which: str, data: Path) -> None:
    """Child process: load the pair, run one evaluator, print JSON (time, peak memory, values)."""
    import warnings

    warnings.filterwarnings("ignore")
    if which == "ours":
        from vesselfm.metrics import compute_metrics

        def run(prob, label, spacing):
            return compute_metrics(prob, label, spacing=spacing, threshold=THRESHOLD)
    else:
        import monai.metrics  # noqa: F401 - imported before the baseline, like sklearn/skimage
        import skimage.measure  # noqa: F401
        import sklearn.metrics  # noqa: F401

        from vesselfm.metrics.reference import reference_metrics

        def run(prob, label, spacing):
            return reference_metrics(prob, label, spacing, threshold=THRESHOLD)

    prob = np.load(data / "prob.npy")
    label = np.load(data / "label.npy")
    spacing = tuple(json.loads((data / "spacing.json").read_text()))
    _reset_peak()
    base = _status_bytes("VmRSS")
    t0 = time.perf_counter()
    values = run(prob, label, spacing)
    seconds = time.perf_counter() - t0
    extra = _status_bytes("VmHWM") - base
    values = {k: (None if v is None else float(v)) for k, v in values.items()}
    print(json.dumps({"seconds": seconds, "peak_extra_bytes": extra, "values": values}))


def _run_child(which: str, data: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", which, "--data", str(data)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"{which} evaluator failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", type=int, nargs=3, default=(512, 512, 275))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vessel-fraction", type=float, default=0.002)
    parser.add_argument("--worker", choices=("ours", "reference"), help=argparse.SUPPRESS)
    parser.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.data)
        return

    shape = tuple(args.shape)
    t0 = time.perf_counter()
    prob, label, spacing, source = make_pair(shape, args.seed, args.vessel_fraction)
    print(
        f"pair: {shape} from {source}, spacing {tuple(round(s, 3) for s in spacing)} mm, "
        f"vessel {label.mean() * 100:.3f} % of voxels, predicted {np.mean(prob >= THRESHOLD) * 100:.3f} % "
        f"(built in {time.perf_counter() - t0:.0f} s)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        np.save(data / "prob.npy", prob)
        np.save(data / "label.npy", label)
        (data / "spacing.json").write_text(json.dumps([float(s) for s in spacing]))
        del prob, label
        ours = _run_child("ours", data)
        ref = _run_child("reference", data)

    print(f"\n{'metric':24s} {'ours':>14s} {'reference':>14s} {'|difference|':>13s}")
    for name, value in ours["values"].items():
        other = ref["values"][name]
        diff = "" if value is None or other is None else f"{abs(value - other):13.3g}"
        fmt = lambda v: "None" if v is None else f"{v:.8g}"  # noqa: E731
        print(f"{name:24s} {fmt(value):>14s} {fmt(other):>14s} {diff:>13s}")
    mib = 1024**2
    print(
        f"\ntime:        ours {ours['seconds']:.2f} s, reference {ref['seconds']:.2f} s "
        f"-> {ref['seconds'] / ours['seconds']:.1f}x faster"
    )
    print(
        f"peak memory above the inputs: ours {ours['peak_extra_bytes'] / mib:.0f} MiB, "
        f"reference {ref['peak_extra_bytes'] / mib:.0f} MiB"
    )


if __name__ == "__main__":
    main()
