"""Finished trials stay finished, also when the driver died before Tune recorded them as finished.

Tune records a trial as TERMINATED in its experiment state at the next snapshot after the trial's
function returns. A driver killed in between leaves the trial RUNNING there although its last epoch
is already in the trial's ``result.json``; ``Tuner.restore`` would start it again, load its final
checkpoint and report its epochs once more. Before a restore, every such trial is recorded as
TERMINATED instead, so that it is not touched. A trial counts as finished when its stored results
hold its final epoch (``train.epochs`` of its configuration) or a divergence; a trial whose stored
results stop before that is left to Tune, which resumes it from its last checkpoint.

Tune's searcher keeps its own record of the trials it has running (saved apart, in
``basic-variant-state-*.json``), and it forgets a trial only when the trial completes, which a
skipped trial never does: left there, each settled trial would hold one of ``concurrency``'s slots
for ever (and with all of them held, the experiment would wait for ever). So the settled trials are
taken out of that record too, and where it cannot be read and written back (Optuna arms, whose
searcher must also learn each result, or an unexpected layout) nothing is settled: Tune then
resumes the trial from its final checkpoint, which replays its reports and ends at once.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import TRAIN_PARAMS
from ..atomic import write_atomic
from .consolidate import UNFINISHED
from .state_copy import EXPERIMENT_STATE, SEARCHER_STATE

DEFAULT_EPOCHS = next(p.default for p in TRAIN_PARAMS if p.name == "epochs")


def _last_result(trial_dir: Path) -> dict | None:
    """The last complete line of the trial's result.json (a line cut off by a kill is skipped)."""
    try:
        lines = (trial_dir / "result.json").read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict):
            return row
    return None


def _planned_epochs(config: dict) -> int:
    train = config.get("train")
    epochs = train.get("epochs", DEFAULT_EPOCHS) if isinstance(train, dict) else DEFAULT_EPOCHS
    return epochs if isinstance(epochs, int) else DEFAULT_EPOCHS


def is_finished(trial_dir: Path, config: dict) -> bool:
    """Whether the trial's stored results hold its last epoch (``train.epochs`` of ``config``, the
    trial's configuration), or its divergence."""
    row = _last_result(trial_dir)
    if row is None:
        return False
    if row.get("status") == "diverged":
        return True
    epoch = row.get("epoch")
    return isinstance(epoch, int) and epoch >= _planned_epochs(config)




def _forget_running(folder: Path, trial_ids: set[str]) -> bool:
    """Take ``trial_ids`` out of the running trials of the newest grid/random searcher state (written
    back atomically); False when there is no such state or it has another layout."""
    from ray import cloudpickle

    states = sorted(folder.glob(SEARCHER_STATE))
    if not states:
        return False
    try:
        with open(states[-1], "rb") as f:
            state = cloudpickle.load(f)
        live = state["_live_trials"]
    except Exception:  # unreadable, or not the layout this was written for
        return False
    if not isinstance(live, set):
        return False
    state["_live_trials"] = live - trial_ids
    write_atomic(states[-1], cloudpickle.dumps(state))
    return True


def settle_finished_trials(folder: Path) -> list[str]:
    """Record as TERMINATED, in the newest experiment state, every trial listed as unfinished whose
    stored results show it finished, and take it out of the searcher's running trials; returns their
    trial ids (none where the searcher's state cannot be updated, see the module's docstring)."""
    folder = Path(folder)
    states = sorted(folder.glob(EXPERIMENT_STATE))
    if not states:
        return []
    newest = states[-1]  # the one Tune restores
    try:
        state = json.loads(newest.read_text())
        entries = state["trial_data"]
    except (OSError, ValueError, KeyError, TypeError):
        return []  # unreadable: left to Tune and the checkpoint repair
    settled = []
    for entry in entries:
        try:
            trial = json.loads(entry[0])
        except (ValueError, TypeError, IndexError):
            continue
        logdir = trial.get("relative_logdir")
        if trial.get("status") not in UNFINISHED or not isinstance(logdir, str) or not logdir:
            continue
        config = trial.get("config") if isinstance(trial.get("config"), dict) else {}
        if is_finished(folder / logdir, config):
            trial["status"] = "TERMINATED"
            entry[0] = json.dumps(trial, indent=2)
            settled.append(str(trial.get("trial_id")))
    if settled and not _forget_running(folder, set(settled)):
        return []
    if settled:
        write_atomic(newest, json.dumps(state))
    return settled
