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


# --- NMI's k-means (issue #14 item 6): the papers' scikit-learn KMeans(n_init=10) by default ---

OLD_NMI = {"nmi_backend": "faiss", "nmi_init": "random", "nmi_restarts": 1, "nmi_iterations": 20}


def blob_embeddings(n_classes, per_class, d, spread, seed):
    """Classes around random unit-vector centres, noise of total norm ≈ spread, L2-normalised;
    ``per_class`` = (min, max) class size."""
    g = torch.Generator().manual_seed(seed)
    sizes = torch.randint(per_class[0], per_class[1] + 1, (n_classes,), generator=g)
    labels = torch.arange(n_classes).repeat_interleave(sizes)
    centres = F.normalize(torch.randn(n_classes, d, generator=g), dim=1)
    emb = centres[labels] + spread / d ** 0.5 * torch.randn(len(labels), d, generator=g)
    return F.normalize(emb, dim=1), labels


def sklearn_kmeans_nmi(emb, labels, n_init=10, random_state=0):
    from sklearn.cluster import KMeans
    from sklearn.metrics import normalized_mutual_info_score

    kmeans = KMeans(n_clusters=len(labels.unique()), n_init=n_init, random_state=random_state)
    return normalized_mutual_info_score(labels.numpy(), kmeans.fit(emb.numpy()).labels_)


@pytest.mark.parametrize("spread, seed", [(0.8, 0), (1.1, 1)])
def test_default_nmi_agrees_with_sklearn_kmeans_n_init_10(spread, seed):
    """100 classes of 10–20: the default NMI is within 0.005 of scikit-learn's KMeans(n_init=10),
    on data where the old clustering (faiss, one random start, 20 iterations) is well below it."""
    emb, labels = blob_embeddings(100, (10, 20), 32, spread, seed)
    reference = sklearn_kmeans_nmi(emb, labels)
    assert 0.8 < reference < 0.99
    ours = evaluate(emb, labels, metrics=("nmi",))["nmi"]
    assert abs(ours - reference) <= 0.005
    old = evaluate(emb, labels, metrics=("nmi",), **OLD_NMI)["nmi"]
    assert reference - old > 0.01


def test_faiss_kmeanspp_restarts_agree_with_sklearn_where_random_starts_fall_short():
    """Above SKLEARN_MAX_WORK the default runs faiss from k-means++ seeds (best of 10); on
    well-separated 100-class data it is within 0.005 of sklearn, while 10 faiss restarts of up to
    300 iterations from random starts stay more than 0.01 below."""
    for seed in range(3):
        emb, labels = blob_embeddings(100, (10, 10), 32, 0.6, seed)
        reference = sklearn_kmeans_nmi(emb, labels)
        assert reference > 0.99
        ours = evaluate(emb, labels, metrics=("nmi",), nmi_backend="faiss")["nmi"]
        assert abs(ours - reference) <= 0.005, seed
        random_starts = evaluate(emb, labels, metrics=("nmi",), nmi_backend="faiss", nmi_init="random")["nmi"]
        assert reference - random_starts > 0.01, seed


def test_old_nmi_settings_reproduce_the_old_clustering():
    """faiss, random init, 1 restart, 20 iterations is the clustering before the change, bit for bit."""
    import faiss
    from sklearn.metrics import normalized_mutual_info_score

    emb, labels = blob_embeddings(30, (5, 15), 16, 1.0, 3)
    kmeans = faiss.Kmeans(16, 30, niter=20, seed=0, verbose=False, min_points_per_centroid=1,
                          max_points_per_centroid=1 << 30)
    kmeans.train(emb.numpy())
    old = normalized_mutual_info_score(labels.numpy(), kmeans.index.search(emb.numpy(), 1)[1][:, 0])
    assert evaluate(emb, labels, metrics=("nmi",), **OLD_NMI)["nmi"] == old
    assert evaluate(emb, labels, metrics=("nmi",))["nmi"] != old


def test_nmi_settings_reach_the_clustering_and_a_seed_fixes_it():
    emb, labels = blob_embeddings(30, (8, 8), 16, 1.3, 2)

    def nmi(**settings):
        return evaluate(emb, labels, metrics=("nmi",), **settings)["nmi"]

    default = nmi()
    assert nmi() == default  # deterministic
    assert nmi(nmi_backend="sklearn") == default  # "auto" is sklearn at this size
    for changed in ({"nmi_backend": "faiss"}, {"nmi_restarts": 1}, {"nmi_seed": 1}, {"nmi_init": "random"}):
        assert nmi(**changed) != default, changed
    assert nmi(nmi_iterations=1, nmi_restarts=1) != nmi(nmi_restarts=1)
    faiss_one = {"nmi_backend": "faiss", "nmi_restarts": 1}
    assert nmi(nmi_iterations=1, **faiss_one) != nmi(**faiss_one)
    assert nmi(nmi_seed=4, **faiss_one) == nmi(nmi_seed=4, **faiss_one)


def test_auto_switches_to_faiss_above_the_work_limit(monkeypatch):
    import dmltune.evaluate as ev

    assert ev.nmi_backend_for(5924, 100) == "sklearn"  # CUB's test set
    assert ev.nmi_backend_for(8131, 98) == "sklearn"  # Cars
    assert ev.nmi_backend_for(60502, 11316) == "faiss"  # SOP
    assert ev.nmi_backend_for(60502, 11316, "sklearn") == "sklearn"
    emb, labels = blob_embeddings(20, (5, 5), 8, 0.5, 0)
    import dmltune.nmi as nmi

    monkeypatch.setattr(nmi, "SKLEARN_MAX_WORK", 100 * 20 - 1)
    assert evaluate(emb, labels, metrics=("nmi",))["nmi"] == evaluate(emb, labels, metrics=("nmi",), nmi_backend="faiss")["nmi"]
    monkeypatch.setattr(nmi, "SKLEARN_MAX_WORK", 100 * 20)
    assert evaluate(emb, labels, metrics=("nmi",))["nmi"] == evaluate(emb, labels, metrics=("nmi",), nmi_backend="sklearn")["nmi"]


def test_kmeans_plusplus_seeds_one_point_per_separated_class():
    from dmltune.evaluate import kmeans_plusplus

    emb, labels = blob_embeddings(40, (3, 30), 16, 0.05, 2)
    seeds = kmeans_plusplus(emb, 40, torch.Generator().manual_seed(0))
    rows = torch.cdist(seeds, emb).argmin(dim=1)
    assert torch.equal(seeds, emb[rows])  # seeds are data points
    assert sorted(labels[rows].tolist()) == list(range(40))  # one in each class (random picks would miss ~1/3)
    again = kmeans_plusplus(emb, 40, torch.Generator().manual_seed(0))
    assert torch.equal(seeds, again)


def test_nmi_of_non_finite_embeddings_is_nan():
    emb, labels = blob_embeddings(5, (4, 4), 8, 0.5, 0)
    emb[3, 2] = float("nan")
    for backend in ("sklearn", "faiss"):
        assert math.isnan(evaluate(emb, labels, metrics=("nmi",), nmi_backend=backend)["nmi"])


def test_bad_nmi_arguments():
    emb, labels = blob_embeddings(5, (4, 4), 8, 0.5, 0)
    with pytest.raises(ValueError, match="unknown NMI backend 'gpu'"):
        evaluate(emb, labels, metrics=("nmi",), nmi_backend="gpu")
    with pytest.raises(ValueError, match="unknown NMI init 'kmeans'"):
        evaluate(emb, labels, metrics=("nmi",), nmi_init="kmeans")
    with pytest.raises(ValueError, match="restarts ≥ 1 and iterations ≥ 1"):
        evaluate(emb, labels, metrics=("nmi",), nmi_restarts=0)
    with pytest.raises(ValueError, match="restarts ≥ 1 and iterations ≥ 1"):
        evaluate(emb, labels, metrics=("nmi",), nmi_iterations=0)


def test_nmi_eval_parameters_validate_and_match_evaluate_defaults():
    from dmltune.config import EVAL
    from dmltune.evaluate import NMI_BACKENDS, NMI_DEFAULTS, NMI_INITS, nmi_options
    from dmltune.registry import ConfigError

    defaults = EVAL.validate({})
    assert {key: defaults[key] for key in NMI_DEFAULTS} == NMI_DEFAULTS == nmi_options(defaults)
    params = {p.name: p for p in EVAL.params}
    assert params["nmi_backend"].choices == NMI_BACKENDS and params["nmi_init"].choices == NMI_INITS
    custom = {"nmi_backend": "faiss", "nmi_init": "random", "nmi_restarts": 3, "nmi_iterations": 50, "nmi_seed": 7}
    assert nmi_options(EVAL.validate(custom)) == custom
    where = "study.yaml: eval"
    bad = [
        ({"nmi_restarts": 0}, r"study.yaml: eval: 'nmi_restarts' = 0 is outside its valid range \[1, 1000\]"),
        ({"nmi_iterations": 2.5}, "study.yaml: eval: 'nmi_iterations' must be an integer, got 2.5"),
        ({"nmi_seed": -1}, r"'nmi_seed' = -1 is outside its valid range"),
        ({"nmi_backend": "sklean"}, r"'nmi_backend' = 'sklean' is not valid; choose one of 'auto', 'sklearn', "
                                    r"'faiss' \(did you mean 'sklearn'\?\)"),
        ({"nmi_init": "kmeans++"}, r"'nmi_init' = 'kmeans\+\+' is not valid; .* \(did you mean 'k-means\+\+'\?\)"),
        ({"nmi_restart": 3}, r"has no parameter 'nmi_restart' \(did you mean 'nmi_restarts'\?\)"),
    ]
    for values, message in bad:
        with pytest.raises(ConfigError, match=message):
            EVAL.validate(values, where=where)


def test_trainable_passes_the_eval_nmi_settings_to_the_clustering(monkeypatch):
    import dmltune.evaluate as ev
    from dmltune.trainable import train

    calls = []
    real = ev.cluster_nmi

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "cluster_nmi", spy)
    nmi = {"nmi_backend": "faiss", "nmi_init": "random", "nmi_restarts": 2, "nmi_iterations": 7, "nmi_seed": 5}
    out = train({"seed": 0, "dataset": {"name": "digits", "val_fraction": 0.4},
                 "model": {"backbone": "small_cnn", "dim": 8}, "loss": {"name": "soft_contrastive"},
                 "train": {"epochs": 1, "batch_size": 12, "k": 4, "batches_per_epoch": 1},
                 "eval": {"nmi": True, "similarity_bins": 0, **nmi}})
    assert calls == [{"seed": 5, "restarts": 2, "iterations": 7, "init": "random", "backend": "faiss"}] * 2  # val, test
    assert 0 < out["val/nmi"] <= 1 and 0 < out["test/nmi"] <= 1
