"""Running a validated study with Ray Tune, and resuming it.

Each arm is one Tune experiment under ``storage/name/arm`` (grid arms: every combination × every
seed in one experiment), or one experiment per seed under ``storage/name/arm/seed_S`` (random and
optuna arms: each seed is an independent replicate of the tuning process, with its own seeded
searcher). Finished experiments are restored, not re-run, so ``resume`` only finishes what is
missing. After the arms, every trial's per-epoch reports are consolidated into ``trials.parquet``
and ``trials.csv`` in the study folder.
"""

from __future__ import annotations

import copy
import os
import random
from dataclasses import dataclass
from pathlib import Path

from ..interruption import StudyFailed, StudyInterrupted, exit_if_stuck
from ..registry import ConfigError
from ..training import tune_trainable
from .checkpoint_repair import repair_missing_checkpoints
from .consolidate import consolidate
from .disk import describe, disk_error, disk_problem, stop_for_disk
from .domains import replace_at
from .experiments import Experiment, experiment_folders, experiments
from .extension import grow_record
from .finished_trials import settle_finished_trials
from .lifecycle import StudyLock, write_record
from .pbt import restart_interrupted_population
from .progress import Progress
from .protocol import write_folds_record
from .ray_connection import prepare_environment, start_ray
from .resources import check_resources
from .schema import Arm, Study
from .result_ledger import ledger_callback
from .state_copy import recover_record, state_copy_callback
from .stages import stage_trials
from .tracking import tracking_callbacks



def _param_space(arm: Arm, experiment: Experiment):
    """The arm's configuration with Tune's domains; a grid block (``extend``) searches its own values."""
    from ray import tune

    space = copy.deepcopy(arm.config)
    for path, domain in arm.domains:
        block = experiment.values and experiment.values.get(".".join(path))
        space = replace_at(space, path, tune.grid_search(list(block)) if block else domain.to_tune())
    space["seed"] = experiment.seed_space
    if arm.folds > 1:  # k-fold: every configuration × seed trains one model per fold, each its own trial
        space["protocol"] = {**space["protocol"], "fold": tune.grid_search(list(range(arm.folds)))}
    return space


def _tune_config(study: Study, arm: Arm, metric: str, searcher_seed: int, fixed: bool = False):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    mode, scheduler = ("grid" if fixed else arm.search["mode"]), None
    if mode == "pbt":
        return _pbt_config(arm, metric, searcher_seed, study.reuse_actors)
    if arm.search["scheduler"] and not fixed:
        asha = arm.search["scheduler"]["asha"]
        # epochs, not Tune's iteration count: a resumed trial reports its past epochs again
        scheduler = ASHAScheduler(time_attr="epoch", max_t=asha["max_t"],
                                  grace_period=asha["grace_period"], reduction_factor=asha["reduction_factor"])
    if mode == "optuna":
        search = OptunaSearch(metric=metric, mode="max", sampler=optuna.samplers.TPESampler(seed=searcher_seed))
        if study.concurrency:
            search = ConcurrencyLimiter(search, max_concurrent=study.concurrency)
    else:
        search = BasicVariantGenerator(max_concurrent=study.concurrency or 0, random_state=searcher_seed)
    samples = arm.search["num_samples"] if mode != "grid" else 1
    return tune.TuneConfig(metric=metric, mode="max", search_alg=search, scheduler=scheduler, num_samples=samples,
                           reuse_actors=study.reuse_actors)


def _pbt_config(arm: Arm, metric: str, searcher_seed: int, reuse_actors: bool):
    """Tune's settings of a PBT arm: the whole population is created at once (a synchronous population
    waits for all its members, so ``concurrency`` cannot hold some of them back; resources do)."""
    from ray import tune
    from ray.tune.schedulers import PopulationBasedTraining
    from ray.tune.search import BasicVariantGenerator

    from .pbt import hyperparam_mutations

    search = arm.search
    scheduler = PopulationBasedTraining(
        time_attr="epoch", perturbation_interval=search["perturbation_interval"],
        hyperparam_mutations=hyperparam_mutations(arm), quantile_fraction=search["quantile_fraction"],
        resample_probability=search["resample_probability"], synch=True)
    return tune.TuneConfig(metric=metric, mode="max", scheduler=scheduler, num_samples=search["population"],
                           search_alg=BasicVariantGenerator(random_state=searcher_seed), reuse_actors=reuse_actors)


def check_storage(folder: Path) -> None:
    """The study folder can be created and written, or a one-line error says why."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"storage {folder} is not writable ({err.strerror or type(err).__name__}); "
                          "set storage to a folder you can write (--set storage=PATH)") from None


@dataclass
class StudyOutcome:
    """What a run or resume did: the folder, the trials that ended in error, whether any trial ran,
    and the tracking failure that ended logging to MLflow (one line), if any."""

    directory: Path
    errored: list[str]
    ran: bool
    tracking_failure: str | None = None


def _experiment_tuner(study: Study, arm: Arm, experiment: Experiment, metric: str, callbacks: list, stopper,
                      retry_errored: bool):
    from ray import tune

    folder = experiment.folder

    trainable = tune.with_resources(tune_trainable, {"cpu": study.resources["cpu"],
                                                     "gpu": arm.gpu(study.resources.get("gpu", 0))})
    if tune.Tuner.can_restore(str(folder)):
        tuner = tune.Tuner.restore(str(folder), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=retry_errored)
        run_config = tuner._local_tuner.get_run_config()  # a restored experiment brings its old callbacks
        run_config.callbacks, run_config.stop = callbacks, stopper
        return tuner
    run_config = tune.RunConfig(
        storage_path=str(folder.parent), name=folder.name, verbose=0, callbacks=callbacks, stop=stopper,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=_checkpoints_kept(arm)),
        failure_config=tune.FailureConfig(max_failures=study.retries))
    return tune.Tuner(trainable, param_space=_param_space(arm, experiment),
                      tune_config=_tune_config(study, arm, metric, experiment.searcher_seed, experiment.fixed),
                      run_config=run_config)


def _checkpoints_kept(arm: Arm) -> int:
    """Checkpoints Tune keeps per trial: the last one, except in a PBT arm, where a donor's checkpoint
    must outlive the epochs its donor trains (at most one perturbation interval, synchronous PBT)
    before the member that exploits it restarts from it."""
    if arm.search["mode"] != "pbt":
        return 1
    return arm.search["perturbation_interval"] // max(arm.resolved["train"]["checkpoint_every"], 1) + 2


def _prepare_restores(study: Study) -> None:
    """Before any experiment is restored: a damaged Tune record is replaced by its last good copy
    (state_copy), recorded checkpoints a killed driver lost are put back, and trials whose last epoch
    is stored are recorded as finished (so they are neither run nor counted again)."""
    for arm in study.arms:
        for folder in experiment_folders(study, arm):
            if (folder / "tuner.pkl").is_file():
                try:
                    recovered = recover_record(folder)
                except OSError as err:  # the disk is still full (or read-only): one line, nothing lost
                    raise stop_for_disk(study, disk_problem(study.directory) or err.strerror, folder) from None
                if recovered:
                    print(recovered, flush=True)
                    if not folder.is_dir():  # moved aside: the experiment starts over
                        continue
                if arm.search["mode"] == "pbt":
                    restarted = restart_interrupted_population(folder)
                    if restarted:
                        print(restarted, flush=True)
                        continue
                repair_missing_checkpoints(folder)
                if arm.search["mode"] not in ("optuna", "pbt"):  # Optuna and PBT must see each result
                    settle_finished_trials(folder)


def _done_before(study: Study, retry_errored: bool) -> tuple[int, int]:
    """Trials already finished in the study's experiments, and epochs already reported."""
    from ray.tune import ExperimentAnalysis

    trials = epochs = 0
    for arm in study.arms:
        for folder in experiment_folders(study, arm):
            if not (folder / "tuner.pkl").is_file():
                continue
            try:
                found = ExperimentAnalysis(str(folder)).trials
            except Exception:  # an unreadable state: Tune will say so when it restores the experiment
                continue
            for trial in found:
                finished = trial.status == "TERMINATED" or (trial.status == "ERROR" and not retry_errored)
                trials += finished
                epochs += arm_epochs(arm) if finished else int((trial.last_result or {}).get("epoch", 0))
    return trials, epochs


def arm_epochs(arm: Arm) -> int:
    return int(arm.resolved["train"]["epochs"])


def _fit(tuner, study: Study, arm: Arm) -> None:
    problem = disk_problem(study.directory)
    if problem:
        raise stop_for_disk(study, problem, study.directory)
    try:
        tuner.fit()
    except KeyboardInterrupt:
        message = (f"interrupted during arm '{arm.name}'; every finished trial is kept: "
                   f"continue with `dmltune resume {study.directory}`")
        exit_if_stuck(message)
        try:  # the table so far, so that `dmltune report` can show it (marked unfinished)
            consolidate(study, interrupted=True)
        except (Exception, KeyboardInterrupt):
            pass
        raise StudyInterrupted(message) from None
    except Exception as err:  # Tune may fail on a full disk with an unrelated error (an empty pickle)
        disk = disk_error(err)
        if disk is not None:
            raise stop_for_disk(study, describe(disk), disk.filename or study.directory) from None
        problem = disk_problem(study.directory)
        if problem:
            raise stop_for_disk(study, problem, study.directory) from None
        raise
    problem = disk_problem(study.directory)  # trials failed on it: stop before the next arm
    if problem:
        raise stop_for_disk(study, problem, study.directory)


def run_study(study: Study, address: str | None = None, retry_errored: bool = False, extend: bool = False
              ) -> StudyOutcome:
    """Run (or finish) every arm, then write the consolidated tables. The folder is locked for the
    run; errored trials are restarted from scratch only with ``retry_errored``; with ``extend`` the
    recorded study is grown into ``study`` first (:mod:`dmltune.study.extension`)."""
    check_storage(study.directory)
    with StudyLock(study.directory) as lock:
        prepare_environment(address)
        started_here = start_ray(address)
        try:
            import ray

            joined = address or os.environ.get("RAY_ADDRESS")
            check_resources(study, ray.cluster_resources(), f"the Ray cluster at {joined}" if joined else "this machine")
            if extend:  # checked again under the lock, and recorded once the study is known to run
                grow_record(study)
            write_record(study)  # the plan is recorded once it is known to run
            write_folds_record(study)
            return _run_arms(study, lock, retry_errored)
        finally:
            if started_here:
                import ray

                ray.shutdown()


def _run_arms(study: Study, lock: StudyLock, retry_errored: bool) -> StudyOutcome:
    from .folder_watch import FolderGone

    metric = f"val/{study.arms[0].resolved['eval']['metric']}"
    _prepare_restores(study)
    done_trials, done_epochs = _done_before(study, retry_errored)
    total, total_epochs = planned_trials(study)
    progress = Progress(total, total_epochs, metric, done_trials, min(done_epochs, total_epochs))
    if done_trials >= total:
        later = "; the design is asked whether a next stage is due" if study.design.staged else "; nothing to run"
        print(f"every trial of study '{study.name}' is already done ({total} trials){later}", flush=True)
    stopper = FolderGone(lock.path)
    # the tracking server is asked once whether it answers, before any trial
    health: dict = {}  # shared by the arms' tracking callbacks: the first failure ends tracking
    tracking = {arm.name: tracking_callbacks(study.tracking, arm.name, study.name, check=i == 0, health=health)
                for i, arm in enumerate(study.arms)}
    run = _ExperimentRunner(study, lock, metric, progress, tracking, stopper, retry_errored)
    try:
        for arm in study.arms:
            for experiment in experiments(study, arm):
                run(arm, experiment)
        table = consolidate(study)  # reading the experiments back needs Ray running
        if study.design.staged:
            table = _run_later_stages(study, table, run, progress)
    finally:
        progress.close()
    return StudyOutcome(study.directory, errored_trials(table), progress.done > done_trials, health.get("failure"))


@dataclass
class _ExperimentRunner:
    """Runs one experiment of an arm with the study's callbacks; a deleted folder stops the study."""

    study: Study
    lock: StudyLock
    metric: str
    progress: Progress
    tracking: dict
    stopper: object
    retry_errored: bool

    def __call__(self, arm: Arm, experiment: Experiment) -> None:
        study = self.study
        if _over_hours_budget(study):
            return
        tuner = _experiment_tuner(study, arm, experiment, self.metric,
                                  [self.progress.callback(arm, arm_epochs(arm)), *self.tracking[arm.name],
                                   state_copy_callback(experiment.folder),
                                   *([ledger_callback(experiment.folder)] if arm.search["mode"] == "pbt" and
                                     not experiment.fixed else [])], self.stopper,
                                  self.retry_errored)
        if arm.search["mode"] == "pbt":  # PBT draws exploit partners and explorations from `random`
            random.seed(experiment.searcher_seed)
        try:
            _fit(tuner, study, arm)
        except Exception:  # Tune may fail on the missing folder before the stopper ends it
            if self.lock.folder_present():
                raise
        if not self.lock.folder_present():
            raise StudyFailed(f"the study folder {study.directory} was deleted while the study ran; stopped "
                              "(nothing more is written there): run the study again to start over")


def _over_hours_budget(study: Study) -> bool:
    """A ``budget: {gpu_hours: H}`` already spent: no further experiment starts (recorded once)."""
    hours = study.design.budget_hours
    if hours is None:
        return False
    spent = _spent_hours(study)
    if spent < hours:
        return False
    from .stages import record_stop, stopped_reason

    reason = f"budget reached: {spent:.3g} of {hours:g} hours spent; no further experiment started"
    if stopped_reason(study.directory) != reason:
        print(f"study '{study.name}': {reason}", flush=True)
        record_stop(study.directory, study.design.kind, reason)
    return True


def _spent_hours(study: Study) -> float:
    import pandas as pd

    try:
        table = consolidate(study)
    except (ValueError, KeyError):
        return 0.0
    if table.empty:
        return 0.0
    last = table.groupby(["arm", "experiment", "trial_id"], sort=False).tail(1)
    gpu = pd.to_numeric(last.get("gpu_s"), errors="coerce").fillna(0).sum() if "gpu_s" in last else 0.0
    column = "gpu_s" if gpu > 0 else "wall_s"
    return float(pd.to_numeric(last.get(column), errors="coerce").fillna(0).sum() / 3600) if column in last else 0.0


def planned_trials(study: Study) -> tuple[int, int]:
    """Trials and epochs of the first stage and every recorded later stage."""
    from .experiments import stage_entries

    total = sum(a.trials_per_seed * len(study.seeds) for a in study.arms)
    epochs = sum(a.trials_per_seed * len(study.seeds) * arm_epochs(a) for a in study.arms)
    for entry in stage_entries(study):
        n, e = stage_trials(study, entry)
        total, epochs = total + n, epochs + e
    return total, epochs


def _run_later_stages(study: Study, table, run: _ExperimentRunner, progress: Progress):
    """Ask the design for the next stage or look, record it, run it; until the design is done."""
    from ..analysis.design_table import next_stage
    from ..analysis.trials import study_table
    from .experiments import _stage_experiments
    from .stages import last_stage, record_stage, record_stop

    stage_done = last_stage(study.directory)
    while True:
        try:
            st = study_table(table, study.source)
            plan = next_stage(st, stage_done)
        except ConfigError as err:
            reason = f"no stage after stage {stage_done}: {err}"
            print(f"study '{study.name}': {reason}", flush=True)
            record_stop(study.directory, study.design.kind, reason)
            return table
        if plan is None:
            return table
        entry = stage_entry(study, st, plan)
        entry, reason = fit_budget(study, st, entry)
        if entry is None:
            print(f"study '{study.name}': {reason}", flush=True)
            record_stop(study.directory, study.design.kind, reason)
            return table
        record_stage(study.directory, study.design.kind, entry)
        trials, epochs = stage_trials(study, entry)
        progress.total += trials
        progress.total_epochs += epochs
        word = "look" if study.design.kind == "sequential" else "stage"
        print(f"{word} {entry['stage']} planned and recorded ({trials} trials): {entry['why']}", flush=True)
        from ray import tune

        for arm in study.arms:
            for experiment in _stage_experiments(study, arm, entry, tune.grid_search):
                run(arm, experiment)
        table = consolidate(study)
        stage_done = entry["stage"]


def stage_entry(study: Study, st, plan: dict) -> dict:
    """The record of a planned stage: each arm's configuration keys turned into their values."""
    from ..analysis.selection import config_keys

    arms = {}
    for name, what in plan["arms"].items():
        arm = next(a for a in study.arms if a.name == name)
        cells = None
        if what.get("keys") is not None:
            rows = st.arm_rows(name)
            keys = config_keys(rows, st.dims[name]).to_numpy()
            cells = []
            for key in what["keys"]:
                row = rows[keys == key].iloc[0]
                cells.append({".".join(path): _plain(row.get(f"config/{'.'.join(path)}")) for path, _ in arm.domains})
        arms[name] = {"cells": cells, "seeds": [int(s) for s in what["seeds"]]}
    return {"stage": int(plan["stage"]), "why": plan["why"], "arms": arms}


def _plain(value):
    """A table value as YAML writes it (numpy scalars to Python)."""
    return value.item() if hasattr(value, "item") else value


def fit_budget(study: Study, st, entry: dict) -> tuple[dict | None, str | None]:
    """The stage as it fits the study's budget: fewer seeds when the trials budget would be passed;
    None (and why) when not even two seeds fit, or the hours are spent."""
    design = study.design
    so_far = len(st.final)
    if design.budget_hours is not None:
        spent = float(st.final.cost_h.sum())
        if spent >= design.budget_hours:
            return None, (f"budget reached: {spent:.3g} of {design.budget_hours:g} hours spent; stage "
                          f"{entry['stage']} not started")
    if design.budget_trials is None:
        return entry, None
    trials, _ = stage_trials(study, entry)
    if so_far + trials <= design.budget_trials:
        return entry, None
    per_seed = stage_trials(study, {"arms": {name: {**w, "seeds": [0]} for name, w in entry["arms"].items()}})[0]
    fits = int((design.budget_trials - so_far) // max(per_seed, 1))
    if fits < 2:
        return None, (f"budget reached: {so_far} of {design.budget_trials} trials run; stage {entry['stage']} "
                      f"would need {trials}")
    trimmed = {name: {**w, "seeds": w["seeds"][:fits]} for name, w in entry["arms"].items()}
    why = entry["why"] + f" (cut to {fits} seeds by the budget of {design.budget_trials} trials)"
    return {**entry, "arms": trimmed, "why": why}, None


def errored_trials(table) -> list[str]:
    """``arm trial seed S: reason`` of every trial whose last row is an error (the whole study, also
    trials that errored in an earlier run)."""
    if table is None or table.empty or "status" not in table:
        return []
    last = table.groupby("trial_id", sort=False).tail(1)
    return [f"{r.arm} {r.trial_id} seed {r.seed}: {_short_reason(r.error)}" for r in last[last.status == "error"].itertuples()]


def _short_reason(error) -> str:
    """The failure's last line without the exception's module path, at most 400 characters."""
    import re

    text = re.sub(r"^(?:[A-Za-z_][\w]*\.)+(?=[A-Za-z_]\w*(?:Error|Exception)\b)", "", str(error or "error"))
    return text if len(text) <= 400 else text[:397] + "..."
