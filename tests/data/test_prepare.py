"""Preparation on phantoms: both split modes, resume after a crash, bad cases, geometry, the CLI."""

from __future__ import annotations

import shutil
import subprocess
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli import run_cli
from scipy import ndimage
from synthetic import save_nifti

from vesselfm.data.manifest import ManifestEntry, load_manifest, write_manifest
from vesselfm.data.prepare import PrepareOptions, dice, prepare_dataset
from vesselfm.data.preprocessing import PreprocessConfig, intensity_range
from vesselfm.utils.errors import UserError
from vesselfm.utils.io import _HOST

SMALL = PrepareOptions(preprocess=PreprocessConfig(in_plane_size=48))
# two cases cannot fill val and test: a set of them is all train, on purpose
ALL_TRAIN = (1.0, 0.0, 0.0)


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
        assert set(e) == ManifestEntry.__required_keys__  # the documented entry
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

    # The CSV export into the same folder. Fold 2 would move cases between splits (train case 1
    # into test): refused before anything is written, naming the case and the fix.
    csv = tmp_path / "split.csv"
    csv.write_text(
        "id,fold_1,fold_2\n"
        + "".join(
            f"{i},{a},{b}\n"
            for i, (a, b) in enumerate(
                [
                    ("train", "test"),
                    ("train", "val"),
                    ("train", "train"),
                    ("val", "train"),
                    ("test", "train"),
                    ("train", "train"),
                ],
                1,
            )
        )
    )
    before = (out / "manifest.json").read_bytes()
    with pytest.raises(
        ValueError, match=r"fold=2 puts case 1 in test, but .* has it in train.*new output="
    ):
        prepare_dataset(
            phantom_source,
            out,
            split="official",
            split_file=csv,
            fold=2,
            options=SMALL,
            workers=1,
            progress=False,
        )
    assert (out / "manifest.json").read_bytes() == before
    assert (out / "train" / "1" / "img.npy").is_file() and not (out / "test" / "1").exists()
    # Fold 1 of the CSV agrees with the set and lists case 6: only case 6 is prepared.
    s2 = prepare_dataset(
        phantom_source,
        out,
        split="official",
        split_file=csv,
        fold=1,
        options=SMALL,
        workers=1,
        progress=False,
    )
    assert sorted(s2.skipped) == ["1", "2", "3", "4", "5"] and s2.prepared == ["6"]
    assert s2.per_split == {"train": 4, "val": 1, "test": 1}
    m2 = load_manifest(out)
    assert m2["cases"]["6"]["split"] == "train" and (out / "train" / "6" / "img.npy").is_file()
    assert m2["split"]["sheet"] == "v2-latest"  # the set's first split settings stay
    assert m2["split"]["later"] == [
        {
            "mode": "official",
            "fold": 1,
            "seed": None,
            "split_file": str(csv.resolve()),
            "sheet": "csv",
            "cases": ["6"],
        }
    ]


def test_resume_after_a_crash_mid_case(phantom_source, tmp_path):
    out = tmp_path / "prepared"
    prepare_dataset(
        phantom_source, out, split="random", seed=0, options=SMALL, workers=1, progress=False
    )
    m = load_manifest(out)
    # A crash while case 2 was being written: its entry never reached the manifest, a temp file
    # of the killed process (pid 99999999: never alive) was left behind and its mask is
    # half-written; case 3's image is truncated on disk.
    e2, e3 = m["cases"].pop("2"), m["cases"]["3"]
    case2 = out / e2["split"] / "2"
    (case2 / f".img.npy.{_HOST}-99999999.abc123.tmp.npy").write_bytes(b"partial")
    (case2 / "mask.npy").write_bytes((case2 / "mask.npy").read_bytes()[:100])
    (out / e3["image"]).write_bytes((out / e3["image"]).read_bytes()[:200])
    write_manifest(out, m)
    before = {
        cid: (out / e["image"]).stat().st_mtime_ns for cid, e in m["cases"].items() if cid != "3"
    }
    # The damaged files are no longer what prepare wrote (someone may have edited them):
    # replaced only with overwrite=true.
    with pytest.raises(UserError, match="vesselfm did not write.*overwrite=true"):
        prepare_dataset(
            phantom_source, out, split="random", seed=0, options=SMALL, workers=1, progress=False
        )

    s = prepare_dataset(
        phantom_source,
        out,
        split="random",
        seed=0,
        options=SMALL,
        workers=1,
        progress=False,
        overwrite=True,
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
        phantom_source, out, split="random", options=SMALL, workers=1, limit=3, progress=False
    )
    other = PrepareOptions(preprocess=PreprocessConfig(in_plane_size=32))
    with pytest.raises(ValueError, match="output=.*prepared with preprocess="):
        prepare_dataset(
            phantom_source, out, split="random", options=other, workers=1, limit=3, progress=False
        )


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
    save_nifti(d / "2.label.nii.gz", lab[:, :, :40], aff)
    # 3: label affine differs
    lab, aff = label(3)
    shifted = aff.copy()
    shifted[0, 3] += 2.0
    save_nifti(d / "3.label.nii.gz", lab, shifted)
    # 4: label not binary
    lab, aff = label(4)
    save_nifti(d / "4.label.nii.gz", (lab * 2).astype(np.uint8), aff)
    # 5: NaN in the image
    img5 = nib.load(d / "5.img.nii.gz")
    data5 = np.asarray(img5.dataobj).astype(np.float32)
    data5[3, 3, 3] = np.nan
    save_nifti(d / "5.img.nii.gz", data5, img5.affine)
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
        and "affine differs from 3.img.nii.gz's by up to 2 mm" in reasons["3"]
    )
    assert "4.label.nii.gz" in reasons["4"] and "not binary, values 0, 2" in reasons["4"]
    assert "5.img.nii.gz" in reasons["5"] and "NaN" in reasons["5"]
    m = load_manifest(tmp_path / "out")
    assert list(m["cases"]) == ["6"] and sorted(m["failed"]) == ["1", "2", "3", "4", "5"]
    assert not any(
        (tmp_path / "out" / split / cid).exists()
        for split in ("train", "val", "test", ".pending")
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
    # two cases: all in train (the default shares would leave val and test empty: refused)
    s = prepare_dataset(
        archive, out, split_ratios=ALL_TRAIN, options=SMALL, workers=1, progress=False
    )
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
    return run_cli("vesselfm.prepare", *args, cwd=cwd)


@pytest.mark.slow
def test_cli_help(tmp_path):
    r = _cli("--help", cwd=tmp_path)
    assert r.returncode == 0
    assert (
        "source=<folder or zip> output=<dir>" in r.stdout
        and "split_file" in r.stdout
        and "workers" in r.stdout
    )


@pytest.mark.slow
def test_cli_prepares_and_fails_cleanly_when_no_case_survives(
    phantom_source, tmp_path, compose_cfg, capsys, monkeypatch
):
    r = _cli(
        f"source={phantom_source}",
        f"output={tmp_path / 'ok'}",
        "preprocess.in_plane_size=48",
        "workers=1",
        "limit=3",
        "progress=false",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "round-trip Dice" in r.stdout and "3 ready" in r.stdout

    raw = tmp_path / "raw" / "1-200"
    raw.mkdir(parents=True)
    for i in (1, 2, 3):
        (raw / f"{i}.img.nii.gz").write_bytes(b"not a nifti")
        (raw / f"{i}.label.nii.gz").write_bytes(b"not a nifti")
    # the failing run in this process, through run_guarded as the CLI runs it (a second CLI
    # start-up would add nothing but its imports)
    from vesselfm.prepare import prepare
    from vesselfm.utils.cli import run_guarded

    for debug in ("VESSELFM_DEBUG", "HYDRA_FULL_ERROR"):  # they would show the traceback
        monkeypatch.delenv(debug, raising=False)
    cfg = compose_cfg(
        "prepare",
        [f"source={raw.parent}", f"output={tmp_path / 'bad'}", "workers=1", "progress=false"],
    )
    with pytest.raises(SystemExit) as exited:
        run_guarded(prepare, cfg, "vesselfm.prepare")
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert (
        len(errors) == 1 and "no case could be prepared" in errors[0] and "unreadable" in errors[0]
    )
    assert "Traceback" not in stderr


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


@pytest.mark.slow
def test_forked_and_spawned_workers_prepare_the_same_files(phantom_source, tmp_path):
    import threading

    def files(out: Path) -> dict[str, bytes]:
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.npy"))}

    from vesselfm.data.prepare import _pool_context

    # Tests that ran before in this process may have left threads (wandb's service threads):
    # the pool then spawns from the start, and fork is checked only where it could be chosen.
    could_fork = _pool_context()[0].get_start_method() == "fork"
    one = tmp_path / "one"
    prepare_dataset(
        phantom_source,
        one,
        split_ratios=ALL_TRAIN,
        options=SMALL,
        workers=1,
        limit=2,
        progress=False,
    )
    forked = tmp_path / "forked"
    prepare_dataset(
        phantom_source,
        forked,
        split_ratios=ALL_TRAIN,
        options=SMALL,
        workers=2,
        limit=2,
        progress=False,
    )
    if could_fork:  # the runs above left no thread behind: fork again
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
            split_ratios=ALL_TRAIN,
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


# ------------------------------------------------------------------ never lose data (#22)


def _pair_from(phantoms: Path, index: int, folder: Path, case_id: str) -> None:
    """Copy phantom case ``index`` to ``folder/<case_id>.img.nii.gz`` + ``.label.nii.gz``."""
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("img", "label"):
        shutil.copyfile(
            phantoms / "1-200" / f"{index}.{kind}.nii.gz", folder / f"{case_id}.{kind}.nii.gz"
        )


def _garbage_pair(folder: Path, case_id: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for kind in ("img", "label"):
        (folder / f"{case_id}.{kind}.nii.gz").write_bytes(b"not a nifti")


def _splits(out: Path) -> dict[str, str]:
    return {cid: e["split"] for cid, e in load_manifest(out)["cases"].items()}


def _files_in(folder: Path) -> list[str]:
    """Plain files directly in ``folder`` (a split folder holds only case folders)."""
    return sorted(p.name for p in folder.iterdir() if not p.is_dir()) if folder.is_dir() else []


def test_an_empty_case_id_is_refused_and_split_folders_are_never_moved(phantom_source, tmp_path):
    # finding 3: `.img.nii.gz` + `.label.nii.gz` gave the case id "", written into the split
    # folder itself; a rerun with another seed then deleted test/ and renamed train/ to test/.
    raw = _copy(phantom_source, tmp_path / "raw")
    _pair_from(phantom_source, 1, raw / "1-200", "")
    out = tmp_path / "out"
    s = prepare_dataset(raw, out, split="random", seed=0, options=SMALL, workers=1, progress=False)
    key = str(raw.resolve() / "1-200" / ".img.nii.gz")
    assert list(s.failed) == [key]
    assert ".img.nii.gz" in s.failed[key]["reason"] and "empty case id" in s.failed[key]["reason"]
    assert not s.complete and s.problem().startswith("1 of 7 case(s) could not be prepared")
    assert s.per_split == {"train": 4, "val": 1, "test": 1}
    assert all(_files_in(out / split) == [] for split in ("train", "val", "test"))
    assert "" not in load_manifest(out)["cases"]
    first = _splits(out)

    s2 = prepare_dataset(raw, out, split="random", seed=1, options=SMALL, workers=1, progress=False)
    assert _splits(out) == first and sorted(s2.skipped) == sorted(first)
    for cid, e in load_manifest(out)["cases"].items():
        assert (out / e["image"]).is_file() and (out / e["split"] / cid / "mask.npy").is_file()


@pytest.mark.slow
def test_cli_refuses_dot_ids_with_one_line_after_preparing_the_others(phantom_source, tmp_path):
    # the same rule for "." and ".." (from `..nii.gz` in images/ + labels/, `...img.nii.gz`):
    # never written above a case folder; the run prepares the rest and ends with exit status 2
    raw = tmp_path / "raw"
    for i in (1, 2, 3):
        _pair_from(phantom_source, i, raw / "1-200", str(i))
    _pair_from(phantom_source, 4, raw / "1-200", "..")
    for kind, folder in (("img", "images"), ("label", "labels")):
        (raw / folder).mkdir()
        shutil.copyfile(phantom_source / "1-200" / f"5.{kind}.nii.gz", raw / folder / "..nii.gz")
    out = tmp_path / "out"
    r = _cli(
        f"source={raw}",
        f"output={out}",
        "preprocess.in_plane_size=48",
        "workers=1",
        "progress=false",
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "2 of 5 case(s) could not be prepared" in errors[0]
    assert "...img.nii.gz" in errors[0] and "Traceback" not in r.stderr
    assert "images/..nii.gz" in r.stderr and "'.'" in r.stderr  # the warning names the other
    assert sorted(load_manifest(out)["cases"]) == ["1", "2", "3"]
    assert _files_in(out) == [".vesselfm-outputs.json", "manifest.json"]
    assert all(_files_in(out / split) == [] for split in ("train", "val", "test"))


def test_limit_and_reruns_never_move_or_drop_a_case(phantom_source, tmp_path):
    # finding 4: `limit=2` on a set dropped the other cases from the manifest and moved test
    # case 1 (seed 1) into train; a later full run prepared them all again.
    out = tmp_path / "out"
    prepare_dataset(
        phantom_source, out, split="random", seed=1, options=SMALL, workers=1, progress=False
    )
    first = _splits(out)
    assert first["1"] == "test"
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")}

    s = prepare_dataset(
        phantom_source,
        out,
        split="random",
        seed=1,
        limit=2,
        options=SMALL,
        workers=1,
        progress=False,
    )
    assert _splits(out) == first and sorted(s.skipped) == ["1", "2"] and s.prepared == []
    assert s.per_split == {"train": 4, "val": 1, "test": 1} and s.complete
    # another seed and other shares: nothing moves, nothing is redone
    s = prepare_dataset(
        phantom_source,
        out,
        split="random",
        seed=5,
        split_ratios=(0.5, 0.25, 0.25),
        options=SMALL,
        workers=1,
        progress=False,
    )
    assert _splits(out) == first and len(s.skipped) == 6 and s.prepared == []
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.npy")} == stamps
    assert not (out / "train" / "1").exists()


def test_new_cases_are_drawn_beside_the_ones_already_placed(phantom_source, tmp_path):
    # a set grown in two runs keeps the first run's splits, and draws the new cases so that
    # each split gets its share; with the manifest lost, the case folders keep their splits
    out = tmp_path / "out"
    prepare_dataset(
        phantom_source,
        out,
        split="random",
        seed=0,
        limit=3,
        options=SMALL,
        workers=1,
        progress=False,
    )
    small = _splits(out)
    assert sorted(small.values()) == ["test", "train", "val"]
    s = prepare_dataset(
        phantom_source, out, split="random", seed=0, options=SMALL, workers=1, progress=False
    )
    grown = _splits(out)
    assert {cid: grown[cid] for cid in small} == small
    assert s.per_split == {"train": 4, "val": 1, "test": 1} and sorted(s.prepared) == [
        "4",
        "5",
        "6",
    ]
    assert "among the 3 new case(s)" in s.split_note and "keep their split" in s.split_note

    (out / "manifest.json").unlink()
    s = prepare_dataset(
        phantom_source, out, split="random", seed=7, options=SMALL, workers=1, progress=False
    )
    assert _splits(out) == grown and len(s.prepared) == 6


def _split_csv(path: Path, splits: dict[int, str]) -> Path:
    path.write_text("id,fold_1\n" + "".join(f"{i},{s}\n" for i, s in splits.items()))
    return path


def test_the_split_is_drawn_from_the_cases_that_prepared(phantom_source, tmp_path):
    # finding 5: with 6 of 9 pairs failing, the split drawn beforehand left val and test empty
    # (seed 0 puts cases 5 and 6 there), exit 0.
    raw = tmp_path / "raw" / "1-200"
    for i in (1, 2, 3):
        _pair_from(phantom_source, i, raw, str(i))
    for i in range(4, 10):
        _garbage_pair(raw, str(i))
    out = tmp_path / "out"
    s = prepare_dataset(
        raw.parent, out, split="random", seed=0, options=SMALL, workers=2, progress=False
    )
    assert sorted(s.failed) == ["4", "5", "6", "7", "8", "9"]
    assert s.per_split == {"train": 1, "val": 1, "test": 1} and not s.empty_splits
    assert s.split_note.startswith(
        "split: drawn at random (seed=0 split_ratios=[0.8, 0.1, 0.1]) among the 3 new case(s) "
        "that prepared successfully (6 other(s) failed and are left out)"
    )
    assert load_manifest(out)["summary"]["split_note"] == s.split_note
    assert s.problem().startswith("6 of 9 case(s) could not be prepared (4, 5, 6, 7, 8, ...")
    # nothing of a failed case was written anywhere; the waiting room is gone
    assert not (out / ".pending").exists()
    assert sorted(
        p.name for split in ("train", "val", "test") for p in (out / split).iterdir()
    ) == [
        "1",
        "2",
        "3",
    ]


def test_a_split_left_empty_is_an_error_before_or_after_the_run(phantom_source, tmp_path):
    # the plan leaves val empty (two cases at 80/10/10): refused before anything is written
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=r"would have no val case: split_ratios=.*over 2 case"):
        prepare_dataset(
            phantom_source, out, split="random", limit=2, options=SMALL, workers=1, progress=False
        )
    assert not out.exists()
    # a split file whose val cases are left out by limit=: refused too
    csv = _split_csv(tmp_path / "s.csv", {1: "train", 2: "train", 3: "test", 4: "val"})
    with pytest.raises(ValueError, match=r"no val case: split_file=.*puts none of its 3 case"):
        prepare_dataset(
            phantom_source, out, split_file=csv, limit=3, options=SMALL, workers=1, progress=False
        )
    assert not out.exists()
    # the split file's only val case fails: the others are prepared, the empty split reported
    raw = _copy(phantom_source, tmp_path / "raw")
    blob = (raw / "1-200" / "4.img.nii.gz").read_bytes()
    (raw / "1-200" / "4.img.nii.gz").write_bytes(blob[: len(blob) // 2])
    csv = _split_csv(
        tmp_path / "s6.csv", {1: "train", 2: "train", 3: "test", 4: "val", 5: "train", 6: "train"}
    )
    s = prepare_dataset(raw, out, split_file=csv, options=SMALL, workers=1, progress=False)
    assert s.per_split == {"train": 4, "val": 0, "test": 1} and list(s.failed) == ["4"]
    assert s.empty_splits == {"val": "its 1 case(s) failed: 4"}
    assert "the set has no val case (its 1 case(s) failed: 4)" in s.problem()
    assert load_manifest(out)["failed"]["4"]["split"] == "val"


@pytest.mark.slow
def test_cli_exits_2_when_a_case_fails_after_preparing_the_others(phantom_source, tmp_path):
    # finding 5: prepare exited 0 when cases failed, unlike infer and evaluate
    raw = tmp_path / "raw" / "1-200"
    for i in (1, 2, 3):
        _pair_from(phantom_source, i, raw, str(i))
    _garbage_pair(raw, "4")
    out = tmp_path / "out"
    r = _cli(
        f"source={raw.parent}",
        f"output={out}",
        "preprocess.in_plane_size=48",
        "workers=1",
        "progress=false",
        cwd=tmp_path,
    )
    assert r.returncode == 2, r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "1 of 4 case(s) could not be prepared (4; first: image" in errors[0]
    assert "4.img.nii.gz: unreadable, not a NIfTI file" in errors[0] and "rerun" in errors[0]
    assert sorted(load_manifest(out)["cases"]) == ["1", "2", "3"]


def test_symlink_loops_in_the_source_are_reported_and_skipped(phantom_source, tmp_path):
    # finding 10: one symlink loop anywhere in the source stopped the whole run
    raw = _copy(phantom_source, tmp_path / "raw")
    folder = raw / "1-200"
    (folder / "7.img.nii.gz").symlink_to("7.img.nii.gz")  # points at itself
    shutil.copyfile(folder / "1.label.nii.gz", folder / "7.label.nii.gz")
    (raw / "more.zip").symlink_to("more.zip")
    s = prepare_dataset(raw, tmp_path / "out", options=SMALL, workers=1, progress=False)
    assert s.total == 6 and set(s.failed) == {"7", str(raw / "more.zip")}
    assert "7.img.nii.gz: unreadable" in s.failed["7"]["reason"]
    assert "symbolic link loop" in s.failed[str(raw / "more.zip")]["reason"]
    assert not s.complete


def test_symlink_loops_that_are_no_case_are_not_even_opened(phantom_source, tmp_path):
    from vesselfm.data.imagecas import discover_cases

    raw = _copy(phantom_source, tmp_path / "raw")
    (raw / "notes").symlink_to("notes")
    (raw / "1-200" / "up").symlink_to("..")  # a folder loop: never followed
    found = discover_cases(raw)
    assert [c.case_id for c in found.cases] == ["1", "2", "3", "4", "5", "6"]
    assert not found.unreadable and not found.invalid


@pytest.mark.slow
def test_cli_output_that_is_a_file_is_named_in_one_line(phantom_source, tmp_path):
    # finding 10: `output=` naming a file said "[Errno 17] File exists"
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    r = _cli(f"source={phantom_source}", f"output={target}", "progress=false", cwd=tmp_path)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"output={target} is a file" in errors[0]
    assert "Errno" not in r.stderr and target.read_text() == "mine"


def test_output_below_a_file_is_named(phantom_source, tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    with pytest.raises(
        ValueError, match=r"output=.*notes.txt/set lies below .*notes.txt, which is a file"
    ):
        prepare_dataset(phantom_source, target / "set", options=SMALL, workers=1, progress=False)


def test_an_output_folder_with_files_vesselfm_did_not_write_is_refused(phantom_source, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(
        UserError, match=r"holds 1 file\(s\) vesselfm did not write .*notes.txt.*overwrite=true"
    ):
        prepare_dataset(phantom_source, out, options=SMALL, workers=1, limit=3, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]  # nothing written
    s = prepare_dataset(
        phantom_source, out, options=SMALL, workers=1, limit=3, progress=False, overwrite=True
    )
    assert s.total == 3 and (out / "notes.txt").read_text() == "mine"


def test_overwrite_key_of_the_cli_config(phantom_source, tmp_path, compose_cfg):
    # an edited prepared file is no longer vesselfm's: the CLI's prepare() refuses to redo the
    # case over it unless the config says overwrite=true
    from vesselfm.prepare import prepare

    out = tmp_path / "out"
    args = [
        f"source={phantom_source}",
        f"output={out}",
        "preprocess.in_plane_size=48",
        "workers=1",
        "limit=3",
        "progress=false",
    ]
    prepare(compose_cfg("prepare", args))
    entry = load_manifest(out)["cases"]["2"]
    edited = np.load(out / entry["mask"])
    edited[0, 0, 0] = 1 - edited[0, 0, 0]
    np.save(out / entry["mask"], edited)  # a hand-corrected label, say
    (out / entry["image"]).unlink()  # and the case must be redone
    with pytest.raises(UserError, match=r"mask.npy.*overwrite=true"):
        prepare(compose_cfg("prepare", args))
    assert np.array_equal(np.load(out / entry["mask"]), edited)
    summary = prepare(compose_cfg("prepare", [*args, "overwrite=true"]))
    assert summary.prepared == ["2"] and summary.complete


def test_an_interrupted_draw_is_finished_by_the_rerun(phantom_source, tmp_path, monkeypatch):
    # killed after every case was prepared but before their split was drawn: the rerun draws
    # them as the whole run would have, without preparing them again
    from vesselfm.data import prepare as prep

    original = prep._assign

    def interrupted(out: Path, move: str | None = None) -> None:
        def killed(*args, **kwargs):
            raise KeyboardInterrupt

        monkeypatch.setattr(prep, "_assign", killed)
        with pytest.raises(KeyboardInterrupt):
            prepare_dataset(phantom_source, out, seed=3, options=SMALL, workers=1, progress=False)
        monkeypatch.setattr(prep, "_assign", original)
        m = load_manifest(out)
        assert m["cases"] == {} and sorted(m["pending"]) == ["1", "2", "3", "4", "5", "6"]

    one_run = prep.draw_splits([str(i) for i in range(1, 7)], seed=3)
    out = tmp_path / "out"
    interrupted(out)
    s = prepare_dataset(phantom_source, out, seed=3, options=SMALL, workers=1, progress=False)
    assert s.prepared == [] and len(s.skipped) == 6 and _splits(out) == one_run
    assert "pending" not in load_manifest(out) and not (out / ".pending").exists()

    # killed just after moving one case into its split folder, before the manifest was saved:
    # that case stays where it went, the others are drawn beside it
    out = tmp_path / "out2"
    interrupted(out)
    (out / "val").mkdir()
    (out / ".pending" / "1").rename(out / "val" / "1")
    s = prepare_dataset(phantom_source, out, seed=3, options=SMALL, workers=1, progress=False)
    assert s.prepared == [] and len(s.skipped) == 6 and _splits(out)["1"] == "val"
    assert s.per_split == {"train": 4, "val": 1, "test": 1}
    assert all(
        np.load(out / e["image"]).shape == (48, 48, 48)
        for e in load_manifest(out)["cases"].values()
    )
