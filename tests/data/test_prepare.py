"""Preparation on phantoms: both split modes, resume after a crash, bad cases, geometry, the CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from vesselfm.data.prepare import PrepareOptions, dice, load_manifest, prepare_dataset
from vesselfm.data.preprocessing import PreprocessConfig, intensity_range

SMALL = PrepareOptions(preprocess=PreprocessConfig(in_plane_size=48))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_random_split_layout_and_manifest(phantom_source, tmp_path):
    out = tmp_path / "prepared"
    summary = prepare_dataset(
        phantom_source, out, split="random", seed=1, options=SMALL, workers=1, progress=False
    )
    assert summary.per_split == {"train": 4, "val": 1, "test": 1} and not summary.failed
    m = load_manifest(out)
    assert m["preprocess"] == SMALL.preprocess.to_dict()
    assert m["split"]["mode"] == "random" and m["split"]["seed"] == 1 and m["created"]
    for case_id, e in m["cases"].items():
        img = np.load(out / e["image"])
        mask = np.load(out / e["mask"])
        assert e["image"] == f"{e['split']}/{case_id}/img.npy"
        assert img.dtype == np.int16 and e["image_dtype"] == "int16"
        assert mask.dtype == np.uint8 and set(np.unique(mask)) <= {0, 1}
        assert img.shape == mask.shape == tuple(e["prepared_shape"]) == (48, 48, 48)
        # C order on disk (the NIfTI arrays are Fortran-ordered): crops come out contiguous
        assert img.flags.c_contiguous and mask.flags.c_contiguous
        assert e["original_shape"] == [64, 64, 48]
        src = nib.load(e["image_source"])
        np.testing.assert_allclose(e["original_affine"], src.affine)
        assert e["label_voxels"] == int(
            np.count_nonzero(np.asarray(nib.load(e["label_source"]).dataobj))
        )
        assert e["intensity_range"] == list(intensity_range(img, SMALL.preprocess))
        assert 0.8 < e["round_trip_dice"] <= 1.0
        fg = np.load(out / e["fg"])
        assert fg.dtype == np.uint16 and fg.shape[1] == 3 and np.all(mask[tuple(fg.T)] == 1)


def test_official_split_from_xlsx_and_csv(phantom_source, tmp_path):
    import openpyxl

    wb = openpyxl.Workbook()
    ws = wb.active
    ws.title = "v2-latest"
    ws.append(["FileName", "Split-1", "Split-2"])
    for i, (s1, s2) in enumerate(
        [
            ("Training", "Testing"),
            ("Training", "Val"),
            ("Training", "Training"),
            ("Val", "Training"),
            ("Testing", "Training"),
        ],
        start=1,
    ):
        ws.append([i, s1, s2])  # case 6 is not listed: reported, not prepared
    xlsx = tmp_path / "imageCAS_data_split.xlsx"
    wb.save(xlsx)
    out = tmp_path / "official"
    s = prepare_dataset(
        phantom_source,
        out,
        split="official",
        split_file=xlsx,
        fold=1,
        options=SMALL,
        workers=1,
        progress=False,
    )
    assert s.per_split == {"train": 3, "val": 1, "test": 1} and s.not_in_split == ["6"]
    m = load_manifest(out)
    assert m["split"] == {
        "mode": "official",
        "fold": 1,
        "seed": None,
        "split_file": str(xlsx.resolve()),
        "sheet": "v2-latest",
    }
    assert (out / "val" / "4" / "img.npy").is_file() and (out / "test" / "5" / "mask.npy").is_file()

    # The CSV export, fold 2, into the same folder: finished cases are moved, not recomputed.
    csv = tmp_path / "split.csv"
    csv.write_text(
        "id,fold_1,fold_2\n"
        + "".join(
            f"{i},train,{v}\n"
            for i, v in enumerate(["test", "val", "train", "train", "train", "train"], 1)
        )
    )
    s2 = prepare_dataset(
        phantom_source,
        out,
        split="official",
        split_file=csv,
        fold=2,
        options=SMALL,
        workers=1,
        progress=False,
    )
    assert sorted(s2.skipped) == ["1", "2", "3", "4", "5"] and s2.prepared == ["6"]
    assert s2.per_split == {"train": 4, "val": 1, "test": 1}
    m2 = load_manifest(out)
    assert m2["cases"]["1"]["split"] == "test" and (out / "test" / "1" / "img.npy").is_file()
    assert not (out / "train" / "1").exists()


def test_resume_after_a_crash_mid_case(phantom_source, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(
        phantom_source, out, split="random", seed=0, options=SMALL, workers=1, progress=False
    )
    m = load_manifest(out)
    # A crash while case 2 was being written: its entry never reached the manifest, a temp file
    # was left behind and its mask is half-written; case 3's image is truncated on disk.
    e2, e3 = m["cases"].pop("2"), m["cases"]["3"]
    case2 = out / e2["split"] / "2"
    (case2 / ".img.npy.abc123.tmp.npy").write_bytes(b"partial")
    (case2 / "mask.npy").write_bytes((case2 / "mask.npy").read_bytes()[:100])
    (out / e3["image"]).write_bytes((out / e3["image"]).read_bytes()[:200])
    (out / "manifest.json").write_text(json.dumps(m))
    before = {
        cid: (out / e["image"]).stat().st_mtime_ns for cid, e in m["cases"].items() if cid != "3"
    }

    s = prepare_dataset(
        phantom_source, out, split="random", seed=0, options=SMALL, workers=1, progress=False
    )
    assert sorted(s.prepared) == ["2", "3"]
    assert sorted(s.skipped) == ["1", "4", "5", "6"]
    assert not list(case2.glob(".*tmp*"))
    m2 = load_manifest(out)
    assert np.load(out / m2["cases"]["2"]["mask"]).shape == tuple(
        m2["cases"]["2"]["prepared_shape"]
    )
    assert np.load(out / m2["cases"]["3"]["image"]).shape == (48, 48, 48)
    after = {cid: (out / m2["cases"][cid]["image"]).stat().st_mtime_ns for cid in before}
    assert after == before  # finished cases untouched


def test_changed_settings_are_refused(phantom_source, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(
        phantom_source, out, split="random", options=SMALL, workers=1, limit=2, progress=False
    )
    other = PrepareOptions(preprocess=PreprocessConfig(in_plane_size=32))
    with pytest.raises(ValueError, match="output=.*prepared with preprocess="):
        prepare_dataset(
            phantom_source, out, split="random", options=other, workers=1, limit=2, progress=False
        )


def _write(path: Path, data: np.ndarray, affine: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(data, affine), path)


def test_bad_cases_are_reported_and_skipped(phantom_source, tmp_path):
    raw = _copy(phantom_source, tmp_path / "raw")
    d = raw / "1-200"

    def label(i: int) -> tuple[np.ndarray, np.ndarray]:
        img = nib.load(d / f"{i}.label.nii.gz")
        return np.asarray(img.dataobj), img.affine

    # 1: truncated image file
    blob = (d / "1.img.nii.gz").read_bytes()
    (d / "1.img.nii.gz").write_bytes(blob[: len(blob) // 2])
    # 2: label shape differs
    lab, aff = label(2)
    _write(d / "2.label.nii.gz", lab[:, :, :40], aff)
    # 3: label affine differs
    lab, aff = label(3)
    shifted = aff.copy()
    shifted[0, 3] += 2.0
    _write(d / "3.label.nii.gz", lab, shifted)
    # 4: label not binary
    lab, aff = label(4)
    _write(d / "4.label.nii.gz", (lab * 2).astype(np.uint8), aff)
    # 5: NaN in the image
    img5 = nib.load(d / "5.img.nii.gz")
    data5 = np.asarray(img5.dataobj).astype(np.float32)
    data5[3, 3, 3] = np.nan
    _write(d / "5.img.nii.gz", data5, img5.affine)
    # 6 stays good; workers=2 runs the process pool
    s = prepare_dataset(
        raw, tmp_path / "out", split="random", options=SMALL, workers=2, progress=False
    )
    reasons = {cid: f["reason"] for cid, f in s.failed.items()}
    assert sorted(reasons) == ["1", "2", "3", "4", "5"] and s.total == 1
    assert "1.img.nii.gz" in reasons["1"] and "unreadable or truncated" in reasons["1"]
    assert "2.label.nii.gz" in reasons["2"] and "shape (64, 64, 40) differs" in reasons["2"]
    assert (
        "3.label.nii.gz" in reasons["3"]
        and "affine differs from the image's by up to 2 mm" in reasons["3"]
    )
    assert "4.label.nii.gz" in reasons["4"] and "not binary, values 0, 2" in reasons["4"]
    assert "5.img.nii.gz" in reasons["5"] and "NaN" in reasons["5"]
    m = load_manifest(tmp_path / "out")
    assert list(m["cases"]) == ["6"] and sorted(m["failed"]) == ["1", "2", "3", "4", "5"]
    assert not any(
        (tmp_path / "out" / split / cid).exists()
        for split in ("train", "val", "test")
        for cid in m["failed"]
    )


def _to_grid(
    volume: np.ndarray, src_affine: np.ndarray, dst_affine: np.ndarray, shape
) -> np.ndarray:
    """Resample ``volume`` (voxel → world by ``src_affine``) onto a grid (``dst_affine``, ``shape``)
    with scipy, independently of vesselfm's own resampling."""
    # world = src @ i_src = dst @ i_dst  →  i_src = inv(src) @ dst @ i_dst
    m = np.linalg.inv(src_affine) @ dst_affine
    return ndimage.affine_transform(
        volume.astype(np.float32),
        m[:3, :3],
        offset=m[:3, 3],
        output_shape=tuple(shape),
        order=1,
        mode="nearest",
    )


@pytest.mark.parametrize(
    "preprocess",
    [PreprocessConfig(in_plane_size=48), PreprocessConfig(target_spacing=(0.3, 0.3, 0.5))],
    ids=["in_plane_48", "spacing_0.3_0.5"],
)
def test_manifest_geometry_maps_the_prepared_label_back(phantom_source, tmp_path, preprocess):
    out = tmp_path / "prepared"
    prepare_dataset(
        phantom_source,
        out,
        split="random",
        options=PrepareOptions(preprocess=preprocess),
        workers=1,
        limit=3,
        progress=False,
    )
    for e in load_manifest(out)["cases"].values():
        mask = np.load(out / e["mask"])
        assert tuple(e["prepared_shape"]) != tuple(e["original_shape"])
        np.testing.assert_allclose(
            e["prepared_spacing"], np.linalg.norm(np.asarray(e["prepared_affine"])[:3, :3], axis=0)
        )
        back = (
            _to_grid(
                mask,
                np.asarray(e["prepared_affine"]),
                np.asarray(e["original_affine"]),
                e["original_shape"],
            )
            >= 0.5
        )
        original = np.asarray(nib.load(e["original_label"]).dataobj) > 0
        assert dice(back, original) > 0.8
        if np.all(np.asarray(e["prepared_shape"]) <= np.asarray(e["original_shape"])):
            # Going back is pure upsampling: scipy on the manifest's affines and prepare's own
            # round trip (resample_probabilities) are the same trilinear map.
            assert abs(dice(back, original) - e["round_trip_dice"]) < 0.01


def test_zip_source_keeps_a_copy_of_the_label(phantom_source, tmp_path):
    archive = tmp_path / "imagecas.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for p in sorted(phantom_source.rglob("*.nii.gz"))[:4]:
            zf.write(p, p.relative_to(phantom_source).as_posix())
    out = tmp_path / "prepared"
    s = prepare_dataset(archive, out, split="random", options=SMALL, workers=1, progress=False)
    assert s.total == 2
    for e in load_manifest(out)["cases"].values():
        assert e["image_source"].startswith(f"{archive}::1-200/")
        copy = out / e["original_label"]
        assert copy.is_file() and not Path(e["original_label"]).is_absolute()
        assert np.array_equal(
            np.asarray(nib.load(copy).dataobj),
            np.asarray(nib.load(phantom_source / e["label_source"].split("::")[1]).dataobj),
        )


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vesselfm.prepare", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_cli_help(tmp_path):
    r = _cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    assert (
        "source=<folder or zip> output=<dir>" in r.stdout
        and "split_file" in r.stdout
        and "workers" in r.stdout
    )


def test_cli_prepares_and_fails_cleanly_when_no_case_survives(phantom_source, tmp_path):
    r = _cli(
        f"source={phantom_source}",
        f"output={tmp_path / 'ok'}",
        "preprocess.in_plane_size=48",
        "workers=1",
        "limit=2",
        "progress=false",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "round-trip Dice" in r.stdout and "2 ready" in r.stdout

    raw = tmp_path / "raw" / "1-200"
    raw.mkdir(parents=True)
    for i in (1, 2):
        (raw / f"{i}.img.nii.gz").write_bytes(b"not a nifti")
        (raw / f"{i}.label.nii.gz").write_bytes(b"not a nifti")
    r = _cli(
        f"source={raw.parent}",
        f"output={tmp_path / 'bad'}",
        "workers=1",
        "progress=false",
        cwd=tmp_path,
    )
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1 and "no case could be prepared" in errors[0] and "unreadable" in errors[0]
    )
    assert "Traceback" not in r.stderr


def _full_round_trip(label: np.ndarray, mask: np.ndarray) -> float:
    from vesselfm.data.preprocessing import resample_probabilities

    return dice(resample_probabilities(mask, label.shape) >= 0.5, label)


@pytest.mark.parametrize(
    ("shape", "small", "where"),
    [
        ((48, 48, 20), (24, 24, 20), "inside"),  # ImageCAS: 2x in-plane, depth kept
        ((48, 48, 20), (24, 24, 20), "border"),
        ((48, 32, 20), (12, 16, 10), "inside"),  # 4x, 2x, 2x
        ((48, 48, 20), (16, 16, 20), "inside"),  # 3x: not a power of two, the whole grid
        ((48, 48, 20), (24, 24, 20), "empty"),
    ],
)
def test_round_trip_dice_around_the_vessels_equals_the_whole_grid(shape, small, where):
    from vesselfm.data.prepare import round_trip_dice
    from vesselfm.data.preprocessing import resample_label

    rng = np.random.default_rng(11)
    label = np.zeros(shape, dtype=bool)
    if where != "empty":
        lo = (0, 0, 0) if where == "border" else (10, 7, 4)
        label[lo[0] : lo[0] + 21, lo[1] : lo[1] + 17, lo[2] : lo[2] + 9] = (
            rng.random((21, 17, 9)) < 0.5
        )
    mask = resample_label(label, small)
    assert round_trip_dice(label, mask) == _full_round_trip(label, mask)
    assert round_trip_dice(label, mask, int(label.sum())) == _full_round_trip(label, mask)


@pytest.mark.parametrize("gzip_module", ["gzip", "isal.igzip"])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_nifti_arrays_are_read_as_nibabel_reads_them(tmp_path, monkeypatch, gzip_module, suffix):
    import importlib

    from vesselfm.data import prepare
    from vesselfm.data.imagecas import SourceFile

    module = importlib.import_module(gzip_module)
    monkeypatch.setattr(prepare, "_gzip_module", lambda: module)
    affine = np.diag([0.4, 0.4, 0.6, 1.0])
    data = np.random.default_rng(0).integers(-1024, 3000, size=(9, 8, 7)).astype(np.int16)
    plain, scaled = tmp_path / f"plain{suffix}", tmp_path / f"scaled{suffix}"
    nib.save(nib.Nifti1Image(data, affine), plain)
    img = nib.Nifti1Image(data, affine)
    img.header.set_slope_inter(0.5, -3.0)
    nib.save(img, scaled)
    for path in (plain, scaled):
        arr, aff = prepare.read_nifti_array(SourceFile(path))
        np.testing.assert_array_equal(arr, nib.load(path).get_fdata())
        np.testing.assert_array_equal(aff, nib.load(path).affine)
    assert prepare.read_nifti_array(SourceFile(plain))[0].dtype == np.int16


def test_forked_and_spawned_workers_prepare_the_same_files(phantom_source, tmp_path):
    import threading

    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.npy"))}

    one = tmp_path / "one"
    prepare_dataset(
        phantom_source, one, split="random", options=SMALL, workers=1, limit=2, progress=False
    )
    forked = tmp_path / "forked"
    prepare_dataset(
        phantom_source, forked, split="random", options=SMALL, workers=2, limit=2, progress=False
    )
    from vesselfm.data.prepare import _pool_context

    if sys.platform.startswith("linux"):  # earlier runs leave no thread behind: fork again
        context, threads = _pool_context()
        assert context.get_start_method() == "fork" and threads == 1
    # Another thread running: fork is unsafe, the pool spawns its workers instead.
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        assert _pool_context()[0].get_start_method() == "spawn"
        spawned = tmp_path / "spawned"
        prepare_dataset(
            phantom_source,
            spawned,
            split="random",
            options=SMALL,
            workers=2,
            limit=2,
            progress=False,
        )
    finally:
        stop.set()
        thread.join()
    assert files(one) == files(forked) == files(spawned) and len(files(one)) == 6

    def entries(out: Path) -> dict[str, dict]:
        return {
            cid: {k: v for k, v in e.items() if k != "seconds"}
            for cid, e in load_manifest(out)["cases"].items()
        }

    assert entries(one) == entries(forked) == entries(spawned)
