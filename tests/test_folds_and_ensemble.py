"""Groundwork of issue #18: class-disjoint folds, and the concatenated-embedding ensemble."""

from __future__ import annotations

import pytest
import torch

from dmltune.data.folds import class_folds, fold_split
from dmltune.evaluate import concatenated_embeddings, evaluate
from dmltune.registry import ConfigError


@pytest.mark.parametrize("n_classes, folds", [(8, 4), (10, 4), (100, 4), (5, 2), (9, 3)])
def test_folds_are_class_disjoint_cover_the_training_classes_and_are_nearly_equal(n_classes, folds):
    classes = [3 * c + 1 for c in range(n_classes)]  # ids need not be 0..n-1
    groups = class_folds(classes, folds, seed=7)
    assert len(groups) == folds and sorted(c for g in groups for c in g) == sorted(classes)
    assert all(not set(a) & set(b) for i, a in enumerate(groups) for b in groups[i + 1:])
    assert max(map(len, groups)) - min(map(len, groups)) <= 1 and min(map(len, groups)) >= 2
    for fold in range(folds):
        fit, val = fold_split(classes, folds, fold, seed=7)
        assert val == groups[fold] and not set(fit) & set(val) and sorted(fit + val) == sorted(classes)


def test_fold_assignment_is_deterministic_and_depends_on_the_seed_only():
    classes = list(range(20))
    assert class_folds(classes, 4, 0) == class_folds(list(reversed(classes)), 4, 0)
    assert class_folds(classes, 4, 0) != class_folds(classes, 4, 1)


@pytest.mark.parametrize("folds, fold, match", [(1, 0, "≥ 2"), (True, 0, "≥ 2"), (5, 0, "at least 10"),
                                                (4, 4, "0 … 3"), (4, -1, "0 … 3")])
def test_bad_folds_are_one_line_errors(folds, fold, match):
    with pytest.raises(ConfigError, match=match):
        fold_split(list(range(8)), folds, fold)


def test_ensemble_of_concatenated_embeddings_matches_a_hand_computed_case():
    # two models, four items of two classes; model a alone ranks item 1 nearer to item 0 than item 2 is
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.8, 0.6], [0.0, -1.0]])
    b = torch.tensor([[2.0, 0.0], [2.0, 0.2], [0.0, 3.0], [-1.0, 0.0]])  # not unit length: normalised per model
    labels = torch.tensor([0, 0, 1, 1])
    ens = concatenated_embeddings([a, b])
    unit_b = b / b.norm(dim=1, keepdim=True)
    by_hand = torch.cat([a, unit_b], dim=1) / 2 ** 0.5
    torch.testing.assert_close(ens, by_hand)
    sim = ens @ ens.T  # the mean of the two models' cosine similarities
    torch.testing.assert_close(sim, (a @ a.T + unit_b @ unit_b.T) / 2)
    # by hand, the mean cosines: s01 = (0 + 0.995)/2 = 0.4975, s02 = (0.8 + 0)/2 = 0.4,
    # s12 = (0.6 + 0.0995)/2 = 0.3498, s03 = (0 − 1)/2 = −0.5, s13 = (−1 − 0.995)/2 = −0.9975, s23 = (−0.6 + 0)/2 = −0.3;
    # nearest other item: 0→1, 1→0, 2→0, 3→2; right class for 0, 1 and 3: Recall@1 = 3/4
    assert sim[0, 1] == pytest.approx(0.4975, abs=1e-4) and sim[2, 3] == pytest.approx(-0.3, abs=1e-4)
    assert (sim - 3 * torch.eye(4)).argmax(dim=1).tolist() == [1, 0, 0, 2]
    assert evaluate(ens, labels, ks=[1], metrics=["recall"])["recall@1"] == pytest.approx(0.75)


def test_an_ensemble_needs_models_that_embedded_the_same_items():
    with pytest.raises(ValueError, match="same items"):
        concatenated_embeddings([torch.ones(3, 2), torch.ones(4, 2)])
    with pytest.raises(ValueError, match="at least one"):
        concatenated_embeddings([])
