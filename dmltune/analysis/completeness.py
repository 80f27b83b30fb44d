"""Whether a study's results cover its whole plan (an interrupted or still running study does not)."""

from __future__ import annotations

from pathlib import Path


def planned_trials(source: dict) -> int | None:
    """Trials the study file plans (every arm × seed), or None without a usable record."""
    from ..study.schema import parse_study

    try:
        study = parse_study(source, check_data=False)
    except Exception:  # an old or hand-edited record: nothing to compare with
        return None
    return sum(arm.trials_per_seed * len(study.seeds) for arm in study.arms)


def unfinished_note(st, folder: Path) -> str:
    """A warning for the top of the report when the study has fewer finished trials than it plans
    (it was interrupted, or is still running)."""
    planned = planned_trials(st.source)
    from .trials import FINISHED

    final = st.final  # a trial lost with its node is an error although Tune left it PENDING
    finished = int(final["status"].isin(FINISHED).sum())
    if planned is None or finished >= planned:
        return ""
    return (f"**This study is not finished: {finished} of its {planned} planned trials have a result** (it was "
            f"interrupted, or is still running). Every number below covers the finished trials only; "
            f"`dmltune resume {folder}` completes it.\n")


def missing_grid_cells(st) -> list[str]:
    """``arm: key=value … seed S`` of every planned grid cell (configuration × seed) that has no trial
    in the table: a trial Tune never created, for example because its search state was lost."""
    from itertools import product

    from ..study.schema import parse_study

    try:
        study = parse_study(st.source, check_data=False)
    except Exception:  # an old or hand-edited record: nothing to compare with
        return []
    final, missing = st.final, []
    for arm in study.arms:
        if arm.search["mode"] != "grid" or "arm" not in final:
            continue
        keys = [".".join(path) for path, _ in arm.domains]
        columns = [f"config/{key}" for key in keys]
        rows = final[final["arm"] == arm.name]
        if any(c not in rows for c in columns) or "seed" not in rows:
            continue
        found = {tuple(_cell(v) for v in cell) for cell in zip(*(rows[c] for c in columns), rows["seed"])}
        for cell in product(*(d.values for _, d in arm.domains), study.seeds):
            if tuple(_cell(v) for v in cell) not in found:
                values = " ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(keys, cell[:-1]))
                missing.append(f"{arm.name}: {values} seed {cell[-1]}".replace(":  seed", ": seed"))
    return missing


def _cell(value) -> str:
    """One grid value, comparable between the study file and the table: numbers by value (1 = 1.0 =
    "1", as a column with text elsewhere stores its numbers as text), None and NaN alike, lists and
    the rest as the table writes them (text)."""
    import math
    import numbers

    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "None"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, numbers.Real):
        return repr(float(value))
    if isinstance(value, str):
        try:
            return repr(float(value))
        except ValueError:
            return value
    return str(value)


def missing_cells_note(st) -> str:
    """A warning for the top of the report naming planned grid cells without a trial (up to ten)."""
    missing = missing_grid_cells(st)
    if not missing:
        return ""
    shown = "; ".join(missing[:10]) + (f"; and {len(missing) - 10} more" if len(missing) > 10 else "")
    return (f"**{len(missing)} planned grid cell(s) have no trial** ({shown}). Ray Tune never created them (for "
            "example, its search state was lost when the disk filled up); the arms' numbers cover the cells "
            "that ran. Run the missing cells as a new study.\n")
