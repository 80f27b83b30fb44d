"""The study's results table: one row per trial × reported epoch, from every arm's Tune experiment.

Columns: ``arm``, ``experiment``, ``trial_id``, ``seed``, ``fold`` (k-fold studies: the fold the
trial validated on; ``test_embeddings`` then says where its final test embeddings are), ``stage``
(staged designs: the stage or look that ran the trial), ``retries`` (times Tune restarted the trial
after a failure) and ``lost_attempt`` (the reason of the last failed attempt of a trial that then
finished; ``error`` is for trials that ended in error), ``trial_status`` (Tune's: TERMINATED,
ERROR, ...), ``status`` (the trainable's: ok, diverged; ``error`` for a failed trial; ``stopped``
for every row of a trial an early-stopping scheduler, ASHA, ended before its last epoch), ``error``
(first line of the failure), every reported metric (epoch, loss, val/…, test/…, gpu_s, wall_s, …)
and the trial's configuration flattened into ``config/…`` columns. Written as ``trials.parquet``
and ``trials.csv`` in the study folder. A dynamic loss's τ taken from the ``dsml`` miner (see
``dmltune.pairs.coupling``) is written out in its ``config/loss.…`` columns, as the trial used it.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..pairs.coupling import couple_dynamic_thresholds
from .experiments import experiment_stages
from .result_ledger import ledger_rows

TABLE = "trials"


def flatten(tree: dict, prefix: str = "config/") -> dict:
    """``{"miner": {"gamma_pos": 0.1}}`` → ``{"config/miner.gamma_pos": 0.1}``; lists become text."""
    out = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        else:
            out[name] = str(value) if isinstance(value, list) else value
    return out


UNFINISHED = ("PENDING", "RUNNING", "PAUSED")
"""Tune statuses of a trial that never finished although its experiment did: its node died (or its
actor was lost) and no retry was left. Such a trial counts as an error, with that reason."""


def finished_before_interrupt(df: pd.DataFrame, config: dict) -> bool:
    """A trial Tune still lists as unfinished (its run was interrupted) whose reports already reach
    its last epoch with an ``ok`` status: it finished, as its console line said; only Tune's record of
    it was not written. Its rows keep the status the trainable reported."""
    epochs = ((config or {}).get("train") or {}).get("epochs")
    if not epochs or "epoch" not in df or "status" not in df or df.empty:
        return False
    last = df.sort_values("epoch", kind="stable").iloc[-1]
    return bool(last["epoch"] == epochs and last["status"] == "ok")


WORKER_LOST = ("worker process has died", "The actor is dead", "its node has died",
               "The actor died unexpectedly", "ActorDiedError", "ActorUnavailableError", "NodeDiedError",
               "The task may or may not have been executed on the actor")  # (ActorUnavailableError's words)
"""Ray's words (Ray 2.60's GCS and ``ray.exceptions``) for a trial whose worker process or node was
lost: Tune reports such a trial either as unfinished or as an error whose file holds one of these
(which one depends on when the loss is seen); both read the same in the table."""


def _worker_lost(trial, detail: str) -> str:
    if trial.status == "TERMINATED":  # a retry finished it: this is the lost attempt's reason
        return f"an attempt did not finish: its node died or its worker was lost ({detail})"
    return (f"the trial did not finish: its node died or its worker was lost, and no retry was left "
            f"(study 'retries') ({detail})")


def _error_file(trial) -> Path | None:
    """The trial's ``error.txt``: where Tune's driver wrote it (``error_file``, a staging folder of the
    Ray session), else its copy in the trial's folder in storage (``path``): the staging path read
    back from a record need not be the one the error was written to."""
    from ray.air.constants import EXPR_ERROR_FILE

    staged = getattr(trial, "error_file", None)
    stored = getattr(trial, "path", None)
    for path in (staged, Path(stored) / EXPR_ERROR_FILE if stored else None):
        if path and Path(path).is_file():
            return Path(path)
    return None


def _error_summary(trial) -> str:
    path = _error_file(trial)
    if path is not None:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines() if line.strip()]
        lost = [line for line in lines if any(mark in line for mark in WORKER_LOST)]
        if lost:  # the reason may sit above the file's last line (the actor's pid, ip, ...)
            return _worker_lost(trial, lost[-1][:500])
        return lines[-1][:500] if lines else "error"
    if trial.status in UNFINISHED:
        return _worker_lost(trial, f"Tune status {trial.status}")
    return "error" if trial.status == "ERROR" else ""


def _test_embeddings(trial, study_dir: Path | None) -> str | None:
    """Where a k-fold trial's final test embeddings lie (relative to the study folder), if stored."""
    from ..training.state import TEST_EMBEDDINGS_FILE

    if not (trial.config.get("protocol") or {}).get("validation") == "kfold":
        return None
    checkpoint = trial.checkpoint
    path = Path(checkpoint.path) / TEST_EMBEDDINGS_FILE if checkpoint is not None else None
    if path is None or not path.is_file():
        return None
    inside = study_dir is not None and Path(study_dir) in path.parents
    return str(path.relative_to(study_dir)) if inside else str(path)


STOPPED = "stopped"
"""The status of a trial an early-stopping scheduler (ASHA) ended before its last epoch: finished, with
the result of its last epoch (the analysis treats it as it treats ``ok``; before this status existed
such a trial was stored as ``ok``, and tables written then still read the same)."""


def cut_short(df: pd.DataFrame, config: dict) -> str:
    """Why a trial Tune calls finished (TERMINATED, no error) did not run to its end: its reports end
    ``ok`` before its last epoch ("" if not). Without an early-stopping scheduler that is an error;
    with one (ASHA), the trial was stopped early (:data:`STOPPED`)."""
    epochs = ((config or {}).get("train") or {}).get("epochs")
    if not epochs or "epoch" not in df or "status" not in df or df["epoch"].isna().all():
        return ""
    last = df.sort_values("epoch", kind="stable").iloc[-1]
    if last["status"] != "ok" or last["epoch"] >= epochs:
        return ""
    return (f"Tune ended the trial after epoch {int(last['epoch'])} of {epochs} with no error: it did not "
            f"finish, and its result is not a finished trial's")


def experiment_rows(folder: Path, arm: str, interrupted: bool = False, experiment: str | None = None,
                    study_dir: Path | None = None, early_stopping: bool = False) -> list[pd.DataFrame]:
    """One frame per trial of the experiment in ``folder``. After an interruption an unfinished trial
    is ``incomplete`` (resume continues it); otherwise it is an error (see UNFINISHED). ``experiment``:
    the name in the table's ``experiment`` column (default: the folder's name); the trial ids of a
    grid block added by ``extend`` (folder ``ARM+extN``) are prefixed with ``extN:``, so that they
    stay unique within the arm's one grid search. Without ``early_stopping`` (an ASHA scheduler) a
    trial Tune ended before its last epoch is an error (:func:`cut_short`); with it, ``stopped``."""
    from ray.tune import ExperimentAnalysis

    analysis = ExperimentAnalysis(str(folder))
    frames = analysis.trial_dataframes
    ledger = ledger_rows(folder)
    out = []
    for trial in analysis.trials:
        df = frames.get(trial.trial_id, frames.get(trial.path))
        if trial.trial_id in ledger:  # what Tune's result file lost when it restarted the trial (PBT)
            df = pd.concat([ledger[trial.trial_id]] + ([df] if df is not None and len(df) else []), ignore_index=True)
        df = df.copy() if df is not None and len(df) else pd.DataFrame([{}])
        df = df.drop(columns=[c for c in df.columns if c.startswith("config/")])  # replaced by ours below
        # a restored experiment can list a result twice (a restored trial replays its epochs up to
        # the checkpoint, and after a checkpoint repair Tune's iteration counter restarts below the
        # epoch the trial resumed from): one row per epoch, the original where it exists, else the
        # replayed copy (``replayed`` is true on such a row)
        df["replayed"] = df["replayed"].eq(True) if "replayed" in df else False
        if "epoch" in df:
            df = df.iloc[(~df["replayed"]).argsort(kind="stable")]  # replayed rows first, originals last
            df = df.drop_duplicates(subset="epoch", keep="last")
        elif "training_iteration" in df:
            df = df.drop_duplicates(subset="training_iteration", keep="last")
        lost = trial.status in UNFINISHED and not interrupted
        error = _error_summary(trial) if lost or trial.status not in UNFINISHED else ""
        retries = int(getattr(trial, "num_failures", 0) or 0)
        lost_attempt = ""
        if trial.status == "TERMINATED" and error:  # retried, then finished: the lost attempt's reason apart
            lost_attempt, error = error, ""
        block = folder.name[len(arm) + 1:] if folder.name.startswith(f"{arm}+") else ""
        protocol = trial.config.get("protocol") or {}
        meta = {"arm": arm, "experiment": experiment or folder.name,
                "trial_id": f"{block}:{trial.trial_id}" if block else trial.trial_id,
                "seed": trial.config.get("seed"), "fold": protocol.get("fold"), "trial_status": trial.status,
                "error": error, "retries": retries, "lost_attempt": lost_attempt,
                "test_embeddings": _test_embeddings(trial, study_dir),
                **flatten({k: v for k, v in couple_dynamic_thresholds(trial.config).items()
                           if k not in ("seed", "protocol")})}
        for key, value in meta.items():
            df[key] = [value] * len(df)
        if "status" not in df:
            df["status"] = None
        df["status"] = df["status"].fillna("error" if trial.status == "ERROR" else "incomplete")
        if trial.status == "ERROR" or lost:
            df["status"] = "error"
        elif trial.status in UNFINISHED and not finished_before_interrupt(df, trial.config):
            df["status"] = "incomplete"
        elif trial.status == "TERMINATED" and (short := cut_short(df, trial.config)):
            if early_stopping:  # the scheduler stopped it: a finished trial, with its own label
                df["status"] = STOPPED
            else:
                df["error"], df["status"] = short, "error"
        out.append(df)
    return out


def consolidate(study, interrupted: bool = False) -> pd.DataFrame:
    """Write ``trials.parquet`` and ``trials.csv`` from every experiment of the study."""
    frames = []
    staged = getattr(study, "design", None) is not None and study.design.staged
    for arm in study.arms:
        grid = arm.search["mode"] == "grid"
        for experiment in experiment_stages(study, arm):
            folder = experiment.folder
            if folder.is_dir():  # a grid grown by `extend` is still one search: one experiment name
                rows = experiment_rows(folder, arm.name, interrupted, experiment=arm.name if grid else None,
                                       study_dir=study.directory, early_stopping=bool(arm.search.get("scheduler")))
                if staged:  # which stage (two_stage) or look (sequential) ran the trial
                    for frame in rows:
                        frame["stage"] = experiment.stage
                frames.extend(rows)
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if "fold" in table and table["fold"].isna().all():  # one validation split: no fold column
        table = table.drop(columns=["fold", "test_embeddings"], errors="ignore")
    first = ["arm", "experiment", "trial_id", "seed", "fold", "stage", "trial_status", "status", "error", "retries",
             "lost_attempt", "epoch"]
    table = table[[c for c in first if c in table] + [c for c in table.columns if c not in first]]
    if "epoch" in table:
        table = table.sort_values(["arm", "experiment", "trial_id", "epoch"], kind="stable").reset_index(drop=True)
    for column in table.columns:  # mixed-type columns (e.g. an empty error next to text) as strings
        if table[column].dtype == object:
            table[column] = table[column].map(lambda v: v if v is None or isinstance(v, str) else str(v))
    write_table(study, table)
    return table


def write_table(study, table: pd.DataFrame) -> None:
    """``trials.parquet`` and ``trials.csv``, each replaced in one step (written beside, then renamed),
    so a full disk or a kill leaves the previous table whole; a full or read-only disk is the
    study's one-line stop."""
    import io

    from ..atomic import write_atomic
    from .disk import describe, stop_for_disk

    parquet = io.BytesIO()
    table.to_parquet(parquet, index=False)
    for name, data in ((f"{TABLE}.parquet", parquet.getvalue()), (f"{TABLE}.csv", table.to_csv(index=False))):
        try:
            write_atomic(study.directory / name, data)
        except OSError as err:
            what = describe(err)  # (the partial file is gone: write_atomic removed it)
            if what is None:
                raise
            raise stop_for_disk(study, what, study.directory / name) from None
