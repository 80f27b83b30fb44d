"""Adaptive parts of a training step: the interface, its do-nothing version, and their registry.

An adaptive method changes what one training step does beyond "forward, mine, loss, update":
meta-λ (``meta.py``) sets the loss threshold from a look-ahead, MIRAGE (``generation.py``) adds
generated examples to the batch and trains its generator and discriminator. Each is a
:class:`TrainingPart`; every hook of the base class does nothing, so :class:`~.trial.Trial` calls
every registered part at every hook and has no ``if`` for any of them.

A third method is one new file plus one registry line::

    @ADAPTIVE.register("my_method")
    def build_my_method(settings, trial):          # TrialSettings, the Trial being built
        return MyMethod(...) if <settings ask for it> else TrainingPart()

and an import of that file in ``dmltune/training/__init__.py``. The factory decides from the
settings whether the method is on and returns the do-nothing part otherwise. A part's checkpoint
state is stored under its registered name.

The hooks, in the order a step calls them:

``start_epoch(epoch)``
    once before an epoch's first step;
``extend_batch(batch)``
    after the forward pass: add examples (embeddings and labels) the miner and loss also see;
``loss_arguments(batch, progress, iteration)``
    after mining: keyword arguments of the loss (meta-λ returns ``{"lam": λ}``);
``before_backward()`` / ``after_update(batch)``
    around the model's backward pass and optimizer step;
``epoch_report()`` / ``evaluation_report()``
    the columns the part adds to an epoch's report, after training and after validation.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from ..registry import Registry

ADAPTIVE = Registry("adaptive method")


@dataclass
class Batch:
    """One training batch as the step sees it.

    ``x``, ``y``, ``features`` and ``embeddings`` are the real examples. ``all_embeddings`` and
    ``all_labels`` are what the miner and loss see: the real examples followed by any that parts
    added. ``sim`` (B×B over all of them) and ``mined`` are filled in after mining.
    """

    x: Tensor
    y: Tensor
    features: Tensor
    embeddings: Tensor
    all_embeddings: Tensor
    all_labels: Tensor
    sim: Tensor | None = None
    mined: Any = None
    extra: dict = field(default_factory=dict)

    @property
    def real(self) -> int:
        return len(self.y)

    @property
    def has_extra_examples(self) -> bool:
        return len(self.all_labels) > self.real


class TrainingPart:
    """The do-nothing part: every hook returns at once, and it has no state."""

    def start_epoch(self, epoch: int) -> None:
        pass

    def extend_batch(self, batch: Batch) -> None:
        pass

    def loss_arguments(self, batch: Batch, progress: float, iteration: int) -> dict[str, Any]:
        return {}

    def before_backward(self) -> None:
        pass

    def after_update(self, batch: Batch) -> None:
        pass

    def epoch_report(self) -> dict[str, Any]:
        return {}

    def evaluation_report(self) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def build_parts(settings, trial) -> dict[str, TrainingPart]:
    """Every registered adaptive part for this trial (do-nothing ones where the settings ask for none)."""
    return {name: ADAPTIVE.build(name, trial=trial, settings=settings) for name in ADAPTIVE}
