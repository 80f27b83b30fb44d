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
import dataclasses
import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..atomic import write_atomic
from ..interruption import StudyFailed, StudyInterrupted, exit_if_stuck
from ..registry import ConfigError
from ..training import tune_trainable
from .checkpoint_repair import repair_missing_checkpoints
from .consolidate import consolidate
from .disk import describe, disk_error, disk_problem, stop_for_disk
from .domains import replace_at
from .experiments import Experiment, experiment_folders, experiment_stages, experiments
from .extension import grow_record
from .finished_trials import repoint_saved_search, settle_finished_trials
from .lifecycle import StudyLock, write_record
from .pbt import restart_interrupted_population, seed_pbt_random
from .progress import Progress
from .protocol import write_folds_record
from .ray_connection import prepare_environment, start_ray
from .resources import check_resources
from .schema import Arm, Study
from .result_ledger import ledger_callback
from .state_copy import EXPERIMENT_STATE, recover_record, state_copy_callback
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


def _tune_config(study: Study, arm: Arm, metric: str, searcher_seed: int, fixed: bool = False,
                 stored: dict | None = None):
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
    if mode == "optuna":  # the limiter's bound is the queue's share of the slots (see queue.Job.limit)
        sampler = optuna.samplers.TPESampler(seed=searcher_seed)
        if stored:  # tracking.optuna: the search's Optuna study kept in a storage (optuna_storage.py)
            from .optuna_storage import StoredOptunaSearch

            search = StoredOptunaSearch(metric=metric, mode="max", sampler=sampler, **stored)
        else:
            search = OptunaSearch(metric=metric, mode="max", sampler=sampler)
        search = ConcurrencyLimiter(search, max_concurrent=study.concurrency or arm.trials_per_seed)
    else:
        search = BasicVariantGenerator(max_concurrent=study.concurrency or 0, random_state=searcher_seed)
    samples = arm.search["num_samples"] if mode != "grid" else 1
    return tune.TuneConfig(metric=metric, mode="max", search_alg=search, scheduler=scheduler, num_samples=samples,
                           reuse_actors=study.reuse_actors)


def _pbt_config(arm: Arm, metric: str, searcher_seed: int, reuse_actors: bool):
    """Tune's settings of a PBT arm: the whole population is created at once (a synchronous population
    waits for all its members, so ``concurrency`` cannot hold some of them back; resources do)."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    from .pbt import hyperparam_mutations, population_scheduler

    search = arm.search
    scheduler = population_scheduler(
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

    from . import optuna_storage

    folder = experiment.folder
    stored = _stored_search(study, arm, experiment)

    trainable = tune.with_resources(tune_trainable, {"cpu": study.resources["cpu"],
                                                     "gpu": arm.gpu(study.resources.get("gpu", 0))})
    if tune.Tuner.can_restore(str(folder)):
        tuner = tune.Tuner.restore(str(folder), trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=retry_errored)
        run_config = tuner._local_tuner.get_run_config()  # a restored experiment brings its old callbacks
        run_config.callbacks, run_config.stop = callbacks, stopper
        if stored:  # ... and its Optuna storage's old path: the study folder's as it is now
            optuna_storage.prepare_restored(tuner._local_tuner._tune_config.search_alg, stored)
        return tuner
    if stored:
        optuna_storage.start_afresh(stored["storage_url"], stored["study_name"])
    run_config = tune.RunConfig(
        storage_path=str(folder.parent), name=folder.name, verbose=0, callbacks=callbacks, stop=stopper,
        checkpoint_config=tune.CheckpointConfig(num_to_keep=_checkpoints_kept(arm)),
        failure_config=tune.FailureConfig(max_failures=study.retries))
    return tune.Tuner(trainable, param_space=_param_space(arm, experiment),
                      tune_config=_tune_config(study, arm, metric, experiment.searcher_seed, experiment.fixed, stored),
                      run_config=run_config)


def _concurrency_limiter(tuner):
    """The object whose ``max_concurrent`` bounds the experiment's running trials (the grid or random
    generator, or the limiter around an Optuna searcher); None for PBT (its population runs at once)."""
    search = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    search = getattr(search, "search_alg", None)
    if isinstance(getattr(search, "max_concurrent", None), int) and not _is_pbt(tuner):
        return search
    return None


def _is_pbt(tuner) -> bool:
    from ray.tune.schedulers import PopulationBasedTraining

    config = getattr(getattr(tuner, "_local_tuner", None), "_tune_config", None)
    return isinstance(getattr(config, "scheduler", None), PopulationBasedTraining)


def _checkpoints_kept(arm: Arm) -> int:
    """Checkpoints Tune keeps per trial: the last one, except in a PBT arm, where a donor's checkpoint
    must outlive the epochs its donor trains (at most one perturbation interval, synchronous PBT)
    before the member that exploits it restarts from it."""
    if arm.search["mode"] != "pbt":
        return 1
    return arm.search["perturbation_interval"] // max(arm.resolved["train"]["checkpoint_every"], 1) + 2


def _prepare_restores(study: Study, retry_errored: bool = False) -> None:
    """Before any experiment is restored: a damaged Tune record is replaced by its last good copy
    (state_copy), the stopper Tune recorded is dropped (this session's is used), recorded checkpoints a
    killed driver lost are put back, the saved search is pointed at the experiment's folder as it is
    now, and trials whose last epoch is stored are recorded as finished and completed in the search
    (so they are neither run nor counted again, and free their concurrency slot)."""
    for arm in study.arms:
        for experiment in experiment_stages(study, arm):
            folder = experiment.folder
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
                    restarted = restart_interrupted_population(folder, retry_errored)
                    if restarted:
                        print(restarted, flush=True)
                        continue
                drop_recorded_stopper(folder)
                repair_missing_checkpoints(folder)
                if arm.search["mode"] != "pbt":  # a population must see each result (pbt.py)
                    if any(folder.glob(EXPERIMENT_STATE)):  # (else Tune starts the experiment afresh)
                        repoint_saved_search(folder, _experiment_search(study, arm, experiment))
                    settle_finished_trials(folder, lambda: _experiment_search(study, arm, experiment))


def drop_recorded_stopper(folder: Path) -> None:
    """Tune's record (``runner_data``) keeps the stopper of the session that wrote it, and a restored
    experiment uses that one instead of the one it is given: a FolderGone watching the old session's
    lock file, which in a moved or copied study folder is gone, so the experiment would stop at its
    first step, its search marked finished, short of its plan. It is taken out of the newest record,
    so that Tune keeps this session's."""
    states = sorted(folder.glob(EXPERIMENT_STATE))
    try:
        state = json.loads(states[-1].read_text())
        recorded = state["runner_data"]
    except (IndexError, OSError, ValueError, KeyError, TypeError):
        return  # none, or unreadable: left to Tune (and the state copy)
    if isinstance(recorded, dict) and recorded.pop("_stopper", None) is not None:
        write_atomic(states[-1], json.dumps(state))


def _stored_search(study: Study, arm: Arm, experiment: Experiment) -> dict | None:
    """Where an optuna experiment's search keeps its Optuna study (``tracking.optuna``), or None."""
    from . import optuna_storage

    if arm.search["mode"] != "optuna" or experiment.fixed:
        return None
    return optuna_storage.stored_search(study.tracking, study.name, study.directory, experiment.folder)


def _experiment_search(study: Study, arm: Arm, experiment: Experiment):
    """The experiment's search algorithm as its Tuner gets it, to restore its saved state into (the
    Optuna storage must hold its study: opening a missing one would create it empty)."""
    from . import optuna_storage

    stored = _stored_search(study, arm, experiment)
    if stored:
        optuna_storage.check_restorable(stored["storage_url"], stored["study_name"])
    metric = f"val/{study.arms[0].resolved['eval']['metric']}"
    return _tune_config(study, arm, metric, experiment.searcher_seed, experiment.fixed, stored).search_alg


def _done_before(study: Study, retry_errored: bool) -> dict:
    """``{experiment folder: (trials finished, epochs reported)}`` of the study's existing experiments."""
    from ray.tune import ExperimentAnalysis

    done = {}
    for arm in study.arms:
        for folder in experiment_folders(study, arm):
            if not (folder / "tuner.pkl").is_file():
                continue
            try:
                found = ExperimentAnalysis(str(folder)).trials
            except Exception:  # an unreadable state: Tune will say so when it restores the experiment
                continue
            trials = epochs = 0
            for trial in found:
                finished = trial.status == "TERMINATED" or (trial.status == "ERROR" and not retry_errored)
                trials += finished
                epochs += arm_epochs(arm) if finished else int((trial.last_result or {}).get("epoch", 0))
            done[folder] = (trials, epochs)
    return done


def arm_epochs(arm: Arm) -> int:
    return int(arm.resolved["train"]["epochs"])


def _fit(tuner, study: Study, arm: Arm) -> None:
    problem = disk_problem(study.directory)
    if problem:
        raise stop_for_disk(study, problem, study.directory)
    try:
        tuner.fit()
    except Exception as err:  # Tune may fail on a full disk with an unrelated error (an empty pickle)
        disk = disk_error(err)
        if disk is not None:
            raise stop_for_disk(study, describe(disk), disk.filename or study.directory) from None
        problem = disk_problem(study.directory)
        if problem:
            raise stop_for_disk(study, problem, study.directory) from None
        raise
    problem = disk_problem(study.directory)  # trials failed on it: stop before the next experiment
    if problem:
        raise stop_for_disk(study, problem, study.directory)


def run_study(study: Study, address: str | None = None, retry_errored: bool = False, extend: bool = False,
              one_at_a_time: bool = False) -> StudyOutcome:
    """Run (or finish) every arm, then write the consolidated tables. The folder is locked for the
    run; errored trials are restarted from scratch only with ``retry_errored``; with ``extend`` the
    recorded study is grown into ``study`` first (:mod:`dmltune.study.extension`). Every arm's
    experiments share one queue (:mod:`.queue`); ``one_at_a_time`` runs them one after another."""
    check_storage(study.directory)
    with StudyLock(study.directory) as lock:
        prepare_environment(address)
        started_here = start_ray(address)
        try:
            import ray

            joined = address or os.environ.get("RAY_ADDRESS")
            resources = ray.cluster_resources()
            check_resources(study, resources, f"the Ray cluster at {joined}" if joined else "this machine")
            if extend:  # checked again under the lock, and recorded once the study is known to run
                grow_record(study)
            write_record(study)  # the plan is recorded once it is known to run
            write_folds_record(study)
            return _run_arms(study, lock, retry_errored, slots(study, resources), one_at_a_time)
        finally:
            if started_here:
                import ray

                ray.shutdown()
            from ..training.state import remove_orphaned_scratch

            remove_orphaned_scratch()  # of trial workers killed on this machine (a kill leaves no file behind)


def slots(study: Study, resources: dict) -> int:
    """Trials the cluster runs at once: its CPUs over a trial's, and its GPUs over the smallest GPU
    share of an arm that uses one; at most the study's ``concurrency``."""
    cpu = float(study.resources.get("cpu") or 1)
    count = int(float(resources.get("CPU", 1)) // cpu) if cpu > 0 else 10**6
    shares = [arm.gpu(study.resources.get("gpu", 0)) for arm in study.arms]
    shares = [s for s in shares if s > 0]
    if shares:
        count = min(count, int(float(resources.get("GPU", 0)) / min(shares) + 1e-9))
    if study.concurrency:
        count = min(count, study.concurrency)
    return max(count, 1)


def queue_order(study: Study) -> list[Arm]:
    """The arms in the order their experiments enter the queue: the reference arm first (an
    interrupted study can then already be compared), then the study's order."""
    reference = reference_name(study)
    return [a for a in study.arms if a.name == reference] + [a for a in study.arms if a.name != reference]


def reference_name(study: Study) -> str | None:
    """The report's reference arm: ``analysis.reference``, else the last arm that runs one configuration
    (the rule of :func:`dmltune.analysis.compare.default_reference`)."""
    source = study.source if isinstance(getattr(study, "source", None), dict) else {}
    analysis = source.get("analysis") if isinstance(source.get("analysis"), dict) else {}
    single = [a.name for a in study.arms if not a.domains and a.search["mode"] == "grid"]
    return analysis.get("reference") or (single or [None])[-1]


def _run_arms(study: Study, lock: StudyLock, retry_errored: bool, slot_count: int = 1,
              one_at_a_time: bool = False) -> StudyOutcome:
    from .folder_watch import FolderGone
    from .queue import Job, StudyQueue

    metric = f"val/{study.arms[0].resolved['eval']['metric']}"
    _prepare_restores(study, retry_errored)
    done_before = _done_before(study, retry_errored)
    done_trials = sum(t for t, _ in done_before.values())
    done_epochs = sum(e for _, e in done_before.values())
    total, total_epochs = planned_trials(study)
    progress = Progress(total, total_epochs, metric, done_trials, min(done_epochs, total_epochs))
    if done_trials >= total:
        later = "; the design is asked whether a next stage is due" if study.design.staged else "; nothing to run"
        print(f"every trial of study '{study.name}' is already done ({total} trials){later}", flush=True)
    stopper = FolderGone(lock.path)
    # the tracking server is asked once whether it answers, before any trial
    health: dict = {}  # shared by the experiments' tracking callbacks: the first failure ends tracking
    tracking_callbacks(study.tracking, study.arms[0].name, study.name, check=True, health=health)
    run = _ExperimentRunner(study, lock, metric, progress, stopper, retry_errored, health)
    live = LiveTable(study)

    reference = reference_name(study)

    def job(arm: Arm, experiment: Experiment) -> Job:
        trials, _ = done_before.get(experiment.folder, (0, 0))
        shape = (study.resources.get("cpu"), arm.gpu(study.resources.get("gpu", 0)))
        together = arm.search["population"] if arm.search["mode"] == "pbt" and not experiment.fixed else 0
        return Job(arm, experiment, experiment_trials(study, arm, experiment), trials, shape, together=together,
                   cap=arm.search.get("concurrency"), first=arm.name == reference)

    def start(j: Job) -> None:
        j.start()  # released once its Tune loop is set up (see queue._STARTING)
        run(j.arm, j.experiment, work.callback(j), j)

    later = None

    def done(finished: Job) -> None:
        live.refresh()
        if later is not None:
            later.job_done(finished)

    work = StudyQueue(start, slot_count, one_at_a_time, on_done=done, on_trials=live.trials)
    run.queue = work
    for arm in queue_order(study):  # the first stage, then the stages and looks recorded so far
        for experiment in experiments(study, arm):
            work.submit(job(arm, experiment))
    later = _LaterStages(study, work, progress, job, reference) if study.design.staged else None
    work.on_idle = later
    table = None
    try:
        try:
            work.run()
        except KeyboardInterrupt:
            message = (f"interrupted while arm(s) {', '.join(work.running_arms()) or '-'} ran; every finished "
                       f"trial is kept: continue with `dmltune resume {study.directory}`")
            exit_if_stuck(message)
            try:  # the table so far, so that `dmltune report` can show it (marked unfinished)
                consolidate(study, interrupted=True)
            except (Exception, KeyboardInterrupt):
                pass
            raise StudyInterrupted(message) from None
        table = consolidate(study)
    finally:
        progress.close()
    return StudyOutcome(study.directory, errored_trials(table), progress.done > done_trials, health.get("failure"))


def experiment_trials(study: Study, arm: Arm, experiment: Experiment) -> int:
    """Trials one experiment runs: its grid's cells (× folds), or the arm's samples (× folds)."""
    if experiment.values is not None:
        n = 1
        for values in experiment.values.values():
            n *= len(values)
        return n * arm.folds
    return arm.trials_per_seed


class LiveTable:
    """The results table brought up to date while the study runs, as trials finish (at most every
    ``every_s``, and never more than 5 % of the time: a refresh that took t seconds waits 20 t before
    the next, so that a large study's table does not take CPU from its trials), so that ``dmltune
    report`` works before it ends: unfinished trials are marked so, and the report says how many
    planned trials have a result. A read that meets a record Tune is writing is skipped (the next
    refresh has it)."""

    def __init__(self, study: Study, every_s: float = 15.0):
        self.study, self.every_s, self.last, self.seen = study, every_s, 0.0, 0
        self.wait_s = every_s

    def trials(self, finished: int) -> None:
        """``finished`` trials have ended so far: refresh when that grew."""
        if finished > self.seen:
            self.refresh(finished)

    def refresh(self, finished: int | None = None) -> None:
        import time

        if time.monotonic() - self.last < self.wait_s:
            return
        started = time.monotonic()
        self.seen = self.seen if finished is None else finished
        try:
            consolidate(self.study, interrupted=True)
        except StudyFailed:
            raise
        except Exception:  # a record mid-write: the next refresh, or the final table, has it
            pass
        self.last = time.monotonic()
        self.wait_s = max(self.every_s, 20 * (self.last - started))


@dataclass
class _ExperimentRunner:
    """Runs one experiment of an arm with the study's callbacks; a deleted folder stops the study."""

    study: Study
    lock: StudyLock
    metric: str
    progress: Progress
    stopper: object
    retry_errored: bool
    health: dict
    queue: object = None

    def __call__(self, arm: Arm, experiment: Experiment, link=None, job=None) -> None:
        study = self.study
        if _over_hours_budget(study):
            return
        tracking = tracking_callbacks(study.tracking, arm.name, study.name, check=False, health=self.health,
                                      directory=study.directory)
        pbt = arm.search["mode"] == "pbt" and not experiment.fixed
        tuner = _experiment_tuner(study, arm, experiment, self.metric,
                                  [*([link] if link is not None else []),
                                   self.progress.callback(arm, arm_epochs(arm)), *tracking,
                                   state_copy_callback(experiment.folder),
                                   *([ledger_callback(experiment.folder)] if pbt else [])], self.stopper,
                                  self.retry_errored)
        if job is not None:  # the queue sets how many of its trials run at once, from the first one on
            job.limiter = _concurrency_limiter(tuner)
            if job.limiter is not None and self.queue is not None and not self.queue.one_at_a_time:
                job.limiter.max_concurrent = job.share
        if arm.search["mode"] == "pbt":  # PBT draws exploit partners and explorations from `random`
            seed_pbt_random(experiment.searcher_seed)
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
        table = consolidate(study, interrupted=True)  # other experiments may be running
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


class _LaterStages:
    """Plans the later stages and looks, records each before its trials start, and puts its
    experiments in the study's queue.

    Sequential looks are planned arm by arm: once an arm and the reference have finished look k, the
    arm's look k + 1 is planned from their rows through look k (an arm's look depends on itself and
    the reference only, so this is what a look over the whole study would decide for it) and queued
    while other arms still run look k; the reference's seeds of a look are recorded with the first arm
    that needs them. A two-stage confirmation, whose reference seeds serve every arm, is planned when
    the queue runs dry."""

    def __init__(self, study: Study, work, progress: Progress, job, reference: str | None):
        self.study, self.work, self.progress, self.job, self.reference = study, work, progress, job, reference
        self.entries = list(stage_entries_of(study))
        self.settled: set[str] = set()  # arms whose design is done (decided, or no look left)
        self.stopped = False

    # -- the queue's hooks
    def job_done(self, _job) -> None:
        if self.study.design.kind == "sequential":
            self._plan_ready()

    def __call__(self) -> None:
        """The queue ran dry."""
        if self.study.design.kind == "sequential":
            self._plan_ready()
        else:
            self._plan_whole()

    # -- sequential: per arm
    def _look_of(self, arm: str) -> int:
        return max([1] + [int(e["stage"]) for e in self.entries if arm in (e.get("arms") or {})])

    def _unfinished(self, arm: str, stage: int) -> bool:
        return any(j.arm.name == arm and j.experiment.stage <= stage for j in self.work.pending + self.work.active)

    def _plan_ready(self) -> None:
        from ..analysis.design_table import next_stage, stage_column, with_rows
        from ..analysis.trials import study_table

        if self.stopped or self.reference is None:
            return
        ready = [a.name for a in self.study.arms if a.name != self.reference and a.name not in self.settled
                 and not self._unfinished(a.name, self._look_of(a.name))
                 and not self._unfinished(self.reference, self._look_of(a.name))]
        if not ready:
            return
        try:
            table = consolidate(self.study, interrupted=True)  # other arms may still run
        except StudyFailed:
            raise
        except Exception:
            if self.work.active:  # a record Tune is writing: the next experiment's end reads it again
                return
            raise
        try:
            st = study_table(table, self.study.source)
        except ConfigError as err:
            return self._stop(f"no look after this one: {err}")
        for arm in ready:
            k = self._look_of(arm)
            rows = st.final[st.final.arm.isin([self.reference, arm]) & (stage_column(st.final) <= k)]
            pair = dataclasses.replace(with_rows(st, rows), arms=[a for a in st.arms if a in (self.reference, arm)])
            try:
                plan = next_stage(pair, k)
            except ConfigError as err:
                return self._stop(f"no look after look {k}: {err}")
            if plan is None or arm not in plan["arms"]:
                self.settled.add(arm)
                continue
            arms = {arm: plan["arms"][arm]}
            if not any(self.reference in (e.get("arms") or {}) and int(e["stage"]) == k + 1 for e in self.entries):
                arms[self.reference] = plan["arms"][self.reference]
            if not self._submit(st, {**plan, "arms": arms}):
                return

    # -- two_stage: the whole study at once
    def _plan_whole(self) -> None:
        from ..analysis.design_table import next_stage
        from ..analysis.trials import study_table

        if self.stopped:
            return
        study = self.study
        stage_done = max([1] + [int(e["stage"]) for e in self.entries])
        table = consolidate(study)
        try:
            st = study_table(table, study.source)
            plan = next_stage(st, stage_done)
        except ConfigError as err:
            return self._stop(f"no stage after stage {stage_done}: {err}")
        if plan is not None:
            self._submit(st, plan)

    def _submit(self, st, plan: dict) -> bool:
        """Record ``plan`` (cut to the budget) and queue its experiments; False when the budget stopped it."""
        from ray import tune

        from .experiments import _stage_experiments
        from .stages import record_stage

        study = self.study
        entry, reason = fit_budget(study, st, stage_entry(study, st, plan))
        if entry is None:
            self._stop(reason)
            return False
        record_stage(study.directory, study.design.kind, entry)
        self.entries.append(entry)
        trials, epochs = stage_trials(study, entry)
        self.progress.total += trials
        self.progress.total_epochs += epochs
        word = "look" if study.design.kind == "sequential" else "stage"
        print(f"{word} {entry['stage']} planned and recorded ({trials} trials): {entry['why']}", flush=True)
        for arm in queue_order(study):
            for experiment in _stage_experiments(study, arm, entry, tune.grid_search):
                self.work.submit(self.job(arm, experiment))
        return True

    def _stop(self, reason: str) -> None:
        from .stages import record_stop

        self.stopped = True
        print(f"study '{self.study.name}': {reason}", flush=True)
        record_stop(self.study.directory, self.study.design.kind, reason)


def stage_entries_of(study: Study) -> list[dict]:
    from .experiments import stage_entries

    return stage_entries(study)


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
