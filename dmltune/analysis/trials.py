"""A study's results table reduced to what the analysis needs: one final row per trial.

Each trial's *final row* is its last report: the validation metric there is the value of the last
evaluation (``val_epoch`` says which epoch) and the test metric the one computed at the end of
training. A trial is *usable* when its status is ``ok`` and its validation value is a finite
number. Diverged and errored trials are *failed*: they count as the failure value (default 0) in
every mean over seeds, so failing is penalised. Unfinished trials have no value yet and are left
out. The time of every trial counts in every cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..registry import ConfigError

KEY = ["arm", "experiment", "trial_id"]
CONFIG_PREFIX = "config/"


@dataclass
class StudyTable:
    """Final rows of every trial, with the columns the analysis relies on."""

    name: str
    per_epoch: pd.DataFrame          # every report (trials.parquet)
    final: pd.DataFrame              # one row per trial
    arms: list[str]                  # in study order
    metric: str                      # e.g. "val/map@r"
    test_metric: str                 # e.g. "test/map@r"
    cost_column: str                 # "gpu_s", or "wall_s" when no trial used a GPU
    cost_unit: str                   # "GPU-hours" or "wall-hours"
    dims: dict[str, list[str]]       # per arm, the config columns that vary (the searched parameters)
    source: dict                     # the study file as run (study.yaml), {} if absent
    cache: dict = field(default_factory=dict, repr=False)   # derived tables, computed once

    def arm_rows(self, arm: str) -> pd.DataFrame:
        key = ("rows", arm)
        if key not in self.cache:
            self.cache[key] = self.final[self.final.arm == arm]
        return self.cache[key]

    FAILED = ("diverged", "error")

    def usable(self, rows: pd.DataFrame) -> pd.Series:
        if "_usable" in rows:
            return rows["_usable"]
        return (rows.status == "ok") & np.isfinite(rows[self.metric].astype(float))

    def scored(self, rows: pd.DataFrame, failure_value: float) -> pd.Series:
        """Validation values with every diverged or errored trial counted as ``failure_value``;
        NaN for unfinished trials (and for finished ones without a validation value)."""
        value = rows[self.metric].astype(float)
        out = value.where(self.usable(rows), np.nan)
        return out.mask(rows.status.isin(self.FAILED), failure_value)


def final_rows(table: pd.DataFrame) -> pd.DataFrame:
    """The last report of each trial (a trial that failed before reporting keeps its one row)."""
    t = table.copy()
    if "epoch" not in t:
        t["epoch"] = np.nan
    t = t.sort_values(KEY + ["epoch"], kind="stable", na_position="first")
    return t.groupby(KEY, sort=False).tail(1).reset_index(drop=True)


def searched_columns(rows: pd.DataFrame) -> list[str]:
    """The ``config/…`` columns that take more than one value among these rows, except a column that
    repeats an earlier one in every row (a dynamic loss's τ copied from the dsml miner)."""
    out, seen = [], []
    for c in (c for c in rows.columns if c.startswith(CONFIG_PREFIX)):
        values = rows[c].astype(str)
        if values.nunique(dropna=False) > 1 and not any(values.equals(v) for v in seen):
            out.append(c)
            seen.append(values)
    return out


def short_name(column: str) -> str:
    """``config/miner.gamma_pos`` → ``gamma_pos``."""
    return column[len(CONFIG_PREFIX):].rsplit(".", 1)[-1]


def read_study_table(study_dir: str | Path, metric: str | None = None) -> StudyTable:
    """Read ``trials.parquet`` (and ``study.yaml``) of a study folder."""
    folder = Path(study_dir)
    path = folder / "trials.parquet"
    if not path.is_file():
        raise ConfigError(f"{path} not found; run or resume the study first (dmltune run / resume)")
    try:
        table = pd.read_parquet(path)
    except Exception as err:
        raise ConfigError(f"{path} cannot be read ({type(err).__name__}); rerun `dmltune resume` on the study file to rebuild it") from None
    record = folder / "study.yaml"
    source = yaml.safe_load(record.read_text()) if record.is_file() else {}
    return study_table(table, source or {}, metric, name=(source or {}).get("name", folder.name))


def study_table(table: pd.DataFrame, source: dict | None = None, metric: str | None = None,
                name: str = "study") -> StudyTable:
    """A :class:`StudyTable` from a results table (as written by the runner) and the study file."""
    source = source or {}
    if table.empty or "arm" not in table:
        raise ConfigError("the results table has no trials yet; run the study first")
    metric = metric or ((source.get("eval") or {}).get("metric") or "map@r")
    metric = metric if metric.startswith("val/") else f"val/{metric}"
    if metric not in table:
        found = sorted(c[4:] for c in table.columns if c.startswith("val/"))
        raise ConfigError(f"no column {metric!r} in the results table; choose a metric from {found or 'none (was validation off?)'}")
    table = table.copy()
    for column in ("status", "wall_s", "gpu_s"):
        if column not in table:
            table[column] = "error" if column == "status" else 0.0
    final = final_rows(table)
    gpu_used = final["gpu_s"].fillna(0).sum() > 0
    cost_column, unit = ("gpu_s", "GPU-hours") if gpu_used else ("wall_s", "wall-hours")
    final["cost_h"] = final[cost_column].astype(float).fillna(0.0) / 3600
    final["_usable"] = (final.status == "ok") & np.isfinite(final[metric].astype(float))
    listed = [a.get("name") for a in source.get("arms") or [] if isinstance(a, dict)]
    arms = [a for a in listed if a in set(final.arm)] + sorted(set(final.arm) - set(listed))
    dims = {arm: searched_columns(final[final.arm == arm]) for arm in arms}
    return StudyTable(name, table, final, arms, metric, "test/" + metric[4:], cost_column, unit, dims, source)
