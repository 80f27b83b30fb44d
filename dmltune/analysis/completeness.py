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
    final = st.final
    if "trial_status" in final:
        finished = int(final["trial_status"].isin(["TERMINATED", "ERROR"]).sum())
    else:
        finished = int(final["status"].isin(["ok", "diverged", "error"]).sum())
    if planned is None or finished >= planned:
        return ""
    return (f"**This study is not finished: {finished} of its {planned} planned trials have a result** (it was "
            f"interrupted, or is still running). Every number below covers the finished trials only; "
            f"`dmltune resume {folder}` completes it.\n")
