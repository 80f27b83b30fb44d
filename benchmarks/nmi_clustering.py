"""NMI's k-means: agreement with scikit-learn's KMeans(n_init=10) and the cost of each setting.

    python benchmarks/nmi_clustering.py [--device cpu|cuda] [--seeds 3] [--spreads 1.0 1.5 1.7]
                                        [--dims 64 128] [--sizes 1000x100 5000x100 12000x100]

Data: 100 classes (``--classes``) around random unit-vector centres, ``--per-class`` points each
(drawn uniformly in that range), Gaussian noise of total norm ≈ ``spread`` (σ = spread / √d per
dimension), L2-normalised. Reference: ``sklearn.cluster.KMeans(n_clusters, n_init=10,
random_state=0)``, the papers' call.

Agreement rows (one per dimension, spread and data seed), NMI of: the reference; the default
(``evaluate``'s, "auto"); faiss with k-means++ seeds, 10 restarts (what "auto" runs above
``SKLEARN_MAX_WORK``); faiss with its random seeds and 10 restarts × 300 iterations (more faiss
restarts and iterations alone); dmltune's clustering before issue #14 (faiss, random seeds, one
run of 20 iterations); the reference with ``random_state=1`` (how much the reference itself moves
with its seed).

Cost rows (``--sizes`` as NxK: N points in K classes of equal size, ``--cost-dim``): seconds of
the old clustering, the default, faiss k-means++ × 10 and faiss random × 10, best of
``--repeats``, with each one's NMI. Prints both tables and writes JSON.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, sync, write_json  # noqa: E402

from dmltune.evaluate import SKLEARN_MAX_WORK, cluster_nmi, nmi_backend_for  # noqa: E402

SETTINGS = {  # name: cluster_nmi keyword arguments
    "default": {},
    "faiss k-means++ x10": {"backend": "faiss"},
    "faiss random x10": {"backend": "faiss", "init": "random"},
    "old (faiss 1x20)": {"backend": "faiss", "init": "random", "restarts": 1, "iterations": 20},
}


def blobs(n_classes: int, per_class: tuple[int, int], dim: int, spread: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((n_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = np.repeat(np.arange(n_classes), rng.integers(per_class[0], per_class[1] + 1, n_classes))
    x = centres[labels] + spread / np.sqrt(dim) * rng.standard_normal((len(labels), dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(labels)


def sklearn_nmi(emb: torch.Tensor, labels: torch.Tensor, random_state: int = 0) -> float:
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    assignment = KMeans(int(labels.max()) + 1, n_init=10, random_state=random_state).fit(emb.numpy()).labels_
    return float(normalized_mutual_info_score(labels.numpy(), assignment))


def best_time(fn, device, repeats: int):
    times, value = [], None
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        value = fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return value, min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--per-class", type=int, nargs=2, default=[10, 60], metavar=("MIN", "MAX"))
    parser.add_argument("--dims", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--spreads", type=float, nargs="+", default=[1.0, 1.5, 1.7])
    parser.add_argument("--seeds", type=int, default=3, help="data seeds per dimension and spread")
    parser.add_argument("--sizes", nargs="*", default=["1000x100", "5000x100", "12000x100"],
                        help="cost rows, NxK (none: skip the cost table)")
    parser.add_argument("--cost-dim", type=int, default=512)
    parser.add_argument("--cost-spread", type=float, default=1.6)
    parser.add_argument("--repeats", type=int, default=1, help="cost rows: best of this many runs")
    parser.add_argument("--out", default="benchmarks/results/nmi_clustering.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    names = list(SETTINGS)

    agreement = []
    for dim in args.dims:
        for spread in args.spreads:
            for seed in range(args.seeds):
                emb, labels = blobs(args.classes, tuple(args.per_class), dim, spread, seed)
                row = {"table": "agreement", "dim": dim, "spread": spread, "data_seed": seed, "n": len(labels),
                       "reference": sklearn_nmi(emb, labels), "sklearn_random_state_1": sklearn_nmi(emb, labels, 1)}
                row.update({name: cluster_nmi(emb.to(device), labels, **kw) for name, kw in SETTINGS.items()})
                agreement.append(row)

    cost = []
    for size in args.sizes:
        n, k = (int(v) for v in size.lower().split("x"))
        emb, labels = blobs(k, (n // k, n // k), args.cost_dim, args.cost_spread, 0)
        emb = emb.to(device)
        row = {"table": "cost", "n": len(labels), "classes": k, "dim": args.cost_dim,
               "default_backend": nmi_backend_for(len(labels), k)}
        for name, kw in SETTINGS.items():
            value, seconds = best_time(lambda: cluster_nmi(emb, labels, **kw), device, args.repeats)
            row[name] = {"seconds": seconds, "nmi": value}
        cost.append(row)

    print(f"{header(device)}; reference: sklearn KMeans(n_init=10, random_state=0); "
          f"default = sklearn while N × K ≤ {SKLEARN_MAX_WORK:,}")
    if agreement:
        others = names + ["sklearn_random_state_1"]
        print(f"\nNMI − reference, {args.classes} classes of {args.per_class[0]}–{args.per_class[1]}")
        print(f"{'d':>4} {'spread':>6} {'seed':>4} {'N':>6} {'reference':>9} " + " ".join(f"{c:>20}" for c in others))
        for r in agreement:
            print(f"{r['dim']:>4} {r['spread']:>6.2f} {r['data_seed']:>4} {r['n']:>6} {r['reference']:>9.4f} "
                  + " ".join(f"{r[c] - r['reference']:>+20.4f}" for c in others))
        diffs = {c: [r[c] - r["reference"] for r in agreement] for c in others}
        print(f"{'mean':>33} " + " ".join(f"{statistics.fmean(diffs[c]):>+20.4f}" for c in others))
        print(f"{'max |diff|':>33} " + " ".join(f"{max(map(abs, diffs[c])):>20.4f}" for c in others))
    if cost:
        print(f"\nseconds (NMI), d = {args.cost_dim}, best of {args.repeats}")
        print(f"{'N':>6} {'K':>5} {'default is':>10} " + " ".join(f"{c:>22}" for c in names))
        for r in cost:
            print(f"{r['n']:>6} {r['classes']:>5} {r['default_backend']:>10} "
                  + " ".join(f"{r[c]['seconds']:>13.2f} ({r[c]['nmi']:.4f})" for c in names))
    write_json(args.out, "nmi_clustering", device, agreement + cost, sklearn_max_work=SKLEARN_MAX_WORK)
    return 0


if __name__ == "__main__":
    sys.exit(main())
