"""Synthetic coronary CTA phantoms: label topology, Hounsfield units, determinism, ImageCAS files.

Topology is checked from the arrays alone, by computations that share nothing with the
generator's construction: connected components (scipy), the Euler characteristic (skimage)
and, on small cases, persistent homology of the cubical complex (gudhi).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from cli import run_cli
from scipy import ndimage
from skimage.measure import euler_number

from vesselfm.data.phantom import (
    Phantom,
    Tissue,
    case_paths,
    case_seed,
    generate_phantom,
    label_topology,
    write_phantom_dataset,
)
from vesselfm.utils.errors import UserError
from vesselfm.utils.outputs import RECORD_NAME, written_by_us

SMALL = (48, 48, 40)


def betti_scipy_skimage(mask: np.ndarray) -> tuple[int, int, int]:
    """(b0, b1, b2): foreground 26-connected, background 6-connected, b1 = b0 + b2 - chi."""
    mask = mask.astype(bool)
    crop = np.pad(mask[ndimage.find_objects(mask.astype(np.uint8))[0]], 1)
    _, b0 = ndimage.label(crop, structure=np.ones((3, 3, 3)))
    _, n_background = ndimage.label(~crop, structure=ndimage.generate_binary_structure(3, 1))
    b2 = n_background - 1
    chi = euler_number(crop, connectivity=3)
    return b0, b0 + b2 - chi, b2


def betti_gudhi(mask: np.ndarray) -> tuple[int, int, int]:
    """(b0, b1, b2) of the union of the closed foreground voxels (persistent homology)."""
    gudhi = pytest.importorskip("gudhi")
    mask = mask.astype(bool)
    crop = np.pad(mask[ndimage.find_objects(mask.astype(np.uint8))[0]], 1)
    complex_ = gudhi.CubicalComplex(top_dimensional_cells=np.where(crop, 0.0, 1.0))
    complex_.compute_persistence()
    betti = list(complex_.persistent_betti_numbers(0.0, 0.0)) + [0, 0, 0]
    return betti[0], betti[1], betti[2]


@pytest.fixture(scope="module")
def case128() -> Phantom:
    return generate_phantom((128, 128, 96), seed=3, calcifications=3, stenoses=2)


# ------------------------------------------------------------------------------ topology


@pytest.mark.parametrize(
    "shape", [(32, 32, 32), (48, 48, 48), (64, 64, 48), (96, 80, 64), (40, 96, 64), (128, 128, 96)]
)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_label_has_two_trees_without_loops_or_cavities(shape, seed):
    ph = generate_phantom(shape, seed=seed)
    assert ph.label.shape == shape
    assert betti_scipy_skimage(ph.label) == (2, 0, 0)
    # Nothing is cut by the volume's faces: the trees were kept inside.
    for axis in range(3):
        assert not np.take(ph.label, [0, -1], axis=axis).any()


@pytest.mark.parametrize("seed", [5, 11])
def test_topology_agrees_with_persistent_homology(seed):
    ph = generate_phantom((64, 64, 48), seed=seed)
    assert betti_gudhi(ph.label) == (2, 0, 0)


def test_label_topology_helper_on_known_shapes():
    ring = np.zeros((9, 9, 3), bool)
    ring[1:8, 1:8, 1] = True
    ring[3:6, 3:6, 1] = False
    hollow = np.zeros((7, 7, 7), bool)
    hollow[1:6, 1:6, 1:6] = True
    hollow[3, 3, 3] = False
    corners = np.zeros((4, 4, 4), bool)
    corners[1, 1, 1] = corners[2, 2, 2] = True  # 26-connected through a corner
    assert label_topology(ring) == (1, 1, 0)
    assert label_topology(hollow) == (1, 0, 1)
    assert label_topology(corners) == (1, 0, 0)
    assert label_topology(np.zeros((5, 5, 5), bool)) == (0, 0, 0)
    for mask in (ring, hollow, corners):
        assert label_topology(mask) == betti_gudhi(mask) == betti_scipy_skimage(mask)


# ------------------------------------------------------------------------------ intensities


def _core(mask: np.ndarray, iterations: int = 2) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=iterations)


@pytest.mark.parametrize(
    ("tissue", "lo", "hi"),
    [
        (Tissue.AIR, -1024, -900),
        (Tissue.LUNG, -900, -700),
        (Tissue.FAT, -150, -50),
        (Tissue.SOFT_TISSUE, 0, 100),
        (Tissue.MYOCARDIUM, 60, 160),
        (Tissue.BLOOD, 300, 500),
    ],
)
def test_tissue_hounsfield_ranges(case128, tissue, lo, hi):
    core = _core(case128.tissue == tissue)
    assert core.sum() > 100, tissue
    assert lo <= np.median(case128.image[core]) <= hi


def test_lumen_is_as_bright_as_blood_and_brighter_than_myocardium(case128):
    lumen = case128.label.astype(bool)
    assert np.array_equal(lumen, case128.tissue == Tissue.LUMEN)
    centre = _core(lumen, 1)
    assert centre.sum() > 20
    assert 250 <= np.median(case128.image[centre]) <= 450
    myocardium = np.median(case128.image[_core(case128.tissue == Tissue.MYOCARDIUM)])
    assert np.median(case128.image[lumen]) > myocardium + 100


def test_calcium_is_bright_and_never_labelled(case128):
    calcium = case128.tissue == Tissue.CALCIUM
    assert calcium.any()
    assert not case128.label[calcium].any()
    assert np.percentile(case128.image[calcium], 90) > 600
    # The calcified plaques sit on the vessels.
    near = ndimage.binary_dilation(case128.label.astype(bool), iterations=3)
    assert (calcium & near).sum() > 0.5 * calcium.sum()


def test_options_control_noise_and_lesions():
    quiet = generate_phantom((64, 64, 48), seed=4, noise_std=0, calcifications=0)
    noisy = generate_phantom((64, 64, 48), seed=4, noise_std=35, calcifications=0)
    fat = _core(quiet.tissue == Tissue.FAT, 3)
    assert quiet.image[fat].std() < 2
    assert 30 <= noisy.image[fat].std() <= 40
    assert not (quiet.tissue == Tissue.CALCIUM).any()
    # Noise and lesions do not move the anatomy.
    assert np.array_equal(quiet.label, noisy.label)
    streaky = generate_phantom((64, 64, 48), seed=4, noise_std=0, calcifications=0, streaks=True)
    assert np.array_equal(streaky.label, quiet.label)
    assert np.abs(streaky.image.astype(int) - quiet.image).max() > 5


# ------------------------------------------------------------------------------ geometry


def test_affine_is_scanner_like(case128):
    affine, sx, sy, sz = case128.affine, *case128.spacing
    assert affine.dtype == np.float64 and affine.shape == (4, 4)
    assert nib.aff2axcodes(affine) == ("L", "P", "S")  # in-plane axes flipped, as scanners write
    assert np.allclose(np.linalg.norm(affine[:3, :3], axis=0), case128.spacing)
    assert 0.30 <= sx == sy <= 0.45 and 0.5 <= sz <= 0.625
    assert np.array_equal(affine.astype(np.float32).astype(np.float64), affine)


def test_spacing_option():
    ph = generate_phantom(SMALL, seed=1, spacing=(0.5, 0.5, 1.0))
    assert ph.spacing == (0.5, 0.5, 1.0)
    assert np.allclose(np.abs(np.diag(ph.affine)[:3]), (0.5, 0.5, 1.0))


def test_types_and_shapes():
    ph = generate_phantom(SMALL, seed=0)
    assert ph.image.dtype == np.int16 and ph.label.dtype == np.uint8
    assert ph.image.shape == ph.label.shape == ph.tissue.shape == SMALL
    assert set(np.unique(ph.label)) == {0, 1}
    assert ph.case_id == "phantom-0"


# ------------------------------------------------------------------------------ determinism


def test_same_seed_same_arrays_other_seed_other_arrays():
    a, b, c = (generate_phantom(SMALL, seed=s) for s in (7, 7, 8))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert np.array_equal(a.affine, b.affine)
    assert not np.array_equal(a.label, c.label)


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
