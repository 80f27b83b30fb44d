"""A first look at a study folder: per arm, what ran, what it cost, and its best trial.

This is the plain summary ``dmltune report`` prints until the full analysis (selection over seeds
with confidence intervals, tuning cost to match, plots) is in place.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..registry import ConfigError


def read_trials(study_dir: Path) -> pd.DataFrame:
    path = Path(study_dir) / "trials.parquet"
    if not path.is_file():
        raise ConfigError(f"{path} not found; run or resume the study first (dmltune run / resume)")
    try:
        return pd.read_parquet(path)
    except Exception as err:
        raise ConfigError(f"{path} cannot be read ({type(err).__name__}); rerun `dmltune resume {study_dir}` to rebuild it") from None


def arm_summary(table: pd.DataFrame, metric: str = "val/map@r") -> pd.DataFrame:
    """One row per arm from the last report of each trial."""
    last = table.sort_values("epoch").groupby("trial_id", sort=False).tail(1)
    rows = []
    for arm, group in last.groupby("arm", sort=False):
        ok = group[group.status == "ok"]
        best = ok.loc[ok[metric].idxmax()] if metric in ok and ok[metric].notna().any() else None
        rows.append({
            "arm": arm,
            "trials": len(group),
            "ok": int((group.status == "ok").sum()),
            "diverged": int((group.status == "diverged").sum()),
            "errors": int((group.status == "error").sum()),
            "wall_h": group.get("wall_s", pd.Series(dtype=float)).sum() / 3600,
            "gpu_h": group.get("gpu_s", pd.Series(dtype=float)).sum() / 3600,
            f"best {metric}": None if best is None else best[metric],
            "its test/recall@1": None if best is None else best.get("test/recall@1"),
        })
    return pd.DataFrame(rows)


def print_summary(study_dir: Path, metric: str = "val/map@r") -> pd.DataFrame:
    summary = arm_summary(read_trials(study_dir), metric)
    with pd.option_context("display.width", 160, "display.max_columns", 20, "display.float_format", "{:.4f}".format):
        print(summary.to_string(index=False))
    print("\n(best = highest final validation value over the arm's trials; selection over seeds with intervals "
          "and the tuning cost to match come with the analysis)")
    return summary
