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


class Interrupt(Exception):
    pass


def stop_after(root, epoch: int):
    """A console reporter (checkpoints in ``root``) that stops the run after ``epoch``'s report, like a
    killed process."""
    from dmltune.training.reporting import ConsoleReporter

    class StopAfter(ConsoleReporter):
        def report(self, metrics, checkpoint_dir=None):
            super().report(metrics, checkpoint_dir)
            if metrics["epoch"] == epoch:
                raise Interrupt

    return StopAfter(root)


def full_and_resumed(cfg: dict, root, stop_after_epoch: int):
    """Reports of an uninterrupted run and of a run stopped after ``stop_after_epoch`` and resumed
    from its checkpoint (the resumed part only): two lists of report dicts."""
    import pytest

    from dmltune.training import train
    from dmltune.training.reporting import ConsoleReporter

    full = ConsoleReporter(root / "full")
    train(cfg, reporter=full)
    with pytest.raises(Interrupt):
        train(cfg, reporter=stop_after(root / "cut", stop_after_epoch))
    resumed = ConsoleReporter(root / "cut")
    train(cfg, reporter=resumed)
    return full.history, resumed.history
