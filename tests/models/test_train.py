"""Training end to end on small phantoms: fit, test, zero-shot, seed, resume, DDP, wandb, multirun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli import run_cli, start_cli

from vesselfm.models import CheckpointError, build_network, read_state_dict
from vesselfm.train import train

REPORTS = ("metrics.csv", "summary.json", "summary.md")


@pytest.mark.slow
def test_fit_then_test_writes_checkpoints_and_metric_table(train_cfg):
    cfg = train_cfg()
    metrics, objects = train(cfg)

    assert {
        "train/loss_epoch",
        "val/dice",
        "test/dice",
        "test/cldice",
        "test/betti_0_error",
    } <= set(metrics)
    out = Path(cfg.paths.output_dir)
    for name in REPORTS:
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    dice = summary["dice"]
    assert dice["n"] == 1 and 0.0 <= dice["mean"] <= 1.0
    assert metrics["test/dice"] == pytest.approx(dice["mean"])

    ckpts = sorted((out / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"last.ckpt"} and len(ckpts) == 2, ckpts
    best = next(p for p in ckpts if p.name != "last.ckpt")
    assert best.name.startswith("step") and "dice" in best.name

    # Our own checkpoints load as vesselFM weights and carry what infer needs.
    state = read_state_dict(best)
    reference = build_network(cfg.model.net).state_dict()
    assert set(state) == set(reference)
    raw = torch.load(best, map_location="cpu", weights_only=True)
    assert raw["vesselfm"]["preprocess"]["in_plane_size"] is None
    assert raw["vesselfm"]["model_name"] == "tiny" and raw["vesselfm"]["threshold"] == 0.5


@pytest.mark.parametrize(("avx512_bf16", "expected"), [(False, "32-true"), (True, "bf16-mixed")])
def test_trainer_precision_auto_is_resolved_before_the_trainer_is_built(
    train_cfg, fake_cpu, avx512_bf16, expected
):
    fake_cpu("AVX512", avx512_bf16=avx512_bf16)
    cfg = train_cfg("train=false", "test=false")
    assert cfg.trainer.precision == "auto"  # phantom_demo's, as written
    _, objects = train(cfg)
    assert objects["trainer"].precision == expected


@pytest.mark.slow
def test_zero_shot_test_path_writes_the_three_files(train_cfg, tmp_path):
    weights = tmp_path / "weights.pt"
    torch.save(build_network(train_cfg().model.net).state_dict(), weights)
    # with the demo, which the shrunk config turns off
    cfg = train_cfg("train=false", f"model.checkpoint={weights}", "demo.cases=1")

    metrics, objects = train(cfg)

    out = Path(cfg.paths.output_dir)
    assert all((out / name).is_file() for name in REPORTS)
    assert "test/dice" in metrics and "val/dice" not in metrics
    assert objects["trainer"].global_step == 0
    assert (out / "metrics.csv").read_text().splitlines()[0].startswith("case,")
    # the demo: the test case segmented as infer would, its meshes and its 3D view
    (demo,) = objects["demo"]
    case = demo["case"]
    assert demo["pred"] == out / "demo" / f"{case}_pred.nii.gz" and demo["pred"].is_file()
    assert demo["mesh"] == out / "demo" / f"{case}_pred.stl" and demo["mesh"].is_file()
    assert {p.name for p in (out / "demo").glob("*.stl")} == {f"{case}_pred.stl", f"{case}_gt.stl"}
    assert (out / "demo" / f"{case}_3d.html").is_file()


@pytest.mark.slow
def test_same_seed_same_metrics(train_cfg):
    first, _ = train(train_cfg("test=false", "seed=7"))
    second, _ = train(train_cfg("test=false", "seed=7"))
    assert first == second


@pytest.mark.slow
def test_resume_after_kill_continues_step_count(tmp_path, train_cfg, train_overrides):
    """A CLI run killed (SIGKILL) after its first epoch's ``last.ckpt``, then ``ckpt_path=last``
    in this process (its runs folder is the killed run's: ``<tmp>/logs/phantom_demo/runs``)."""
    epochs = ("trainer.max_epochs=3", "test=false")
    proc = start_cli(
        "vesselfm.train",
        *train_overrides(*epochs),
        cwd=tmp_path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.time() + 300
    last = None
    while time.time() < deadline and proc.poll() is None:
        found = list((tmp_path / "logs").glob("phantom_demo/runs/*/checkpoints/last.ckpt"))
        if found:
            last = found[0]
            break
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last is not None, "no last.ckpt before the kill"
    time.sleep(0.5)
    killed = torch.load(last, map_location="cpu", weights_only=True)
    assert killed["epoch"] < 2, "the run finished before it was killed"

    cfg = train_cfg(*epochs, "ckpt_path=last")
    _, objects = train(cfg)
    assert Path(objects["trainer"].ckpt_path) == last  # resumed from the killed run's
    final = torch.load(
        Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt",
        map_location="cpu",
        weights_only=True,
    )
    steps_per_epoch = 2  # samples_per_epoch 4 / batch 2
    assert final["global_step"] == 3 * steps_per_epoch
    assert final["epoch"] == 2
    # the optimizer state came back too: AdamW's step counter equals the global step
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {final["global_step"]}


def test_resume_from_a_checkpoint_needing_unpickling_is_refused(
    train_cfg, tmp_path, hostile_payload
):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "downloaded.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "loops": hostile_payload(marker)}, evil)

    with pytest.raises(CheckpointError) as info:
        train(train_cfg(f"ckpt_path={evil}"))

    assert not marker.exists(), "unpickling ran code from the checkpoint"
    message = str(info.value)
    assert "\n" not in message and str(evil) in message and "ckpt_path" in message
    assert "model.trust_checkpoint=true" in message


@pytest.mark.slow
def test_ddp_on_two_cpu_processes(tmp_path, train_overrides):
    result = run_cli(
        "vesselfm.train",
        *train_overrides(
            "trainer=ddp",
            "trainer.accelerator=cpu",
            "trainer.devices=2",
            "trainer.precision=32-true",
            "data.n_test=2",
        ),
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "phantom_demo" / "runs").iterdir()
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2, rows  # header + both test cases, gathered from both ranks
    # the run was distributed: Lightning's DDP set-up names both processes and the CPU backend
    # (one process would have scored both test cases too)
    assert "All distributed processes registered. Starting with 2 processes" in result.stderr
    assert "distributed_backend=gloo" in result.stderr


@pytest.mark.slow
def test_wandb_offline_keeps_the_run_locally(train_cfg, monkeypatch):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONSOLE", "off")  # pytest captures the output, not wandb
    cfg = train_cfg("logger=wandb", "test=false")
    try:
        train(cfg)
    finally:
        wandb.finish()
    run = Path(cfg.paths.output_dir)
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline and any(offline[0].glob("*.wandb")), list((run / "wandb").iterdir())


@pytest.mark.slow
def test_multirun_runs_one_job_per_value(tmp_path, train_overrides):
    result = run_cli(
        "vesselfm.train",
        "-m",
        *train_overrides("test=false", "optimizer.lr=1e-3,1e-4"),
        cwd=tmp_path,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "phantom_demo" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    from omegaconf import OmegaConf

    lrs = [OmegaConf.load(p / ".hydra" / "config.yaml").optimizer.lr for p in jobs]
    assert lrs == [pytest.approx(1e-3), pytest.approx(1e-4)]
    assert all(list((p / "checkpoints").glob("last.ckpt")) for p in jobs)


@pytest.fixture(scope="module")
def imagecas_prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four 48x48x40 phantoms prepared in the ImageCAS layout, split 2/1/1, on their own grid
    (ImageCAS's 256x256 in-plane would make a slow CPU test), by the phantom datamodule's own
    preparation (read-only): one set for both imagecas experiments."""
    from vesselfm.data.datamodules import PhantomDataModule

    phantoms = PhantomDataModule(
        n_train=2,
        n_val=1,
        n_test=1,
        shape=(48, 48, 40),
        work_dir=tmp_path_factory.mktemp("imagecas"),
        preprocess={"in_plane_size": None},
    )
    phantoms.prepare_data()
    return Path(phantoms.data_dir)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["phantom_demo", "imagecas_finetune", "imagecas_zeroshot"])
def test_every_experiment_runs_with_fast_dev_run(
    tmp_path, experiment, compose_cfg, train_overrides, hf_cache, request
):
    """Each experiment composes and runs one batch end to end (data and model shrunk for a CPU),
    in this process: the CLI's own start-up is covered by the subprocess tests above."""
    overrides = [
        f"experiment={experiment}",
        "debug=fdr",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "model=tiny",
        "inference.roi_size=[48,48,40]",  # the whole 48x48x40 phantom: one window
    ]
    if experiment.startswith("imagecas"):
        prepared = request.getfixturevalue("imagecas_prepared")
        overrides += [
            f"data.data_dir={prepared}",
            "data.patch_size=[32,32,32]",
            "data.batch_size=1",
            "data.num_workers=0",
            "data.persistent_workers=false",
        ]
        if experiment == "imagecas_zeroshot":
            weights = tmp_path / "tiny.pt"
            net_cfg = compose_cfg("train", ["model=tiny"]).model.net
            torch.save(build_network(net_cfg).state_dict(), weights)
            overrides.append(f"model.checkpoint={weights}")
    else:
        overrides += [o for o in train_overrides() if not o.startswith("experiment=")]
    cfg = compose_cfg("train", overrides)
    assert cfg.trainer.fast_dev_run is True and cfg.task_name == "debug"

    metrics, objects = train(cfg)

    trainer = objects["trainer"]
    # one batch each: fit (unless zero-shot), then test
    assert trainer.global_step == (0 if experiment == "imagecas_zeroshot" else 1)
    assert "test/dice" in metrics and 0.0 <= metrics["test/dice"] <= 1.0
