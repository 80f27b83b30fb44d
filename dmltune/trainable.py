"""The trainable's public names, kept importable here: users and saved Ray experiments refer to
``dmltune.trainable.train`` and ``dmltune.trainable.tune_trainable``. The code is in
:mod:`dmltune.training`."""

from .training import Trial, build_optimizer, train, tune_trainable  # noqa: F401

__all__ = ["Trial", "build_optimizer", "train", "tune_trainable"]
