"""Memory and time of a segment model's whole-volume prediction: float16 per-class stitching
(:func:`vesselfm.inference.segments.predict_segments`, what ``infer`` runs) against MONAI's
float32 sliding window over all classes.

    python scripts/bench_segments_infer.py f16     # then: monai
    python scripts/bench_segments_infer.py monai --shape 256 256 200 --roi 64

Each mode runs in its own process (peak RSS is per process): the tiny model with a 15-class
head on a random prepared volume; prints wall and CPU seconds and the peak resident memory.
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=("f16", "monai"))
    parser.add_argument("--shape", type=int, nargs=3, default=(256, 256, 200))
    parser.add_argument("--roi", type=int, default=64)
    parser.add_argument("--classes", type=int, default=15)
    args = parser.parse_args()

    from vesselfm.inference import SlidingWindowPredictor
    from vesselfm.models import build_network, model_config

    cfg = model_config("tiny")
    cfg["net"]["out_channels"] = args.classes
    torch.manual_seed(0)
    net = build_network(cfg["net"]).eval()
    volume = torch.rand(*args.shape)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0, c0 = time.perf_counter(), time.process_time()
    if args.mode == "f16":
        from vesselfm.inference.segments import predict_segments

        predictor = SlidingWindowPredictor(net, roi_size=args.roi, overlap=0.25, device="cpu")
        labels, _ = predict_segments(predictor, volume.numpy(), args.classes)
    else:
        from monai.inferers import sliding_window_inference

        with torch.inference_mode():
            logits = sliding_window_inference(
                volume[None, None], (args.roi,) * 3, 1, net, overlap=0.25, mode="gaussian"
            )
        labels = logits.argmax(1)[0].numpy().astype(np.uint8)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        f"{args.mode}: shape {tuple(args.shape)}, {args.classes} classes, codes "
        f"{len(np.unique(labels))}: wall {time.perf_counter() - t0:.1f} s, CPU "
        f"{time.process_time() - c0:.1f} s, peak RSS {peak / 2**20:.2f} GiB "
        f"(+{(peak - before) / 2**20:.2f} GiB over the model and volume)"
    )


if __name__ == "__main__":
    main()
