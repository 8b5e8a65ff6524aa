"""Segment models (experiment=imagecasx_segments / phantom_segments): the output head re-initialised
on vesselFM's weights, softmax Dice+CE and the per-segment Dice on hand-built cases, segment codes
through the training transforms, and a 2-step training run on ImageCAS-X-layout phantoms."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from vesselfm.models import load_model, model_config
from vesselfm.models.lit_module import check_labels, segment_scores

SHRUNK_SEGMENTS = (
    "experiment=phantom_segments",
    "trainer.accelerator=cpu",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "data.n_train=1",
    "data.n_val=1",
    "data.n_test=1",
    # the experiment's vessel-centred crops and window, shrunk: 2 steps of 2 crops on one
    # 48x48x40 phantom
    "data.shape=[48,48,40]",
    "data.patch_size=[32,32,24]",
    "data.samples_per_epoch=4",
    "logger=csv",
)


def test_head_reinit_keeps_every_other_layer(tmp_path: Path, caplog) -> None:
    torch.manual_seed(0)
    binary = load_model(model_config("tiny"))
    weights = tmp_path / "binary.pt"
    torch.save(binary.state_dict(), weights)

    cfg = model_config("tiny", checkpoint=str(weights), reinit_head=True)
    cfg["net"]["out_channels"] = 15
    with caplog.at_level(logging.INFO, logger="vesselfm.models.components.network"):
        segments = load_model(cfg)
    assert "output head (output_block.*, 1 -> 15 channels) re-initialised" in caplog.text

    old, new = binary.state_dict(), segments.state_dict()
    assert set(old) == set(new)
    head = [k for k in new if k.startswith("output_block.")]
    assert head and tuple(new[head[0]].shape)[0] == 15
    for key in new:
        if key not in head:
            assert torch.equal(old[key], new[key]), key
    # without reinit_head the 1-channel checkpoint does not fit a 15-channel network
    cfg["reinit_head"] = False
    with pytest.raises(Exception, match="output_block"):
        load_model(cfg)


def test_head_vessel_prior_sets_the_starting_vessel_probability(tmp_path: Path) -> None:
    cfg = model_config("tiny", head_vessel_prior=0.5)
    cfg["net"]["out_channels"] = 15
    torch.manual_seed(0)
    net = load_model(cfg)
    bias = net.output_block.conv.conv.bias.detach()
    # background bias log(14 * 0.5 / 0.5): with the segment logits near 0, p(background) = 1/2
    assert float(bias[0]) == pytest.approx(np.log(14.0))
    assert torch.count_nonzero(bias[1:]) == 0
    # the random weights spread the logits around their biases: near 0.5, far from 14/15
    x = torch.rand(1, 1, 16, 16, 16)
    with torch.no_grad():
        p = torch.softmax(net(x), dim=1)
        torch.manual_seed(0)
        plain = torch.softmax(load_model({**cfg, "head_vessel_prior": None})(x), dim=1)
    assert 0.25 < float(1 - p[:, 0].mean()) < 0.75
    assert float(1 - plain[:, 0].mean()) > 0.8
    # a trained head loaded from a checkpoint keeps its own bias
    weights = tmp_path / "segments.pt"
    trained = {k: v.clone() for k, v in net.state_dict().items()}
    trained["output_block.conv.conv.bias"] = torch.arange(15.0)
    torch.save(trained, weights)
    loaded = load_model({**cfg, "checkpoint": str(weights)})
    assert torch.equal(loaded.output_block.conv.conv.bias.detach(), torch.arange(15.0))
    with pytest.raises(ValueError, match="head_vessel_prior must be in"):
        load_model(model_config("tiny", head_vessel_prior=1.5) | {"net": cfg["net"]})
    with pytest.raises(ValueError, match="multi-class output head"):
        load_model(model_config("tiny", head_vessel_prior=0.5))


def test_softmax_dice_ce_and_segment_dice_on_three_classes(compose_cfg) -> None:
    from hydra.utils import instantiate

    truth = np.zeros((4, 4, 2), dtype=np.int64)
    truth[:2] = 1
    truth[3, :, :] = 2
    pred = truth.copy()
    pred[0, 0, :] = 0  # 2 voxels of class 1 missed
    pred[3, 0, :] = 1  # 2 voxels of class 2 called 1
    # class 1: truth 16, pred 16 - 2 + 2 = 16, overlap 14 -> 28/32; class 2: 8 vs 6, overlap 6
    scores = segment_scores(pred, truth, 3)
    assert scores["dice_LM"] == pytest.approx(28 / 32)
    assert scores["dice_LAD"] == pytest.approx(12 / 14)
    assert scores["dice"] == pytest.approx((28 / 32 + 12 / 14) / 2)
    assert "dice_LCx" not in scores  # absent from the truth: no column
    # a segment present in the truth and missed entirely scores 0
    assert segment_scores(np.zeros_like(truth), truth, 3)["dice"] == 0.0

    cfg = compose_cfg("train", ["experiment=imagecasx_segments", "loss=dice_ce_softmax"])
    loss_fn = instantiate(cfg.loss)
    torch.manual_seed(0)
    # a batch of two: the second patch holds no class 2 (batch-wise Dice still counts it once)
    second = np.zeros_like(truth)
    second[1, 1:3, :] = 1
    truths = np.stack([truth, second])  # (B, X, Y, Z)
    logits = torch.randn(2, 3, 4, 4, 2)
    p = torch.softmax(logits, 1).numpy().astype(np.float64)  # (B, C, X, Y, Z)
    onehot = np.stack([truths == c for c in range(3)], axis=1).astype(np.float64)
    sums = (0, 2, 3, 4)  # over the batch and space, per class
    inter = (p * onehot).sum(axis=sums)
    dice = 1 - (2 * inter + 1e-5) / (p.sum(axis=sums) + onehot.sum(axis=sums) + 1e-5)
    ce = -np.mean(np.log(np.take_along_axis(p, truths[:, None], 1)))
    expected = dice[1:].mean() + ce  # the background's Dice left out; Dice 1 + CE 1
    target = torch.from_numpy(truths)[:, None].float()
    assert float(loss_fn(logits, target)) == pytest.approx(expected, rel=1e-4)
    # the per-patch Dice with the background (vesselFM's lumen form) is another number
    per_patch = 1 - (2 * (p * onehot).sum(axis=(2, 3, 4)) + 1e-5) / (
        p.sum(axis=(2, 3, 4)) + onehot.sum(axis=(2, 3, 4)) + 1e-5
    )
    assert abs(per_patch.mean() + ce - expected) > 1e-3
    # all background everywhere is no minimum: it scores the segments' Dice loss of 1
    background = torch.full((2, 3, 4, 4, 2), -20.0)
    background[:, 0] = 20.0
    perfect = torch.from_numpy(onehot * 40.0 - 20.0).float()
    assert float(loss_fn(background, target)) > 1.0
    assert float(loss_fn(perfect, target)) < 1e-3


def test_segment_codes_survive_train_transforms(compose_cfg) -> None:
    from omegaconf import OmegaConf

    from vesselfm.data.transforms import train_transforms

    cfg = compose_cfg("train", ["experiment=imagecasx_segments"])
    augment = OmegaConf.to_container(cfg.data.augment, resolve=True)
    for t in augment:
        t["prob"] = 1.0  # every transform applies
    label = np.zeros((1, 32, 32, 32), dtype=np.uint8)
    for code in range(1, 15):
        label[0, 2 * code : 2 * code + 2, 4:28, 8:24] = code
    image = torch.rand(1, 32, 32, 32)
    for fast in (True, False):
        transform = train_transforms(augment, (32, 32, 32), None, fast=fast)
        transform.set_random_state(seed=3)
        out = transform({"image": image.clone(), "label": torch.from_numpy(label.copy())})
        values = np.unique(np.asarray(out["label"]))
        assert set(values.tolist()) <= set(range(15))
        assert np.array_equal(np.asarray(out["label"]), np.rint(np.asarray(out["label"])))
        assert len(values) >= 10  # the codes are moved, not merged or lost


def test_balanced_patches_centre_on_every_segment_equally(tmp_path: Path) -> None:
    from vesselfm.data.datasets import PreparedCase, RandomPatchDataset
    from vesselfm.data.preprocessing import PreprocessConfig

    mask = np.zeros((20, 20, 10), dtype=np.uint8)
    mask[2:18, 2:18, 2:6] = 1  # 1024 voxels of code 1
    mask[5:7, 5:7, 8] = 9  # 4 voxels of code 9
    np.save(tmp_path / "mask.npy", mask)
    np.save(tmp_path / "img.npy", mask.astype(np.int16))
    case = PreparedCase(
        "1", "train", tmp_path / "img.npy", tmp_path / "mask.npy", None, mask.shape,
        (1.0, 1.0, 1.0), (0.0, 9.0), "", mask.shape, (1.0, 1.0, 1.0),
    )  # fmt: skip

    def centre_codes(balance: bool) -> np.ndarray:
        torch.manual_seed(0)
        ds = RandomPatchDataset(
            [case], (3, 3, 3), 300, 1.0, PreprocessConfig(in_plane_size=None),
            label_dtype=torch.uint8, balance_classes=balance,
        )  # fmt: skip
        return np.array([int(ds[i]["label"][0, 1, 1, 1]) for i in range(300)])

    # in proportion to the voxels code 9 is 4 of 1028: about one patch in 250
    assert np.mean(centre_codes(False) == 9) < 0.03
    balanced = centre_codes(True)
    assert set(balanced.tolist()) == {1, 9}
    assert 0.4 <= np.mean(balanced == 9) <= 0.6


@pytest.mark.slow
def test_two_step_segment_training(compose_cfg) -> None:
    import csv

    from vesselfm.train import train

    metrics, objects = train(compose_cfg("train", list(SHRUNK_SEGMENTS)))
    model = objects["model"]
    assert model.num_classes == 15
    assert model.model.output_block.conv.conv.weight.shape[0] == 15
    # two vessel-centred crops a step; validation/test slide the same window
    assert objects["datamodule"].patch_size == (32, 32, 24)
    assert objects["datamodule"].batch_size == 2
    assert tuple(objects["cfg"].inference.roi_size) == (32, 32, 24)
    # the hierarchical loss, and the head started at vessel probability 0.5 (before training)
    assert type(model.loss_fn).__name__ == "HierarchicalSegmentLoss"
    assert model.loss_fn.lambda_vessel_dice == 2.0
    assert objects["trainer"].global_step == 2
    assert 0.0 <= metrics["test/dice"] <= 1.0
    assert np.isfinite(metrics["train/loss_epoch"])
    out = Path(objects["cfg"].paths.output_dir)
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and "dice_LAD" in rows[0]
    # the prepared set holds segment codes: a lumen model refuses it, a segment model takes it
    data_dir = objects["datamodule"].data_dir
    check_labels(data_dir, 15)
    with pytest.raises(ValueError, match="labels=segments, and a lumen model needs labels=lumen"):
        check_labels(data_dir, 1)
    label = np.load(next(Path(data_dir).rglob("mask.npy")))
    assert label.max() > 1
