"""Time of a full retrieval evaluation (Recall@K + MAP@R + R-precision + NMI) at SOP-like sizes.

    python benchmarks/eval.py [--device cpu|cuda] [--n 60502] [--dim 512] [--per-class 5] [--nmi-restarts 10]

Embeddings are random class centres plus noise, L2-normalised, with SOP's shape by default
(60,502 test images in classes of about 5). Rows: the k-NN search alone (torch on the device, and
faiss on the CPU), the ranking metrics, NMI, and the whole evaluation. NMI uses ``evaluate``'s
default k-means (scikit-learn up to 2e6 points × clusters, faiss from k-means++ seeds above, 10
runs; ``benchmarks/nmi_clustering.py`` compares the settings). Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import header, timed, write_json  # noqa: E402

from dmltune.evaluate import RECALL_KS, evaluate, nearest_neighbours, nmi_backend_for  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--n", type=int, default=60502)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--per-class", type=int, default=5)
    parser.add_argument("--ks", type=int, nargs="+", default=list(RECALL_KS["sop"]))
    parser.add_argument("--skip-nmi", action="store_true", help="NMI with ~n/5 clusters is slow on a CPU")
    parser.add_argument("--nmi-restarts", type=int, default=10, help="k-means runs of NMI (eval.nmi_restarts)")
    parser.add_argument("--out", default="benchmarks/results/eval.json")
    args = parser.parse_args(argv)
    device = torch.device(args.device)

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(args.n) // args.per_class
    centres = torch.randn(int(labels.max()) + 1, args.dim, generator=g)
    emb = F.normalize(centres[labels] + 0.8 * torch.randn(args.n, args.dim, generator=g), dim=1)
    emb, labels = emb.to(device), labels.to(device)
    k = min(max(args.ks), args.n - 1)

    rows = []
    backends = ["torch", "faiss"] if device.type == "cuda" else ["faiss", "torch"]
    for backend in backends:
        seconds = timed(lambda: nearest_neighbours(emb, emb, k, True, backend=backend), device)
        rows.append({"what": f"k-NN search, k = {k} ({backend})", "seconds": seconds})
    rows.append({"what": "R@K + MAP@R + R-precision", "seconds": timed(
        lambda: evaluate(emb, labels, ks=args.ks, metrics=("recall", "map@r", "r_precision")), device)})
    if not args.skip_nmi:
        importlib.import_module("sklearn.cluster")  # imported first, so that the NMI row does not time the import

        n_clusters = int(labels.max()) + 1
        nmi = {"nmi_restarts": args.nmi_restarts}
        rows.append({"what": f"NMI ({nmi_backend_for(args.n, n_clusters)} k-means ×{args.nmi_restarts}, "
                             f"{n_clusters} clusters)", "seconds": timed(
            lambda: evaluate(emb, labels, metrics=("nmi",), **nmi), device)})
        rows.append({"what": "full evaluation", "seconds": timed(lambda: evaluate(emb, labels, ks=args.ks, **nmi),
                                                                  device)})

    on_gpu = device.type == "cuda"
    print(f"{header(device)}, N = {args.n}, d = {args.dim}, classes of {args.per_class}")
    print(f"{'what':<48} {'seconds':>9}")
    for r in rows:
        print(f"{r['what']:<48} {r['seconds']:>9.2f}")
    if on_gpu:
        full = [r for r in rows if r["what"] == "full evaluation"]
        if full:
            print(f"target ≤ 2 s for the full evaluation on an H100: {'ok' if full[0]['seconds'] <= 2 else 'MISS'}")
    write_json(args.out, "eval", device, rows, n=args.n, dim=args.dim)
    return 0


if __name__ == "__main__":
    sys.exit(main())
