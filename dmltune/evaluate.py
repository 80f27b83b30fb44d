"""Retrieval evaluation: Recall@K, MAP@R, R-precision and NMI of L2-normalised embeddings.

    from dmltune.evaluate import evaluate
    metrics = evaluate(query_emb, query_labels)                              # query set is its own gallery
    metrics = evaluate(query_emb, query_labels, gallery_emb, gallery_labels)  # In-Shop's protocol

One k-nearest-neighbour search (inner product = cosine similarity) serves every ranking metric:
on a GPU it is a chunked matrix product with top-k, so no N×N matrix is ever held; on the CPU it is
faiss's exact inner-product index. Definitions follow Musgrave et al., "A Metric Learning Reality
Check" (2020), as pytorch-metric-learning implements them:

- a query whose class has no other item in the gallery (a "lone" query) has nothing to retrieve
  and is left out of Recall@K, R-precision and MAP@R (NaN if every query is lone);
- for a query with R other items of its class in the gallery, R-precision is the fraction of its R
  nearest neighbours that share its class, and MAP@R the mean over the top R positions of the
  precision at each position holding a same-class item, divided by R;
- Recall@K is the fraction of queries with at least one same-class item among the K nearest; a K
  larger than the gallery is computed over the whole gallery;
- NMI compares the labels with a k-means clustering of the query embeddings (k = number of query
  classes): by default the papers' scikit-learn ``KMeans(n_init=10)`` (k-means++ seeding, best of
  10 runs) while points × clusters ≤ ``SKLEARN_MAX_WORK``, above that the same algorithm with
  faiss doing the Lloyd iterations; seeded (see :func:`cluster_nmi` and docs/evaluation.md).
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch

from .nmi import (  # noqa: F401  (evaluate's NMI, and its old home for these names)
    NMI_BACKENDS, NMI_DEFAULTS, NMI_INITS, SKLEARN_MAX_WORK, cluster_nmi, kmeans_plusplus, nmi_backend_for, nmi_options,
)

# Recall@K lists of the standard protocols (METHODS.md §6).
RECALL_KS = {
    "cub200": (1, 2, 4, 8, 16, 32),
    "cars196": (1, 2, 4, 8, 16, 32),
    "sop": (1, 10, 100, 1000),
    "inshop": (1, 10, 20, 30, 40, 50),
}

ALL_METRICS = ("recall", "map@r", "r_precision", "nmi")


def _as_tensor(x, dtype=None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    t = t.detach()
    return t.to(dtype) if dtype is not None else t


def nearest_neighbours(query: torch.Tensor, gallery: torch.Tensor, k: int, exclude_self: bool,
                       backend: str = "auto", chunk: int = 4096) -> torch.Tensor:
    """Indices (N × k) of each query's k most similar gallery items, most similar first.

    ``exclude_self``: the gallery is the query set, and item i is never its own neighbour.
    ``backend``: ``"torch"`` (chunked matmul + top-k on the tensors' device), ``"faiss"`` (exact
    inner-product search on the CPU) or ``"auto"`` (torch on a GPU, faiss on the CPU).
    """
    if backend == "auto":
        backend = "torch" if query.device.type == "cuda" else "faiss"
    if backend == "torch":
        return _knn_torch(query, gallery, k, exclude_self, chunk)
    if backend == "faiss":
        return _knn_faiss(query, gallery, k, exclude_self)
    raise ValueError(f"unknown backend {backend!r}; use auto, torch or faiss")


def _knn_torch(query, gallery, k, exclude_self, chunk):
    out = torch.empty(query.shape[0], k, dtype=torch.long, device=query.device)
    for start in range(0, query.shape[0], chunk):
        sim = query[start:start + chunk] @ gallery.T
        if exclude_self:
            rows = torch.arange(sim.shape[0], device=sim.device)
            sim[rows, rows + start] = float("-inf")
        out[start:start + chunk] = sim.topk(k, dim=1).indices
    return out


def _knn_faiss(query, gallery, k, exclude_self):
    import faiss

    q = np.ascontiguousarray(query.float().cpu().numpy())
    g = np.ascontiguousarray(gallery.float().cpu().numpy())
    index = faiss.IndexFlatIP(g.shape[1])
    index.add(g)
    _, idx = index.search(q, k + 1 if exclude_self else k)
    idx = torch.from_numpy(idx).long()
    if exclude_self:
        # Drop each query's own index; with exact ties it may sit anywhere in the row, or be cut
        # off behind duplicates, in which case the row's last entry goes instead. A stable sort
        # on "is self" moves it to the end while keeping the others in order.
        is_self = idx == torch.arange(idx.shape[0])[:, None]
        is_self[:, -1] |= ~is_self.any(dim=1)
        order = torch.sort(is_self.to(torch.int8), dim=1, stable=True).indices
        idx = torch.gather(idx, 1, order)[:, :k]
    return idx.to(query.device)


def evaluate(query_emb, query_labels, gallery_emb=None, gallery_labels=None,
             ks: Iterable[int] = (1, 2, 4, 8), metrics: Sequence[str] = ALL_METRICS,
             nmi_seed: int = NMI_DEFAULTS["nmi_seed"], backend: str = "auto",
             device: torch.device | str | None = None, chunk: int = 4096,
             nmi_backend: str = NMI_DEFAULTS["nmi_backend"], nmi_init: str = NMI_DEFAULTS["nmi_init"],
             nmi_restarts: int = NMI_DEFAULTS["nmi_restarts"],
             nmi_iterations: int = NMI_DEFAULTS["nmi_iterations"]) -> dict[str, float]:
    """Retrieval metrics of L2-normalised embeddings, as fractions in [0, 1].

    Keys: ``recall@K`` for each K of ``ks``, ``map@r``, ``r_precision``, ``nmi`` (those asked for in
    ``metrics``). Without a gallery the query set is its own gallery and each query's own item is
    excluded; with a gallery nothing is excluded. ``nmi_*``: the k-means of NMI (:func:`cluster_nmi`'s
    ``seed``, ``backend``, ``init``, ``restarts``, ``iterations``); ``backend`` is the k-NN search's.
    """
    unknown = set(metrics) - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metric(s) {sorted(unknown)}; choose from {', '.join(ALL_METRICS)}")
    query = _as_tensor(query_emb, torch.float32)
    if device is not None:
        query = query.to(device)
    q_labels = _as_tensor(query_labels).long().to(query.device)
    same_set = gallery_emb is None
    gallery = query if same_set else _as_tensor(gallery_emb, torch.float32).to(query.device)
    g_labels = q_labels if same_set else _as_tensor(gallery_labels).long().to(query.device)
    if query.shape[0] != q_labels.shape[0] or gallery.shape[0] != g_labels.shape[0]:
        raise ValueError("embeddings and labels differ in length")
    ks = sorted({int(k) for k in ks})
    if any(k < 1 for k in ks):
        raise ValueError(f"Recall@K needs K ≥ 1, got {ks}")

    result: dict[str, float] = {}
    ranking = [m for m in metrics if m != "nmi"]
    if ranking:
        result.update(_ranking_metrics(query, q_labels, gallery, g_labels, same_set, ks, ranking, backend, chunk))
    if "nmi" in metrics:
        result["nmi"] = cluster_nmi(query, q_labels, seed=nmi_seed, restarts=nmi_restarts,
                                    iterations=nmi_iterations, init=nmi_init, backend=nmi_backend)
    return result


def _ranking_metrics(query, q_labels, gallery, g_labels, same_set, ks, wanted, backend, chunk):
    # R: number of other same-class items in the gallery, per query.
    classes, g_counts = torch.unique(g_labels, return_counts=True)
    pos = torch.searchsorted(classes, q_labels).clamp_max(len(classes) - 1)
    r = torch.where(classes[pos] == q_labels, g_counts[pos], torch.zeros_like(pos)) - int(same_set)
    available = gallery.shape[0] - int(same_set)
    k_max = min(max(max(ks), int(r.max().clamp_min(1))), available)
    out: dict[str, float] = {}
    if k_max < 1:
        return {**{f"recall@{k}": float("nan") for k in ks}, "map@r": float("nan"), "r_precision": float("nan")}
    idx = nearest_neighbours(query, gallery, k_max, same_set, backend=backend, chunk=chunk)
    match = g_labels[idx] == q_labels[:, None]  # N × k_max
    scored = r > 0
    n_scored = int(scored.sum())
    if "recall" in wanted:
        for k in ks:
            hit = match[:, :k].any(dim=1)
            out[f"recall@{k}"] = hit[scored].double().mean().item() if n_scored else float("nan")
    if "map@r" in wanted or "r_precision" in wanted:
        r_max = max(int(r.max()), 1)  # only the first max R positions matter here
        positions = torch.arange(1, r_max + 1, device=idx.device)
        relevant = match[:, :r_max] & (positions[None, :] <= r[:, None])
        r_safe = r.clamp_min(1).double()
        if "r_precision" in wanted:
            rp = relevant.sum(dim=1).double() / r_safe
            out["r_precision"] = rp[scored].mean().item() if n_scored else float("nan")
        if "map@r" in wanted:
            precision_at_i = torch.cumsum(relevant, dim=1).double() / positions[None, :].double()
            ap = (precision_at_i * relevant).sum(dim=1) / r_safe
            out["map@r"] = ap[scored].mean().item() if n_scored else float("nan")
    return out


def similarity_histograms(embeddings, labels, bins: int = 40, max_anchors: int = 2000,
                          chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Histograms of the cosine similarities of positive and of negative pairs of an embedded set.

    Bins split [-1, 1] into ``bins`` equal intervals. Each histogram is normalised to sum to 1 (all
    zeros when there is no such pair). Pairs are (anchor, other) with anchor ≠ other; at most
    ``max_anchors`` anchors, evenly spaced over the set, are used, so the cost stays bounded on
    large validation sets. Returns ``(positive, negative)``, each a float64 tensor of ``bins``.
    """
    emb = _as_tensor(embeddings, torch.float32)
    y = _as_tensor(labels).to(emb.device)
    n = emb.shape[0]
    pos = torch.zeros(bins, dtype=torch.float64, device=emb.device)
    neg = torch.zeros_like(pos)
    if n < 2:
        return pos.cpu(), neg.cpu()
    anchors = torch.linspace(0, n - 1, min(n, max_anchors), device=emb.device).round().long().unique()
    for start in range(0, len(anchors), chunk):
        rows = anchors[start:start + chunk]
        sim = (emb[rows] @ emb.T).clamp(-1.0, 1.0)
        same = y[rows, None] == y[None, :]
        other = torch.ones_like(same)
        other[torch.arange(len(rows), device=emb.device), rows] = False
        pos += torch.histc(sim[same & other], bins=bins, min=-1.0, max=1.0).double()
        neg += torch.histc(sim[~same], bins=bins, min=-1.0, max=1.0).double()
    pos, neg = pos / pos.sum().clamp_min(1), neg / neg.sum().clamp_min(1)
    return pos.cpu(), neg.cpu()


def histogram_columns(prefix: str, positive: torch.Tensor, negative: torch.Tensor) -> dict[str, float]:
    """``{prefix}/pos/00 … {prefix}/neg/NN`` report columns of :func:`similarity_histograms`."""
    out = {}
    for kind, values in (("pos", positive), ("neg", negative)):
        out.update({f"{prefix}/{kind}/{i:02d}": float(v) for i, v in enumerate(values.tolist())})
    return out


def concatenated_embeddings(per_model: Sequence) -> torch.Tensor:
    """The Reality Check's ensemble of k models (issue #18): each model's N×d embeddings of the same
    items, L2-normalised per model, concatenated to N×(k·d), and L2-normalised again (each row then has
    norm √k before it, so the last step changes no ranking; it keeps the input of :func:`evaluate`
    unit-length). Cosine similarity of the result is the mean of the models' cosine similarities."""
    if not per_model:
        raise ValueError("an ensemble needs the embeddings of at least one model")
    parts = [torch.nn.functional.normalize(_as_tensor(e, torch.float32), dim=1) for e in per_model]
    if len({p.shape[0] for p in parts}) != 1:
        raise ValueError(f"every model must embed the same items, got {[p.shape[0] for p in parts]} rows")
    return torch.nn.functional.normalize(torch.cat(parts, dim=1), dim=1)
