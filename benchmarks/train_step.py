"""Images per second of the trainable's training step, plain and with the meta-learned λ.

    python benchmarks/train_step.py [--device cpu|cuda] [--backbone resnet50] [--size 224]

Builds a real trial (dmltune.trainable.Trial) on in-memory synthetic images and times its own
step: cached uint8 batch → device crop/flip/normalise → backbone (bf16 autocast and channels_last
on CUDA) → embedding → miner → loss → backward → Adam. Rows: plain step, meta-λ with a look-ahead
through the head, and through the full network; the ratio is the step time relative to plain.
Defaults: ResNet50, B = 80 (16 classes × 5), 224 px, dim 512 on CUDA; a small CNN at 28 px on CPU.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import warnings
import statistics
import sys
import time
from pathlib import Path

import torch

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.func's import-time notice
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, sync, write_json  # noqa: E402

from dmltune.config import resolve_config  # noqa: E402
from dmltune.trainable import Trial  # noqa: E402


def trial_config(args, meta_scope):
    preset = "imagenet" if args.size >= 64 else "28px"
    cfg = {
        "seed": 0,
        "dataset": {"name": "synthetic", "classes": 64, "per_class": 10, "size": 256 if preset == "imagenet" else args.size,
                    "channels": 3 if preset == "imagenet" else 1, "val_fraction": 0.0,
                    "transform": {"preset": preset} if preset == "imagenet" else {"preset": "28px", "resize": args.size, "crop": args.size}},
        "model": {"backbone": args.backbone, "dim": args.dim, "freeze_bn": True},
        "miner": {"name": "at_asms"},
        "loss": {"name": "soft_contrastive"},
        "train": {"epochs": 1, "batch_size": args.batch_size, "k": 5, "lr": 1e-5, "device": args.device},
        "eval": {"every": 0, "nmi": False},
    }
    if meta_scope:
        cfg["loss"]["lam"] = {"meta": {"init": 0.7, "lr": 0.01, "scope": meta_scope}}
    return resolve_config(cfg)


def time_steps(trial: Trial, steps: int, warmup: int) -> float:
    trial.sampler.set_epoch(1)
    batches = list(trial.sampler)
    trial.meta_sampler and trial.meta_sampler.set_epoch(1)
    meta = list(trial.meta_sampler) if trial.meta_sampler else None
    device = trial.device

    def run(i):
        b = batches[i % len(batches)]
        trial.step(trial.source.batch(b), b, 0.5, meta[i % len(meta)] if meta else None)

    for i in range(warmup):
        run(i)
    sync(device)
    start = time.perf_counter()
    for i in range(steps):
        run(i)
    sync(device)
    return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--backbone", default="resnet50" if cuda else "small_cnn")
    parser.add_argument("--size", type=int, default=224 if cuda else 28)
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20 if cuda else 8)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    args = parser.parse_args(argv)

    configs = (("plain step", None), ("meta-λ, head look-ahead", "head"), ("meta-λ, full look-ahead", "full"))
    trials = [Trial(trial_config(args, scope)) for _, scope in configs]
    samples: list[list[float]] = [[] for _ in configs]
    peaks = [0.0 for _ in configs]
    for _ in range(args.rounds):  # interleaved rounds, median per row: robust to a noisy machine
        for i, trial in enumerate(trials):
            if trial.device.type == "cuda":
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            samples[i].append(time_steps(trial, args.steps, args.warmup))
            if trial.device.type == "cuda":
                peaks[i] = max(peaks[i], (torch.cuda.max_memory_allocated() - base) / 2**30)
    rows = []
    for (label, _), times, peak in zip(configs, samples, peaks):
        seconds = statistics.median(times)
        row = {"what": label, "ms_per_step": seconds * 1e3, "img_per_s": args.batch_size / seconds}
        if peak:
            row["extra_peak_gib"] = peak
        rows.append(row)
    for row in rows:
        row["ratio_to_plain"] = row["ms_per_step"] / rows[0]["ms_per_step"]

    device = torch.device(args.device)
    print(f"{header(device)}, {args.backbone} at {args.size} px, B = {args.batch_size}, dim {args.dim}")
    print(f"{'what':<28} {'ms/step':>9} {'img/s':>9} {'× plain':>8}")
    for r in rows:
        print(f"{r['what']:<28} {r['ms_per_step']:>9.1f} {r['img_per_s']:>9.0f} {r['ratio_to_plain']:>8.2f}")
    if device.type == "cuda" and args.backbone == "resnet50" and args.size == 224:
        print(f"targets: plain ≥ 2,800 img/s {'ok' if rows[0]['img_per_s'] >= 2800 else 'MISS'}; "
              f"head ≤ 1.3× {'ok' if rows[1]['ratio_to_plain'] <= 1.3 else 'MISS'}; "
              f"full ≤ 4× {'ok' if rows[2]['ratio_to_plain'] <= 4 else 'MISS'}")
    write_json(args.out, "train_step", device, rows, backbone=args.backbone, size=args.size,
               batch_size=args.batch_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
