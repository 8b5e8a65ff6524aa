"""Datasets over a prepared set: the manifest's cases, memory-mapped crops, foreground share, items."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vesselfm.data.datamodules import ImageCASDataModule
from vesselfm.data.datasets import read_region


def test_missing_prepared_set_names_the_command(tmp_path):
    dm = ImageCASDataModule(tmp_path / "nothing", num_workers=0)
    with pytest.raises(FileNotFoundError, match="python -m vesselfm.prepare source="):
        dm.setup("fit")


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


def test_augmented_items_repeat_with_torchs_seed(prepared):
    def items(seed: int) -> list[torch.Tensor]:
        dm = ImageCASDataModule(prepared, patch_size=(24, 24, 16), samples_per_epoch=4)
        dm.setup("fit")
        torch.manual_seed(seed)
        return [dm.train_set[i]["image"] for i in range(4)]

    first, again, other = items(0), items(0), items(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))


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
