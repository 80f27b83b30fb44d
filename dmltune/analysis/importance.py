"""How much an arm's hyperparameters matter: tunability and per-parameter importance.

- **Tunability** (Probst, Boulesteix & Bischl 2019): the best configuration's validation mean minus
  the arm's *default* configuration's, where the default (every searched parameter at its declared
  default in dmltune's registry) is one of the grid's cells. The best is the selected configuration,
  so the naive difference carries the winner's curse; the cross-fitted best minus the default is
  reported beside it.
- **Importance**: fANOVA (Hutter, Hoos & Leyton-Brown 2014) through ``optuna.importance`` with its
  ``FanovaImportanceEvaluator``: the share of the variance of the validation value explained by each
  searched parameter's main effect, normalised over the parameters, on all finished trials
  (failures penalised). Its spread over seeds comes from the same fit on each seed's trials alone.
  Computed for arms with at least two searched parameters.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from .differences import gap
from .selection import Selection, config_keys, config_label, estimate
from .trials import CONFIG_PREFIX, StudyTable, short_name


def _sections():
    from ..config import EVAL, TRAIN
    from ..data.datasets import DATASETS
    from ..generation import GENERATORS
    from ..models.model_section import MODEL
    from ..pairs import LOSSES, MINERS

    named = {"miner": MINERS, "loss": LOSSES, "generation": GENERATORS, "dataset": DATASETS}
    fixed = {"train": TRAIN, "eval": EVAL, "model": MODEL}
    return named, fixed


def declared_default(column: str, row: pd.Series) -> tuple[bool, Any]:
    """(found, default) of a ``config/<section>.<param>`` column, using the row's component name."""
    path = column[len(CONFIG_PREFIX):]
    if "." not in path:
        return False, None
    section, param = path.split(".", 1)
    named, fixed = _sections()
    try:
        if section in named:
            name = row.get(f"{CONFIG_PREFIX}{section}.name")
            component = named[section].lookup(name)
        elif section in fixed:
            component = fixed[section]
        else:
            return False, None
        defaults = component.defaults
    except Exception:
        return False, None
    return (param in defaults), defaults.get(param)


def _same(a, b) -> bool:
    if isinstance(a, (bool, np.bool_)) or isinstance(b, (bool, np.bool_)):
        # a choice named "true"/"false" (train.compile) is resolved to text but kept as given in the table
        return str(a).lower() == str(b).lower()
    if isinstance(a, (int, float, np.number)) and isinstance(b, (int, float, np.number)):
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)
    return str(a) == str(b)


def default_key(st: StudyTable, arm: str) -> str | None:
    """Configuration key of the arm's default configuration, if it is in the grid."""
    rows = st.arm_rows(arm)
    dims = st.dims[arm]
    if not dims or rows.empty:
        return None
    defaults = {}
    for column in dims:
        found, value = declared_default(column, rows.iloc[0])
        if not found:
            return None
        defaults[column] = value
    match = np.ones(len(rows), dtype=bool)
    for column, value in defaults.items():
        match &= np.array([_same(v, value) for v in rows[column]])
    if not match.any():
        return None
    return config_keys(rows[match].iloc[:1], dims).iloc[0]


def tunability(st: StudyTable, arm: str, selection: Selection, failure_value: float, confidence: float) -> dict:
    """Best (selected) minus default configuration, naive and cross-fitted, with a seed interval."""
    out = {"default": "not in the grid", "default_val": math.nan, "tunability": math.nan,
           "tunability_half": math.nan, "tunability_n": 0, "tunability_crossfit": math.nan}
    key = default_key(st, arm)
    if key is None:
        return out
    rows = st.arm_rows(arm)
    mine = rows[config_keys(rows, st.dims[arm]) == key]
    values = st.scored(mine, failure_value).set_axis(mine.seed).dropna().astype(float).groupby(level=0).mean()
    default = estimate(values, confidence)
    diff = gap(selection.values, values, confidence)
    out.update(default=config_label(mine.iloc[0], st.dims[arm]), default_val=default.mean,
               tunability=diff.mean, tunability_half=diff.half, tunability_n=diff.n,
               tunability_crossfit=selection.val_crossfit.mean - default.mean)
    return out


def _fanova(frame: pd.DataFrame, dims: list[str], seed: int) -> dict[str, float] | None:
    import optuna
    from optuna.distributions import CategoricalDistribution, FloatDistribution
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    frame = frame.dropna(subset=dims)
    if len(frame) < 2 or frame.value.nunique() < 2 or any(frame[c].map(str).nunique() < 2 for c in dims):
        return None
    try:
        distributions = {}
        for c in dims:
            values = frame[c]
            numeric = pd.api.types.is_numeric_dtype(values) and not pd.api.types.is_bool_dtype(values)
            if numeric:
                distributions[c] = FloatDistribution(float(values.min()), float(values.max()))
            else:
                distributions[c] = CategoricalDistribution(sorted(values.map(str).unique()))
        trials = []
        for _, row in frame.iterrows():
            params = {c: (float(row[c]) if isinstance(distributions[c], FloatDistribution) else str(row[c]))
                      for c in dims}
            trials.append(optuna.trial.create_trial(params=params, distributions=distributions, value=float(row.value)))
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(direction="maximize")
        study.add_trials(trials)
        found = get_param_importances(study, evaluator=FanovaImportanceEvaluator(seed=seed))
    except Exception:  # noqa: BLE001 - importance is a summary; a degenerate grid must not sink the report
        return None
    return {c: float(found.get(c, 0.0)) for c in dims}


def importance(st: StudyTable, arm: str, failure_value: float, confidence: float, seed: int = 0) -> pd.DataFrame:
    """One row per searched parameter: fANOVA importance on all finished trials, and its mean and
    interval over per-seed fits. Empty when the arm searched fewer than two parameters."""
    dims = st.dims[arm]
    if len(dims) < 2:
        return pd.DataFrame(columns=["arm", "parameter", "importance", "seed_mean", "seed_half", "seeds"])
    rows = st.arm_rows(arm)
    frame = rows[dims + ["seed"]].assign(value=st.scored(rows, failure_value)).dropna(subset=["value"])
    pooled = _fanova(frame, dims, seed) or {}
    per_seed = [r for _, g in frame.groupby("seed") if (r := _fanova(g, dims, seed)) is not None]
    out = []
    for c in dims:
        spread = estimate([r[c] for r in per_seed], confidence)
        out.append({"arm": arm, "parameter": short_name(c), "importance": pooled.get(c, math.nan),
                    "seed_mean": spread.mean, "seed_half": spread.half, "seeds": spread.n})
    return pd.DataFrame(out)


__all__ = ["declared_default", "default_key", "importance", "tunability"]
