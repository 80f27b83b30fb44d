"""Forward + backward time of every miner + loss: dmltune vs a per-anchor loop vs pytorch-metric-learning.

    python benchmarks/pair_math.py [--device cpu|cuda] [--sizes 80 1000] [--dim 512] [--repeats 20]

Each row times, from L2-normalised embeddings (requires grad): S = E Eᵀ, mining, the loss and the
backward pass. "loop" is a per-anchor Python loop in the style of the authors' MS-loss code (boolean
indexing per anchor, mining with the ε rule, losses appended then summed); "pml" is
pytorch-metric-learning with its own miner and loss. At each B all rows are timed round-robin
(warm-up, then one call of every row per round) and each row reports the median and the
interquartile range of its repeats. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import add_batch_arguments, header, per_anchor_loss, timed, write_json  # noqa: E402

from dmltune.pairs import get_loss, get_miner  # noqa: E402

# (label, miner, miner params, loss, loss params)
DMLTUNE_CASES = [
    ("none + ms", "none", {}, "ms", {}),
    ("ms + ms", "ms", {"epsilon": 0.1}, "ms", {}),
    ("asms + soft_contrastive", "asms", {}, "soft_contrastive", {}),
    ("at_asms + soft_contrastive", "at_asms", {}, "soft_contrastive", {}),
    ("dsml + binomial*", "dsml", {}, "binomial", {"dynamic": True}),
    ("asms + contrastive", "asms", {}, "contrastive", {}),
    ("asms + triplet", "asms", {}, "triplet", {}),
    ("asms + triplet* (eq. 10)", "asms", {}, "triplet", {"dynamic": True}),
    ("asms + triplet* (per triplet)", "asms", {}, "triplet", {"dynamic": True, "tp_form": "reduces_to_tp"}),
    ("asms + lifted", "asms", {}, "lifted", {}),
    ("asms + lifted*", "asms", {}, "lifted", {"dynamic": True}),
    ("asms + binomial", "asms", {}, "binomial", {}),
    ("asms + ms*", "asms", {}, "ms", {"dynamic": True}),
    # the same losses without mining, to compare like with like against pml's plain losses
    ("none + contrastive", "none", {}, "contrastive", {}),
    ("none + triplet", "none", {}, "triplet", {}),
    ("none + lifted", "none", {}, "lifted", {}),
]


def make_batch(b: int, dim: int, k: int, device, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(b // k).repeat_interleave(k)
    emb = F.normalize(torch.randn(b, dim, generator=g), dim=1)
    return emb.to(device), labels.to(device)


def dmltune_step(miner_name, miner_params, loss_name, loss_params):
    miner, loss_fn = get_miner(miner_name, **miner_params), get_loss(loss_name, **loss_params)

    def step(emb, labels):
        sim = emb @ emb.T
        loss = loss_fn(sim, labels, miner(sim, labels), progress=0.5)
        loss.backward()

    return step


def loop_step(gamma_pos, gamma_neg, anchor_loss):
    """Per-anchor mining + loss in the style of the authors' code: boolean indexing per anchor,
    the tolerance rule, the anchor's loss appended to a list, then summed."""

    def step(emb, labels):
        per_anchor_loss(emb @ emb.T, labels, gamma_pos, gamma_neg, anchor_loss).backward()

    return step


def ms_anchor_loss(pos, neg, alpha=2.0, beta=50.0, lam=0.5):
    return (1.0 / alpha * torch.log(1 + torch.sum(torch.exp(-alpha * (pos - lam))))
            + 1.0 / beta * torch.log(1 + torch.sum(torch.exp(beta * (neg - lam)))))


def soft_contrastive_anchor_loss(pos, neg, lam=0.7, mu=2.0, nu=40.0):
    return F.softplus(mu * (lam - pos)).mean() / mu + F.softplus(nu * (neg - lam)).mean() / nu


def pml_cases():
    try:
        from pytorch_metric_learning import losses, miners
        from pytorch_metric_learning.distances import CosineSimilarity
    except ImportError:
        return []
    cos = CosineSimilarity()

    def with_miner(miner, loss):
        def step(emb, labels):
            loss(emb, labels, miner(emb, labels)).backward()

        return step

    def plain(loss):
        def step(emb, labels):
            loss(emb, labels).backward()

        return step

    return [
        ("ms + ms", with_miner(miners.MultiSimilarityMiner(0.1), losses.MultiSimilarityLoss(2, 50, 0.5))),
        ("none + ms", plain(losses.MultiSimilarityLoss(2, 50, 0.5))),
        ("none + contrastive", plain(losses.ContrastiveLoss(pos_margin=1.0, neg_margin=0.5, distance=cos))),
        ("none + triplet", plain(losses.TripletMarginLoss(margin=0.1, distance=cos))),
        ("none + lifted", plain(losses.GeneralizedLiftedStructureLoss(neg_margin=0, pos_margin=1.0, distance=cos))),
    ]


def time_interleaved(entries, emb, labels, warmup: int, device) -> list[list[float]]:
    """Milliseconds of each entry's repeats, taken round-robin (one call of every entry per round)
    so that a change of load on a shared machine hits all implementations alike and the speed-up
    ratios stay fair. ``entries`` are (step, repeats, warmup or None for the default) tuples."""

    def once(step):
        return timed(lambda: step(emb.detach().clone().requires_grad_(True), labels), device) * 1e3

    for step, _, own_warmup in entries:
        for _ in range(warmup if own_warmup is None else own_warmup):
            once(step)
    times = [[] for _ in entries]
    for round_ in range(max(reps for _, reps, _ in entries)):
        for (step, reps, _), out in zip(entries, times):
            if round_ < reps:
                out.append(once(step))
    return times


def summary(times: list[float]) -> dict:
    """Median and interquartile range (ms) of one entry's repeats."""
    q1, _, q3 = statistics.quantiles(times, n=4) if len(times) > 1 else (times[0],) * 3
    return {"ms": statistics.median(times), "ms_q1": q1, "ms_q3": q3, "repeats": len(times)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_batch_arguments(parser)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--loop-max-b", type=int, default=1000, help="skip the per-anchor loop above this B")
    parser.add_argument("--out", default="benchmarks/results/pair_math.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    rows = []
    loop_repeats = max(3, args.repeats // 4)
    for b in args.sizes:
        emb, labels = make_batch(b, args.dim, args.k, device)
        entries = [("dmltune", label, dmltune_step(mn, mp, ln, lp), args.repeats, None)
                   for label, mn, mp, ln, lp in DMLTUNE_CASES]
        if b <= args.loop_max_b:
            entries += [("loop", "ms + ms", loop_step(0.1, 0.1, ms_anchor_loss), loop_repeats, 1),
                        ("loop", "asms + soft_contrastive", loop_step(0.1, 0.01, soft_contrastive_anchor_loss),
                         loop_repeats, 1)]
        entries += [("pml", label, step, args.repeats, None) for label, step in pml_cases()]
        times = time_interleaved([e[2:] for e in entries], emb, labels, args.warmup, device)
        dml = {}
        for (impl, label, *_), t in zip(entries, times):
            row = {"impl": impl, "case": label, "B": b, **summary(t)}
            if impl == "dmltune":
                dml[label] = row["ms"]
            else:
                row["dmltune_speedup"] = row["ms"] / dml[label]
            rows.append(row)

    on_gpu = device.type == "cuda"
    print(f"{header(device)}, d = {args.dim}, K = {args.k}")
    print(f"{'impl':<8} {'case':<28} {'B':>5} {'ms/step':>10} {'IQR %':>6} {'dmltune ×':>10} {'target':>8}")
    for r in rows:
        target = ""
        if on_gpu and r["impl"] == "dmltune" and r["B"] == 80:
            target = "ok" if r["ms"] <= 1.0 else "MISS"
        elif on_gpu and "dmltune_speedup" in r:
            need = 3.0 if r["impl"] == "pml" else 100.0
            target = "ok" if r["dmltune_speedup"] >= need else "MISS"
        speed = f"{r['dmltune_speedup']:.1f}" if "dmltune_speedup" in r else ""
        iqr = 100 * (r["ms_q3"] - r["ms_q1"]) / r["ms"]
        print(f"{r['impl']:<8} {r['case']:<28} {r['B']:>5} {r['ms']:>10.3f} {iqr:>6.0f} {speed:>10} {target:>8}")
    skipped = [b for b in args.sizes if b > args.loop_max_b]
    if skipped:
        print(f"per-anchor loop skipped at B = {skipped} (above --loop-max-b {args.loop_max_b})")
    if not on_gpu:
        print("targets (≤ 1 ms at B = 80, ≥ 3× pml, ≥ 100× loop) apply to an H100 and are not judged on CPU")

    write_json(args.out, "pair_math", device, rows, dim=args.dim, k=args.k,
               loop_skipped_at=skipped)
    return 0


if __name__ == "__main__":
    sys.exit(main())
