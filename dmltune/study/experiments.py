"""Where each arm's trials live: its Tune experiments (folder, seed space, searcher seed, grid values).

* A grid arm is one experiment in ``STUDY/ARM`` over every combination × every seed, unless the study
  was grown with ``dmltune extend``: then the arm's grid is covered by disjoint blocks, each a grid of
  its own (``STUDY/ARM`` as first run, then ``STUDY/ARM+ext1``, ...), recorded in ``grid_blocks.yaml``
  so that every later run, resume and report reads the same layout.
* A random or optuna arm is one experiment per seed in ``STUDY/ARM/seed_S``, each an independent,
  seeded replicate of the search; a seed added later is a new folder.
"""

from __future__ import annotations

import itertools
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

from ..registry import ConfigError

GRID_BLOCKS = "grid_blocks.yaml"


@dataclass(frozen=True)
class Experiment:
    """One Tune experiment of an arm. ``values``: for grid arms, the grid of each searched key
    (dotted path → values) and of ``seed``; None for random and optuna arms."""

    folder: Path
    seed_space: object               # Tune's grid over seeds, or one seed
    searcher_seed: int
    values: dict | None = None


def read_grid_blocks(directory: Path) -> dict:
    """``{arm: [{folder, values}, ...]}`` recorded by ``extend`` (empty for a study never grown)."""
    path = Path(directory) / GRID_BLOCKS
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def full_grid(study, arm) -> dict:
    """A grid arm's whole plan: every searched key's values, and the seeds."""
    return {**{".".join(p): list(d.values) for p, d in arm.domains}, "seed": list(study.seeds)}


def experiments(study, arm, blocks: dict | None = None) -> Iterator[Experiment]:
    """Every Tune experiment of ``arm``, in the order they run."""
    from ray import tune

    if arm.search["mode"] != "grid":
        for seed in study.seeds:
            yield Experiment(study.directory / arm.name / f"seed_{seed}", seed, seed)
        return
    for block in _grid_blocks(study, arm, blocks):
        values = block["values"]
        yield Experiment(study.directory / block["folder"], tune.grid_search(list(values["seed"])), study.seeds[0],
                         values)


def experiment_folders(study, arm) -> list[Path]:
    """The folders of ``arm``'s experiments (see :func:`experiments`), without importing Ray."""
    if arm.search["mode"] != "grid":
        return [study.directory / arm.name / f"seed_{seed}" for seed in study.seeds]
    return [study.directory / block["folder"] for block in _grid_blocks(study, arm)]


def _grid_blocks(study, arm, blocks: dict | None = None) -> list[dict]:
    """The arm's recorded blocks, which must cover its grid in ``study.yaml`` exactly (a mismatch is
    an ``extend`` stopped between its two records: one line, never a silent mix of two plans)."""
    recorded = (read_grid_blocks(study.directory) if blocks is None else blocks).get(arm.name)
    if not recorded:
        return [{"folder": arm.name, "values": full_grid(study, arm)}]
    if covered_cells(recorded) != grid_cells(full_grid(study, arm)):
        raise ConfigError(f"{study.directory / GRID_BLOCKS} does not match study.yaml for arm '{arm.name}' (an "
                          "`dmltune extend` was stopped while it recorded the grown study): run that "
                          "`dmltune extend STUDY.yaml` again")
    return recorded


def value_key(value) -> str:
    """A grid value as compared across records: numbers by value (1 = 1.0), anything else as YAML."""
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return repr(float(value))
    return yaml.safe_dump(value)


def grid_cells(values: dict) -> set:
    """Every cell (one value per key, keys in sorted order) of the grid ``values`` (key → values)."""
    keys = sorted(values)
    return set(itertools.product(*([value_key(v) for v in values[k]] for k in keys)))


def covered_cells(blocks: list[dict]) -> set:
    return set().union(*(grid_cells(b["values"]) for b in blocks)) if blocks else set()
