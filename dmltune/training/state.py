"""Seeding, random-number-generator state, and the checkpoint a trial resumes from.

A checkpoint holds exactly what resume needs: model, optimizer and scheduler state, the sampler's
position, every RNG state, λ of the meta generator, the running history of metrics and the epoch.
It is written with ``torch.save`` and read back with ``torch.load(weights_only=True)``, so it
contains only tensors and plain Python containers.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FILE = "trial_state.pt"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read; the message names the file."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": torch.from_numpy(np.random.get_state()[1].copy()),
        "numpy_pos": int(np.random.get_state()[2]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np_state = list(np.random.get_state())
    np_state[1] = state["numpy"].numpy().astype(np.uint32)
    np_state[2] = state["numpy_pos"]
    np.random.set_state(tuple(np_state))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)
    return path


def load_checkpoint(directory: Path, map_location="cpu") -> dict[str, Any]:
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; delete the trial's checkpoint folder to restart it")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or corrupt file
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}); delete it to restart the trial from scratch"
        ) from None
