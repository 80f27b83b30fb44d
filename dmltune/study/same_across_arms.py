"""Settings the analysis assumes equal in every arm: an arm may override any shared setting, but not
these, or arms would be compared on different metrics or different data.

- ``eval.metric``: every arm is selected and compared on it (the verdicts, expected best);
- the dataset and its split: ``dataset.*`` but the image transform, the pixel cap and ``download``
  (the training, validation and test classes must be the same for every arm);
- the evaluation's other numbers: ``eval.ks`` (Recall@K is tabled side by side) and the NMI
  settings (``eval.nmi``, ``eval.nmi_*``: NMI depends on its k-means).

A difference is one line naming the key and the arms with each value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..registry import ConfigError, short_repr
from .domains import is_domain

if TYPE_CHECKING:
    from .schema import Arm

DATASET_FREE = ("transform", "max_pixels", "download")  # dataset settings an arm may set its own way
EVAL_SAME = ("metric", "ks", "nmi", "nmi_backend", "nmi_init", "nmi_restarts", "nmi_iterations", "nmi_seed")
WHY = {"eval.metric": "every arm is selected and compared on one metric",
       "eval.ks": "Recall@K is compared at the same K in every arm",
       "dataset": "every arm must train, select and test on the same classes"}


def same_keys(arm: Arm) -> list[str]:
    """The dotted keys of ``arm`` that must be the same in every arm."""
    dataset = [f"dataset.{k}" for k in arm.resolved["dataset"] if k not in DATASET_FREE]
    return dataset + [f"eval.{k}" for k in EVAL_SAME]


def _value(arm: Arm, key: str):
    """The arm's value of ``key``: its search domain where it searches it, else the resolved value."""
    section, name = key.split(".", 1)
    own = arm.config.get(section)
    if isinstance(own, dict) and is_domain(own.get(name)):
        return own[name]
    return arm.resolved[section].get(name)


def check_same_across_arms(arms: list[Arm]) -> list[ConfigError]:
    """One ConfigError per key that two arms set differently (empty: they agree)."""
    problems, differing = [], []
    keys = list(dict.fromkeys(k for arm in arms for k in same_keys(arm)))
    for key in keys:
        groups: dict[str, tuple] = {}  # repr(value) -> (value, arm names)
        for arm in arms:
            value = _value(arm, key)
            groups.setdefault(repr(value), (value, []))[1].append(arm.name)
        if len(groups) < 2 or (key.startswith("dataset.") and "dataset.name" in differing):
            continue  # another dataset has other settings: its name says it all
        differing.append(key)
        sides = "; ".join(f"{short_repr(value, 40)} in {_arms(names)}" for value, names in groups.values())
        why = WHY.get(key) or WHY.get(key.split(".")[0]) or "the analysis compares the arms on the same evaluation"
        problems.append(ConfigError(f"arms differ in {key} ({sides}), but {why}: set {key} once in the shared "
                                    f"{key.split('.')[0]} section (or the same in every arm)"))
    return problems


def _arms(names: list[str]) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"arm{'s' if len(names) > 1 else ''} {shown}"
