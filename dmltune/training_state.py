"""Moved to :mod:`dmltune.training.state`; this name stays importable."""

from .training.state import (  # noqa: F401
    CHECKPOINT_FILE, CheckpointError, load_checkpoint, rng_state, save_checkpoint, seed_everything, set_rng_state,
)
