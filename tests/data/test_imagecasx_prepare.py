"""prepare on an ImageCAS-X root: splits from the lists less exclude.txt, scans apart from the
labels, segment codes kept (and their round-trip ceiling), a label on another grid, the
centrelines and descriptors in the manifest."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from vesselfm.data.imagecasx import SEGMENTS
from vesselfm.data.prepare import PrepareOptions, prepare_dataset
from vesselfm.data.preprocessing import PreprocessConfig
from vesselfm.utils.errors import UserError

# 64 -> 32 in-plane: the 2x shrink ImageCAS gets (512 -> 256)
HALF = PreprocessConfig(in_plane_size=32)


def _seg(root: Path, cid: str) -> tuple[np.ndarray, np.ndarray]:
    img = nib.load(root / "segmentations" / f"{cid}.coronary.nii.gz")
    return np.asarray(img.dataobj), img.affine


@pytest.fixture(scope="module")
def moved_root(imagecasx_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The phantom root as users have it: scans in the Kaggle folders apart from the labels,
    case 2 excluded, case 9 listed without files, case 4's label on a larger grid, the
    descriptors as an xlsx workbook."""
    import openpyxl

    base = tmp_path_factory.mktemp("imagecasx_moved")
    root = base / "labels"
    shutil.copytree(imagecasx_source, root)
    scans = base / "scans" / "1-200"
    scans.mkdir(parents=True)
    for f in (root / "volumes").glob("*.img.nii.gz"):
        f.rename(scans / f.name)
    shutil.rmtree(root / "volumes")
    (root / "filelist" / "exclude.txt").write_text("2\n")
    (root / "filelist" / "test.txt").write_text("5\n9\n")
    seg, affine = _seg(imagecasx_source, "4")
    shift = np.eye(4)
    shift[:3, 3] = [-3, 0, -2]
    padded = np.pad(seg, ((3, 1), (0, 0), (2, 0)))
    nib.save(nib.Nifti1Image(padded, affine @ shift), root / "segmentations" / "4.coronary.nii.gz")
    wb = openpyxl.Workbook()
    ws = wb.active
    lines = (root / "Descriptors.csv").read_text().splitlines()
    for line in lines:
        ws.append([int(v) if v.isdigit() else v for v in line.split(",")])
    wb.save(root / "Descriptors.xlsx")
    (root / "Descriptors.csv").unlink()
    return root


@pytest.fixture(scope="module")
def segments_set(moved_root: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("prepared_segments")
    caplog = logging.getLogger("vesselfm.data.prepare")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())  # type: ignore[method-assign]
    caplog.addHandler(handler)
    try:
        summary = prepare_dataset(
            moved_root,
            out,
            images=moved_root.parent / "scans",
            options=PrepareOptions(preprocess=HALF, labels="segments"),
            workers=1,
            progress=False,
        )
    finally:
        caplog.removeHandler(handler)
    return out, summary, records


@pytest.fixture(scope="module")
def lumen_set(imagecasx_source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("prepared_lumen")
    prepare_dataset(
        imagecasx_source,
        out,
        options=PrepareOptions(preprocess=HALF),
        workers=1,
        progress=False,
    )
    return out


def _manifest(out: Path) -> dict:
    return json.loads((out / "manifest.json").read_text())


def test_splits_are_the_lists_less_exclude(segments_set, moved_root):
    out, summary, _ = segments_set
    m = _manifest(out)
    splits = {cid: e["split"] for cid, e in m["cases"].items()}
    assert splits == {"1": "train", "3": "train", "4": "val", "5": "test"}
    assert not any((out / s / "2").exists() for s in ("train", "val", "test"))
    assert list(summary.failed) == ["9"] and "listed case 9" in summary.failed["9"]["reason"]
    assert m["layout"] == "imagecasx" and m["labels"] == "segments"
    assert m["split"]["excluded"] == ["2"]
    for cid, e in m["cases"].items():
        assert e["centerlines"] == [
            str((moved_root / "centerlines" / f"{cid}.coronary_{s}_centerline.vtk").resolve())
            for s in ("left", "right")
        ]
        assert e["descriptors"]["Scan ID"] == cid
        assert e["descriptors"]["Dominance"] in {"Right", "Left", "Co-dominant"}
        assert e["image_source"].endswith(f"scans/1-200/{cid}.img.nii.gz")


def test_label_on_another_grid_is_resampled_and_logged(segments_set, lumen_set):
    out, _, records = segments_set
    m = _manifest(out)
    assert m["cases"]["4"]["label_resampled"]["from_shape"] == [68, 64, 50]
    assert "label_resampled" not in m["cases"]["1"]
    assert any(
        "4.coronary.nii.gz is on another grid than its scan" in r and "nearest neighbour" in r
        for r in records
    )
    # the padded label comes back exactly: the same vessels as the untouched case
    seg4 = np.load(out / "val" / "4" / "mask.npy")
    lumen4 = np.load(lumen_set / "val" / "4" / "mask.npy")
    np.testing.assert_array_equal(seg4 > 0, lumen4 > 0)


def test_segment_codes_survive_and_the_round_trip_ceiling(
    segments_set, lumen_set, imagecasx_source
):
    out, _, _ = segments_set
    m = _manifest(out)
    ceiling = {}
    for cid, e in m["cases"].items():
        codes, _ = _seg(imagecasx_source, cid)
        mask = np.load(out / e["mask"])
        lumen = np.load(lumen_set / e["mask"])
        assert mask.dtype == np.uint8 and mask.shape == (32, 32, 48)
        np.testing.assert_array_equal(mask > 0, lumen == 1)  # the union is the lumen set's mask
        present = set(np.unique(codes).tolist()) - {0}
        assert set(np.unique(mask).tolist()) - {0} == present
        # each prepared voxel's code is among the 2x2 original voxels it covers, or next to them
        blocks = codes.reshape(32, 2, 32, 2, 48)
        own = np.zeros(mask.shape, bool)
        for a in range(2):
            for b in range(2):
                own |= blocks[:, a, :, b, :] == mask
        assert own[mask > 0].mean() > 0.95
        # the ceiling, independently: nearest-neighbour (block) upsampling back to 64 x 64
        back = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
        for code in present:
            a, b = codes == code, back == code
            nn = 2 * np.count_nonzero(a & b) / (a.sum() + b.sum())
            name = SEGMENTS[code]
            ceiling.setdefault(name, []).append(e["round_trip_segment_dice"][name])
            assert e["round_trip_segment_dice"][name] >= nn - 0.05
            assert 0 < e["round_trip_segment_dice"][name] <= 1
    print(
        "per-segment round-trip Dice (64 -> 32 in-plane):",
        {k: round(float(np.mean(v)), 3) for k, v in ceiling.items()},
    )


def test_lumen_labels_are_binary_and_detected(lumen_set):
    m = _manifest(lumen_set)
    assert m["layout"] == "imagecasx" and m["labels"] == "lumen"
    assert {cid: e["split"] for cid, e in m["cases"].items()} == {
        "1": "train", "2": "train", "3": "train", "4": "val", "5": "test",
    }  # fmt: skip
    for e in m["cases"].values():
        assert set(np.unique(np.load(lumen_set / e["mask"])).tolist()) == {0, 1}
        assert "round_trip_segment_dice" not in e


def test_wrong_layout_settings_are_refused(imagecasx_source, phantom_source, tmp_path):
    with pytest.raises(ValueError, match="not an ImageCAS-X root"):
        prepare_dataset(phantom_source, tmp_path / "a", layout="imagecasx", progress=False)
    with pytest.raises(ValueError, match="labels=segments needs ImageCAS-X"):
        prepare_dataset(
            phantom_source,
            tmp_path / "b",
            options=PrepareOptions(labels="segments"),
            progress=False,
        )
    with pytest.raises(ValueError, match="filelist/.* decide the splits"):
        prepare_dataset(imagecasx_source, tmp_path / "c", split="random", progress=False)
    with pytest.raises(ValueError, match=r"images=.*no such folder"):
        prepare_dataset(imagecasx_source, tmp_path / "d", images=tmp_path / "none", progress=False)
    assert not any((tmp_path / n).exists() for n in "abcd")


def test_prepare_config_keys(moved_root, compose_cfg, tmp_path):
    from vesselfm.prepare import prepare

    cfg = compose_cfg(
        "prepare",
        [
            f"source={moved_root}",  # layout detected
            f"images={moved_root.parent / 'scans'}",
            f"output={tmp_path / 'out'}",
            "labels=lumen",
            "preprocess.in_plane_size=32",
            "workers=1",
            "progress=false",
        ],
    )
    # case 9 is listed without files: the others are prepared, then the run says so
    with pytest.raises(UserError, match=r"1 of 5 case\(s\) could not be prepared \(9; "):
        prepare(cfg)
    m = _manifest(tmp_path / "out")
    assert sorted(m["cases"]) == ["1", "3", "4", "5"]
    assert m["layout"] == "imagecasx" and m["labels"] == "lumen"
