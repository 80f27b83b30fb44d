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
import sys
import time
from pathlib import Path

import yaml

from ..interruption import StudyInterrupted
from ..training import tune_trainable
from .checkpoint_repair import repair_missing_checkpoints
from .consolidate import consolidate
from .domains import replace_at
from .schema import Arm, Study

STUDY_RECORD = "study.yaml"



def plan_lines(study: Study) -> list[str]:
    gpu = study.resources.get("gpu")
    lines = [f"study {study.name} → {study.directory}",
             f"seeds {study.seeds}; per trial {study.resources['cpu']} CPU" + ((", GPU share by backbone" if gpu == "auto" else f", {gpu} GPU") if gpu else "")
             + (f"; at most {study.concurrency} at once" if study.concurrency else "")]
    roots = sorted({str(a.config["dataset"].get("root")) for a in study.arms if a.config["dataset"].get("root")})
    for root in roots:
        lines.append(f"data: {root}")
    total = 0
    for arm in study.arms:
        n = arm.trials_per_seed * len(study.seeds)
        total += n
        searched = ", ".join(f"{'.'.join(p)} {d.kind} {list(d.values)}" for p, d in arm.domains) or "fixed"
        mode = arm.search["mode"] + (" + ASHA" if arm.search["scheduler"] else "")
        share = f"   ({arm.gpu(gpu):g} GPU per trial)" if gpu == "auto" else ""
        lines.append(f"  {arm.name:<24} {mode:<15} {n:>4} trials   {searched}{share}")
    lines.append(f"  {'total':<24} {'':<15} {total:>4} trials")
    return lines


def _param_space(arm: Arm, seed_space):
    space = copy.deepcopy(arm.config)
    for path, domain in arm.domains:
        space = replace_at(space, path, domain.to_tune())
    space["seed"] = seed_space
    return space


def _experiments(study: Study, arm: Arm):
    """(folder, seed space, searcher seed) of each Tune experiment of an arm."""
    from ray import tune

    if arm.search["mode"] == "grid":
        yield study.directory / arm.name, tune.grid_search(list(study.seeds)), study.seeds[0]
    else:
        for seed in study.seeds:
            yield study.directory / arm.name / f"seed_{seed}", seed, seed


def _tune_config(study: Study, arm: Arm, metric: str, searcher_seed: int):
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter
    from ray.tune.search.optuna import OptunaSearch

    mode, scheduler = arm.search["mode"], None
    if arm.search["scheduler"]:
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
    return tune.TuneConfig(metric=metric, mode="max", search_alg=search, scheduler=scheduler, num_samples=samples)


class Progress:
    """One line per finished trial, with a running tally over the whole study."""

    def __init__(self, total: int, metric: str):
        self.total, self.done, self.metric = total, 0, metric  # (no stream kept: Tune pickles callbacks)
        self.started = time.perf_counter()

    def callback(self, arm: Arm):
        from ray.tune import Callback

        progress, arm_name, paths = self, arm.name, [p for p, _ in arm.domains]

        class _Printer(Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                progress.finished(arm_name, paths, trial, "ok")

            def on_trial_error(self, iteration, trials, trial, **info):
                progress.finished(arm_name, paths, trial, "error")

        return _Printer()

    def finished(self, arm_name, paths, trial, outcome) -> None:
        self.done += 1
        last = trial.last_result or {}
        status = last.get("status", outcome) if outcome == "ok" else outcome
        value = last.get(self.metric)
        shown = f"{self.metric} {value:.4f}" if isinstance(value, float) else "no result"
        test = last.get("test/recall@1")
        test_text = f", test R@1 {test:.4f}" if isinstance(test, float) else ""
        elapsed = time.perf_counter() - self.started
        searched = ""
        for path in paths:
            node = trial.config
            for key in path:
                node = node.get(key, {}) if isinstance(node, dict) else {}
            value = f"{node:.4g}" if isinstance(node, float) else node
            searched += f" {path[-1]}={value}"
        print(f"[{self.done}/{self.total}] {arm_name}{searched} seed {trial.config.get('seed')} {status}: "
              f"{shown}{test_text} ({last.get('epoch', 0)} epochs) · {elapsed:.0f} s", file=sys.stdout, flush=True)


def check_storage(folder: Path) -> None:
    """The study folder can be created and written, or a one-line error says why."""
    from ..registry import ConfigError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as err:
        raise ConfigError(f"storage {folder} is not writable ({err.strerror or type(err).__name__}); "
                          "set storage to a folder you can write (--set storage=PATH)") from None


def run_study(study: Study, address: str | None = None) -> Path:
    """Run (or finish) every arm, then write the consolidated tables; returns the study folder."""
    import ray
    from ray import tune

    check_storage(study.directory)
    record = study.directory / STUDY_RECORD
    if not record.exists():
        record.write_text(yaml.safe_dump(study.source, sort_keys=False))
    if address is None:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
    # Ctrl-C stops the whole study (Tune's own handler would end only the current arm and let the
    # next one start, with no trace in the exit code); resume continues from the last checkpoints
    os.environ.setdefault("TUNE_DISABLE_SIGINT_HANDLER", "1")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter honours verbose=0: no tables
    # short trials checkpoint every epoch by design; Tune's advice about snapshot frequency is noise here
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    metric = f"val/{study.arms[0].resolved['eval']['metric']}"
    progress = Progress(sum(a.trials_per_seed * len(study.seeds) for a in study.arms), metric)
    try:
        for arm in study.arms:
            trainable = tune.with_resources(tune_trainable, {"cpu": study.resources["cpu"],
                                                             "gpu": arm.gpu(study.resources.get("gpu", 0))})
            for folder, seed_space, searcher_seed in _experiments(study, arm):
                run_config = tune.RunConfig(
                    storage_path=str(folder.parent), name=folder.name, verbose=0,
                    callbacks=[progress.callback(arm)],
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    failure_config=tune.FailureConfig(max_failures=study.retries))
                if tune.Tuner.can_restore(str(folder)):
                    repair_missing_checkpoints(folder)
                    tuner = tune.Tuner.restore(str(folder), trainable=trainable, resume_unfinished=True,
                                               resume_errored=False)
                else:
                    tuner = tune.Tuner(trainable, param_space=_param_space(arm, seed_space),
                                       tune_config=_tune_config(study, arm, metric, searcher_seed),
                                       run_config=run_config)
                try:
                    tuner.fit()
                except KeyboardInterrupt:
                    raise StudyInterrupted(f"interrupted during arm '{arm.name}'; every finished trial is kept: "
                                           f"continue with `dmltune resume {study.directory}`") from None
        consolidate(study)  # reading the experiments back needs Ray running
    finally:
        if started_here:
            ray.shutdown()
    return study.directory
