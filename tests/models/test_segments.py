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
    "data.shape=[48,48,40]",
    "data.patch_size=[32,32,32]",
    "data.batch_size=2",
    "data.samples_per_epoch=4",
    "data.foreground_ratio=1.0",
    "inference.roi_size=[32,32,32]",
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

    cfg = compose_cfg("train", ["experiment=imagecasx_segments"])
    loss_fn = instantiate(cfg.loss)
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 4, 2)
    target = torch.from_numpy(truth)[None, None].float()
    p = torch.softmax(logits, 1).numpy()[0]
    onehot = np.stack([truth == c for c in range(3)]).astype(np.float64)
    inter = (p * onehot).sum(axis=(1, 2, 3))
    dice = 1 - (2 * inter + 1e-5) / (p.sum(axis=(1, 2, 3)) + onehot.sum(axis=(1, 2, 3)) + 1e-5)
    ce = -np.mean(np.log(np.take_along_axis(p, truth[None], 0)))
    expected = 0.9 * dice.mean() + 0.1 * ce
    assert float(loss_fn(logits, target)) == pytest.approx(expected, rel=1e-4)


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


@pytest.mark.slow
def test_two_step_segment_training(compose_cfg) -> None:
    import csv

    from vesselfm.train import train

    metrics, objects = train(compose_cfg("train", list(SHRUNK_SEGMENTS)))
    model = objects["model"]
    assert model.num_classes == 15
    assert model.model.output_block.conv.conv.weight.shape[0] == 15
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
