"""The trainable: train and evaluate one configuration, one report per epoch.

``train(config)`` runs inside a Ray Tune trial (reports with ``ray.tune.report``, checkpoints
through Tune, resumes from ``ray.tune.get_checkpoint()``) or standalone (one printed line per epoch,
checkpoints in a local folder). The same seed gives the same numbers whether or not the run was
interrupted and resumed from a checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from ..config import resolve_config
from ..registry import ConfigError
from .reporting import in_tune_session, make_reporter
from .runtime import reset_process_state, set_threads, trial_threads
from .settings import TrialSettings
from .state import (checkpoint_scratch, config_changes, describe_changes, load_checkpoint, plain_config,
                    save_checkpoint, save_test_embeddings)
from .trial import Trial


class RunState:
    """Where a run stands: the next epoch, the wall time so far, the last validation, past reports;
    ``config`` is the resolved configuration (plain values), saved with every checkpoint."""

    def __init__(self, config: dict | None = None, owner: str | None = None):
        self.start_epoch, self.wall_s, self.last_val, self.history = 1, 0.0, {}, []
        self.config = config
        self.owner = owner            # the Tune trial id (None standalone), saved with each checkpoint
        self.exploited_from = None    # PBT: the trial whose checkpoint this one continued from

    def restore(self, trial: Trial, reporter) -> None:
        """Continue from the reporter's checkpoint, if any. In Tune, every epoch up to it is reported
        again: the driver writes results to a staging folder and copies them to the study folder in
        the background, so a driver killed after recording the checkpoint can leave the stored results
        some epochs behind it. The table keeps one row per epoch (the original where it exists).
        A checkpoint made with a different configuration is refused (ConfigError), see
        :func:`check_same_config`; one without a recorded configuration (older versions) is not checked."""
        with reporter.restore_dir() as restore:
            if restore is None:
                return
            state = load_checkpoint(restore, map_location=trial.runtime.device)
            if self.config is not None and "config" in state:
                mutable = tuple(self.config.get("protocol", {}).get("mutable", ()))
                check_same_config(state["config"], self.config, reporter, mutable)
            trial.load_state_dict(state)
            self.start_epoch, self.wall_s, self.last_val = state["epoch"] + 1, state["wall_s"], state["last_val"]
            self.history = list(state["reports"]) if "reports" in state else [state["report"]] if "report" in state else []
            donor = state.get("owner")
            self.exploited_from = state.get("exploited_from")
            if donor is not None and self.owner is not None and donor != self.owner:
                # a PBT exploit: another trial's model, optimizer and random state, this trial's new
                # thresholds (its configuration) from the next step on. The donor's reports are not
                # this trial's: they are neither replayed nor kept (its own history starts again)
                self.exploited_from, self.history = donor, []
                return
        # not in a PBT population (``protocol.mutable``): its scheduler reads each report's epoch as
        # progress, so a replayed epoch at a perturbation point pauses the member again, and it would
        # restart from the same checkpoint for ever (seen in the chaos run); the driver's ledger keeps
        # every result a member reported (study.result_ledger), and an interrupted population starts again
        if in_tune_session() and not (self.config or {}).get("protocol", {}).get("mutable"):
            for past in self.history:
                reporter.report({**past, "replayed": True})

    def checkpoint_state(self, trial: Trial, epoch: int) -> dict:
        state = {**trial.state_dict(), "epoch": epoch, "wall_s": self.wall_s, "last_val": self.last_val,
                 "reports": self.history}
        if self.config is not None:
            state["config"] = self.config
        if self.owner is not None:
            state["owner"] = self.owner
        if self.exploited_from is not None:
            state["exploited_from"] = self.exploited_from
        return state


def check_same_config(saved: dict, current: dict, reporter=None, mutable: tuple = ()) -> None:
    """Raise ConfigError naming up to three settings (``miner.name: asms → ms``) when the checkpoint's
    configuration differs from the current one in anything but the settings a resume may change
    (``state.RESUME_MAY_DIFFER``: epochs, evaluation, checkpoint cadence, device, workers, cache,
    data location) and the keys Population Based Training may change (``mutable``, from
    ``protocol.mutable``: an exploit continues another trial's checkpoint with new values). Standalone,
    the fix is another checkpoint folder or deleting this one. Inside Ray Tune a trial is restored
    with its own configuration, so there it never triggers.

    The recorded configuration is resolved again first, so a parameter added since the checkpoint
    was made compares at its default rather than as missing."""
    try:
        saved = plain_config(resolve_config(saved, where="checkpoint"))
    except (ValueError, TypeError, KeyError, AttributeError):  # ConfigError is a ValueError
        pass  # recorded by a version whose settings no longer validate: compare them as they are
    changes = [c for c in config_changes(saved, current) if c[0] not in set(mutable)]
    if not changes:
        return
    root = getattr(reporter, "checkpoint_root", None)
    where, fix = ((f"the checkpoint in {root}", f"use another --checkpoint-dir or delete {root} to start from scratch")
                  if root else ("the trial's checkpoint", "delete it to restart the trial from scratch"))
    raise ConfigError(f"{where} was made with a different configuration ({describe_changes(changes)}); "
                      f"refusing to resume: {fix}")


def _evaluate_epoch(trial: Trial, progress: RunState, report: dict, epoch: int) -> None:
    """Validation at its cadence (the last one is carried in later reports), the test at the end."""
    s = trial.settings
    if s.eval.every and (epoch % s.eval.every == 0 or epoch == s.train.epochs):
        progress.last_val = {**trial.evaluate("val"), "val_epoch": epoch}
    report.update(progress.last_val)
    report.setdefault(f"val/{s.eval.metric}", float("nan"))
    if epoch == s.train.epochs or (s.eval.test_every and epoch % s.eval.test_every == 0):
        report.update(trial.evaluate("test"))


def _report(trial: Trial, progress: RunState, reporter, report: dict, epoch: int) -> None:
    """Report the epoch, with a checkpoint when one is due."""
    train = trial.settings.train
    due = epoch == train.epochs or (train.checkpoint_every and epoch % train.checkpoint_every == 0)
    if due and reporter.keeps_checkpoints:
        with checkpoint_scratch() as tmp:
            save_checkpoint(tmp, progress.checkpoint_state(trial, epoch))
            kept = trial.evaluator.test_embeddings
            if kept is not None and epoch == train.epochs:  # k-fold: for the fold models' ensemble
                save_test_embeddings(tmp, kept)
            reporter.report(report, checkpoint_dir=tmp)
    else:
        reporter.report(report)


def _schedule(resolved: dict) -> dict:
    """``schedule/KEY``: the value of every key PBT may change (``protocol.mutable``), reported each epoch."""
    out = {}
    for key in resolved["protocol"]["mutable"]:
        section, _, name = key.partition(".")
        out[f"schedule/{key}"] = resolved[section][name]
    return out


def train(config: Mapping[str, Any], checkpoint_root: str | Path | None = None, reporter=None,
          threads: int | None = None) -> dict:
    """Train and evaluate one configuration; report once per epoch; return the last report.

    Inside a Ray Tune trial, reports and checkpoints go to Tune; standalone, a line per epoch is
    printed and, with ``checkpoint_root``, checkpoints are kept there and a rerun resumes from them.
    A run whose checkpoint already holds every epoch trains nothing: the reporter says so and the
    last report is returned (with ``done_before: True``). ``threads``: torch's intra-op threads
    standalone (default: torch's count at start-up, ``OMP_NUM_THREADS`` or one per core); in a Tune
    trial, the CPUs the trial holds (:func:`.runtime.trial_threads`)."""
    reset_process_state()  # a Ray worker may have run another trial before this one
    resolved = resolve_config(config)
    settings = TrialSettings.from_resolved(resolved)
    thread_count = set_threads(trial_threads(threads))
    reporter = reporter or make_reporter(checkpoint_root, settings.eval.metric)
    trial = Trial(settings)
    progress = RunState(plain_config(resolved), getattr(reporter, "trial_id", lambda: None)())
    progress.restore(trial, reporter)
    if progress.start_epoch > settings.train.epochs:  # every epoch is in the checkpoint already
        last = dict(progress.history[-1]) if progress.history else {"epoch": progress.start_epoch - 1, "status": "ok"}
        last["done_before"] = True
        announce = getattr(reporter, "done_before", None)
        if announce is not None:
            announce(last, settings.train.epochs)
        return last
    schedule = _schedule(resolved)
    if progress.exploited_from is not None:
        schedule["exploited_from"] = progress.exploited_from
    gpu_fraction = reporter.gpu_fraction() if trial.runtime.device.type == "cuda" else 0.0
    report: dict = {}
    for epoch in range(progress.start_epoch, settings.train.epochs + 1):
        started = time.perf_counter()
        report = trial.run_epoch(epoch)
        report.update(schedule)  # PBT: the thresholds this epoch trained with
        if report["status"] == "diverged":
            progress.wall_s += time.perf_counter() - started
            report.update(wall_s=progress.wall_s, gpu_s=progress.wall_s * gpu_fraction, threads=thread_count,
                          **{f"val/{settings.eval.metric}": float("nan")})
            reporter.report(report)
            return report
        _evaluate_epoch(trial, progress, report, epoch)
        progress.wall_s += time.perf_counter() - started
        report.update(epoch_s=time.perf_counter() - started, wall_s=progress.wall_s,
                      gpu_s=progress.wall_s * gpu_fraction, threads=thread_count)
        progress.history.append(report)
        _report(trial, progress, reporter, report, epoch)
    return report


def tune_trainable(config: Mapping[str, Any]) -> None:
    """The function Ray Tune runs: ``train`` without a return value (a returned dict would be
    reported to Tune a second time as an extra result). A trial without a configuration (Tune's
    search state for it was lost, e.g. when the disk filled up as Tune recorded it) is an error that
    says so, never a run of the defaults."""
    if not config or "loss" not in config or "seed" not in config:
        raise ConfigError("this trial has no configuration: Ray Tune's record of it was lost (for example, the "
                          "disk filled up while Tune saved its search state); the report names the planned grid "
                          "cells that have no result")
    train(config)
