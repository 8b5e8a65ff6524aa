"""DataModules: batch contract, transfer dtypes, workers, configs, phantoms end to end."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vesselfm.data.datamodules import ImageCASDataModule, PhantomDataModule
from vesselfm.data.manifest import load_manifest
from vesselfm.data.preprocessing import PreprocessConfig, normalize_intensity


def _first_batches(prepared, seed=5, **kwargs):
    dm = ImageCASDataModule(
        prepared,
        patch_size=(32, 32, 24),
        batch_size=3,
        num_workers=0,
        samples_per_epoch=6,
        **kwargs,
    )
    dm.setup("fit")
    torch.manual_seed(seed)  # the same crops and augmentation for each configuration
    return dm, list(dm.train_dataloader())


def test_train_batches_have_the_contracted_shapes_and_values(prepared):
    dm, batches = _first_batches(prepared, label_bits=False)
    assert dm.preprocess == PreprocessConfig(in_plane_size=None)
    assert len(batches) == 2
    for b in batches:
        assert set(b) == {"image", "label"}
        assert b["image"].shape == b["label"].shape == (3, 1, 32, 32, 24)
        assert b["image"].is_contiguous() and b["label"].is_contiguous()
        # out of the workers: float16 images, uint8 labels (data.transfer_dtype)
        assert b["image"].dtype == torch.float16 and b["label"].dtype == torch.uint8
        assert set(torch.unique(b["label"]).tolist()) == {0, 1}
        # normalised to [0, 1] (the published noise adds up to ~0.3 + noise on some crops)
        assert b["image"].min() >= -0.1 and b["image"].max() <= 1.5
        # what training_step sees: float32, the same values
        on_device = dm.on_after_batch_transfer(b, 0)
        assert on_device["image"].dtype == on_device["label"].dtype == torch.float32
        assert torch.equal(on_device["image"], b["image"].float())
        assert torch.equal(on_device["label"], b["label"].float())


def test_labels_travel_as_bits_and_arrive_as_the_same_labels(prepared):
    dm, packed = _first_batches(prepared, label_bits=True)  # configs/data/imagecas.yaml's
    _, plain = _first_batches(prepared, label_bits=False)
    for b, ref in zip(packed, plain, strict=True):
        assert set(b) == {"image", "label_bits"}
        assert b["label_bits"].dtype == torch.uint8 and b["label_bits"].shape == (3, 1, 32, 32, 3)
        assert torch.equal(b["image"], ref["image"])
        on_device = dm.on_after_batch_transfer(b, 0)
        assert set(on_device) == {"image", "label"}
        assert on_device["label"].dtype == torch.float32
        assert torch.equal(on_device["label"], ref["label"].float())


def test_float32_transfer_gives_the_float16_batches_values_at_full_precision(prepared):
    batches = {}
    for dtype in ("float16", "float32"):
        _, (batches[dtype], _) = _first_batches(prepared, transfer_dtype=dtype, label_bits=False)
    full, half = batches["float32"], batches["float16"]
    assert full["image"].dtype == torch.float32 and full["label"].dtype == torch.uint8
    assert torch.equal(full["label"], half["label"])
    torch.testing.assert_close(half["image"].float(), full["image"], atol=1e-3, rtol=1e-3)
    assert torch.equal(half["image"], full["image"].half())


def test_a_bad_transfer_dtype_is_refused(prepared):
    with pytest.raises(ValueError, match="data.transfer_dtype"):
        ImageCASDataModule(prepared, transfer_dtype="int8")


def test_val_and_test_batches_are_whole_volumes_with_native_geometry(prepared):
    dm = ImageCASDataModule(prepared, num_workers=0)
    dm.setup("fit")
    dm.setup("test")
    m = load_manifest(prepared)
    for loader, split in ((dm.val_dataloader(), "val"), (dm.test_dataloader(), "test")):
        batches = list(loader)
        assert len(batches) == sum(e["split"] == split for e in m["cases"].values())
        for b in batches:
            e = m["cases"][b["case"][0]]
            assert e["split"] == split
            shape = tuple(e["prepared_shape"])
            assert b["image"].shape == b["label"].shape == (1, 1, *shape)
            assert b["image"].dtype == torch.float32 and b["label"].dtype == torch.float32
            img = np.load(prepared / e["image"])
            expected = normalize_intensity(img, tuple(e["intensity_range"]), dm.preprocess)
            np.testing.assert_allclose(b["image"][0, 0].numpy(), expected)
            assert b["spacing"].shape == (1, 3) and b["original_shape"].tolist() == [
                e["original_shape"]
            ]
            np.testing.assert_allclose(b["original_spacing"][0].numpy(), e["original_spacing"])
            assert (
                b["original_label"] == [e["original_label"]] and Path(e["original_label"]).is_file()
            )


def test_workers_give_different_crops_and_num_shots_limits_cases(prepared):
    dm = ImageCASDataModule(
        prepared,
        patch_size=(16, 16, 16),
        batch_size=4,
        num_workers=2,
        samples_per_epoch=8,
        persistent_workers=False,
        num_shots=2,
    )
    dm.setup("fit")
    assert [c.case_id for c in dm.train_set.cases] == [c.case_id for c in dm._cases["train"][:2]]
    a, b = list(dm.train_dataloader())
    assert not torch.equal(a["image"], b["image"])


def test_a_loader_in_the_main_process_repeats_its_batches_with_torchs_seed(prepared):
    dm = ImageCASDataModule(prepared, patch_size=(24, 24, 16), num_workers=0, batch_size=2)
    dm.setup("fit")
    runs = []
    for _ in range(2):  # the same dataset object, as in two fits in one process
        torch.manual_seed(3)
        runs.append([b["image"] for b in dm.train_dataloader()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_yaml_augmentation_is_the_published_pipeline_and_fast_transforms_switches_it():
    cfg = yaml.safe_load(
        (Path(str(files("vesselfm.configs"))) / "data" / "imagecas.yaml").read_text()
    )
    assert cfg["fast_transforms"] is True
    assert [c["_target_"].rpartition(".")[0] for c in cfg["augment"]] == ["monai.transforms"] * 7
    modules = {
        fast: {
            type(t).__module__.split(".")[0]
            for t in ImageCASDataModule("unused", fast_transforms=fast)._train_transform.transforms[
                :7
            ]
        }
        for fast in (True, False)
    }
    assert modules == {True: {"vesselfm", "monai"}, False: {"monai"}}
    with pytest.raises(ValueError, match="_target_"):
        ImageCASDataModule("unused", augment=[{"keys": ["image"]}])
    with pytest.raises(ValueError, match="cannot be imported"):
        ImageCASDataModule("unused", augment=[{"_target_": "monai.transforms.NoSuchThing"}])


def test_phantom_datamodule_from_the_configs(compose_cfg, tmp_path):
    from hydra.utils import instantiate

    cfg = compose_cfg(
        "train",
        [
            "data=phantom",
            "data.n_train=2",
            "data.n_val=1",
            "data.n_test=1",
            "data.shape=[48,48,40]",
            "data.num_workers=0",
            "data.patch_size=[32,32,32]",
            "data.samples_per_epoch=4",
        ],
    )
    dm = instantiate(cfg.data, _recursive_=False)
    assert isinstance(dm, PhantomDataModule) and dm.preprocess.in_plane_size is None
    dm.prepare_data()
    manifest = load_manifest(Path(cfg.paths.output_dir) / "phantoms" / "prepared")
    assert {cid: e["split"] for cid, e in manifest["cases"].items()} == {
        "1": "train",
        "2": "train",
        "3": "val",
        "4": "test",
    }
    assert manifest["split"]["mode"] == "official"
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (2, 1, 32, 32, 32)
    v = next(iter(dm.val_dataloader()))
    assert v["image"].shape == (1, 1, 48, 48, 40) and v["case"] == ["3"]
    dm.prepare_data()  # the second time finds everything in place
    assert load_manifest(dm.data_dir)["cases"] == manifest["cases"]


def test_imagecas_config_instantiates(compose_cfg):
    from hydra.utils import instantiate

    cfg = compose_cfg("train", ["data=imagecas"])
    dm = instantiate(cfg.data, _recursive_=False)
    assert dm.patch_size == (128, 128, 128) and dm.batch_size == 6
    assert str(dm.data_dir).endswith("imagecas")


def test_training_step_unpacks_label_bits_without_the_datamodule_hook(prepared):
    from torch import nn

    from vesselfm.models.lit_module import VesselSegLitModule

    dm, (packed, _) = _first_batches(prepared, label_bits=True)
    assert "label_bits" in packed
    module = VesselSegLitModule(
        nn.Conv3d(1, 1, 3, padding=1), nn.BCEWithLogitsLoss(), torch.optim.SGD
    )
    module.log = lambda *args, **kwargs: None  # no trainer attached
    torch.manual_seed(0)
    on_device = dm.on_after_batch_transfer(packed, 0)
    assert torch.equal(module.training_step(packed, 0), module.training_step(on_device, 0))
