"""A last good copy of each Tune experiment's own record, and recovery from it.

Tune writes its record of an experiment (``experiment_state-*.json``: every trial, its configuration,
status and checkpoint; the searcher's state beside it) in its staging folder and then copies it into
the study folder without a rename. A disk that fills up during that copy leaves a cut-off record in
the study folder, and ``Tuner.restore`` then starts from nothing: a trial without configuration, the
planned trials forgotten. So after every save Tune makes, the callback below copies the complete
pair from the staging folder into ``EXPERIMENT/.dmltune_state`` (a new copy replaces the old one
only once it is whole, so a failed copy leaves the previous one). Before a restore,
:func:`recover_record` checks the experiment's record and, where it does not load, moves it into
``EXPERIMENT/damaged-state-TIME/`` and puts the last good copy in its place; trials that finished
after that copy are then settled from their stored results, and trials it does not know yet are
generated again by the searcher. With no good copy at all, the experiment folder is moved aside
whole (``NAME.damaged-TIME``, nothing deleted) and the experiment starts over.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import time
from pathlib import Path

GOOD_COPY = ".dmltune_state"
EXPERIMENT_STATE = "experiment_state-*.json"  # TuneController.CKPT_FILE_TMPL
SEARCHER_STATE = "basic-variant-state-*.json"  # BasicVariantGenerator.CKPT_FILE_TMPL (grid and random arms)
RECORD_PATTERNS = (EXPERIMENT_STATE, SEARCHER_STATE, "search_gen_state-*.json", "searcher-state-*.pkl")
"""Tune's record of an experiment: the trials (TuneController, JSON), then the search algorithm's
state (grid/random, or the generator around an Optuna searcher, and that searcher): pickles."""


def _loads(name: str, data: bytes) -> bool:
    """Whether one record file's bytes are whole: False for a file cut off mid-write (or empty). A
    pickle that is whole but refers to code this environment lacks (after an upgrade) counts as whole:
    Tune then stops on it with its own error, and nothing is set aside."""
    from ray import cloudpickle

    try:
        if name.startswith(EXPERIMENT_STATE.split("*")[0]):
            return isinstance(json.loads(data), dict)
        cloudpickle.loads(data)
    except (ValueError, EOFError, pickle.UnpicklingError, IndexError):  # ValueError: JSON, and bad pickle opcodes
        return False
    except Exception:
        return True
    return True


def newest_record(folder: Path) -> dict[str, Path]:
    """The newest file of each record kind in ``folder`` (Tune restores from the newest by name)."""
    out = {}
    for pattern in RECORD_PATTERNS:
        found = sorted(Path(folder).glob(pattern))
        if found:
            out[pattern] = found[-1]
    return out


def save_good_copy(source: Path, folder: Path) -> bool:
    """Copy the newest record in ``source`` into ``folder/.dmltune_state`` when every file of it loads;
    the old copy is replaced only by a whole new one. False when nothing was copied."""
    record = newest_record(source)
    if EXPERIMENT_STATE not in record:
        return False
    try:
        files = {path.name: path.read_bytes() for path in record.values()}
    except OSError:
        return False
    if not all(_loads(name, data) for name, data in files.items()):
        return False
    target = Path(folder) / GOOD_COPY
    partial, old = target.with_name(GOOD_COPY + ".partial"), target.with_name(GOOD_COPY + ".old")
    try:
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        for name, data in files.items():
            (partial / name).write_bytes(data)
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        partial.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except OSError:  # a full disk: the previous copy stays (as .old where the swap was cut)
        shutil.rmtree(partial, ignore_errors=True)
        return False
    return True


def good_copy(folder: Path) -> Path | None:
    """The experiment's last good copy of its record, if any."""
    for name in (GOOD_COPY, GOOD_COPY + ".old"):
        path = Path(folder) / name
        if path.is_dir() and any(path.glob(EXPERIMENT_STATE)):
            return path
    return None


def record_damage(folder: Path) -> str | None:
    """What is wrong with the experiment's record in ``folder`` (None when it loads)."""
    record = newest_record(folder)
    if EXPERIMENT_STATE not in record:
        return "its experiment_state file is missing"
    for path in record.values():
        try:
            data = path.read_bytes()
        except OSError as err:
            return f"{path.name} cannot be read ({err.strerror})"
        if not _loads(path.name, data):
            return f"{path.name} is cut off or damaged"
    return None


def recover_record(folder: Path) -> str | None:
    """Put back the last good copy of a damaged record (see the module's text); one line saying what
    was done, or None when the record was whole."""
    folder = Path(folder)
    damage = record_damage(folder)
    if damage is None:
        return None
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    copy = good_copy(folder)
    if copy is None:
        aside = folder.with_name(f"{folder.name}.damaged-{stamp}")
        folder.rename(aside)
        return (f"Tune's record of {folder} was damaged ({damage}) and has no good copy: the experiment starts "
                f"over; its old folder is kept as {aside}")
    damaged = folder / f"damaged-state-{stamp}"
    suffix = 1
    while damaged.exists():  # a second recovery within the same second
        damaged, suffix = folder / f"damaged-state-{stamp}-{suffix}", suffix + 1
    try:  # the copies first, under names Tune ignores: a still-full disk stops here, nothing moved
        for path in copy.iterdir():
            shutil.copyfile(path, folder / f".restoring-{path.name}")
    except OSError:
        for path in folder.glob(".restoring-*"):
            path.unlink(missing_ok=True)
        raise
    damaged.mkdir()
    for pattern in RECORD_PATTERNS:
        for path in folder.glob(pattern):
            path.rename(damaged / path.name)
    for path in copy.iterdir():
        os.replace(folder / f".restoring-{path.name}", folder / path.name)
    return (f"Tune's record of {folder} was damaged ({damage}): restored from its last good copy (the damaged "
            f"one is kept in {damaged.name}/); trials it had not recorded as finished continue or run again")


def state_copy_callback(folder: Path):
    """A Tune callback that saves a good copy of the record after each of Tune's saves (see above)."""
    from ray.tune import Callback

    class _KeepGoodCopy(Callback):
        def __init__(self):
            self.staging: str | None = None

        def on_step_begin(self, iteration, trials, **info):
            if self.staging is None and trials:
                self.staging = getattr(trials[0].storage, "experiment_driver_staging_path", None)

        def get_state(self):  # Tune calls this once its record and searcher state are written
            if self.staging:
                save_good_copy(Path(self.staging), folder)
            return None

    return _KeepGoodCopy()
