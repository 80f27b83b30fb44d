"""NMI: labels against a seeded k-means clustering with one cluster per class (docs/evaluation.md).

By default the papers' scikit-learn ``KMeans(n_init=10)`` (k-means++ seeding, best of 10 runs) while
points × clusters ≤ ``SKLEARN_MAX_WORK``, above that the same algorithm with faiss doing the Lloyd
iterations. :func:`dmltune.evaluate.evaluate` calls :func:`cluster_nmi`.
"""

from __future__ import annotations

import math

import numpy as np
from .lazy import lazy_module

torch = lazy_module("torch")


# NMI's k-means (docs/evaluation.md). Defaults: the papers' scikit-learn KMeans(n_init=10, max_iter=300).
NMI_BACKENDS = ("auto", "sklearn", "faiss")
NMI_INITS = ("k-means++", "random")
NMI_DEFAULTS = {"nmi_backend": "auto", "nmi_init": "k-means++", "nmi_restarts": 10, "nmi_iterations": 300,
                "nmi_seed": 0}
# "auto" runs scikit-learn while points × clusters is at most this (CUB's test set: 5,924 × 100;
# Cars: 8,131 × 98), faiss above it (In-Shop's queries: 14,218 × 3,985; SOP: 60,502 × 11,316).
SKLEARN_MAX_WORK = 2_000_000


def nmi_options(eval_cfg) -> dict:
    """``evaluate``'s NMI keyword arguments from an ``eval`` config section (missing keys: defaults)."""
    return {key: eval_cfg.get(key, default) for key, default in NMI_DEFAULTS.items()}


def nmi_backend_for(n_points: int, n_clusters: int, backend: str = "auto") -> str:
    """The k-means implementation ``backend`` stands for at this size: "sklearn" or "faiss"."""
    if backend not in NMI_BACKENDS:
        raise ValueError(f"unknown NMI backend {backend!r}; use {', '.join(NMI_BACKENDS)}")
    if backend == "auto":
        return "sklearn" if n_points * n_clusters <= SKLEARN_MAX_WORK else "faiss"
    return backend


def cluster_nmi(embeddings: torch.Tensor, labels: torch.Tensor, seed: int = NMI_DEFAULTS["nmi_seed"],
                restarts: int = NMI_DEFAULTS["nmi_restarts"], iterations: int = NMI_DEFAULTS["nmi_iterations"],
                init: str = NMI_DEFAULTS["nmi_init"], backend: str = NMI_DEFAULTS["nmi_backend"]) -> float:
    """NMI between ``labels`` and a k-means clustering with one cluster per label.

    ``restarts`` k-means runs of at most ``iterations`` Lloyd iterations each, from ``init`` seeds
    (``"k-means++"`` or ``"random"`` points); the run of lowest inertia (sum of squared distances
    to the centres) gives the clusters. ``backend``: ``"sklearn"`` (``sklearn.cluster.KMeans``, what
    the papers call), ``"faiss"`` (faiss's Lloyd iterations, on the GPU with faiss-gpu; k-means++
    seeds computed here with torch on the embeddings' device) or ``"auto"`` (sklearn up to
    ``SKLEARN_MAX_WORK`` points × clusters, faiss above). The defaults are scikit-learn's
    ``KMeans(n_init=10)``. ``backend="faiss", init="random", restarts=1, iterations=20`` is
    dmltune's clustering before issue #14 (faiss's own random seeding).
    """
    from sklearn.metrics import normalized_mutual_info_score

    if init not in NMI_INITS:
        raise ValueError(f"unknown NMI init {init!r}; use {' or '.join(NMI_INITS)}")
    if restarts < 1 or iterations < 1:
        raise ValueError(f"NMI k-means needs restarts ≥ 1 and iterations ≥ 1, got {restarts} and {iterations}")
    y = labels.cpu().numpy()
    n_clusters = len(np.unique(y))
    backend = nmi_backend_for(len(y), n_clusters, backend)
    if n_clusters < 2 or n_clusters >= len(y):
        return float("nan")  # one cluster per label is uninformative
    if not bool(torch.isfinite(embeddings).all()):
        return float("nan")  # no clustering of NaN/inf embeddings (scikit-learn would raise)
    if backend == "sklearn":
        from sklearn.cluster import KMeans

        x = embeddings.float().cpu().numpy()
        kmeans = KMeans(n_clusters, init=init, n_init=restarts, max_iter=iterations, random_state=seed)
        assignment = kmeans.fit(x).labels_
    else:
        assignment = _faiss_kmeans(embeddings.float(), n_clusters, seed, restarts, iterations, init)
    return float(normalized_mutual_info_score(y, assignment))


def _faiss_kmeans(emb: torch.Tensor, n_clusters: int, seed: int, restarts: int, iterations: int,
                  init: str) -> np.ndarray:
    import faiss

    x = np.ascontiguousarray(emb.cpu().numpy())
    gpu = bool(getattr(faiss, "get_num_gpus", lambda: 0)()) and emb.device.type == "cuda"
    # DML classes are small (a handful of images each): allow few points per centroid, use all points
    options = dict(niter=iterations, seed=seed, gpu=gpu, verbose=False, min_points_per_centroid=1,
                   max_points_per_centroid=1 << 30)
    if init == "random":  # faiss's own seeding: k distinct random points per run, best of nredo runs
        kmeans = faiss.Kmeans(x.shape[1], n_clusters, nredo=restarts, **options)
        kmeans.train(x)
        return kmeans.index.search(x, 1)[1][:, 0]
    generator = torch.Generator().manual_seed(seed)
    best_inertia, best = math.inf, None
    for _ in range(restarts):
        centres = kmeans_plusplus(emb, n_clusters, generator)
        kmeans = faiss.Kmeans(x.shape[1], n_clusters, **options)
        kmeans.train(x, init_centroids=np.ascontiguousarray(centres.cpu().numpy()))
        dist, assignment = kmeans.index.search(x, 1)
        inertia = float(dist.sum(dtype=np.float64))
        if inertia < best_inertia:
            best_inertia, best = inertia, assignment[:, 0]
    return best


def kmeans_plusplus(x: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k × d seed centres by greedy k-means++ (Arthur & Vassilvitskii 2007, with scikit-learn's
    2 + ⌊ln k⌋ candidates per step, keeping the one that lowers the potential most).

    Runs on ``x``'s device; the random draws come from ``generator`` (a CPU generator), so a seed
    picks the same draws on any device.
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    first = int(torch.randint(n, (1,), generator=generator))
    uniforms = torch.rand(max(k - 1, 0), trials, generator=generator, dtype=torch.float64).to(x.device)
    sq = (x * x).sum(dim=1)
    # closest[i]: squared distance of point i to its nearest chosen centre
    closest = (sq + sq[first] - 2 * (x @ x[first])).clamp_min(0)
    chosen = torch.empty(k, dtype=torch.long, device=x.device)
    chosen[0] = first
    for c in range(1, k):
        cumulative = torch.cumsum(closest, 0, dtype=torch.float64)
        candidates = torch.searchsorted(cumulative, uniforms[c - 1] * cumulative[-1]).clamp_max(n - 1)
        dist = (sq[candidates, None] + sq[None, :] - 2 * (x[candidates] @ x.T)).clamp_min(0)
        dist = torch.minimum(dist, closest[None, :])
        best = dist.sum(dim=1, dtype=torch.float64).argmin()
        closest = dist[best]
        chosen[c] = candidates[best]
    return x[chosen]
