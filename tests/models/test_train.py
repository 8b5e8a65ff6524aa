"""Training end to end on small phantoms: fit, test, zero-shot, seed, resume, DDP, wandb, multirun."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from vesselfm.models import CheckpointError, build_network, read_state_dict
from vesselfm.train import train

# Small enough for 2 CPU cores: 3 phantoms of 48x48x40, 32^3 patches and windows.
SMALL = [
    "experiment=phantom_demo",
    "data.n_train=2",
    "data.n_val=1",
    "data.n_test=1",
    "data.shape=[48,48,40]",
    "data.patch_size=[32,32,32]",
    "data.batch_size=2",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.samples_per_epoch=4",
    "data.foreground_ratio=1.0",
    "trainer.max_epochs=1",
    "trainer.log_every_n_steps=1",
    "inference.roi_size=[32,32,32]",
    "logger=csv",
    "demo=null",
]
REPORTS = ("metrics.csv", "summary.json", "summary.md")


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ, VESSELFM_ROOT=str(tmp_path), PYTHONUNBUFFERED="1", **extra)
    env.pop("VESSELFM_DEBUG", None)
    return env


def _cli(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vesselfm.train", *args],
        cwd=tmp_path,
        env=env or _env(tmp_path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_fit_then_test_writes_checkpoints_and_metric_table(compose_cfg, tmp_path):
    cfg = compose_cfg("train", SMALL)
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
    compose_cfg, fake_cpu, avx512_bf16, expected
):
    fake_cpu("AVX512", avx512_bf16=avx512_bf16)
    cfg = compose_cfg("train", [*SMALL, "train=false", "test=false"])
    assert cfg.trainer.precision == "auto"  # phantom_demo's, as written
    _, objects = train(cfg)
    assert objects["trainer"].precision == expected


def test_zero_shot_test_path_writes_the_three_files(compose_cfg, tmp_path):
    cfg = compose_cfg("train", SMALL)
    weights = tmp_path / "weights.pt"
    torch.save(build_network(cfg.model.net).state_dict(), weights)
    # with the demo (phantom_demo's demo.cases=1, which SMALL turns off)
    overrides = [o for o in SMALL if o != "demo=null"]
    cfg = compose_cfg("train", [*overrides, "train=false", f"model.checkpoint={weights}"])
    assert cfg.demo.cases == 1

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


def test_same_seed_same_metrics(compose_cfg):
    first, _ = train(compose_cfg("train", [*SMALL, "test=false", "seed=7"]))
    second, _ = train(compose_cfg("train", [*SMALL, "test=false", "seed=7"]))
    assert first == second


def test_resume_after_kill_continues_step_count(tmp_path):
    args = [*SMALL, "trainer.max_epochs=4", "test=false"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "vesselfm.train", *args],
        cwd=tmp_path,
        env=_env(tmp_path),
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
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert last is not None, "no last.ckpt before the kill"
    time.sleep(0.5)
    killed = torch.load(last, map_location="cpu", weights_only=True)
    assert killed["epoch"] < 3, "the run finished before it was killed"

    done = _cli(tmp_path, *args, "ckpt_path=last")
    assert done.returncode == 0, done.stderr[-3000:]
    runs = sorted((tmp_path / "logs" / "phantom_demo" / "runs").iterdir())
    final = torch.load(
        runs[-1] / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
    )
    steps_per_epoch = 2  # samples_per_epoch 4 / batch 2
    assert final["global_step"] == 4 * steps_per_epoch
    assert final["epoch"] == 3
    # the optimizer state came back too: AdamW's step counter equals the global step
    adam_steps = {int(s["step"]) for s in final["optimizer_states"][0]["state"].values()}
    assert adam_steps == {final["global_step"]}


def test_resume_from_a_checkpoint_needing_unpickling_is_refused(
    compose_cfg, tmp_path, hostile_payload
):
    marker = tmp_path / "code_ran"
    evil = tmp_path / "downloaded.ckpt"
    torch.save({"state_dict": {}, "epoch": 0, "loops": hostile_payload(marker)}, evil)

    with pytest.raises(CheckpointError) as info:
        train(compose_cfg("train", [*SMALL, f"ckpt_path={evil}"]))

    assert not marker.exists(), "unpickling ran code from the checkpoint"
    message = str(info.value)
    assert "\n" not in message and str(evil) in message and "ckpt_path" in message
    assert "model.trust_checkpoint=true" in message


def test_ddp_on_two_cpu_processes(tmp_path):
    result = _cli(
        tmp_path,
        *SMALL,
        "trainer=ddp",
        "trainer.accelerator=cpu",
        "trainer.devices=2",
        "trainer.precision=32-true",
        "data.n_test=2",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "phantom_demo" / "runs").iterdir()
    rows = (run / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 2, rows  # header + both test cases, gathered from both ranks
    assert "GLOO" in result.stderr.upper() or "distributed" in result.stderr.lower()


def test_wandb_offline_keeps_the_run_locally(tmp_path):
    result = _cli(
        tmp_path,
        *SMALL,
        "logger=wandb",
        "test=false",
        env=_env(tmp_path, WANDB_MODE="offline", WANDB_SILENT="true"),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = (tmp_path / "logs" / "phantom_demo" / "runs").iterdir()
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline and any(offline[0].glob("*.wandb")), list((run / "wandb").iterdir())


def test_multirun_runs_one_job_per_value(tmp_path):
    result = _cli(tmp_path, "-m", *SMALL, "test=false", "optimizer.lr=1e-3,1e-4")
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep,) = (tmp_path / "logs" / "phantom_demo" / "multiruns").iterdir()
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
    assert [p.name for p in jobs] == ["0", "1"]
    from omegaconf import OmegaConf

    lrs = [OmegaConf.load(p / ".hydra" / "config.yaml").optimizer.lr for p in jobs]
    assert lrs == [pytest.approx(1e-3), pytest.approx(1e-4)]
    assert all(list((p / "checkpoints").glob("last.ckpt")) for p in jobs)


@pytest.mark.slow
@pytest.mark.parametrize("experiment", ["phantom_demo", "imagecas_finetune", "imagecas_zeroshot"])
def test_every_experiment_runs_with_fast_dev_run(tmp_path, experiment, fill_hf_cache):
    """Each experiment composes and runs one batch end to end (data and model shrunk for a CPU)."""
    env = _env(tmp_path, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1")
    overrides = [
        "debug=fdr",
        "trainer.accelerator=cpu",
        "trainer.precision=32-true",
        "model=tiny",
        "inference.roi_size=[32,32,32]",
    ]
    if experiment.startswith("imagecas"):
        prepared = tmp_path / "data" / "imagecas"
        prep = subprocess.run(
            [
                sys.executable,
                "-c",
                (
                    "from vesselfm.data.phantom import write_phantom_dataset as w;"
                    "from vesselfm.data.prepare import PrepareOptions, prepare_dataset as p;"
                    "from vesselfm.data.preprocessing import PreprocessConfig;"
                    f"w('{tmp_path}/raw', 4, shape=(48, 48, 40), progress=False);"
                    # keep the phantoms' grid: ImageCAS's 256x256 in-plane would make a slow CPU test
                    f"p('{tmp_path}/raw', '{prepared}', split='random', split_ratios=(0.5, 0.25, 0.25), workers=1, progress=False,"
                    " options=PrepareOptions(preprocess=PreprocessConfig(in_plane_size=None)))"
                ),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert prep.returncode == 0, prep.stderr[-2000:]
        overrides += [
            f"data.data_dir={prepared}",
            "data.patch_size=[32,32,32]",
            "data.batch_size=1",
            "data.num_workers=0",
            "data.persistent_workers=false",
        ]
        if experiment == "imagecas_zeroshot":
            weights = tmp_path / "tiny.pt"
            torch.save(build_network(_tiny_net_cfg()).state_dict(), weights)
            overrides.append(f"model.checkpoint={weights}")
    else:
        overrides += SMALL[1:]
    result = _cli(tmp_path, f"experiment={experiment}", *overrides, env=env)
    assert result.returncode == 0, result.stderr[-3000:]


def _tiny_net_cfg():
    from hydra import compose, initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_module(config_module="vesselfm.configs", version_base="1.3"):
        cfg = compose(config_name="train", overrides=["model=tiny"])
    GlobalHydra.instance().clear()
    return cfg.model.net
