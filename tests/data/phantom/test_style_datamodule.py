"""data.style / data.style_per in the phantom DataModule, and style= on the phantom CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from vesselfm.data.datamodules import PhantomDataModule, StyledPatchDataset
from vesselfm.data.datasets import RandomPatchDataset
from vesselfm.data.phantom import case_paths, case_seed, generate_phantom
from vesselfm.io import read_volume

SHAPE = (36, 36, 32)


def _module(tmp_path: Path, style_per: str, **kwargs) -> PhantomDataModule:
    dm = PhantomDataModule(
        n_train=2, n_val=0, n_test=1, shape=SHAPE, seed=3, work_dir=tmp_path,
        style="randomised", style_per=style_per, patch_size=(24, 24, 16), batch_size=1,
        num_workers=0, samples_per_epoch=2, augment=False, transfer_dtype="float32",
        preprocess={"in_plane_size": None}, **kwargs,
    )  # fmt: skip
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _raw(folder: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    img, lab = case_paths(folder, index)
    return read_volume(img).array, read_volume(lab).array


def test_per_case_style_writes_randomised_training_phantoms_and_ct_test_phantoms(tmp_path):
    dm = _module(tmp_path, "case")
    assert dm.data_dir == tmp_path / "prepared-randomised"
    assert type(dm.train_set) is RandomPatchDataset  # patches are read as written
    raw = tmp_path / "raw-randomised"
    for index, style in ((1, "randomised"), (2, "randomised"), (3, "ct")):
        ph = generate_phantom(SHAPE, case_seed(3, index), style=style)
        image, label = _raw(raw, index)
        assert np.array_equal(image, ph.image) and np.array_equal(label, ph.label), index
    ct_train = generate_phantom(SHAPE, case_seed(3, 1))
    assert not np.array_equal(_raw(raw, 1)[0], ct_train.image)
    # the same crop twice: the same pixels (the style belongs to the case)
    torch.manual_seed(0)
    a = dm.train_set[0]
    torch.manual_seed(0)
    b = dm.train_set[0]
    assert torch.equal(a["image"], b["image"])


def test_per_patch_style_renders_every_patch_anew_over_ct_phantoms(tmp_path):
    # style_ranges reach the patches: no extra trees (the label stays the crop's), strong noise
    ranges = {"extra_vessels": [0, 0], "noise": [0.1, 0.12], "noise_to_contrast": 1.0}
    dm = _module(tmp_path, "patch", style_ranges=ranges)
    assert dm.data_dir == tmp_path / "prepared"
    ds = dm.train_set
    assert isinstance(ds, StyledPatchDataset) and ds.ranges == ranges
    # the training phantoms on disk are CT-style
    image, _ = _raw(tmp_path / "raw", 1)
    assert np.array_equal(image, generate_phantom(SHAPE, case_seed(3, 1)).image)
    # item = the base crop, re-rendered with a style seed drawn first from torch's RNG
    torch.manual_seed(7)
    style_seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    base = ds.base[0]
    torch.manual_seed(7)
    item = ds[0]
    expected = ds.restyle(base, 0, style_seed)
    assert torch.equal(item["image"], expected["image"])
    assert torch.equal(item["label"], expected["label"])
    assert not torch.allclose(item["image"], base["image"])
    assert torch.equal(item["label"], base["label"])  # extra_vessels [0, 0]
    # the same crop in another style: other pixels
    other = ds.restyle(base, 0, style_seed + 1)
    assert not torch.equal(other["image"], item["image"])
    # normalised like a prepared volume: 1-99 % -> [0, 1], clipped there as the preprocessing
    # clips (the noise reaches beyond: about 1 % of the voxels sit on each bound)
    assert float(item["image"].min()) == 0.0 and float(item["image"].max()) == 1.0
    at_bounds = float(((item["image"] == 0) | (item["image"] == 1)).float().mean())
    assert 0.01 <= at_bounds <= 0.03
    assert item["image"].dtype == base["image"].dtype and item["label"].dtype == base["label"].dtype
    # style_probability 0: every patch keeps the CT look (the same crop as the base's)
    ds.probability = 0.0
    torch.manual_seed(7)
    kept = ds[0]
    assert torch.equal(kept["image"], base["image"]) and torch.equal(kept["label"], base["label"])


@pytest.mark.parametrize(
    ("key", "value", "allowed"),
    [
        ("style", "mri", "one of"),
        ("style_per", "volume", "one of"),
        ("style_probability", 1.5, "in"),
        ("style_ranges", {"bogus": [0, 1]}, "known"),
    ],
)
def test_bad_style_keys_are_refused_with_the_allowed_values(tmp_path, key, value, allowed):
    with pytest.raises(ValueError, match=f"data.{key} must be {allowed}"):
        PhantomDataModule(work_dir=tmp_path, **{key: value})


@pytest.mark.slow
def test_phantom_cli_writes_randomised_cases_and_refuses_a_bad_style(tmp_path):
    from cli import run_cli

    ok = run_cli(
        "vesselfm.phantom", "output=out", "n=1", "shape=[36,36,32]", "seed=2", "style=randomised",
        cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    image, label = _raw(tmp_path / "out", 1)
    ph = generate_phantom(SHAPE, case_seed(2, 1), style="randomised")
    assert np.array_equal(image, ph.image) and np.array_equal(label, ph.label)
    bad = run_cli("vesselfm.phantom", "output=bad", "style=mri", cwd=tmp_path, timeout=120)
    assert bad.returncode != 0
    assert "style must be one of ['ct', 'randomised']" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_randomised_style_and_the_imagecasx_layout_are_refused_together(compose_cfg):
    from vesselfm.phantom import _options
    from vesselfm.utils.cli import UserError

    cfg = compose_cfg("phantom", ["output=x", "style=randomised", "layout=imagecasx"])
    with pytest.raises(UserError, match="cannot write layout=imagecasx"):
        _options(cfg)
    assert (
        _options(compose_cfg("phantom", ["output=x", "style=randomised"]))["style"] == "randomised"
    )


def test_the_demo_trains_on_randomised_patches_and_tests_on_ct_phantoms(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg("train", ["experiment=phantom_demo"])
    assert (cfg.data.style, cfg.data.style_per) == ("randomised", "patch")
    assert cfg.ood.cases >= 2 and cfg.inference.postprocess.min_size > 0
    dm = instantiate(cfg.data, work_dir="unused", _recursive_=False)
    assert isinstance(dm, PhantomDataModule) and dm.style_probability == cfg.data.style_probability
    # data=phantom: CT-style patches only
    ct = compose_cfg("train", ["experiment=phantom_demo", "data=phantom"])
    assert ct.data.style == "ct"
