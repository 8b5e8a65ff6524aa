"""Phantoms on disk: byte-identical ImageCAS-layout files, atomic writes, never over real scans;
and the ``python -m vesselfm.phantom`` entrypoint."""

from __future__ import annotations

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli import run_cli

from vesselfm.data.phantom import (
    case_paths,
    case_seed,
    generate_phantom,
    write_phantom_dataset,
)
from vesselfm.utils.errors import UserError
from vesselfm.utils.outputs import RECORD_NAME, written_by_us

SMALL = (48, 48, 40)


def test_files_are_byte_identical_and_case_independent_of_n(tmp_path):
    first = write_phantom_dataset(tmp_path / "a", n=2, shape=SMALL, seed=9, progress=False)
    again = write_phantom_dataset(tmp_path / "b", n=3, shape=SMALL, seed=9, progress=False)
    for (img_a, lab_a), (img_b, lab_b) in zip(first, again[:2], strict=True):
        assert img_a.read_bytes() == img_b.read_bytes()
        assert lab_a.read_bytes() == lab_b.read_bytes()
    assert first[0][0].read_bytes() != first[1][0].read_bytes()
    # The file is the in-memory phantom of the case's seed.
    ph = generate_phantom(SMALL, seed=case_seed(9, 2))
    assert np.array_equal(np.asanyarray(nib.load(again[1][0]).dataobj), ph.image)


# ------------------------------------------------------------------------------ ImageCAS files


def test_imagecas_layout_and_names(tmp_path):
    paths = write_phantom_dataset(
        tmp_path, n=2, shape=SMALL, seed=0, start_index=200, progress=False
    )
    assert paths == [case_paths(tmp_path, 200), case_paths(tmp_path, 201)]
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == [
        f"1-200/{RECORD_NAME}",
        "1-200/200.img.nii.gz",
        "1-200/200.label.nii.gz",
        f"201-400/{RECORD_NAME}",
        "201-400/201.img.nii.gz",
        "201-400/201.label.nii.gz",
    ]  # each folder's output record, and no temporary files left behind
    assert case_paths("x", 1) == (Path("x/1-200/1.img.nii.gz"), Path("x/1-200/1.label.nii.gz"))
    assert case_paths("x", 1000)[1] == Path("x/801-1000/1000.label.nii.gz")


def test_nifti_round_trip(tmp_path):
    ((img_path, lab_path),) = write_phantom_dataset(
        tmp_path, n=1, shape=SMALL, seed=4, progress=False
    )
    ph = generate_phantom(SMALL, seed=case_seed(4, 1))
    img, lab = nib.load(img_path), nib.load(lab_path)
    for loaded in (img, lab):
        header = loaded.header
        assert int(header["qform_code"]) == 1 and int(header["sform_code"]) == 1
        assert np.array_equal(loaded.affine, ph.affine)
        assert np.allclose(loaded.get_qform(), ph.affine, atol=1e-6)
        assert np.array_equal(loaded.get_sform(), ph.affine)
        assert header.get_zooms() == pytest.approx(ph.spacing)
        assert header.get_xyzt_units()[0] == "mm"
        slope, inter = header.get_slope_inter()
        assert slope in (None, 1.0) and inter in (None, 0.0)
    assert img.get_data_dtype() == np.int16 and lab.get_data_dtype() == np.uint8
    assert np.array_equal(np.asanyarray(img.dataobj), ph.image)
    assert np.array_equal(np.asanyarray(lab.dataobj), ph.label)


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    real_save = nib.save

    def save_then_fail(img, filename):
        real_save(img, filename)  # the bytes are on disk, under the temporary name
        if ".label." in str(filename):
            raise KeyboardInterrupt

    monkeypatch.setattr(nib, "save", save_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_phantom_dataset(tmp_path, n=2, shape=SMALL, seed=0, progress=False)
    image, label = case_paths(tmp_path, 1)
    assert sorted(p.name for p in image.parent.iterdir()) == [RECORD_NAME, image.name]
    assert np.asanyarray(nib.load(image).dataobj).shape == SMALL


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n": 0}, "n must be a positive"),
        ({"n": 1, "shape": (64, 64)}, "shape must be 3 integers"),
        ({"n": 1, "shape": (64, 64, 16)}, "shape must be 3 integers >= 32"),
        ({"n": 1, "seed": -1}, "seed must be a non-negative integer"),
        ({"n": 1, "colour": "red"}, "unknown phantom option"),
        ({"n": 1, "stenoses": -2}, "stenoses must be"),
    ],
)
def test_bad_arguments_raise_one_line_errors(tmp_path, kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        write_phantom_dataset(tmp_path, progress=False, **{"shape": SMALL, **kwargs})
    assert "\n" not in str(info.value)
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------ CLI


def test_cli_config_composes_and_writes(compose_cfg, tmp_path):
    from vesselfm.phantom import phantom

    cfg = compose_cfg(
        "phantom",
        [f"output={tmp_path / 'set'}", "n=2", "shape=[40,40,32]", "seed=5", "progress=false"],
    )
    paths = phantom(cfg)
    assert [p.name for pair in paths for p in pair] == [
        "1.img.nii.gz", "1.label.nii.gz", "2.img.nii.gz", "2.label.nii.gz"
    ]  # fmt: skip
    label = np.asanyarray(nib.load(paths[1][1]).dataobj)
    assert np.array_equal(label, generate_phantom((40, 40, 32), seed=case_seed(5, 2)).label)


# ------------------------------------------------------------------------------ never overwrite


def _real_scan(path: Path, value: int) -> bytes:
    """A file that vesselfm did not write, as a user's own scan would be."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), value, np.int16), np.eye(4)), path)
    return path.read_bytes()


def test_phantoms_never_overwrite_real_scans(tmp_path):
    # finding 1: output= pointed at a folder holding 1-200/1.img.nii.gz and 1.label.nii.gz
    image, label = case_paths(tmp_path, 1)
    before = {p: _real_scan(p, v) for p, v in ((image, 100), (label, 1))}
    with pytest.raises(UserError, match=r"holds 2 file\(s\) vesselfm did not write") as info:
        write_phantom_dataset(tmp_path, n=1, shape=SMALL, progress=False)
    assert "overwrite=true" in str(info.value) and "\n" not in str(info.value)
    assert {p: p.read_bytes() for p in before} == before
    assert not (image.parent / RECORD_NAME).exists()


def test_phantoms_refuse_a_folder_of_other_files_but_replace_their_own(tmp_path):
    # a second case: no name clash, but the folder holds someone else's data
    _real_scan(tmp_path / "notes" / "ct.nii.gz", 5)
    with pytest.raises(UserError, match=r"ct\.nii\.gz"):
        write_phantom_dataset(tmp_path, n=1, shape=SMALL, progress=False)
    assert not (tmp_path / "1-200").exists()
    # our own phantoms are replaced without asking
    fresh = tmp_path / "fresh"
    ((image, _),) = write_phantom_dataset(fresh, n=1, shape=SMALL, seed=1, progress=False)
    ((again, _),) = write_phantom_dataset(fresh, n=1, shape=SMALL, seed=2, progress=False)
    assert again == image and written_by_us(image)
    # overwrite=true: the user said so
    write_phantom_dataset(tmp_path, n=1, shape=SMALL, progress=False, overwrite=True)
    assert written_by_us(case_paths(tmp_path, 1)[0])
    assert (tmp_path / "notes" / "ct.nii.gz").is_file()  # not ours to touch


@pytest.mark.slow
def test_cli_refuses_real_scans_with_one_line(tmp_path):
    image, _ = case_paths(tmp_path / "out", 1)
    before = _real_scan(image, 100)
    result = _run_cli("output=out", "n=1", "shape=[40,40,32]", cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "overwrite=true" in lines[0]
    assert image.read_bytes() == before


def _run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return run_cli("vesselfm.phantom", *args, cwd=cwd, timeout=120)


@pytest.mark.slow
def test_cli_writes_files(tmp_path):
    result = _run_cli("output=out", "n=2", "shape=[40,40,32]", "seed=1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for index in (1, 2):
        for path in case_paths(tmp_path / "out", index):
            assert path.is_file()
    assert not (tmp_path / "outputs").exists()  # no Hydra run directory


@pytest.mark.slow
def test_cli_help(tmp_path):
    result = _run_cli("--help", cwd=tmp_path)
    assert result.returncode == 0
    assert "vesselfm.phantom" in result.stdout and "shape" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "key"),
    [
        (["output=out", "n=0"], "n must be"),
        (["output=out", "shape=[64,64]"], "shape"),
        (["n=2"], "output"),
    ],
)
def test_cli_bad_arguments(tmp_path, args, key):
    result = _run_cli(*args, cwd=tmp_path)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and key in lines[0]
    assert not (tmp_path / "out").exists()
