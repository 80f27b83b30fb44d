"""A study's results table reduced to what the analysis needs: one final row per trial.

Each trial's *final row* is its last report: the validation metric there is the value of the last
evaluation (``val_epoch`` says which epoch) and the test metric the one computed at the end of
training. A trial is *usable* when its status is ``ok`` or ``stopped`` (an early-stopping
scheduler, ASHA, ended it before its last epoch: its value is its last epoch's, as when such trials
were stored as ``ok``) and its validation value is a finite number. Diverged and errored trials are
*failed*: they count as the failure value (default 0) in every mean over seeds, so failing is
penalised. Unfinished trials have no value yet and are left out. The time of every trial counts in
every cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from ..registry import ConfigError
from .folds import collapse_folds, is_kfold

KEY = ["arm", "experiment", "trial_id"]
CONFIG_PREFIX = "config/"
COMPLETED = ("ok", "stopped")
"""Statuses of a trial that trained without failing: to its last epoch, or until ASHA stopped it."""
FINISHED = COMPLETED + ("diverged", "error")
"""Statuses of a trial that has its result (the rest, ``incomplete`` or none, are unfinished)."""


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
    folder: Path | None = None       # the study folder (k-fold: where the fold models' embeddings are)

    def search_mode(self, arm: str) -> str | None:
        """The arm's search mode in the recorded study file (None when unknown)."""
        for entry in self.source.get("arms") or []:
            if isinstance(entry, dict) and entry.get("name") == arm:
                search = entry.get("search")
                return (search.get("mode") or "grid") if isinstance(search, dict) else "grid"
        return None

    @property
    def kfold(self) -> bool:
        """Whether each configuration × seed was scored over k folds (final rows are fold means)."""
        return "folds" in self.final

    def arm_rows(self, arm: str) -> pd.DataFrame:
        key = ("rows", arm)
        if key not in self.cache:
            self.cache[key] = self.final[self.final.arm == arm]
        return self.cache[key]

    FAILED = ("diverged", "error")

    def usable(self, rows: pd.DataFrame) -> pd.Series:
        if "_usable" in rows:
            return rows["_usable"]
        return rows.status.isin(COMPLETED) & np.isfinite(rows[self.metric].astype(float))

    def scored(self, rows: pd.DataFrame, failure_value: float) -> pd.Series:
        """Validation values with every diverged or errored trial counted as ``failure_value``;
        NaN for unfinished trials (and for finished ones without a validation value)."""
        value = rows[self.metric].astype(float)
        out = value.where(self.usable(rows), np.nan)
        return out.mask(rows.status.isin(self.FAILED), failure_value)


def own_costs(final: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """A PBT member that continued from another member's checkpoint (``exploited_from``) carries the
    donor's time up to then in ``wall_s``. Its own cost is estimated as the epochs it trained (its last
    epoch: a synchronous exploit continues at the member's own epoch) × its mean own epoch time
    (``epoch_s``; Tune may drop the report of an epoch at which a member was paused), with ``gpu_s``
    in the same proportion. Every other trial keeps its reported time, which is exact."""
    if "exploited_from" not in table or "epoch_s" not in table or not table["exploited_from"].notna().any():
        return final
    exploited = table[table.trial_id.isin(set(table.loc[table["exploited_from"].notna(), "trial_id"]))]
    grouped = exploited.groupby(KEY)
    own = grouped["epoch_s"].mean() * grouped["epoch"].max()
    final = final.copy()
    for key, seconds in own.items():
        where = (final[KEY] == pd.Series(key, index=KEY)).all(axis=1)
        wall = final.loc[where, "wall_s"].astype(float)
        share = (final.loc[where, "gpu_s"].astype(float) / wall).where(wall > 0, 0.0).fillna(0.0)
        final.loc[where, "wall_s"] = float(seconds)
        final.loc[where, "gpu_s"] = share * float(seconds)
    return final


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
        raise ConfigError(f"{path} cannot be read ({type(err).__name__}); rebuild it with `dmltune resume {folder}`") from None
    record = folder / "study.yaml"
    source = yaml.safe_load(record.read_text()) if record.is_file() else {}
    st = study_table(table, source or {}, metric, name=(source or {}).get("name", folder.name))
    st.folder = folder
    return st


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
    final = own_costs(final_rows(table), table)
    if is_kfold(final):
        planned = (source.get("protocol") or {}).get("folds") if isinstance(source.get("protocol"), dict) else None
        final = collapse_folds(final, planned if isinstance(planned, int) and not isinstance(planned, bool) else None)
    gpu_used = final["gpu_s"].fillna(0).sum() > 0
    cost_column, unit = ("gpu_s", "GPU-hours") if gpu_used else ("wall_s", "wall-hours")
    final["cost_h"] = final[cost_column].astype(float).fillna(0.0) / 3600
    final["_usable"] = final.status.isin(COMPLETED) & np.isfinite(final[metric].astype(float))
    listed = [a.get("name") for a in source.get("arms") or [] if isinstance(a, dict)]
    arms = [a for a in listed if a in set(final.arm)] + sorted(set(final.arm) - set(listed))
    dims = {arm: searched_columns(final[final.arm == arm]) for arm in arms}
    return StudyTable(name, table, final, arms, metric, "test/" + metric[4:], cost_column, unit, dims, source)
