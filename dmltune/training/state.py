"""Seeding, random-number-generator state, and the checkpoint a trial resumes from.

A checkpoint holds exactly what resume needs: model, optimizer and scheduler state, the sampler's
position, every RNG state, λ of the meta generator, the running history of metrics and the epoch,
and the resolved configuration it was made with (plain values): a resume under a configuration that
differs in more than ``RESUME_MAY_DIFFER`` is refused (``loop.check_same_config``).
It is written with ``torch.save`` and read back with ``torch.load(weights_only=True)``, so it
contains only tensors and plain Python containers.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from ..atomic import replacing

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


SCRATCH_PREFIX = "dmltune-ckpt-"
_SWEPT = False


@contextlib.contextmanager
def checkpoint_scratch() -> Iterator[Path]:
    """A temporary folder (named with this process's pid) to assemble a checkpoint in before the
    reporter hands it on. The first use in a process removes those of processes that are gone (a
    worker killed while it reported leaves its folder in the system's temporary directory)."""
    global _SWEPT
    if not _SWEPT:
        _SWEPT = True
        remove_orphaned_scratch()
    with tempfile.TemporaryDirectory(prefix=f"{SCRATCH_PREFIX}{os.getpid()}-") as tmp:
        yield Path(tmp)


def remove_orphaned_scratch() -> None:
    for path in Path(tempfile.gettempdir()).glob(f"{SCRATCH_PREFIX}*-*"):
        pid = path.name[len(SCRATCH_PREFIX):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def save_checkpoint(directory: Path, state: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CHECKPOINT_FILE
    with replacing(path) as partial:
        torch.save(state, partial)
    return path


TEST_EMBEDDINGS_FILE = "test_embeddings.pt"
"""Beside the final checkpoint of a k-fold trial: its model's test embeddings (float16) and labels, per
set (``test``, or ``query`` and ``gallery``), for the fold models' concatenated-embedding ensemble."""


def save_test_embeddings(directory: Path, sets: Mapping[str, tuple]) -> Path:
    """Write ``{set: {"embeddings": N×d float16, "labels": N int64}}`` next to a checkpoint."""
    path = Path(directory) / TEST_EMBEDDINGS_FILE
    kept = {name: {"embeddings": emb.to(torch.float16).contiguous(), "labels": labels.to(torch.int64)}
            for name, (emb, labels) in sets.items()}
    with replacing(path) as partial:
        torch.save(kept, partial)
    return path


def load_test_embeddings(path: Path) -> dict[str, tuple]:
    """``{set: (embeddings float32, labels)}`` written by :func:`save_test_embeddings`."""
    path = Path(path)
    stored = torch.load(path, map_location="cpu", weights_only=True)
    return {name: (v["embeddings"].float(), v["labels"]) for name, v in stored.items()}


def load_checkpoint(directory: Path, map_location="cpu") -> dict[str, Any]:
    path = Path(directory) / CHECKPOINT_FILE
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is missing; to run the trial again from scratch, "
                              "`dmltune resume STUDY_DIR --retry-errored` (standalone: delete the checkpoint folder)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # truncated or corrupt file
        raise CheckpointError(
            f"checkpoint {path} cannot be read ({type(err).__name__}); to run the trial again from scratch, "
            "`dmltune resume STUDY_DIR --retry-errored` (standalone: delete the checkpoint folder)"
        ) from None


# Settings a resumed run may change: they say where and how long it runs, how often it is evaluated and
# checkpointed, and where the data lies, not what is trained. Anything else differing from the
# configuration a checkpoint was made with (miner, loss, model, data split, optimizer, batches, seed,
# amp, ...) refuses the resume: the old state would silently go on training under new settings.
RESUME_MAY_DIFFER = (
    "train.epochs", "train.checkpoint_every", "train.device", "train.workers", "train.cache", "train.cache_gb",
    "train.compile",
    "eval", "dataset.root", "dataset.download",
)


def plain_config(value: Any) -> Any:
    """``value`` as plain containers (dicts with str keys, lists) of str, int, float, bool and None, as
    ``torch.load(weights_only=True)`` reads back; tuples become lists, scalars (numpy, 0-dim tensors)
    Python numbers, anything else its repr."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Mapping):
        return {str(k): plain_config(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_config(v) for v in value]
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return plain_config(value.item())
    if isinstance(value, np.ndarray):
        return plain_config(value.tolist())
    return repr(value)


def _may_differ(key: str) -> bool:
    return any(key == allowed or key.startswith(allowed + ".") for allowed in RESUME_MAY_DIFFER)


def config_changes(old: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """``(dotted key, old value, new value)`` of every setting that differs between two plain configs,
    except those a resume may change (``RESUME_MAY_DIFFER``); a missing key reads as ``<absent>``. When
    a component's ``name`` differs, only the name is listed (its parameters differ with it)."""
    if prefix and _may_differ(prefix):
        return []
    if isinstance(old, dict) and isinstance(new, dict):
        if "name" in old and "name" in new and old["name"] != new["name"]:  # another component: its
            return [(f"{prefix}.name" if prefix else "name", old["name"], new["name"])]  # parameters follow
        changes = []
        for key in list(old) + [k for k in new if k not in old]:
            changes += config_changes(old.get(key, "<absent>"), new.get(key, "<absent>"),
                                      f"{prefix}.{key}" if prefix else str(key))
        return changes
    same = old == new or (isinstance(old, float) and isinstance(new, float) and math.isnan(old) and math.isnan(new))
    return [] if same else [(prefix or "config", old, new)]


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def describe_changes(changes: list[tuple[str, Any, Any]], most: int = 3) -> str:
    """``miner.name: asms → ms, train.lr: 0.001 → 0.01 (and 2 more)``."""
    text = ", ".join(f"{key}: {_short(old)} → {_short(new)}" for key, old, new in changes[:most])
    return text + (f" (and {len(changes) - most} more)" if len(changes) > most else "")
