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
