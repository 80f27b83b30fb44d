"""Several trials on one GPU: aggregate throughput of 1, 2, 4 and 8 concurrent Ray Tune trials.

    python benchmarks/packing.py [--device cpu|cuda] [--concurrency 1 2 4 8] [--cases small resnet50]
                                 [--epochs N] [--batches N] [--rounds 1] [--quick]

For each case and each concurrency n, one ``tuner.fit()`` runs n identical trials (different seeds)
of dmltune's trainable at once, each given ``{"cpu": CPUs // n, "gpu": 1/n}``
(``tune.with_resources``). The trainable is ``dmltune.trainable.train`` called from a thin wrapper
whose reporter adds, to every epoch's report, the wall-clock time of the report and the trial's
peak memory (``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` inside the trial on a
GPU; the process's peak RSS always). Checkpoints are off (``keeps_checkpoints = False``), so only
training, the end-of-trial test evaluation and Ray's own cost are timed.

Cases: ``small``: small_cnn on 28 px grayscale synthetic images (Fashion-MNIST-sized; no download),
B = 100 (10 classes × 10); ``resnet50``: ResNet50 on 224 px crops of 256 px synthetic images,
B = 80 (16 × 5), dim 512 (GPU only). On a CPU-only machine the trials are CPU trials
(``{"cpu": CPUs // n}``), n ≤ the CPU count, small settings.

Columns (per case and n):
  fit s         wall time of ``tuner.fit()`` (trial start-up, data, training, test evaluation, teardown)
  img/s fit     Σ images trained over the trials / fit s
  img/s train   Σ images / the training window: from the first epoch start of any trial to the
                end of training of the last trial (an epoch starts at its report time minus the
                report's ``epoch_s`` and trains for its images / its ``images_per_s``): the
                aggregate throughput while trials train, without Ray's start-up, data set-up and
                the end-of-trial test evaluation
  Σ rates       Σ over trials of each trial's own images_per_s (median over epochs): equals the
                aggregate only where the trials overlap fully; ``overlap`` is the share of the
                window during which all n trials were training
  × 1 trial     img/s train relative to n = 1 of the same case
  trials/GPU-h  n / fit s × 3600 (trials per hour of the whole machine on a CPU)
  peak GiB      per trial, the largest over the trials: CUDA allocated (reserved), or peak RSS on CPU

Target (CUDA only): 4 concurrent small-backbone trials ≥ 2.5× one trial's img/s train.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fit_timed, header, write_json  # noqa: E402


def packing_trainable(config):
    """dmltune's trainable with a reporter that adds timestamps and peak memory to each report."""
    import resource
    import time as _time

    import torch as _torch

    from dmltune.training.reporting import TuneReporter
    from dmltune.training import train

    class Reporter(TuneReporter):
        keeps_checkpoints = False

        def report(self, metrics, checkpoint_dir=None):
            extra = {"t_report": _time.time(), "torch_threads": _torch.get_num_threads(),
                     "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}
            if _torch.cuda.is_available() and _torch.cuda.is_initialized():
                extra["peak_cuda_alloc_gib"] = _torch.cuda.max_memory_allocated() / 2**30
                extra["peak_cuda_reserved_gib"] = _torch.cuda.max_memory_reserved() / 2**30
            super().report({**metrics, **extra}, None)

    train(config, reporter=Reporter())


def case_config(case: str, device: str, args) -> dict:
    cuda = device == "cuda"
    if case == "small":
        dataset = {"name": "synthetic", "classes": 20, "per_class": args.per_class or (1000 if cuda else 100),
                   "size": 28, "channels": 1, "val_fraction": 0.0, "transform": {"preset": "28px"}}
        model = {"backbone": "small_cnn", "dim": 128}
        batch, k, batches, epochs = 100, 10, 300 if cuda else 10, 5 if cuda else 3
    elif case == "resnet50":
        dataset = {"name": "synthetic", "classes": 32, "per_class": args.per_class or 10, "size": 256,
                   "channels": 3, "val_fraction": 0.0, "transform": {"preset": "imagenet"}}
        model = {"backbone": "resnet50", "dim": 512}
        batch, k, batches, epochs = 80, 5, 40 if cuda else 2, 2
    else:
        raise SystemExit(f"unknown case {case!r}; choose small or resnet50")
    return {
        "seed": 0,
        "dataset": dataset,
        "model": {**model, "freeze_bn": True},
        "miner": {"name": "at_asms"},
        "loss": {"name": "soft_contrastive"},
        "train": {"epochs": args.epochs or epochs, "batch_size": batch, "k": k,
                  "batches_per_epoch": args.batches or batches, "lr": 1e-5, "device": device,
                  "checkpoint_every": 0},
        "eval": {"every": 0, "nmi": False, "ks": [1]},
    }


def run_level(case, n, args, storage: Path) -> dict:
    from ray import tune

    cuda = args.device == "cuda"
    cfg = case_config(case, args.device, args)
    cpus = max(1, args.cpus // n)
    resources = {"cpu": cpus, "gpu": 1.0 / n} if cuda else {"cpu": cpus}
    trainable = tune.with_resources(packing_trainable, resources)
    space = {**cfg, "seed": tune.grid_search(list(range(n)))}
    results, fit_s = fit_timed(trainable, space, storage, f"{case}_{n}", what=f"{case} with {n} concurrent trials")
    per_batch = cfg["train"]["batch_size"] * cfg["train"]["batches_per_epoch"]
    images, rates, starts, ends, alloc, reserved, rss, threads = 0, [], [], [], [], [], [], set()
    for result in results:
        df = result.metrics_dataframe.sort_values("epoch")
        images += per_batch * len(df)
        rates.append(float(df["images_per_s"].median()))
        # epoch e trains from (its report time − epoch_s) for images_e / images_per_s seconds; the rest of
        # epoch_s is evaluation (the test evaluation after the last epoch), left out of the window
        epoch_start = df["t_report"] - df["epoch_s"]
        starts.append(float(epoch_start.iloc[0]))
        ends.append(float(epoch_start.iloc[-1] + per_batch / df["images_per_s"].iloc[-1]))
        rss.append(float(df["peak_rss_gib"].max()))
        threads.add(int(df["torch_threads"].iloc[0]))
        if "peak_cuda_alloc_gib" in df:
            alloc.append(float(df["peak_cuda_alloc_gib"].max()))
            reserved.append(float(df["peak_cuda_reserved_gib"].max()))
    window = max(ends) - min(starts)
    overlap = max(0.0, min(ends) - max(starts)) / window if window > 0 else 0.0
    row = {"case": case, "concurrent": n, "cpu_per_trial": cpus, "gpu_per_trial": resources.get("gpu", 0.0),
           "torch_threads": sorted(threads), "epochs": cfg["train"]["epochs"],
           "batches_per_epoch": cfg["train"]["batches_per_epoch"], "batch_size": cfg["train"]["batch_size"],
           "images": images, "fit_s": fit_s, "train_window_s": window, "overlap": overlap,
           "img_per_s_fit": images / fit_s, "img_per_s_train": images / window, "sum_trial_img_per_s": sum(rates),
           "trials_per_hour": n / fit_s * 3600, "peak_rss_gib": max(rss)}
    if alloc:
        row.update(peak_cuda_alloc_gib=max(alloc), peak_cuda_reserved_gib=max(reserved))
    return row


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"))
    parser.add_argument("--cases", nargs="+", default=None, help="small and/or resnet50 (default: both on CUDA, small on CPU)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=None,
                        help="trials at once (default 1 2 4 8 on CUDA; 1 … CPU count, powers of 2, on CPU)")
    parser.add_argument("--cpus", type=int, default=os.cpu_count() or 1, help="CPUs given to Ray")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batches", type=int, default=None, help="batches per epoch")
    parser.add_argument("--per-class", type=int, default=None, help="synthetic images per class")
    parser.add_argument("--rounds", type=int, default=1, help="repeat every level, round-robin; median kept")
    parser.add_argument("--quick", action="store_true", help="tiny settings for a smoke test")
    parser.add_argument("--out", default="benchmarks/results/packing.json")
    args = parser.parse_args(argv)
    on_cuda = args.device == "cuda"
    if args.quick:
        args.cases = args.cases or ["small"]
        args.concurrency = args.concurrency or [1]
        args.epochs, args.batches, args.per_class = args.epochs or 1, args.batches or 2, args.per_class or 10
    args.cases = args.cases or (["small", "resnet50"] if on_cuda else ["small"])
    if args.concurrency is None:
        args.concurrency = [1, 2, 4, 8] if on_cuda else [n for n in (1, 2, 4, 8) if n <= args.cpus]

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    import ray

    init_start = time.perf_counter()
    ray.init(address="local", num_cpus=args.cpus, num_gpus=1 if on_cuda else 0, include_dashboard=False, log_to_driver=False,
             configure_logging=False)
    init_s = time.perf_counter() - init_start
    samples: dict[tuple, list[dict]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="dmltune-packing-") as tmp:
            for _ in range(args.rounds):  # round-robin over every level: load changes hit all alike
                for case in args.cases:
                    for n in args.concurrency:
                        samples.setdefault((case, n), []).append(run_level(case, n, args, Path(tmp)))
    finally:
        ray.shutdown()

    rows = []
    for (case, n), runs in samples.items():
        row = dict(min(runs, key=lambda r: abs(r["img_per_s_train"] - statistics.median(x["img_per_s_train"] for x in runs))))
        row["rounds"] = len(runs)
        rows.append(row)
    for row in rows:
        one = next((r for r in rows if r["case"] == row["case"] and r["concurrent"] == 1), None)
        if one:
            row["speedup_vs_one"] = row["img_per_s_train"] / one["img_per_s_train"]

    device = torch.device(args.device)
    print(f"{header(device)}; Ray given {args.cpus} CPUs{' and 1 GPU' if on_cuda else ''} (ray.init {init_s:.1f} s)")
    mem = "peak GiB alloc (resv)" if on_cuda else "peak RSS GiB"
    per_h = "trials/GPU-h" if on_cuda else "trials/h"
    print(f"{'case':<9} {'n':>2} {'cpu':>4} {'gpu':>5} {'fit s':>7} {'img/s fit':>10} {'img/s train':>12} "
          f"{'Σ rates':>9} {'overlap':>8} {'× 1 trial':>9} {per_h:>13} {mem:>22}")
    for r in rows:
        memory = (f"{r['peak_cuda_alloc_gib']:.2f} ({r['peak_cuda_reserved_gib']:.2f})" if "peak_cuda_alloc_gib" in r
                  else f"{r['peak_rss_gib']:.2f}")
        speed = f"{r['speedup_vs_one']:.2f}" if "speedup_vs_one" in r else ""
        print(f"{r['case']:<9} {r['concurrent']:>2} {r['cpu_per_trial']:>4} {r['gpu_per_trial']:>5.3g} {r['fit_s']:>7.1f} "
              f"{r['img_per_s_fit']:>10.0f} {r['img_per_s_train']:>12.0f} {r['sum_trial_img_per_s']:>9.0f} "
              f"{100 * r['overlap']:>7.0f}% {speed:>9} {r['trials_per_hour']:>13.0f} {memory:>22}")
    targets = {}
    if on_cuda:
        four = next((r for r in rows if r["case"] == "small" and r["concurrent"] == 4), None)
        if four and "speedup_vs_one" in four:
            ok = four["speedup_vs_one"] >= 2.5
            targets["4 concurrent small trials ≥ 2.5× one trial (img/s train)"] = ok
            print(f"{'PASS' if ok else 'FAIL'}: 4 concurrent small-backbone trials ≥ 2.5× one trial's aggregate "
                  f"img/s ({four['speedup_vs_one']:.2f}×)")
    else:
        print("CPU-only trials: GPU figures (fractional-GPU packing, peak CUDA memory, trials per GPU-hour) are "
              "unmeasured; the target (4 small trials ≥ 2.5× one on one GPU) applies to an H100")
    write_json(args.out, "packing", device, rows, cpus=args.cpus, ray_init_s=init_s, cases=args.cases,
               concurrency=args.concurrency, targets=targets)
    return 0


if __name__ == "__main__":
    sys.exit(main())
