"""Growing a study on purpose: ``dmltune extend STUDY.yaml``.

A study may grow by more seeds, more values in a grid arm's grids, and new arms; everything else
must stay as recorded (``description`` and ``analysis`` may change: they do not touch a trial).
Finished trials are reused as they are; only the new ones run:

* a new seed of a random or optuna arm is a new, independent experiment (``ARM/seed_S``);
* new grid values and seeds of a grid arm become disjoint grid blocks (``ARM+ext1``, ...) that,
  with the grid already run, cover exactly the grown grid (:func:`new_blocks`); the layout is
  recorded in ``grid_blocks.yaml`` (:mod:`dmltune.study.experiments`);
* a new arm runs whole.

A trial's numbers depend only on its configuration and seed, so a grown study holds the same
trials as the grown study run from scratch. A grid arm with ASHA cannot grow in place: ASHA stops
trials relative to the others of one experiment, so blocks run apart would be stopped differently.

The record: ``study.yaml`` becomes the grown study; the one it replaces is kept beside it as
``study.before-extend-TIME.yaml``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..registry import ConfigError
from .domains import replace_at
from .experiments import GRID_BLOCKS, covered_cells, full_grid, grid_cells, read_grid_blocks, value_key
from ..atomic import write_atomic
from .lifecycle import STUDY_RECORD, normalised, plan_differences

MAY_CHANGE = ("seeds", "arms", "description", "analysis", "dataset", "model", "generation", "train", "eval", "design",
              "budget")
"""Top-level keys not compared as they are: seeds and arms may grow, the shared sections are compared
inside each arm (where a shared grid may grow too), description and analysis may change."""


@dataclass
class Growth:
    """What ``extend`` adds: new seeds, new arms, and each grown grid arm's new blocks."""

    seeds: list = field(default_factory=list)
    arms: list = field(default_factory=list)
    blocks: dict = field(default_factory=dict)     # arm → [{"folder": "ARM+extN", "values": {...}}]
    trials: int = 0                                # new trials in all

    def lines(self) -> list[str]:
        if not self.trials:
            return ["extend: the study file adds nothing to the recorded study; unfinished trials are finished"]
        parts = ([f"seed(s) {self.seeds}"] if self.seeds else []) + ([f"arm(s) {', '.join(self.arms)}"] if self.arms else [])
        parts += [f"{arm}: {len(blocks)} grid block(s) ({', '.join(b['folder'] for b in blocks)})"
                  for arm, blocks in self.blocks.items()]
        return [f"extend: {self.trials} new trial(s): " + "; ".join(parts) + "; every finished trial is kept"]


def recorded_study(directory: Path):
    """The study recorded in ``directory`` (parsed without its data), or a one-line error."""
    from .schema import parse_study

    record = Path(directory) / STUDY_RECORD
    if not record.is_file():
        raise ConfigError(f"{directory} holds no study to extend ({STUDY_RECORD} not found); "
                          "start it with `dmltune run`")
    try:
        study = parse_study(yaml.safe_load(record.read_text()) or {}, check_data=False)
    except (OSError, yaml.YAMLError, ConfigError) as err:
        raise ConfigError(f"{record} cannot be read as a study ({err}); extend needs the recorded plan") from None
    study.directory = Path(directory)
    return study


def _refuse(what: str) -> ConfigError:
    return ConfigError(f"extend: {what}; extend only adds seeds, grid values and arms (keep everything else as "
                       "recorded, or give the study a new name)")


def _without_domains(arm) -> dict:
    config = arm.config
    for path, _ in arm.domains:
        config = replace_at(config, path, "<searched>")
    return normalised(config)


def _check_arm(old, new) -> None:
    where = f"arm '{old.name}'"
    if normalised(old.search) != normalised(new.search):
        raise _refuse(f"{where}: its search changed ({'; '.join(plan_differences(old.search, new.search))}); "
                      "a search cannot be lengthened in place, add seeds or a new arm")
    old_paths, new_paths = [p for p, _ in old.domains], [p for p, _ in new.domains]
    if sorted(old_paths) != sorted(new_paths):
        changed = sorted({".".join(p) for p in set(old_paths) ^ set(new_paths)})
        raise _refuse(f"{where}: the searched keys changed ({', '.join(changed)})")
    differences = plan_differences(_without_domains(old), _without_domains(new))
    if differences:
        raise _refuse(f"{where}: {'; '.join(differences)}")
    olds = dict(old.domains)
    for path, domain in new.domains:
        before, key = olds[path], ".".join(path)
        if old.search["mode"] != "grid":
            if before != domain:
                raise _refuse(f"{where}: {key} changed ({before.kind} {list(before.values)} → "
                              f"{domain.kind} {list(domain.values)}); a random or optuna search cannot change its domains")
        elif not set(map(value_key, before.values)) <= set(map(value_key, domain.values)):
            dropped = [v for v in before.values if value_key(v) not in set(map(value_key, domain.values))]
            raise _refuse(f"{where}: {key} drops grid value(s) {dropped}")


def new_blocks(old: dict, new: dict) -> list[dict]:
    """Disjoint grids that, with the grid ``old`` (key → values), cover the grid ``new`` exactly: block
    i takes key i's new values, the old values of the keys before it and all values of those after."""
    keys = list(new)
    blocks = []
    for i, key in enumerate(keys):
        added = [v for v in new[key] if value_key(v) not in set(map(value_key, old[key]))]
        if added:
            blocks.append({**{k: list(old[k]) for k in keys[:i]}, key: added,
                           **{k: list(new[k]) for k in keys[i + 1:]}})
    return blocks


def _block_size(values: dict) -> int:
    n = 1
    for v in values.values():
        n *= len(v)
    return n


def plan_growth(old, new) -> Growth:
    """What growing the recorded study ``old`` into ``new`` adds, or a one-line error saying why it
    is not a growth."""
    top_old = {k: v for k, v in normalised(old.source).items() if k not in MAY_CHANGE}
    top_new = {k: v for k, v in normalised(new.source).items() if k not in MAY_CHANGE}
    differences = plan_differences(top_old, top_new)
    if differences:
        raise _refuse("; ".join(differences))
    if old.design.kind != new.design.kind:
        raise _refuse(f"the design changes ({old.design.kind} → {new.design.kind})")
    if old.design.kind == "sequential" and tuple(new.design.looks[:len(old.design.looks)]) != tuple(old.design.looks):
        raise _refuse("design.sequential.looks changes the looks already planned; only add later looks")
    dropped_seeds = [s for s in old.seeds if s not in new.seeds]
    if dropped_seeds:
        raise _refuse(f"it drops seed(s) {dropped_seeds}")
    new_arms = {a.name: a for a in new.arms}
    dropped_arms = [a.name for a in old.arms if a.name not in new_arms]
    if dropped_arms:
        raise _refuse(f"it drops arm(s) {', '.join(dropped_arms)}")
    old_metric, new_metric = old.arms[0].resolved["eval"]["metric"], new.arms[0].resolved["eval"]["metric"]
    if old_metric != new_metric:  # the searchers and schedulers of every arm optimise this one
        raise _refuse(f"the selection metric changes ({old_metric} → {new_metric}, set by the first arm)")
    growth = Growth(seeds=[s for s in new.seeds if s not in old.seeds])
    recorded = read_grid_blocks(old.directory)
    for arm in old.arms:
        grown = new_arms[arm.name]
        _check_arm(arm, grown)
        growth.trials += grown.trials_per_seed * len(new.seeds) - arm.trials_per_seed * len(old.seeds)
        if arm.search["mode"] != "grid":
            continue
        blocks = new_blocks(full_grid(old, arm), full_grid(new, grown))
        if blocks and arm.search["scheduler"]:
            raise _refuse(f"arm '{arm.name}' uses ASHA, which stops trials relative to the others of its one "
                          "experiment, so its grid cannot grow in place (neither seeds nor values); run the "
                          "additions as a new arm or a new study")
        taken = {b["folder"] for b in recorded_blocks(old, arm, recorded)} | {arm.name}
        named, n = [], 1
        for values in blocks:
            while f"{arm.name}+ext{n}" in taken or (old.directory / f"{arm.name}+ext{n}").exists():
                n += 1
            named.append({"folder": f"{arm.name}+ext{n}", "values": values})
            taken.add(f"{arm.name}+ext{n}")
        if named:
            growth.blocks[arm.name] = named
    old_names = {a.name for a in old.arms}
    for arm in new.arms:
        if arm.name not in old_names:
            growth.arms.append(arm.name)
            growth.trials += arm.trials_per_seed * len(new.seeds)
    return growth


def recorded_blocks(old, arm, recorded: dict) -> list[dict]:
    """The arm's recorded blocks that make up the recorded grid: the shortest prefix of them that
    covers it (blocks recorded after it come from an ``extend`` stopped before it recorded the grown
    study; none of their trials ran, as the folder's layout was refused until now). Empty for an arm
    never grown."""
    blocks, target = recorded.get(arm.name) or [], grid_cells(full_grid(old, arm))
    for n in range(1, len(blocks) + 1):
        if covered_cells(blocks[:n]) == target:
            return blocks[:n]
    if blocks:
        raise ConfigError(f"{old.directory / GRID_BLOCKS} does not describe arm '{arm.name}' of the recorded study; "
                          "restore it from a backup, or give the grown study a new name")
    return []


def grow_record(study) -> Growth:
    """Under the study folder's lock: check the growth against the record, then record the grown
    study (grid blocks first, then ``study.yaml``; the replaced record is kept beside it)."""
    old = recorded_study(study.directory)
    growth = plan_growth(old, study)
    recorded = read_grid_blocks(study.directory)
    blocks = {arm.name: recorded_blocks(old, arm, recorded) for arm in old.arms if recorded.get(arm.name)}
    if not growth.trials and normalised(old.source) == normalised(study.source):
        if blocks != {name: b for name, b in recorded.items() if b}:  # an extend stopped between its records
            write_atomic(study.directory / GRID_BLOCKS, yaml.safe_dump(blocks, sort_keys=False))
        return growth
    for arm in old.arms:
        if arm.name in growth.blocks:
            base = blocks.get(arm.name) or [{"folder": arm.name, "values": full_grid(old, arm)}]
            blocks[arm.name] = base + growth.blocks[arm.name]
    if growth.blocks:
        write_atomic(study.directory / GRID_BLOCKS, yaml.safe_dump(blocks, sort_keys=False))
    record = study.directory / STUDY_RECORD
    stamp, n = time.strftime('%Y%m%d-%H%M%S'), 1
    kept = study.directory / f"study.before-extend-{stamp}.yaml"
    while kept.exists():
        n += 1
        kept = study.directory / f"study.before-extend-{stamp}-{n}.yaml"
    write_atomic(kept, record.read_text())
    write_atomic(record, yaml.safe_dump(study.source, sort_keys=False))
    return growth
