"""Where each arm's trials live: its Tune experiments (folder, seed space, searcher seed, grid values).

* A grid arm is one experiment in ``STUDY/ARM`` over every combination × every seed, unless the study
  was grown with ``dmltune extend``: then the arm's grid is covered by disjoint blocks, each a grid of
  its own (``STUDY/ARM`` as first run, then ``STUDY/ARM+ext1``, ...), recorded in ``grid_blocks.yaml``
  so that every later run, resume and report reads the same layout.
* A random or optuna arm is one experiment per seed in ``STUDY/ARM/seed_S``, each an independent,
  seeded replicate of the search; a seed added later is a new folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import yaml

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
    recorded = (read_grid_blocks(study.directory) if blocks is None else blocks).get(arm.name)
    return recorded or [{"folder": arm.name, "values": full_grid(study, arm)}]
