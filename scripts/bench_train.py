"""Training throughput: steps/s of vesselFM (base, 128^3, batch 2) and the data loader's share of it.

Builds a small prepared set from phantoms, then runs the real pieces of a training step, the
``ImageCASDataModule`` loader (with the published augmentation), the ``vesselfm_base`` network and
the DiceCE loss with AdamW, for each precision, side by side in one process:

- on a GPU: ``32-true`` vs ``16-mixed`` (autocast fp16 + GradScaler) and ``bf16-mixed``;
- on a CPU: ``32-true`` vs ``bf16-mixed``, each with the network as it is (``NCDHW``) and
  through its channels-last view (``VesselSegLitModule``'s ``channels_last=auto`` on a CPU,
  ``vesselfm.inference.channels_last``).

A bf16 row on a device that only emulates bf16 (an AVX2-only CPU: about 40x slower than fp32)
is not run; it prints ``not run: bf16 is emulated on this CPU``. The first line names the device
(CPU model, ATen capability, cores and threads), and ``trainer.precision=auto`` says which row a
run would use.

The data share is the time the loop waits for the next batch over the whole step time; the
speed-up is against the first row (``32-true``, ``NCDHW``).

    python scripts/bench_train.py                       # base model, 128^3, batch 2
    python scripts/bench_train.py --model tiny --patch 48 --steps 20   # the demo's step
    python scripts/bench_train.py --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path

import torch


def _compose(model: str):
    from hydra import compose, initialize_config_module

    with initialize_config_module(config_module="vesselfm.configs", version_base="1.3"):
        return compose(config_name="train", overrides=[f"model={model}", "model.checkpoint=null"])


def _prepared_set(root: Path, cases: int, shape: tuple[int, int, int]) -> Path:
    from vesselfm.data.phantom import write_phantom_dataset
    from vesselfm.data.prepare import prepare_dataset

    write_phantom_dataset(root / "raw", cases, shape=shape, seed=0, progress=False)
    prepare_dataset(
        root / "raw",
        root / "prepared",
        split="random",
        split_ratios=(1.0, 0.0, 0.0),
        workers=1,
        progress=False,
    )
    return root / "prepared"


def run(
    precision: str,
    args: argparse.Namespace,
    data_dir: Path,
    device: torch.device,
    channels_last: bool = False,
) -> dict[str, float]:
    from hydra.utils import instantiate

    from vesselfm.data import ImageCASDataModule
    from vesselfm.inference.channels_last import channels_last_view
    from vesselfm.models import load_model

    cfg = _compose(args.model)
    torch.manual_seed(0)
    net = load_model(cfg.model).train().to(device)
    forward = channels_last_view(net) if channels_last else net
    loss_fn = instantiate(cfg.loss)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.1)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "16-mixed")
    dtype = {"16-mixed": torch.float16, "bf16-mixed": torch.bfloat16}.get(precision)

    dm = ImageCASDataModule(
        data_dir=data_dir,
        patch_size=[args.patch] * 3,
        batch_size=args.batch,
        num_workers=args.workers,
        pin_memory=device.type == "cuda",
        persistent_workers=args.workers > 0,
        samples_per_epoch=args.batch * (args.steps + args.warmup) * 2,
    )
    dm.setup("fit")
    batches = iter(dm.train_dataloader())

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    wait = total = 0.0
    for step in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        batch = next(batches)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        batch = dm.on_after_batch_transfer(batch, 0)  # as Lightning does: float32 on the device
        image, label = batch["image"], batch["label"]
        sync()
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        autocast = (
            torch.autocast(device.type, dtype=dtype)
            if dtype is not None
            else contextlib.nullcontext()
        )
        with autocast:
            loss = loss_fn(forward(image), label)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        sync()
        t2 = time.perf_counter()
        if step >= args.warmup:
            wait += t1 - t0
            total += t2 - t0
    return {
        "steps_per_s": args.steps / total,
        "s_per_step": total / args.steps,
        "data_share": wait / total,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="vesselfm_base", help="model config (vesselfm_base | tiny)"
    )
    parser.add_argument("--patch", type=int, default=128, help="patch side in voxels")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default: 20 on a GPU, 3 on a CPU)"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader worker processes")
    parser.add_argument("--cases", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 160), help="phantom shape")
    parser.add_argument("--precisions", nargs="*", default=None)
    parser.add_argument("--device", default="auto", help="auto (CUDA when present) | cpu | cuda")
    parser.add_argument(
        "--layouts",
        nargs="*",
        default=None,
        choices=["ncdhw", "channels-last"],
        help="network layouts (default: both on a CPU, ncdhw on a GPU)",
    )
    parser.add_argument(
        "--threads",
        default="auto",
        help="torch threads: auto (the cores this process may use) or N",
    )
    args = parser.parse_args()

    from vesselfm.utils.hardware import (
        apply_threads,
        describe_device,
        emulated_note,
        resolve_trainer_precision,
    )

    apply_threads(args.threads)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    args.steps = args.steps or (20 if device.type == "cuda" else 3)
    precisions = args.precisions or (
        ["32-true", "16-mixed", "bf16-mixed"]
        if device.type == "cuda"
        else ["32-true", "bf16-mixed"]
    )
    print(
        f"device: {describe_device(device.type)}; model={args.model}, patch {args.patch}^3, "
        f"batch {args.batch}, {args.workers} loader worker(s); trainer.precision=auto -> "
        f"{resolve_trainer_precision('auto', device.type)}",
        flush=True,
    )

    layouts = args.layouts or (["ncdhw", "channels-last"] if device.type == "cpu" else ["ncdhw"])
    rows = [(p, layout) for p in precisions for layout in layouts]
    skipped = {p: note for p in precisions if (note := emulated_note(p, device.type))}
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = _prepared_set(Path(tmp), args.cases, tuple(args.shape))
        results = {
            (p, layout): run(p, args, data_dir, device, channels_last=layout == "channels-last")
            for p, layout in rows
            if p not in skipped
        }

    base = next(iter(results.values()))["s_per_step"] if results else None
    print(
        f"{'precision':<12} {'layout':<14} {'steps/s':>8} {'s/step':>8} {'data share':>11} "
        f"{'speed-up':>9}"
    )
    for p, layout in rows:
        if p in skipped:
            print(f"{p:<12} {layout:<14} {skipped[p]}")
            continue
        r = results[(p, layout)]
        print(
            f"{p:<12} {layout:<14} {r['steps_per_s']:>8.3f} {r['s_per_step']:>8.2f} "
            f"{r['data_share']:>10.1%} {base / r['s_per_step']:>8.2f}x"
        )


if __name__ == "__main__":
    main()
