"""Retrieval metrics against pytorch-metric-learning's AccuracyCalculator and hand-computed cases."""

import math

import pytest
import torch
import torch.nn.functional as F

from dmltune.evaluate import RECALL_KS, evaluate, nearest_neighbours

pytest.importorskip("pytorch_metric_learning")
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator  # noqa: E402

PML_KEYS = {"precision_at_1": "recall@1", "r_precision": "r_precision",
            "mean_average_precision_at_r": "map@r"}


def embeddings(n_classes, per_class, d=16, spread=1.0, seed=0, singletons=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    if singletons:
        labels = torch.cat([labels, torch.arange(n_classes, n_classes + singletons)])
    centres = torch.randn(int(labels.max()) + 1, d, generator=g)
    emb = centres[labels] + spread * torch.randn(len(labels), d, generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return F.normalize(emb[perm], dim=1), labels[perm]


def pml_accuracy(query, q_labels, gallery=None, g_labels=None):
    # pml's brute-force k-NN, so the oracle shares no code with dmltune's faiss or torch search
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.inference import CustomKNN

    calc = AccuracyCalculator(include=tuple(PML_KEYS), k="max_bin_count", knn_func=CustomKNN(CosineSimilarity()))
    if gallery is None:
        return calc.get_accuracy(query, q_labels)
    return calc.get_accuracy(query, q_labels, gallery, g_labels, ref_includes_query=False)


@pytest.mark.parametrize("backend", ["faiss", "torch"])
@pytest.mark.parametrize("spread, singletons, seed", [(0.3, 0, 0), (1.0, 5, 1), (3.0, 3, 2), (10.0, 0, 3)])
def test_ranking_metrics_agree_with_pml(backend, spread, singletons, seed):
    emb, labels = embeddings(12, 7, spread=spread, singletons=singletons, seed=seed)
    ours = evaluate(emb, labels, ks=(1, 2, 4), metrics=("recall", "map@r", "r_precision"), backend=backend)
    theirs = pml_accuracy(emb, labels)
    for pml_key, key in PML_KEYS.items():
        assert ours[key] == pytest.approx(theirs[pml_key], abs=1e-9), key


@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_query_gallery_protocol_agrees_with_pml(backend):
    emb, labels = embeddings(10, 9, spread=1.5, seed=4)
    query, q_labels = emb[::3], labels[::3]
    keep = torch.ones(len(labels), dtype=torch.bool)
    keep[::3] = False
    gallery, g_labels = emb[keep], labels[keep]
    # a query class absent from the gallery is a lone query
    q_labels = q_labels.clone()
    q_labels[0] = 999
    ours = evaluate(query, q_labels, gallery, g_labels, ks=(1,), metrics=("recall", "map@r", "r_precision"),
                    backend=backend)
    theirs = pml_accuracy(query, q_labels, gallery, g_labels)
    for pml_key, key in PML_KEYS.items():
        assert ours[key] == pytest.approx(theirs[pml_key], abs=1e-9), key


def test_gallery_mode_does_not_exclude_identical_items():
    emb, labels = embeddings(4, 3, seed=5)
    # the query set itself as an explicit gallery: each query finds itself first
    out = evaluate(emb, labels, emb, labels, ks=(1,), metrics=("recall", "r_precision"))
    assert out["recall@1"] == 1.0
    # R counts every gallery item of the class, the query's own copy included
    assert out["r_precision"] == pytest.approx(pml_accuracy(emb, labels, emb, labels)["r_precision"])


def test_hand_computed_case():
    # Points on the unit circle (angle = position), so neighbour order is the order of angular distance.
    angles = torch.tensor([0.0, 0.1, 1.0, 1.6, 1.95, 3.1])
    emb = torch.stack([angles.cos(), angles.sin()], dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 2])  # item 5 is a lone query, left out
    out = evaluate(emb, labels, ks=(1, 2))
    # query 2 (angle 1.0, R = 2): neighbours 3 (0.6, same class), 1 (0.9, other), 4 (0.95, same)
    #   → R-precision 1/2, AP@R = (1/1)/2; every other query ranks its R class-mates first.
    assert out["recall@1"] == pytest.approx(1.0)
    assert out["r_precision"] == pytest.approx((1 + 1 + 0.5 + 1 + 1) / 5)
    assert out["map@r"] == pytest.approx((1 + 1 + 0.5 + 1 + 1) / 5)
    # moving item 1 next to item 2 puts a wrong item first for query 2: AP@R = (1/2)/2
    angles[1] = 0.9
    emb = torch.stack([angles.cos(), angles.sin()], dim=1)
    out = evaluate(emb, labels, ks=(1,))
    # query 2: neighbours 1 (0.1, other), 3 (0.6, same) → RP 1/2, AP (1/2)/2; query 0: 1 (0.9) same → 1;
    # query 1: 2 (0.1, other) → RP 0, AP 0, and its recall@1 misses
    assert out["r_precision"] == pytest.approx((1 + 0 + 0.5 + 1 + 1) / 5)
    assert out["map@r"] == pytest.approx((1 + 0 + 0.25 + 1 + 1) / 5)
    assert out["recall@1"] == pytest.approx(3 / 5)


def test_lone_queries_only_give_nan():
    emb = F.normalize(torch.randn(5, 4), dim=1)
    out = evaluate(emb, torch.arange(5), ks=(1,), metrics=("recall", "map@r", "r_precision"))
    assert all(math.isnan(v) for v in out.values())


def test_ties_from_duplicate_embeddings_are_handled():
    emb, labels = embeddings(5, 4, seed=6)
    emb = torch.cat([emb, emb[:4]])  # exact duplicates: ties in every ranking
    labels = torch.cat([labels, labels[:4]])
    for backend in ("faiss", "torch"):
        ours = evaluate(emb, labels, ks=(1,), metrics=("recall", "r_precision"), backend=backend)
        theirs = pml_accuracy(emb, labels)
        # with ties the order among equal similarities is arbitrary; R-precision counts a set, and
        # every tied pair here is same-class (duplicates), so both are well defined
        assert ours["recall@1"] == pytest.approx(theirs["precision_at_1"])
        assert ours["r_precision"] == pytest.approx(theirs["r_precision"])


def test_self_is_excluded_even_behind_exact_duplicates():
    base = F.normalize(torch.randn(1, 8), dim=1)
    emb = base.repeat(4, 1)  # four identical items
    idx = nearest_neighbours(emb, emb, 3, exclude_self=True, backend="faiss")
    for i in range(4):
        assert i not in idx[i].tolist() and len(set(idx[i].tolist())) == 3


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_chunked_torch_search_equals_faiss(chunk):
    emb, _ = embeddings(20, 5, spread=2.0, seed=7)
    a = nearest_neighbours(emb, emb, 10, exclude_self=True, backend="torch", chunk=chunk)
    b = nearest_neighbours(emb, emb, 10, exclude_self=True, backend="faiss")
    assert torch.equal(a, b)


def test_nmi_is_one_for_separated_clusters_and_agrees_with_pml():
    emb, labels = embeddings(6, 20, spread=0.01, seed=8)
    assert evaluate(emb, labels, metrics=("nmi",))["nmi"] == pytest.approx(1.0)
    calc = AccuracyCalculator(include=("NMI",), k="max_bin_count")
    assert calc.get_accuracy(emb, labels)["NMI"] == pytest.approx(1.0)
    noisy, noisy_labels = embeddings(6, 20, spread=2.0, seed=8)
    ours = evaluate(noisy, noisy_labels, metrics=("nmi",), nmi_seed=0)["nmi"]
    theirs = calc.get_accuracy(noisy, noisy_labels)["NMI"]
    assert 0 < ours < 1 and abs(ours - theirs) < 0.1  # different k-means seeds: close, not equal


def test_large_k_is_clipped_to_the_gallery_and_numpy_input_works():
    emb, labels = embeddings(3, 4, seed=9)
    out = evaluate(emb.numpy(), labels.numpy(), ks=(1, 1000), metrics=("recall",))
    assert out["recall@1000"] == 1.0


def test_bad_arguments():
    emb, labels = embeddings(3, 4)
    with pytest.raises(ValueError, match="unknown metric"):
        evaluate(emb, labels, metrics=("mapr",))
    with pytest.raises(ValueError, match="K ≥ 1"):
        evaluate(emb, labels, ks=(0,))
    with pytest.raises(ValueError, match="differ in length"):
        evaluate(emb, labels[:-1])


def test_protocol_recall_lists():
    assert RECALL_KS["sop"] == (1, 10, 100, 1000)
    assert RECALL_KS["inshop"] == (1, 10, 20, 30, 40, 50)
    assert RECALL_KS["cub200"] == RECALL_KS["cars196"] == (1, 2, 4, 8, 16, 32)


def _histogram_oracle(emb, labels, bins, anchors):
    """Per-anchor loop: every (anchor, other) pair's similarity into its bin."""
    pos, neg = [0.0] * bins, [0.0] * bins
    for i in anchors:
        for j in range(len(labels)):
            if i == j:
                continue
            s = float(emb[i] @ emb[j])
            b = min(int((s + 1) / 2 * bins), bins - 1)
            (pos if labels[i] == labels[j] else neg)[b] += 1
    total_p, total_n = sum(pos) or 1, sum(neg) or 1
    return [p / total_p for p in pos], [n / total_n for n in neg]


@pytest.mark.parametrize("n, max_anchors", [(60, 2000), (60, 17)])
def test_similarity_histograms_match_a_pair_loop(n, max_anchors):
    from dmltune.evaluate import similarity_histograms

    g = torch.Generator().manual_seed(n)
    emb = F.normalize(torch.randn(n, 6, generator=g, dtype=torch.float64), dim=1).float()
    labels = torch.randint(0, 5, (n,), generator=g)
    pos, neg = similarity_histograms(emb, labels, bins=10, max_anchors=max_anchors, chunk=7)
    anchors = torch.linspace(0, n - 1, min(n, max_anchors)).round().long().unique().tolist()
    want_pos, want_neg = _histogram_oracle(emb, labels.tolist(), 10, anchors)
    torch.testing.assert_close(pos, torch.tensor(want_pos, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(neg, torch.tensor(want_neg, dtype=torch.float64), atol=1e-12, rtol=0)


def test_similarity_histograms_without_positive_pairs_are_zero():
    from dmltune.evaluate import similarity_histograms

    emb = F.normalize(torch.randn(5, 3), dim=1)
    pos, neg = similarity_histograms(emb, torch.arange(5), bins=4)
    assert pos.sum() == 0 and neg.sum() == pytest.approx(1.0)
