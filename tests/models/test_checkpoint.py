"""Weights: the real hf_hub_download path (offline, hand-filled cache), .pt, Lightning .ckpt, strict loading."""

from __future__ import annotations

import os

import pytest
import torch

from vesselfm.models import (
    CheckpointError,
    build_network,
    count_parameters,
    load_model,
    read_state_dict,
    resolve_checkpoint,
)


@pytest.mark.slow
def test_base_architecture_has_vesselfm_parameter_count(compose_cfg):
    cfg = compose_cfg("train", ["model=vesselfm_base"])
    net = build_network(cfg.model.net)
    assert round(count_parameters(net) / 1e6, 1) == 31.4
    out = net.eval()(torch.zeros(1, 1, 64, 64, 64))
    assert out.shape == (1, 1, 64, 64, 64)


def test_hf_cache_offline_loads_into_base(compose_cfg, hf_cache, fill_hf_cache):
    cfg = compose_cfg("train", ["model=vesselfm_base"])
    reference = build_network(cfg.model.net)
    fill_hf_cache(hf_cache, "bwittmann/vesselFM", "vesselFM_base.pt", reference.state_dict())
    assert os.environ["HF_HUB_OFFLINE"] == "1"

    net = load_model(cfg.model)

    for key, value in reference.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def test_revision_is_honoured(hf_cache, fill_hf_cache, tmp_path):
    fill_hf_cache(hf_cache, "owner/repo", "w.pt", {"a": torch.ones(1)}, revision="v1")
    path = resolve_checkpoint("hf://owner/repo/w.pt", revision="v1")
    assert torch.equal(read_state_dict(path)["a"], torch.ones(1))
    with pytest.raises(CheckpointError, match="not cached"):
        resolve_checkpoint("hf://owner/repo/w.pt", revision="main")


def test_offline_not_cached_message(hf_cache):
    with pytest.raises(CheckpointError) as info:
        resolve_checkpoint("hf://bwittmann/vesselFM/vesselFM_base.pt")
    message = str(info.value)
    assert "\n" not in message
    for needle in ("bwittmann/vesselFM", "vesselFM_base.pt", "hf download", "model.checkpoint="):
        assert needle in message


def test_lightning_ckpt_loads(compose_cfg, tmp_path):
    cfg = compose_cfg("train", ["model=tiny"])
    reference = build_network(cfg.model.net)
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "state_dict": {f"model.{k}": v for k, v in reference.state_dict().items()}
        | {"loss_fn.weight": torch.ones(1)},
    }
    path = tmp_path / "finetuned.ckpt"
    torch.save(ckpt, path)
    cfg.model.checkpoint = str(path)

    net = load_model(cfg.model)

    for key, value in reference.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key


def test_raw_state_dict_pt_loads(compose_cfg, tmp_path):
    cfg = compose_cfg("train", ["model=tiny"])
    reference = build_network(cfg.model.net)
    torch.save(reference.state_dict(), tmp_path / "w.pt")
    cfg.model.checkpoint = str(tmp_path / "w.pt")
    net = load_model(cfg.model)
    key = next(iter(reference.state_dict()))
    assert torch.equal(net.state_dict()[key], reference.state_dict()[key])


def test_wrong_architecture_fails_listing_keys(compose_cfg, tmp_path):
    base = compose_cfg("train", ["model=vesselfm_base"])
    torch.save(build_network(base.model.net).state_dict(), tmp_path / "base.pt")
    cfg = compose_cfg("train", ["model=tiny"])
    cfg.model.checkpoint = str(tmp_path / "base.pt")

    with pytest.raises(CheckpointError) as info:
        load_model(cfg.model)

    message = str(info.value)
    assert "model=tiny" in message
    assert "unexpected" in message and "shape" in message
    assert "model=vesselfm_base" in message
    assert "\n" not in message


def test_missing_local_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        resolve_checkpoint(tmp_path / "nope.pt")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*not a file written by"):
        read_state_dict(tmp_path / "junk.pt")
    # a torch file cut short is unreadable, not a question of trust
    torch.save({"w": torch.zeros(100)}, tmp_path / "cut.pt")
    data = (tmp_path / "cut.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cannot read checkpoint") as info:
        read_state_dict(tmp_path / "cut.pt", trust_checkpoint=True)
    assert "trust_checkpoint" not in str(info.value)


def test_trust_checkpoint_must_be_a_bool(compose_cfg):
    cfg = compose_cfg("train", ["model=tiny", "model.trust_checkpoint=yes"])
    with pytest.raises(CheckpointError, match="model.trust_checkpoint must be true or false"):
        load_model(cfg.model)


@pytest.mark.parametrize("spec", ["hf://bwittmann/vesselFM", "hf://onlyowner"])
def test_bad_hf_uri(spec):
    with pytest.raises(CheckpointError, match="hf://<owner>/<repo>/<file>"):
        resolve_checkpoint(spec)


def test_offline_not_cached_exits_with_one_line(compose_cfg, hf_cache, capsys, monkeypatch):
    """``run_guarded``, what ``python -m vesselfm.train`` runs (in this process: the CLI's start-up
    adds nothing to this path), with an empty Hugging Face cache, offline."""
    from vesselfm.train import train
    from vesselfm.utils.cli import run_guarded

    for debug in ("VESSELFM_DEBUG", "HYDRA_FULL_ERROR"):  # they would show the traceback
        monkeypatch.delenv(debug, raising=False)
    cfg = compose_cfg("train", ["model=vesselfm_base", "logger=csv"])
    with pytest.raises(SystemExit) as exited:
        run_guarded(train, cfg, "vesselfm.train")
    assert exited.value.code == 2
    stderr = capsys.readouterr().err
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "vesselFM_base.pt" in errors[0] and "model.checkpoint=" in errors[0]
    assert "Traceback" not in stderr


# --------------------------------------------------------------- weights_only=True, opt-in trust
def _tiny_lightning_ckpt(cfg, path, **extra):
    reference = build_network(cfg.model.net)
    ckpt = {"state_dict": {f"model.{k}": v for k, v in reference.state_dict().items()}, **extra}
    torch.save(ckpt, path)
    return reference


def test_foreign_ckpt_needing_unpickling_is_refused_and_runs_nothing(
    compose_cfg, tmp_path, hostile_payload
):
    cfg = compose_cfg("train", ["model=tiny"])
    marker = tmp_path / "code_ran"
    path = tmp_path / "downloaded.ckpt"
    _tiny_lightning_ckpt(cfg, path, epoch=1, extra=hostile_payload(marker))
    cfg.model.checkpoint = str(path)

    with pytest.raises(CheckpointError) as info:
        load_model(cfg.model)

    assert not marker.exists(), "unpickling ran code from the checkpoint"
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message and "posix.mkdir" in message
    assert "arbitrary code" in message and "model.trust_checkpoint=true" in message


def test_trusted_foreign_ckpt_loads_with_a_warning(compose_cfg, tmp_path, hostile_payload, caplog):
    cfg = compose_cfg("train", ["model=tiny", "model.trust_checkpoint=true"])
    marker = tmp_path / "code_ran"
    path = tmp_path / "trusted.ckpt"
    reference = _tiny_lightning_ckpt(cfg, path, extra=hostile_payload(marker))
    cfg.model.checkpoint = str(path)

    with caplog.at_level("WARNING"):
        net = load_model(cfg.model)

    assert marker.is_dir()  # fully unpickled: the opt-in really is an opt-in to running code
    for key, value in reference.state_dict().items():
        assert torch.equal(net.state_dict()[key], value), key
    assert any(
        "weights_only=False" in r.getMessage() and str(path) in r.getMessage()
        for r in caplog.records
        if r.levelname == "WARNING"
    ), caplog.text


class _FullTensorWhenUnpickled:
    """A state_dict value that is a tensor only once a non-allowlisted function (torch.full) ran."""

    def __reduce__(self):
        return (torch.full, ((2,), 3.0))


def test_raw_pt_with_pickled_object_needs_trust(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"w": _FullTensorWhenUnpickled()}, path)

    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    # torch.full pickles as getattr(torch, "full"): getattr is what the restricted reader refuses
    assert "pickled getattr" in message and "model.trust_checkpoint=true" in message

    assert torch.equal(read_state_dict(path, trust_checkpoint=True)["w"], torch.full((2,), 3.0))


def test_our_checkpoint_loads_weights_only_even_from_non_plain_arguments(tmp_path):
    """A real (tiny) fit: everything Lightning and VesselSegLitModule store passes weights_only=True,
    also when the Python API is given a Path, OmegaConf configs and numpy numbers."""
    import lightning as L
    import numpy as np
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import ModelCheckpoint
    from omegaconf import OmegaConf
    from torch import nn

    from vesselfm.data.preprocessing import PreprocessConfig
    from vesselfm.inference import read_checkpoint_metadata
    from vesselfm.models.lit_module import VesselSegLitModule

    class Data(L.LightningDataModule):
        preprocess = PreprocessConfig(in_plane_size=None, target_spacing=(0.5, 0.5, 0.6))

        def train_dataloader(self):
            g = torch.Generator().manual_seed(0)
            sample = {
                "image": torch.rand(1, 8, 8, 8, generator=g),
                "label": (torch.rand(1, 8, 8, 8, generator=g) > 0.5).float(),
            }
            return torch.utils.data.DataLoader([sample] * 4, batch_size=2)

    torch.manual_seed(0)
    module = VesselSegLitModule(
        net=nn.Conv3d(1, 1, 3, padding=1),
        loss=nn.BCEWithLogitsLoss(),
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-3),
        # as train() builds it from configs/optim
        scheduler=instantiate(
            OmegaConf.create(
                {
                    "_target_": "vesselfm.models.schedulers.warmup_cosine",
                    "_partial_": True,
                    "warmup": 1,
                    "eta_min": 0.0,
                    "interval": "step",
                }
            )
        ),
        inference={"threshold": np.float32(0.25), "roi_size": (8, 8, 8)},
        output_dir=tmp_path / "run",
        metadata={"model_name": "toy", "source": tmp_path / "weights.pt", "seed": np.int64(3)},
    )
    trainer = L.Trainer(
        max_steps=2,
        accelerator="cpu",
        logger=False,
        limit_val_batches=0,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[ModelCheckpoint(dirpath=tmp_path / "ckpt", save_last=True)],
    )
    trainer.fit(module, datamodule=Data())
    last = tmp_path / "ckpt" / "last.ckpt"

    ckpt = torch.load(last, map_location="cpu", weights_only=True)

    assert ckpt["global_step"] == 2 and ckpt["optimizer_states"] and ckpt["lr_schedulers"]
    assert ckpt["hyper_parameters"]["output_dir"] == str(tmp_path / "run")
    assert ckpt["hyper_parameters"]["scheduler"] == {
        "_target_": "vesselfm.models.schedulers.warmup_cosine",
        "warmup": 1,
        "eta_min": 0.0,
        "interval": "step",
    }
    assert ckpt["hyper_parameters"]["inference"]["threshold"] == pytest.approx(0.25)
    assert ckpt["vesselfm"]["source"] == str(tmp_path / "weights.pt")
    assert ckpt["vesselfm"]["seed"] == 3 and type(ckpt["vesselfm"]["seed"]) is int
    assert ckpt["vesselfm"]["threshold"] == pytest.approx(0.25)
    meta = read_checkpoint_metadata(last)
    assert meta["preprocess"] == Data.preprocess and meta["model_name"] == "toy"
    assert set(read_state_dict(last)) == {"weight", "bias"}


def test_an_argument_that_would_need_unpickling_fails_when_the_module_is_built():
    from torch import nn

    from vesselfm.models.lit_module import VesselSegLitModule

    with pytest.raises(TypeError, match=r"metadata\.note: a builtins\.object cannot be stored"):
        VesselSegLitModule(
            net=nn.Conv3d(1, 1, 1),
            loss=nn.BCEWithLogitsLoss(),
            optimizer=torch.optim.AdamW,
            metadata={"note": object()},
        )


@pytest.mark.parametrize("name", ["tiny", "vesselfm_base"])
def test_model_config_reads_what_hydra_composes(compose_cfg, name):
    from omegaconf import OmegaConf

    from vesselfm.models import model_config

    composed = OmegaConf.to_container(compose_cfg("train", [f"model={name}"]).model, resolve=True)
    assert model_config(name) == composed
    assert model_config(name, checkpoint="w.pt") == {**composed, "checkpoint": "w.pt"}


def test_model_config_names_the_choices():
    from vesselfm.models import model_config

    with pytest.raises(ValueError, match=r"model=tinyy: .*\['tiny', 'vesselfm_base'\]"):
        model_config("tinyy")
    with pytest.raises(ValueError, match=r"unknown model keys \['chekpoint'\]; allowed: "):
        model_config("tiny", chekpoint="w.pt")


def test_resume_checkpoint_last_is_the_newest_and_each_refusal_is_one_line(
    tmp_path, hostile_payload
):
    from vesselfm.models import resolve_resume_checkpoint
    from vesselfm.utils.errors import UserError

    runs = tmp_path / "logs" / "task"
    assert resolve_resume_checkpoint(None, runs, trust=False) is None
    assert resolve_resume_checkpoint("null", runs, trust=False) is None
    with pytest.raises(UserError, match=rf"^ckpt_path=last: no last\.ckpt under {runs};"):
        resolve_resume_checkpoint("last", runs, trust=False)
    older, newer = (runs / run / "checkpoints" / "last.ckpt" for run in ("r1", "r2"))
    for i, path in enumerate((older, newer)):
        path.parent.mkdir(parents=True)
        torch.save({"state_dict": {}}, path)
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    assert resolve_resume_checkpoint("last", runs, trust=False) == str(newer)
    assert resolve_resume_checkpoint(str(older), runs, trust=False) == str(older)
    with pytest.raises(UserError, match=r"^ckpt_path=.*nope\.ckpt: no such file;"):
        resolve_resume_checkpoint(str(tmp_path / "nope.ckpt"), runs, trust=False)
    torch.save({"state_dict": {}, "x": hostile_payload(tmp_path / "ran")}, older)
    with pytest.raises(CheckpointError, match=r"\(ckpt_path\) holds pickled Python objects"):
        resolve_resume_checkpoint(str(older), runs, trust=False)
    assert not (tmp_path / "ran").exists()
