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
    stage: int = 1                   # the stage (two_stage) or look (sequential) that runs it
    fixed: bool = False              # runs fixed configurations as a grid, whatever the arm's search


def read_grid_blocks(directory: Path) -> dict:
    """``{arm: [{folder, values}, ...]}`` recorded by ``extend`` (empty for a study never grown)."""
    path = Path(directory) / GRID_BLOCKS
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text()) or {}


def full_grid(study, arm) -> dict:
    """A grid arm's whole plan: every searched key's values, and the seeds."""
    return {**{".".join(p): list(d.values) for p, d in arm.domains}, "seed": list(study.seeds)}


def experiments(study, arm, blocks: dict | None = None, stages: list | None = None) -> Iterator[Experiment]:
    """Every Tune experiment of ``arm``, in the order they run: its first stage, then the later
    stages and looks recorded in ``stages.yaml`` (or ``stages``, a list of recorded entries)."""
    from ray import tune

    yield from (_first_stage(study, arm, blocks, tune.grid_search))
    for entry in (stage_entries(study) if stages is None else stages):
        yield from _stage_experiments(study, arm, entry, tune.grid_search)


def _first_stage(study, arm, blocks, grid) -> Iterator[Experiment]:
    if arm.search["mode"] != "grid":
        for seed in study.seeds:
            yield Experiment(study.directory / arm.name / f"seed_{seed}", seed, seed)
        return
    for block in _grid_blocks(study, arm, blocks):
        values = block["values"]
        yield Experiment(study.directory / block["folder"], grid(list(values["seed"])), study.seeds[0], values)


def stage_entries(study) -> list[dict]:
    from .stages import recorded_stages

    return recorded_stages(study.directory) if getattr(study, "design", None) is not None and study.design.staged \
        else []


def _stage_experiments(study, arm, entry: dict, grid) -> Iterator[Experiment]:
    """The experiments of ``arm`` in one recorded stage: its fixed configurations (``cells``) over the
    stage's seeds, or the arm's own procedure on them. Configurations that make up a whole grid (every
    combination of their values: e.g. every cell of the arm's grid still undecided at a look) are one
    experiment ``ARM+sK``, so that one set of workers runs them; any other set is one experiment per
    configuration, ``ARM+sKc0``, ``ARM+sKc1``, ... (also where a folder of that layout exists: a
    stage started before configurations were grouped keeps its layout)."""
    what = (entry.get("arms") or {}).get(arm.name)
    if not what:
        return
    stage, seeds = int(entry["stage"]), list(what["seeds"])
    cells = what.get("cells")
    product = _as_grid(cells) if cells else None
    if product is not None and not (study.directory / f"{arm.name}+s{stage}c0").exists():
        yield Experiment(study.directory / f"{arm.name}+s{stage}", grid(seeds), seeds[0], {**product, "seed": seeds},
                         stage, fixed=True)
    elif cells:
        for i, cell in enumerate(cells):
            name = f"{arm.name}+s{stage}" + (f"c{i}" if len(cells) > 1 else "")
            values = {**{k: [v] for k, v in cell.items()}, "seed": seeds}
            yield Experiment(study.directory / name, grid(seeds), seeds[0], values, stage, fixed=True)
    elif arm.search["mode"] != "grid":
        for seed in seeds:
            yield Experiment(study.directory / arm.name / f"seed_{seed}", seed, seed, None, stage)
    else:
        values = {**full_grid(study, arm), "seed": seeds}
        yield Experiment(study.directory / f"{arm.name}+s{stage}", grid(seeds), seeds[0], values, stage)


def _as_grid(cells: list[dict]) -> dict | None:
    """``cells`` as one grid (key → its values, in the order first met) when they are exactly every
    combination of those values, each once; else None."""
    keys = list(cells[0])
    if any(list(c) != keys for c in cells):
        return None
    values = {k: list({value_key(c[k]): c[k] for c in cells}.values()) for k in keys}
    given = {tuple(value_key(c[k]) for k in sorted(keys)) for c in cells}
    return values if len(given) == len(cells) and grid_cells(values) == given else None


def experiment_folders(study, arm) -> list[Path]:
    """The folders of ``arm``'s experiments (see :func:`experiments`), without importing Ray."""
    return [e.folder for e in experiment_stages(study, arm)]


def experiment_stages(study, arm) -> list[Experiment]:
    """``arm``'s experiments (see :func:`experiments`) without importing Ray (``seed_space`` is the
    list of seeds)."""
    out = list(_first_stage(study, arm, None, list))
    for entry in stage_entries(study):
        out.extend(_stage_experiments(study, arm, entry, list))
    return out


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
