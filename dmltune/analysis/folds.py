"""k-fold studies in the analysis: a configuration × seed is scored over all its folds.

In a study with ``protocol: {validation: kfold}``, each configuration × seed is one trial per fold
(the results table's ``fold`` column). :func:`collapse_folds` turns their final rows into one row per
configuration × seed, which the rest of the analysis treats as it treats a trial of a split study:

* its validation value (and every other ``val/…`` and ``test/…`` metric) is the mean over its folds,
  so the test metric is the mean over the fold models;
* it is ``ok`` only when every fold ended ``ok`` (``stopped`` when every fold ended ``ok`` or
  ``stopped`` and ASHA stopped one early); ``error`` (or else ``diverged``) when any fold did,
  so a failing fold penalises the configuration; ``incomplete`` while a fold has no final result;
* its cost (``wall_s``, ``gpu_s``) is the sum over its folds: all folds' compute is counted;
* ``folds`` is the number of fold trials, ``fold_trials`` their ids and ``test_embeddings`` where
  their test embeddings are stored (for :mod:`.fold_ensemble`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

def is_kfold(final: pd.DataFrame) -> bool:
    return "fold" in final and bool(final["fold"].notna().any())


def collapse_folds(final: pd.DataFrame, folds: int | None = None) -> pd.DataFrame:
    """One row per arm × experiment × seed × configuration from the fold trials' final rows
    (``folds``: the number planned; by default the most folds any configuration has)."""
    from .trials import COMPLETED

    config = [c for c in final.columns if c.startswith("config/")]
    key = final[["arm", "experiment", "seed"] + config].map(str).agg("\x1f".join, axis=1)
    folds = int(folds or final.groupby(key)["fold"].nunique().max())
    metrics = [c for c in final.columns if c.startswith(("val/", "test/")) and pd.api.types.is_numeric_dtype(final[c])]
    rows = []
    for _, group in final.assign(_key=key).groupby("_key", sort=False):
        group = group.sort_values("fold", kind="stable")
        row = group.iloc[0].copy()
        statuses = group["status"].fillna("incomplete")
        if statuses.eq("error").any():
            status = "error"
        elif statuses.eq("diverged").any():
            status = "diverged"
        elif statuses.isin(COMPLETED).all() and group["fold"].nunique() >= folds:
            status = "ok" if statuses.eq("ok").all() else "stopped"
        else:
            status = "incomplete"
        row["status"] = status
        for column in metrics:  # a usable unit needs every fold's value
            values = group[column].astype(float)
            row[column] = np.nan if status in COMPLETED and not np.isfinite(values).all() else float(values.mean())
        for column in ("wall_s", "gpu_s"):
            if column in group:
                row[column] = float(group[column].astype(float).fillna(0.0).sum())
        if "error" in group:
            errors = [f"fold {f}: {e}" for f, e in zip(group["fold"], group["error"]) if isinstance(e, str) and e]
            row["error"] = "; ".join(errors) if errors else row["error"]
        row["folds"] = int(group["fold"].nunique())
        row["fold_trials"] = ",".join(map(str, group["trial_id"]))
        paths = group["test_embeddings"] if "test_embeddings" in group else pd.Series([None] * len(group))
        row["test_embeddings"] = ("|".join(map(str, paths)) if status in COMPLETED and paths.notna().all()
                                  and len(paths) >= folds else None)
        row["fold"] = np.nan
        rows.append(row.drop(labels=["_key"]))
    return pd.DataFrame(rows).reset_index(drop=True)
