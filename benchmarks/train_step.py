"""Images per second of the trainable's training step, against a papers-style reference loop.

    python benchmarks/train_step.py [--device cpu|cuda] [--backbones resnet50 bn_inception googlenet]
                                    [--size 224] [--batch-size 80] [--dim 512]

For each backbone (``NAME`` or ``NAME@SIZE``), rows timed round-robin (interleaved rounds, median
per row, so a change of load on a shared machine hits every row alike):

* dmltune, four rows: a real trial (dmltune.training.Trial) on in-memory synthetic images timing
  its own step: cached uint8 batch → device crop/flip/normalise → backbone (bf16 autocast and
  channels_last on CUDA) → embedding → miner (at_asms) → loss (soft_contrastive) → backward →
  Adam; plain, meta-λ with a look-ahead through the head, and through the full network.
* reference: the input pipeline and loss of the papers' public code, written here: a torch
  DataLoader (persistent workers, pinned memory on CUDA) over PIL images with torchvision
  transforms (images ≥ 64 px: JPEG files of CUB-like proportions, 500×375 for 224 px, decoded per
  item, Resize(size·8/7) + RandomResizedCrop(size, scale 0.16–1) + flip + ToTensor + Normalize;
  smaller images: in-memory arrays → PIL, RandomCrop(size, padding 2) + flip + ToTensor +
  Normalize, the 28px preset's augmentation), fp32, no channels_last, the same network, and the
  MS miner + MS loss as a Python loop over anchors (ε = 0.1, α = 2, β = 50, λ = 0.5, the MS
  paper's values), then Adam. Its min/max use torch.min/torch.max; the authors' code uses
  Python's builtin min/max over tensors, which is slower still, so the speed-up is a lower bound.
* bare model step: forward + backward + Adam of backbone + head only, on a normalised batch that
  already sits on the device (bf16 autocast and channels_last on CUDA, fp32 on CPU, like dmltune),
  loss = sum of the embedding: the ceiling dmltune's step can reach.

* compiled (``--compile true max-autotune``; ``true`` by default): the plain step of a trial with
  ``train.compile`` set, so ``torch.compile`` runs the backbone's forward; its first step's time,
  compiling included (inductor's on-disk cache off, as a first trial pays it), is reported beside.
* with ``--baseline REV``: the same dmltune rows with the step of git revision REV (imported from
  ``git archive`` as a second package), in the same rounds: a refactoring's cost measured in one run.

Columns: ms per step, img/s (B / step time), × plain (step time relative to dmltune's plain step),
× ref (img/s relative to the reference), % bare (img/s as a share of the bare step's), × base (step
time relative to the baseline's same row; > 1 is slower).
Defaults: ResNet50, BN-Inception and GoogLeNet at 224 px, B = 80 (16 classes × 5), dim 512 on
CUDA; a small CNN at 28 px and ResNet18 at 64 px (few steps) on CPU. Targets (judged on CUDA only):
dmltune plain ≥ 7× the reference and ≥ 90 % of the bare bf16 step for ResNet50 at 224 px, B = 80.
Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

warnings.filterwarnings("ignore", category=FutureWarning)  # torch.func's import-time notice
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, per_anchor_loss, sync, unpack_revision, write_json  # noqa: E402

from dmltune.config import resolve_config  # noqa: E402
from dmltune.data import ClassBalancedSampler  # noqa: E402
from dmltune.models import build_model  # noqa: E402
from dmltune.training import Trial  # noqa: E402

# The judged meta-λ rows keep the meta batch at the training batch's shape (B/K classes × K), so their
# ratios compare with earlier runs; the last row uses the default meta batch (every training class).
DMLTUNE_ROWS = (("plain step", None), ("meta-λ, head look-ahead", "head"), ("meta-λ, full look-ahead", "full"),
                ("meta-λ, head, every class in the meta batch", "head+all"))
REFERENCE = "reference (PIL loader, fp32, MS loop)"
BARE = "bare model step"
MS = {"epsilon": 0.1, "alpha": 2.0, "beta": 50.0, "lam": 0.5}  # the MS paper's values


def parse_backbones(specs, default_size):
    """``NAME`` or ``NAME@SIZE`` → (name, size)."""
    out = []
    for spec in specs:
        name, _, size = spec.partition("@")
        out.append((name, int(size) if size else default_size))
    return out


def stored_size(size: int) -> int:
    """Stored (cached) side for an ImageNet-style crop of ``size``: 256 for 224."""
    return round(size * 8 / 7)


def trial_config(args, backbone, size, meta_scope, compile_mode="false"):
    large = size >= 64
    cfg = {
        "seed": 0,
        "dataset": {"name": "synthetic", "classes": 64, "per_class": 10, "size": stored_size(size) if large else size,
                    "channels": 3 if large else 1, "val_fraction": 0.0,
                    "transform": {"preset": "imagenet", "resize": stored_size(size), "crop": size} if large
                    else {"preset": "28px", "resize": size, "crop": size}},
        "model": {"backbone": backbone, "dim": args.dim, "freeze_bn": True},
        "miner": {"name": "at_asms"},
        "loss": {"name": "soft_contrastive"},
        "train": {"epochs": 1, "batch_size": args.batch_size, "k": 5, "lr": 1e-5, "device": args.device,
                  "compile": compile_mode},
        "eval": {"every": 0, "nmi": False},
    }
    if meta_scope:
        scope, _, every_class = meta_scope.partition("+")
        batch = {} if every_class else {"classes": args.batch_size // 5, "per_class": 5}
        cfg["loss"]["lam"] = {"meta": {"init": 0.7, "scope": scope, "meta_batch": batch}}
    return resolve_config(cfg)


def known_to(config_module, resolved: dict) -> dict:
    """``resolved`` without the train keys an older revision's ``config`` does not declare yet (those
    added since, at their defaults)."""
    known = {p.name for p in config_module.TRAIN_PARAMS}
    return {**resolved, "train": {k: v for k, v in resolved["train"].items() if k in known}}


def dmltune_runner(trial):
    """A function running ``n`` steps of the trial (cycling through one epoch of batches; a meta-λ
    trial draws its meta batches itself, cycling through one epoch of them)."""
    trial.sampler.set_epoch(1)
    batches = list(trial.sampler)
    count = [0]

    def run(n):
        for _ in range(n):
            b = batches[count[0] % len(batches)]
            trial.step(trial.source.batch(b), b, 0.5)
            count[0] += 1

    return run


def baseline_runner(trial):
    """``dmltune_runner`` for a trial of an earlier commit whose step took the meta batch as an
    argument (``step(images, idx, progress, meta_idx)``, before dmltune/training/ existed)."""
    if not hasattr(trial, "meta_sampler"):
        return dmltune_runner(trial)
    trial.sampler.set_epoch(1)
    batches = list(trial.sampler)
    trial.meta_sampler and trial.meta_sampler.set_epoch(1)
    meta = list(trial.meta_sampler) if trial.meta_sampler else None
    count = [0]

    def run(n):
        for _ in range(n):
            i = count[0]
            b = batches[i % len(batches)]
            trial.step(trial.source.batch(b), b, 0.5, meta[i % len(meta)] if meta else None)
            count[0] += 1

    return run


def import_baseline(rev: str, folder: Path):
    """dmltune as of git revision ``rev``, imported beside the working tree's as ``dmltune_baseline``
    (its imports are relative, so the two packages and their registries stay apart)."""
    import importlib

    unpack_revision(rev, folder)
    (folder / "dmltune").rename(folder / "dmltune_baseline")
    sys.path.insert(0, str(folder))
    return importlib.import_module("dmltune_baseline.trainable"), importlib.import_module("dmltune_baseline.config")


# ---------------------------------------------------------------- the papers-style reference loop


class ToNetworkRange:
    """Tensor in [0, 1] RGB → the backbone's convention (BGR and 0–255 for BN-Inception)."""

    def __init__(self, bgr: bool, value_range: float):
        self.bgr, self.value_range = bgr, value_range

    def __call__(self, x):
        if self.bgr:
            x = x[[2, 1, 0]]
        return x * self.value_range if self.value_range != 1.0 else x


class PILImages(torch.utils.data.Dataset):
    """JPEG files (decoded per item, as the papers' loaders do) or in-memory arrays, as PIL images."""

    def __init__(self, labels, transform, paths=None, arrays=None, mode="RGB"):
        self.labels, self.transform, self.paths, self.arrays, self.mode = labels, transform, paths, arrays, mode

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        if self.paths is not None:
            with Image.open(self.paths[i]) as img:
                img = img.convert(self.mode)
        else:
            arr = self.arrays[i]
            img = Image.fromarray(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))
            img = img.convert(self.mode)
        return self.transform(img), int(self.labels[i])


def write_jpegs(folder: Path, n: int, size: int) -> list[str]:
    """``n`` smooth synthetic photos (cheap to decode, like natural images) of CUB-like proportions."""
    from PIL import Image

    w, h = max(size, round(size * 500 / 224)), max(size, round(size * 375 / 224))
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        small = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
        arr = np.asarray(small.resize((w, h), Image.BILINEAR), dtype=np.int16)
        arr = np.clip(arr + rng.integers(-8, 9, arr.shape), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(arr).save(path, quality=90)
        paths.append(str(path))
    return paths


def reference_loader(args, model, size, folder: Path):
    from torchvision import transforms as T

    spec, channels = model.input_spec, model.in_channels
    n_classes, per_class = 32, 10
    labels = np.repeat(np.arange(n_classes), per_class)
    finish = [T.ToTensor(), ToNetworkRange(spec.get("channel_order") == "BGR" and channels == 3,
                                           float(spec.get("value_range", 1.0))),
              T.Normalize(spec["mean"], spec["std"])]
    mode = "RGB" if channels == 3 else "L"
    if size >= 64:
        tf = T.Compose([T.Resize(stored_size(size)), T.RandomResizedCrop(size, scale=(0.16, 1.0)),
                        T.RandomHorizontalFlip(), *finish])
        data = PILImages(labels, tf, paths=write_jpegs(folder, len(labels), size), mode=mode)
    else:
        tf = T.Compose([T.RandomCrop(size, padding=2), T.RandomHorizontalFlip(), *finish])
        arrays = np.random.default_rng(0).integers(0, 256, (len(labels), channels, size, size), dtype=np.uint8)
        data = PILImages(labels, tf, arrays=arrays, mode=mode)
    sampler = ClassBalancedSampler(labels, args.batch_size, 5, batches_per_epoch=10**6, seed=0)
    workers = args.ref_workers
    return torch.utils.data.DataLoader(data, batch_sampler=sampler, num_workers=workers,
                                       pin_memory=args.device == "cuda", persistent_workers=workers > 0)


def ms_loop_loss(sim, labels, epsilon, alpha, beta, lam):
    """MS mining + MS loss, one anchor at a time, as in the MS authors' code."""

    def anchor_loss(pos, neg):
        return (1.0 / alpha * torch.log(1 + torch.sum(torch.exp(-alpha * (pos - lam))))
                + 1.0 / beta * torch.log(1 + torch.sum(torch.exp(beta * (neg - lam)))))

    return per_anchor_loss(sim, labels, epsilon, epsilon, anchor_loss)


def build_like(trial: Trial) -> torch.nn.Module:
    m = trial.settings.model
    in_channels = trial.model.in_channels if m["backbone"] == "small_cnn" else None
    return build_model(m["backbone"], dim=m["dim"], freeze_bn=m["freeze_bn"],
                       **({"in_channels": in_channels} if in_channels else {}))


def reference_runner(args, trial: Trial, size, folder: Path):
    """The same network in fp32 (no channels_last) fed by the PIL DataLoader, MS loop loss, Adam."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_like(trial).to(device)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    batches = iter(reference_loader(args, model, size, folder))

    def run(n):
        for _ in range(n):
            x, y = next(batches)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            emb = model(x)
            loss = ms_loop_loss(emb @ emb.T, y, **MS)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    return run


def bare_runner(args, trial: Trial, size):
    """Backbone + head forward, backward and Adam on a batch already normalised on the device."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = build_like(trial).to(device)
    cuda = device.type == "cuda"
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    x = torch.randn(args.batch_size, model.in_channels, size, size, device=device)
    if cuda:
        x = x.contiguous(memory_format=torch.channels_last)

    def run(n):
        for _ in range(n):
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=cuda):
                emb = model(x)
            loss = emb.float().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    return run


# ---------------------------------------------------------------- timing


def timed_steps(run, steps: int, warmup: int, device: torch.device) -> float:
    """Seconds per step of ``run`` after ``warmup`` steps, the device synchronised around."""
    run(warmup)
    sync(device)
    start = time.perf_counter()
    run(steps)
    sync(device)
    return (time.perf_counter() - start) / steps


def bench_backbone(args, backbone, size, folder: Path) -> list[dict]:
    device = torch.device(args.device)
    trials = [Trial(trial_config(args, backbone, size, scope)) for _, scope in DMLTUNE_ROWS]
    entries = [(label, dmltune_runner(t), args.steps) for (label, _), t in zip(DMLTUNE_ROWS, trials)]
    if args.baseline_modules:  # the same rows with the earlier commit's step
        trainable, config = args.baseline_modules
        for label, scope in DMLTUNE_ROWS:
            old = trainable.Trial(config.resolve_config(known_to(config, trial_config(args, backbone, size, scope))))
            entries.append((f"{label} [{args.baseline}]", baseline_runner(old), args.steps))
    compile_s = {}
    for mode in args.compile:  # train.compile: the plain step with the backbone compiled
        label = f"plain step, compiled ({mode})"
        run = dmltune_runner(Trial(trial_config(args, backbone, size, None, mode)))
        start = time.perf_counter()
        run(1)  # the first step compiles (inductor's cache off: what a first trial pays)
        sync(device)
        compile_s[label] = time.perf_counter() - start
        entries.append((label, run, args.steps))
    if not args.no_reference:
        entries.append((REFERENCE, reference_runner(args, trials[0], size, folder), args.ref_steps or args.steps))
    entries.append((BARE, bare_runner(args, trials[0], size), args.steps))
    samples = [[] for _ in entries]
    peaks = [0.0 for _ in entries]
    for _, run, _ in entries:  # one untimed pass first: the reference's loader workers start and prefetch
        run(max(args.warmup, 1))
    sync(device)
    for _ in range(args.rounds):  # interleaved rounds, median per row: robust to a noisy machine
        for i, (_, run, steps) in enumerate(entries):
            if device.type == "cuda":
                torch.cuda.synchronize()
                base = torch.cuda.memory_allocated()
                torch.cuda.reset_peak_memory_stats()
            samples[i].append(timed_steps(run, steps, args.warmup, device))
            if device.type == "cuda":
                peaks[i] = max(peaks[i], (torch.cuda.max_memory_allocated() - base) / 2**30)
    rows = []
    for (label, _, steps), times, peak in zip(entries, samples, peaks):
        seconds = statistics.median(times)
        impl = ("reference" if label == REFERENCE else "bare" if label == BARE else "compiled" if label in compile_s
                else "baseline" if label.endswith(f"[{args.baseline}]") else "dmltune")
        row = {"backbone": backbone, "size": size, "what": label, "impl": impl,
               "ms_per_step": seconds * 1e3, "img_per_s": args.batch_size / seconds, "steps": steps,
               "rounds": len(times), "ms_per_step_rounds": [t * 1e3 for t in times]}
        if peak:
            row["extra_peak_gib"] = peak
        if label in compile_s:
            row["first_step_s"] = compile_s[label]
        rows.append(row)
    plain = rows[0]
    ref = next((r for r in rows if r["impl"] == "reference"), None)
    bare = next(r for r in rows if r["impl"] == "bare")
    for row in rows:
        row["ratio_to_plain"] = row["ms_per_step"] / plain["ms_per_step"]
        if row["impl"] in ("dmltune", "compiled"):
            if ref is not None:
                row["speedup_vs_reference"] = row["img_per_s"] / ref["img_per_s"]
            row["fraction_of_bare"] = row["img_per_s"] / bare["img_per_s"]
            old = next((r for r in rows if r["what"] == f"{row['what']} [{args.baseline}]"), None)
            if old is not None:  # > 1: this step is slower than the baseline's
                row["ratio_to_baseline"] = row["ms_per_step"] / old["ms_per_step"]
    del trials, entries
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def main(argv=None) -> int:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if cuda else "cpu")
    parser.add_argument("--backbones", "--backbone", nargs="+", default=None,
                        help="NAME or NAME@SIZE each (default: resnet50 bn_inception googlenet on CUDA, "
                             "small_cnn@28 resnet18@64 on CPU)")
    parser.add_argument("--size", type=int, default=None, help="image side for backbones given without @SIZE")
    parser.add_argument("--batch-size", type=int, default=80)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row and round")
    parser.add_argument("--ref-steps", type=int, default=None, help="timed steps of the reference (default: --steps)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps before each row's timing "
                        "(default 3; 1 for the big networks on a CPU)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ref-workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader workers of the reference")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference loop")
    parser.add_argument("--baseline", default=None, metavar="REV",
                        help="also time the same dmltune rows with the step of git revision REV (e.g. a commit "
                             "before a refactoring), in the same interleaved rounds; adds the column × base")
    parser.add_argument("--compile", nargs="*", default=["true"], choices=["true", "max-autotune"],
                        help="also time the plain step with train.compile = MODE (default: true; "
                             "`--compile` alone: no compiled row); the first step's time, compiling included, "
                             "is reported as well")
    parser.add_argument("--out", default="benchmarks/results/train_step.json")
    args = parser.parse_args(argv)
    args.baseline_modules = None
    on_cuda = args.device.startswith("cuda")
    if args.backbones is None:
        args.backbones = ["resnet50", "bn_inception", "googlenet"] if on_cuda else ["small_cnn@28", "resnet18@64"]
    if args.size is None:
        args.size = 224 if on_cuda else 28
    specs = parse_backbones(args.backbones, args.size)
    default_steps, default_warmup = args.steps, args.warmup

    device = torch.device(args.device)
    if args.compile:
        from torch._inductor import config as inductor_config

        inductor_config.fx_graph_cache = False  # compile time as a first trial pays it
    rows = []
    with tempfile.TemporaryDirectory(prefix="dmltune-train-step-") as tmp:
        if args.baseline:
            args.baseline_modules = import_baseline(args.baseline, Path(tmp))
        for i, (backbone, size) in enumerate(specs):
            if default_steps is None:  # few steps for the big networks on a CPU
                args.steps = 20 if on_cuda else (8 if backbone == "small_cnn" else 2)
            if default_warmup is None:
                args.warmup = 3 if on_cuda or backbone == "small_cnn" else 1
            folder = Path(tmp) / str(i)
            folder.mkdir()
            rows += bench_backbone(args, backbone, size, folder)

    print(f"{header(device)}, B = {args.batch_size}, dim {args.dim}, reference loader workers {args.ref_workers}")
    width = max(44, *(len(r["what"]) for r in rows))
    print(f"{'backbone':<14} {'px':>4} {'what':<{width}} {'ms/step':>9} {'img/s':>8} {'× plain':>8} {'× ref':>7} "
          f"{'% bare':>7}" + (f" {'× base':>7}" if args.baseline else ""))
    for r in rows:
        ref = f"{r['speedup_vs_reference']:.1f}" if "speedup_vs_reference" in r else ""
        bare = f"{100 * r['fraction_of_bare']:.0f}" if "fraction_of_bare" in r else ""
        base = f" {r['ratio_to_baseline']:>7.3f}" if "ratio_to_baseline" in r else (" " * 8 if args.baseline else "")
        print(f"{r['backbone']:<14} {r['size']:>4} {r['what']:<{width}} {r['ms_per_step']:>9.1f} {r['img_per_s']:>8.0f} "
              f"{r['ratio_to_plain']:>8.2f} {ref:>7} {bare:>7}{base}")
    for r in rows:
        if "first_step_s" in r:
            print(f"{r['backbone']}@{r['size']} {r['what']}: first step {r['first_step_s']:.1f} s (compiling included), "
                  f"then {r['ratio_to_plain']:.2f}× the eager step's time")
    checks = []
    judged = [r for r in rows if r["backbone"] == "resnet50" and r["size"] == 224 and r["impl"] == "dmltune"]
    if on_cuda and judged and args.batch_size == 80:
        plain, head, full = judged[:3]  # (the every-class row is reported, not judged)
        checks = [("plain step ≥ 2,800 img/s (ResNet50, 224 px, B = 80)", plain["img_per_s"] >= 2800),
                  ("meta-λ head look-ahead ≤ 1.3× plain", head["ratio_to_plain"] <= 1.3),
                  ("meta-λ full look-ahead ≤ 4× plain", full["ratio_to_plain"] <= 4),
                  ("plain step ≥ 90 % of the bare bf16 model step", plain["fraction_of_bare"] >= 0.9)]
        if "speedup_vs_reference" in plain:
            checks.append(("plain step ≥ 7× the papers-style reference", plain["speedup_vs_reference"] >= 7))
        for text, ok in checks:
            print(f"{'PASS' if ok else 'FAIL'}: {text}")
    elif not on_cuda:
        print("targets (ResNet50, 224 px, B = 80: ≥ 7× the reference, ≥ 90 % of a bare bf16 step, ≥ 2,800 img/s, "
              "meta-λ head ≤ 1.3× and full ≤ 4× plain) apply to an H100 and are not judged on CPU")
    write_json(args.out, "train_step", device, rows, backbones=[f"{b}@{s}" for b, s in specs], baseline=args.baseline,
               batch_size=args.batch_size, dim=args.dim, ref_workers=args.ref_workers,
               ms_reference=MS, targets={text: ok for text, ok in checks})
    return 0


if __name__ == "__main__":
    sys.exit(main())
