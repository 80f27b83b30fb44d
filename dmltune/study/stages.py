"""The record of a staged study's later stages and looks: ``stages.yaml`` in the study folder.

When a stage (two_stage) or look (sequential) ends, the design plans the next one from the results
so far (:func:`dmltune.analysis.design_table.next_stage`), and the runner records it here *before*
any of its trials starts. Every later run, ``resume`` and ``report`` reads the same record, so a
stage is planned once and never re-planned from other data. Each entry names, per arm, the fixed
configurations it runs (``cells``: dotted key → value; none: the arm's own procedure) and its seeds.

    design: two_stage
    stages:
    - stage: 2
      why: "grid: configuration gamma_pos=0.1 on 14 fresh seed(s)"
      arms:
        grid: {cells: [{miner.gamma_pos: 0.1}], seeds: [3, 4, ...]}
        ref: {cells: null, seeds: [3, 4, ...]}
    stopped: null          # or why no further stage started (the budget)
"""

from __future__ import annotations

from pathlib import Path

import yaml

from ..registry import ConfigError
from ..atomic import write_atomic

STAGES = "stages.yaml"


def read_record(directory: Path) -> dict:
    path = Path(directory) / STAGES
    if not path.is_file():
        return {}
    try:
        record = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise ConfigError(f"{path} cannot be read ({type(err).__name__}); it records the study's later stages: "
                          "restore it from a backup, or remove it and the ARM+sN folders to plan them again") from None
    if not isinstance(record, dict) or not isinstance(record.get("stages", []), list):
        raise ConfigError(f"{path} is not a stage record; restore it, or remove it and the ARM+sN folders")
    return record


def recorded_stages(directory: Path) -> list[dict]:
    return list(read_record(directory).get("stages") or [])


def last_stage(directory: Path) -> int:
    stages = recorded_stages(directory)
    return max([1] + [int(s.get("stage", 1)) for s in stages])


def record_stage(directory: Path, design: str, entry: dict) -> None:
    record = read_record(directory)
    record["design"] = design
    record["stages"] = list(record.get("stages") or []) + [entry]
    write_atomic(Path(directory) / STAGES, yaml.safe_dump(record, sort_keys=False))


def record_stop(directory: Path, design: str, reason: str | None) -> None:
    record = read_record(directory)
    if record.get("stopped") == reason:
        return
    record["design"] = design
    record["stopped"] = reason
    write_atomic(Path(directory) / STAGES, yaml.safe_dump(record, sort_keys=False))


def stage_trials(study, entry: dict) -> tuple[int, int]:
    """Trials and epochs of one recorded stage."""
    n = e = 0
    for arm in study.arms:
        what = (entry.get("arms") or {}).get(arm.name)
        if not what:
            continue
        per_seed = len(what["cells"]) * arm.folds if what.get("cells") else arm.trials_per_seed
        n += per_seed * len(what["seeds"])
        e += per_seed * len(what["seeds"]) * int(arm.resolved["train"]["epochs"])
    return n, e


def stopped_reason(directory: Path | None) -> str | None:
    if directory is None:
        return None
    try:
        return read_record(directory).get("stopped")
    except ConfigError:
        return None


__all__ = ["STAGES", "last_stage", "read_record", "record_stage", "record_stop", "recorded_stages", "stage_trials",
           "stopped_reason"]
