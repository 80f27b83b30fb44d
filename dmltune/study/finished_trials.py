"""Finished trials stay finished, also when the driver died before Tune recorded them as finished.

Tune records a trial as TERMINATED in its experiment state at the next snapshot after the trial's
function returns. A driver killed in between leaves the trial RUNNING there although its last epoch
is already in the trial's ``result.json``; ``Tuner.restore`` would start it again, load its final
checkpoint and report its epochs once more. Before a restore, every such trial is recorded as
TERMINATED instead, so that it is not touched. A trial counts as finished when its stored results
hold its final epoch (``train.epochs`` of its configuration) or a divergence; a trial whose stored
results stop before that is left to Tune, which resumes it from its last checkpoint.

The experiment's search algorithm keeps its own record, saved beside the experiment state: the
trials it has running (the grid/random generator, or the concurrency limiter around an Optuna
searcher) and, for Optuna, what each trial scored. It forgets a trial, and frees its concurrency
slot, only when Tune tells it the trial completed, which a trial recorded as TERMINATED here never
is: left so, each settled trial would hold one slot for ever, and once every slot is held no further
trial is drawn, so the experiment never reaches its plan. Each settled trial is therefore first
completed in the search algorithm through Tune's own interface: its saved state is restored,
``on_trial_complete`` is called with the trial's last stored result (Optuna learns it as it would
have), and the state is saved back in place. Where that state cannot be restored or saved (a lazy
random generator, which saves none; an unexpected layout), nothing is settled: Tune then resumes
the trial from its final checkpoint, which replays its reports and ends at once.

The same restore-change-save (:func:`update_saved_search`) points a moved or copied study folder's
saved search at that folder (:func:`repoint_saved_search`): Tune saves the experiment's folder path
with the search, and the trials the search draws after a restore would otherwise use the old one.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..config import TRAIN_PARAMS
from ..atomic import write_atomic
from .consolidate import UNFINISHED
from .state_copy import EXPERIMENT_STATE

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


def _finished_result(trial_dir: Path, config: dict) -> dict | None:
    """The trial's last stored result when it holds its last epoch or its divergence; else None."""
    row = _last_result(trial_dir)
    if row is None:
        return None
    if row.get("status") == "diverged":
        return row
    epoch = row.get("epoch")
    return row if isinstance(epoch, int) and epoch >= _planned_epochs(config) else None


def is_finished(trial_dir: Path, config: dict) -> bool:
    """Whether the trial's stored results hold its last epoch (``train.epochs`` of ``config``, the
    trial's configuration), or its divergence."""
    return _finished_result(trial_dir, config) is not None


def _session(path: Path, template: str) -> str:
    """The session part of a file Tune named ``template.format(session)``."""
    head, tail = template.split("{}")
    return path.name[len(head):len(path.name) - len(tail)]


def update_saved_search(folder: Path, search, change) -> bool:
    """Restore the search algorithm saved in ``folder`` into ``search`` (the experiment's search
    algorithm as the runner builds it: a Searcher such as the ConcurrencyLimiter around an Optuna
    searcher, or the grid/random generator), call ``change(algorithm)`` and, when it returns True,
    save the state back in place (the same files Tune restores from); False when there is no saved
    state, or it cannot be restored or saved."""
    from ray.tune.search import SearchGenerator, Searcher

    algorithm = SearchGenerator(search) if isinstance(search, Searcher) else search
    template = getattr(algorithm, "CKPT_FILE_TMPL", None)
    saved = sorted(folder.glob(template.format("*"))) if template else []
    if not saved:
        return False
    session = _session(saved[-1], template)
    if isinstance(algorithm, SearchGenerator):  # its searcher's state is the same save's file
        inner = sorted(folder.glob(Searcher.CKPT_FILE_TMPL.format("*")))
        if not inner or _session(inner[-1], Searcher.CKPT_FILE_TMPL) != session:
            return False
    try:
        algorithm.restore_from_dir(str(folder))
        if not change(algorithm):
            return True
        return algorithm.save_to_dir(str(folder), session_str=session) is not False  # False: saves no state
    except Exception:  # an unexpected layout: left to Tune
        return False


def complete_in_search(folder: Path, search, results: dict[str, dict]) -> bool:
    """Tell the search algorithm saved in ``folder`` that each trial of ``results`` (trial id → its
    last result) completed, and save it back (see :func:`update_saved_search`)."""
    from ray.tune.utils.util import flatten_dict

    def complete(algorithm) -> bool:
        for trial_id, result in results.items():
            algorithm.on_trial_complete(trial_id, result=flatten_dict(result))
        return True

    return update_saved_search(folder, search, complete)


def repoint_saved_search(folder: Path, search) -> bool:
    """Point the trials the saved search algorithm will still create at ``folder``. Tune saves, with
    the search, the experiment's storage (its folder's absolute path); a restored experiment
    re-points the trials it recorded but not the ones its search creates next, which in a moved or
    copied study folder would write into the old folder, or fail when it is gone. True when the
    saved search points at ``folder`` (now or already)."""
    folder = Path(folder)

    def repoint(algorithm) -> bool:
        experiment = getattr(algorithm, "_experiment", None)
        specs = [experiment.spec] if experiment is not None else []
        specs += [it.unresolved_spec for it in getattr(algorithm, "_iterators", [])]
        changed = False
        for storage in {id(s["storage"]): s["storage"] for s in specs if s.get("storage") is not None}.values():
            if Path(storage.storage_fs_path, storage.experiment_dir_name) != folder:
                storage.storage_fs_path, storage.experiment_dir_name = folder.parent.as_posix(), folder.name
                changed = True
        return changed

    return update_saved_search(folder, search, repoint)


def settle_finished_trials(folder: Path, make_search) -> list[str]:
    """Record as TERMINATED, in the newest experiment state, every trial listed as unfinished whose
    stored results show it finished, after completing it in the experiment's search algorithm
    (``make_search()`` builds it, only when there is such a trial; see :func:`complete_in_search`);
    returns their trial ids (none where the search algorithm's state cannot be updated, see the
    module's docstring)."""
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
    results = {}
    for entry in entries:
        try:
            trial = json.loads(entry[0])
        except (ValueError, TypeError, IndexError):
            continue
        logdir = trial.get("relative_logdir")
        if trial.get("status") not in UNFINISHED or not isinstance(logdir, str) or not logdir:
            continue
        config = trial.get("config") if isinstance(trial.get("config"), dict) else {}
        result = _finished_result(folder / logdir, config)
        if result is not None:
            trial["status"] = "TERMINATED"
            entry[0] = json.dumps(trial, indent=2)
            results[str(trial.get("trial_id"))] = result
    # the search algorithm first: a kill between the two writes leaves the trial unfinished in the
    # experiment state, settled again at the next resume (completing it twice changes nothing)
    if not results or not complete_in_search(folder, make_search(), results):
        return []
    write_atomic(newest, json.dumps(state))
    return list(results)
