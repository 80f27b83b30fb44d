"""Class-balanced batches: B/K classes × K images each, seeded per epoch.

Classes are visited in a shuffled order that is renewed whenever it runs out, so every class
appears about equally often; a class with fewer than K images is sampled with replacement.
The batches of epoch e depend only on (seed, e), so a run resumed at an epoch boundary sees
exactly the batches an uninterrupted run would.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from ..registry import ConfigError


class ClassBalancedSampler:
    def __init__(self, labels, batch_size: int, k: int, batches_per_epoch: int | None = None, seed: int = 0):
        labels = np.asarray(labels)
        if k < 1 or batch_size % k:
            raise ConfigError(f"batch size {batch_size} is not divisible by K = {k}; use a multiple of K")
        self.classes_per_batch = batch_size // k
        self.members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if len(self.members) < self.classes_per_batch:
            raise ConfigError(
                f"a batch needs {self.classes_per_batch} classes (batch size {batch_size} / K = {k}) but the "
                f"training set has {len(self.members)}; lower the batch size or raise K"
            )
        self.batch_size, self.k, self.seed = batch_size, k, seed
        self.batches_per_epoch = batches_per_epoch or max(len(labels) // batch_size, 1)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self) -> Iterator[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order: list[int] = []
        for _ in range(self.batches_per_epoch):
            chosen = []
            while len(chosen) < self.classes_per_batch:
                if not order:
                    order = list(rng.permutation(len(self.members)))
                c = order.pop()
                if c not in chosen:
                    chosen.append(c)
            batch = [rng.choice(self.members[c], self.k, replace=len(self.members[c]) < self.k) for c in chosen]
            yield np.concatenate(batch)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])


META_BATCH_MAX_CLASSES = 128
"""Classes per meta batch when ``meta_batch`` leaves ``classes`` out and the training set has more
(SOP, In-Shop): the meta batches then cycle through all training classes, 128 at a time."""


class MetaBatchSampler:
    """Meta batches of ``classes`` training classes × ``per_class`` images, reproducible per epoch
    (``classes=None``: every training class, at most ``max_classes``).

    Each epoch walks through random orders of all training classes, ``classes`` at a time; a batch
    that straddles two orders defers a class it already holds to the next batch instead of
    dropping it. So every pass through an order visits every class: with ``classes`` equal to the
    number of training classes every batch holds all of them, and with fewer (a capped meta batch)
    the first ⌈C/classes⌉ meta batches of an epoch cover all C classes, as does each later pass.
    """

    def __init__(self, labels, classes: int | None, per_class: int, batches_per_epoch: int, seed: int = 0,
                 max_classes: int = META_BATCH_MAX_CLASSES):
        labels = np.asarray(labels)
        self.members = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if classes is None:  # every training class, at most max_classes per batch
            classes = min(len(self.members), max_classes)
        if classes > len(self.members):
            raise ConfigError(f"loss.lam.meta.meta_batch asks for {classes} classes but the training set has "
                              f"{len(self.members)}; lower meta_batch.classes or leave it out (= all classes)")
        self.classes, self.per_class, self.seed = classes, per_class, seed
        self.batches_per_epoch = batches_per_epoch
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches_per_epoch

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        queue: list[int] = []  # the current order, next class last
        for _ in range(self.batches_per_epoch):
            chosen: list[int] = []
            taken: set[int] = set()
            deferred: list[int] = []
            while len(chosen) < self.classes:
                if not queue:
                    queue = list(rng.permutation(len(self.members)))[::-1]
                c = int(queue.pop())
                if c in taken:
                    deferred.append(c)
                else:
                    chosen.append(c)
                    taken.add(c)
            queue.extend(reversed(deferred))
            yield np.concatenate([rng.choice(self.members[c], self.per_class,
                                             replace=len(self.members[c]) < self.per_class) for c in chosen])

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.seed = int(state["epoch"]), int(state["seed"])
