"""Ray Tune's MLflow logger as dmltune uses it: names MLflow accepts (``@`` → ``_at_``), one request
per report, epochs as steps, and a resumed trial continuing its own run (see :mod:`.tracking`)."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Mapping
from typing import Any

from ray.air.integrations.mlflow import MLflowLoggerCallback

from .tracking import BATCH, DROPPED_KEYS, MAX_PARAM_VALUE, mlflow_name


class DmltuneMLflowLogger(MLflowLoggerCallback):
    """Ray's MLflow logger, with valid names, one request per report, epochs as steps and a
    resumed trial continuing its run (see the module's docstring).

    Tracking never stops training: the first request that fails (the server went away mid-study,
    after MLflow's own few retries) is printed as one line and recorded in ``health`` (shared by
    the study's callbacks); from then on nothing more is sent, and the study's exit code says so."""

    def __init__(self, *args, health: dict | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.health = health if health is not None else {}

    def _guarded(self, action, *args) -> None:
        if self.health.get("failure"):
            return
        try:
            action(*args)
        except Exception as err:  # anything MLflow raises: a lost connection, a refused request, ...
            lines = str(err).strip().splitlines() or [type(err).__name__]
            reason = lines[0] if len(lines[0]) <= 300 else lines[0][:297] + "..."
            self.health["failure"] = (f"MLflow tracking at {self.tracking_uri} failed ({reason}); the trials went on, "
                                      "and the rest of the study was not logged to MLflow (every result is in trials.parquet)")
            print(f"dmltune: {self.health['failure']}", file=sys.stderr, flush=True)

    def setup(self, *args, **kwargs):
        self._trial_runs, self._last_epoch = {}, {}  # trial → its run; trial → the last epoch its run has
        self._guarded(self._setup)

    def log_trial_start(self, trial):
        self._guarded(self._start, trial)

    def log_trial_result(self, iteration: int, trial, result: dict):
        self._guarded(self._result, iteration, trial, result)

    def log_trial_end(self, trial, failed: bool = False):
        if trial in self._trial_runs:
            self._guarded(super().log_trial_end, trial, failed)

    def _setup(self):
        super().setup()
        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.tracking_uri)

    def _start(self, trial):
        if trial in self._trial_runs:  # restarted in this session (after a failure): same run
            self._client.update_run(self._trial_runs[trial], status="RUNNING")
            return
        run_id, last = self._earlier_run(trial)
        if run_id is None:
            seed = trial.config.get("seed") if isinstance(trial.config, Mapping) else None
            tags = {**self.tags, "trial_name": str(trial), "trial_id": trial.trial_id,
                    **({"seed": str(seed)} if seed is not None else {})}
            run = self.mlflow_util.start_run(tags=tags, run_name=f"{tags.get('arm', 'trial')}_{trial.trial_id}")
            run_id = run.info.run_id
            self._log_params(run_id, trial.config)
        else:
            self._client.update_run(run_id, status="RUNNING")
        self._trial_runs[trial], self._last_epoch[trial] = run_id, last

    def _earlier_run(self, trial) -> tuple[str | None, float]:
        """The run of ``trial`` from an earlier run of the study (same study, arm and trial id) and
        the last epoch it has; ``(None, 0)`` when there is none."""
        seed = trial.config.get("seed") if isinstance(trial.config, Mapping) else None
        filters = [f"tags.trial_id = '{trial.trial_id}'"] + ([f"tags.seed = '{seed}'"] if seed is not None else [])
        filters += [f"tags.{key} = '{self.tags[key]}'" for key in ("study", "arm") if key in self.tags]
        runs = self._client.search_runs([self.mlflow_util.experiment_id], " and ".join(filters),
                                        max_results=1, order_by=["attributes.start_time DESC"])
        if not runs:
            return None, 0
        return runs[0].info.run_id, runs[0].data.metrics.get("epoch", 0)

    def _log_params(self, run_id: str, config) -> None:
        from mlflow.entities import Param as MlflowParam
        from ray.tune.utils import flatten_dict

        flat = flatten_dict(dict(config)) if isinstance(config, Mapping) else {}
        params = [MlflowParam(mlflow_name(k), str(v)[:MAX_PARAM_VALUE]) for k, v in flat.items()]
        for i in range(0, len(params), BATCH):
            self._client.log_batch(run_id, params=params[i:i + BATCH])

    def _result(self, iteration: int, trial, result: dict):
        if trial not in self._trial_runs:
            self._start(trial)
        epoch = result.get("epoch")
        epoch = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None
        if result.get("replayed") and epoch is not None and epoch <= self._last_epoch.get(trial, 0):
            return  # reported again after a restore, and the run has it already
        from mlflow.entities import Metric
        from ray.air.constants import TRAINING_ITERATION
        from ray.tune.utils import flatten_dict

        step = epoch if epoch is not None else result.get(TRAINING_ITERATION, iteration)
        flat = flatten_dict({k: v for k, v in result.items() if k not in DROPPED_KEYS})
        now, metrics = _now_ms(), {}
        for key, value in flat.items():
            value = _number(value)
            if value is not None:
                metrics[mlflow_name(key)] = Metric(mlflow_name(key), value, now, int(step))
        metrics = list(metrics.values())
        for i in range(0, len(metrics), 1000):
            self._client.log_batch(self._trial_runs[trial], metrics=metrics[i:i + 1000])
        if epoch is not None:
            self._last_epoch[trial] = max(self._last_epoch.get(trial, 0), epoch)


def _number(value: Any) -> float | None:
    """``value`` as a finite float (numpy and torch scalars too); None for anything else: strings,
    booleans, lists, NaN and infinities."""
    if isinstance(value, (str, bytes, bool)) or value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _now_ms() -> int:
    return int(time.time() * 1000)
