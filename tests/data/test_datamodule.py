"""DataModules: batch contract, foreground share, memory-mapped crops, configs, phantoms end to end."""

from __future__ import annotations

import sys
from importlib.resources import files
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from vesselfm.data.imagecas_datamodule import (
    ImageCASDataModule,
    PhantomDataModule,
    collate_label_bits,
    read_region,
    unpacked_batch,
)
from vesselfm.data.prepare import PrepareOptions, load_manifest, prepare_dataset
from vesselfm.data.preprocessing import PreprocessConfig, normalize_intensity
from vesselfm.data.transforms import DEFAULT_AUGMENTATIONS


@pytest.fixture(scope="module")
def prepared(phantom_source, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("prepared")
    options = PrepareOptions(preprocess=PreprocessConfig(in_plane_size=None))
    prepare_dataset(
        phantom_source, out, split="random", seed=0, options=options, workers=1, progress=False
    )
    return out


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


@pytest.mark.parametrize("depth", [24, 13, 1])
def test_label_bits_round_trip(depth):
    labels = torch.rand(2, 1, 5, 3, depth, generator=torch.Generator().manual_seed(depth)) < 0.3
    labels = labels.to(torch.uint8)
    batch = collate_label_bits([{"image": torch.zeros(1, 5, 3, depth), "label": x} for x in labels])
    assert batch["label_bits"].shape == (2, 1, 5, 3, -(-depth // 8))
    assert torch.equal(unpacked_batch(batch)["label"], labels.float())
    with pytest.raises(ValueError, match="label_bits"):
        collate_label_bits(
            [{"image": torch.zeros(1), "label": torch.tensor([2], dtype=torch.uint8)}]
        )


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


def _centre_is_vessel(ds, n: int) -> float:
    hits = 0
    for i in range(n):
        item = ds[i]
        c = [s // 2 for s in item["label"].shape[1:]]
        hits += int(item["label"][0, c[0], c[1], c[2]] > 0)
    return hits / n


@pytest.mark.parametrize(
    ("ratio", "low", "high"), [(1.0, 0.97, 1.0), (0.5, 0.4, 0.62), (0.0, 0.0, 0.05)]
)
def test_configured_foreground_share(prepared, ratio, low, high):
    torch.manual_seed(0)
    dm = ImageCASDataModule(
        prepared,
        patch_size=(16, 16, 16),
        num_workers=0,
        foreground_ratio=ratio,
        augment=False,
        samples_per_epoch=400,
    )
    dm.setup("fit")
    share = _centre_is_vessel(dm.train_set, 400)
    assert low <= share <= high, share


def test_crops_come_from_the_memory_map_and_pad_outside():
    vol = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    np.testing.assert_array_equal(
        read_region(vol, (1, 1, 1), (2, 2, 2), pad_value=-1), vol[1:3, 1:3, 1:3]
    )
    out = read_region(vol, (-1, 3, 4), (3, 3, 3), pad_value=-7)
    assert out.shape == (3, 3, 3)
    np.testing.assert_array_equal(out[1:, :2, :2], vol[0:2, 3:5, 4:6])
    assert np.all(out[0] == -7) and np.all(out[:, 2] == -7) and np.all(out[:, :, 2] == -7)
    as_float = read_region(vol, (-1, 3, 4), (3, 3, 3), pad_value=-7, dtype=np.float32)
    assert as_float.dtype == np.float32 and np.array_equal(as_float, out)
    inside = read_region(vol, (1, 1, 1), (2, 2, 2), pad_value=-1, dtype=np.float32)
    assert inside.dtype == np.float32 and np.array_equal(inside, vol[1:3, 1:3, 1:3])


def test_crops_of_a_fortran_ordered_file_come_out_in_c_order(tmp_path):
    # sets prepared before img.npy was written in C order hold Fortran-ordered images
    vol = np.asfortranarray(np.arange(9 * 8 * 7, dtype=np.int16).reshape(9, 8, 7))
    np.save(tmp_path / "img.npy", vol)
    mm = np.load(tmp_path / "img.npy", mmap_mode="r")
    assert mm.flags.f_contiguous and not mm.flags.c_contiguous
    out = read_region(mm, (2, 1, 3), (5, 6, 4), pad_value=0)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, vol[2:7, 1:7, 3:7])


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


_FAULTS_SCRIPT = """
import resource, sys, torch
from vesselfm.data.imagecas_datamodule import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def one_patch():
    # a transform chain: 128^3 float32 tensors (8 MB each, 96 MB in all) alive at once, then freed
    tensors = [torch.ones(2 << 20) for _ in range(12)]
    del tensors
for _ in range(3):  # warm up: the heap grows once
    one_patch()
before = faults()
for _ in range(10):
    one_patch()
print((faults() - before) / 10)
"""


@pytest.mark.slow
@pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc's malloc: keep_freed_memory is Linux-only"
)
def test_workers_keep_freed_memory_instead_of_faulting_it_in_again():
    from cli import run_code

    def faults_per_patch(mode: str) -> float:
        # glibc's adaptive thresholds make its default depend on the process's history; pinned
        # at their start value (mmap every block over 128 kB) the baseline faults every time
        env = {"MALLOC_MMAP_THRESHOLD_": "131072"}
        out = run_code(_FAULTS_SCRIPT, mode, env=env, check=True)
        return float(out.stdout.strip())

    # each 8 MB block mapped and unmapped: 2048 page faults apiece, 24 000 per patch
    assert faults_per_patch("default") > 20000
    # kept: the heap serves the same memory again
    assert faults_per_patch("keep") < 100


def test_loader_workers_keep_lightnings_per_worker_seeding(prepared, monkeypatch):
    from functools import partial

    from lightning.fabric.utilities.seed import pl_worker_init_function
    from torch.utils.data import DataLoader, Dataset

    from vesselfm.data.imagecas_datamodule import loader_worker_init

    class NumpyDraws(Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> int:
            return int(np.random.randint(2**31))

    def draws(loader: DataLoader) -> list[int]:
        torch.manual_seed(0)  # the workers' base seed
        return [int(b) for b in loader]

    dm = ImageCASDataModule(prepared, batch_size=1, num_workers=2, persistent_workers=False)
    ours = dm._loader(NumpyDraws(), 1, False, 2)
    assert ours.worker_init_fn.func is loader_worker_init
    lightnings = DataLoader(
        NumpyDraws(), num_workers=2, worker_init_fn=partial(pl_worker_init_function, rank=None)
    )
    monkeypatch.delenv("PL_SEED_WORKERS", raising=False)
    torchs_own = draws(ours)
    monkeypatch.setenv("PL_SEED_WORKERS", "1")  # as seed_everything(workers=True) sets it
    # with it, the workers draw exactly what Lightning's own worker_init_fn gives them
    assert draws(ours) == draws(lightnings) != torchs_own


def test_a_label_made_fractional_by_the_augmentation_is_refused(prepared):
    linear_label = [
        {
            "_target_": "vesselfm.data.transforms.RandZoomd",
            "keys": ["image", "label"],
            "prob": 1.0,
            "min_zoom": 1.2,
            "max_zoom": 1.3,
            "mode": ["trilinear", "trilinear"],
        }
    ]
    dm = ImageCASDataModule(
        prepared, patch_size=(24, 24, 16), samples_per_epoch=2, augment=linear_label
    )
    dm.setup("fit")
    with pytest.raises(ValueError, match="label key mode nearest"):
        dm.train_set[0]
    # the published pipeline's nearest label passes
    dm = ImageCASDataModule(prepared, patch_size=(24, 24, 16), samples_per_epoch=8)
    dm.setup("fit")
    assert all(dm.train_set[i]["label"].dtype == torch.uint8 for i in range(8))


def test_a_loader_in_the_main_process_repeats_its_batches_with_torchs_seed(prepared):
    dm = ImageCASDataModule(prepared, patch_size=(24, 24, 16), num_workers=0, batch_size=2)
    dm.setup("fit")
    runs = []
    for _ in range(2):  # the same dataset object, as in two fits in one process
        torch.manual_seed(3)
        runs.append([b["image"] for b in dm.train_dataloader()])
    assert all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def test_augmented_items_repeat_with_torchs_seed(prepared):
    def items(seed: int) -> list[torch.Tensor]:
        dm = ImageCASDataModule(prepared, patch_size=(24, 24, 16), samples_per_epoch=4)
        dm.setup("fit")
        torch.manual_seed(seed)
        return [dm.train_set[i]["image"] for i in range(4)]

    first, again, other = items(0), items(0), items(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


def test_yaml_augmentation_is_the_published_pipeline():
    cfg = yaml.safe_load(
        (Path(str(files("vesselfm.configs"))) / "data" / "imagecas.yaml").read_text()
    )
    assert cfg["augment"] == DEFAULT_AUGMENTATIONS
    with pytest.raises(ValueError, match="_target_"):
        ImageCASDataModule("unused", augment=[{"keys": ["image"]}])
    with pytest.raises(ValueError, match="cannot be imported"):
        ImageCASDataModule("unused", augment=[{"_target_": "monai.transforms.NoSuchThing"}])


def test_missing_prepared_set_names_the_command(tmp_path):
    dm = ImageCASDataModule(tmp_path / "nothing", num_workers=0)
    with pytest.raises(FileNotFoundError, match="python -m vesselfm.prepare source="):
        dm.setup("fit")


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


def test_train_items_are_plain_tensors_and_metadata_tracking_is_restored(prepared):
    from monai.data import get_track_meta

    dm = ImageCASDataModule(prepared, patch_size=(24, 24, 16), num_workers=0, samples_per_epoch=4)
    dm.setup("fit")
    assert get_track_meta()
    for i in range(4):
        item = dm.train_set[i]
        assert type(item["image"]) is torch.Tensor and type(item["label"]) is torch.Tensor
        assert item["image"].shape == (1, 24, 24, 16) and item["image"].dtype == torch.float16
    assert get_track_meta()


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
