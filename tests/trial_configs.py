"""The tiny trainable config the training tests share (digits, small_cnn, a few batches), and a
helper that changes it: ``tiny_config(seed=0, train__epochs=2, miner={"name": "ms"})``."""

from __future__ import annotations

import copy

TINY = {
    "seed": 3,
    "dataset": {"name": "digits", "val_fraction": 0.4},
    "model": {"backbone": "small_cnn", "dim": 16, "freeze_bn": False},
    "miner": {"name": "asms"},
    "loss": {"name": "soft_contrastive"},
    "train": {"epochs": 4, "batch_size": 24, "k": 8, "lr": 1e-3, "batches_per_epoch": 6},
    "eval": {"metric": "map@r", "nmi": False},
}


def tiny_config(**changes) -> dict:
    """A deep copy of TINY; ``section__key=value`` sets one value, ``section=value`` a whole section."""
    cfg = copy.deepcopy(TINY)
    for dotted, value in changes.items():
        node = cfg
        *path, last = dotted.split("__")
        for key in path:
            node = node.setdefault(key, {})
        node[last] = copy.deepcopy(value)
    return cfg
