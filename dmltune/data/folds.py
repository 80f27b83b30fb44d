"""Class-disjoint k-fold cross-validation over the training classes (the "Metric Learning Reality
Check" protocol, issue #18): the training classes are dealt into ``folds`` groups of nearly equal
size; fold ``i`` validates on group ``i`` and trains on the others, so every training class is a
validation class exactly once and no class is on both sides of a fold.

The assignment depends only on the sorted class ids and ``seed`` (a seeded permutation, dealt round
robin), so it is the same on every machine and can be recorded with the study.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..registry import ConfigError

MIN_CLASSES = 2  # retrieval needs at least two classes on each side of a fold


def class_folds(train_classes: Sequence, folds: int, seed: int = 0) -> list[list]:
    """The training classes dealt into ``folds`` class-disjoint groups (each sorted), covering them all."""
    classes = sorted(set(train_classes))
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ConfigError(f"protocol.folds must be an integer ≥ 2, got {folds!r}")
    if len(classes) < folds * MIN_CLASSES:
        raise ConfigError(f"protocol.folds = {folds} needs at least {folds * MIN_CLASSES} training classes "
                          f"({MIN_CLASSES} per fold), but the dataset has {len(classes)}; use fewer folds")
    order = np.random.default_rng(seed).permutation(len(classes))
    groups = [sorted(classes[j] for j in order[i::folds]) for i in range(folds)]
    return groups


def fold_split(train_classes: Sequence, folds: int, fold: int, seed: int = 0) -> tuple[list, list]:
    """(training classes, validation classes) of fold ``fold`` (0-based) of :func:`class_folds`."""
    groups = class_folds(train_classes, folds, seed)
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
        raise ConfigError(f"fold must be an integer in 0 … {folds - 1}, got {fold!r}")
    val = groups[fold]
    fit = sorted(c for i, group in enumerate(groups) if i != fold for c in group)
    return fit, val


def kfold_splits(splits, folds: int, fold: int, seed: int = 0):
    """``splits`` with its training and validation sets replaced by fold ``fold`` of the k-fold
    protocol over all its training classes (the dataset's own validation classes are training
    classes here: ``val_fraction`` plays no part). The test set (or query and gallery) is unchanged."""
    from dataclasses import replace

    from .splits import make_set

    parts = [s for s in (splits.train, splits.val) if s is not None and len(s)]
    original = np.concatenate([np.asarray(s.classes, dtype=object)[s.labels] for s in parts])
    in_memory = parts[0].in_memory
    images = np.concatenate([s.images for s in parts]) if in_memory else None
    paths = None if in_memory else [p for s in parts for p in s.paths]
    fit, val = fold_split(list(original), folds, fold, seed)
    train_set, val_set = make_set(original, fit, paths, images), make_set(original, val, paths, images)
    train_set.max_pixels = val_set.max_pixels = parts[0].max_pixels
    return replace(splits, train=train_set, val=val_set)


def fold_assignment(splits, folds: int, seed: int = 0) -> list[list]:
    """The classes of each fold (original class ids), as recorded with a k-fold study."""
    parts = [s for s in (splits.train, splits.val) if s is not None and len(s)]
    return class_folds([c for s in parts for c in s.classes], folds, seed)
