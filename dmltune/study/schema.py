"""Study files: parsing and validation, before any trial starts.

A study file holds shared settings (dataset, model, train, eval), the seeds, per-trial resources,
and a list of arms. Each arm sets its miner and loss (and may override shared settings), with any
value either fixed or a search domain, and a search mode (grid, random, optuna) with an optional
ASHA scheduler. ``load_study`` returns a validated :class:`Study` or raises a one-line ConfigError
naming the arm and key.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..config import resolve_config
from ..config_files import apply_overrides, read_yaml
from ..pairs.coupling import decoupled_notes
from ..registry import Component, ConfigError, Param
from .domains import Domain, find_domains, is_domain, replace_at

SHARED = ("dataset", "model", "generation", "train", "eval")
ARM_KEYS = ("name", "miner", "loss", "search") + SHARED
SIMPLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # study and arm names: they become folder names

STUDY = Component("section", "study", dict, (
    Param("name", str, None, nullable=True, help="the study's name (letters, digits, _ . -); its folder under storage"),
    Param("description", str, "", help="free text, kept in the study record"),
    Param("storage", str, "results", help="folder that holds study folders (relative to the working directory)"),
    Param("seeds", list, [0], help="training seeds; every arm runs every seed"),
    Param("resources", dict, {}, nullable=True, help="{cpu: N, gpu: fraction or auto} per trial"),
    Param("concurrency", int, None, low=1, nullable=True, help="at most this many trials at once; empty = as resources allow"),
    Param("retries", int, 0, low=0, high=100, help="times a failed trial is restarted from its last checkpoint"),
    *(Param(section, dict, {}, nullable=True, help=f"shared {section} settings (an arm may override them)")
      for section in SHARED),
    Param("arms", list, None, nullable=True, help="the arms: name, miner, loss, optional search and overrides"),
    Param("analysis", dict, None, nullable=True, help="{reference, delta, confidence, ...} of the report"),
))
TOP_KEYS = tuple(STUDY.param_names)

SEARCH = Component("section", "search", dict, (
    Param("mode", str, "grid", choices=("grid", "random", "optuna"), help="how the arm's domains are explored"),
    Param("num_samples", int, 1, low=1, high=100000, help="trials per seed (random, optuna)"),
    Param("scheduler", dict, None, nullable=True, help="{asha: {max_t, grace_period, reduction_factor}}"),
))
ASHA = Component("section", "asha", dict, (
    Param("max_t", int, None, low=1, nullable=True, help="time budget in epochs (required)"),
    Param("grace_period", int, 1, low=1, help="epochs before a trial may be stopped"),
    Param("reduction_factor", float, 3.0, low=1.01, high=100.0, help="ASHA's η"),
))


@dataclass
class Arm:
    name: str
    config: dict                     # trainable config; search domains still inside; no seed
    search: dict
    domains: list[tuple[tuple, Domain]] = field(default_factory=list)
    resolved: dict = field(default_factory=dict)  # config resolved at each domain's first value: every default filled in

    def gpu(self, requested) -> float:
        """This arm's GPU share per trial: the study's number, or the backbone's default for ``auto``."""
        if requested != "auto":
            return float(requested or 0)
        from ..models.backbones import default_gpu_fraction

        return default_gpu_fraction(self.resolved["model"]["backbone"])

    @property
    def trials_per_seed(self) -> int:
        if self.search["mode"] != "grid":
            return self.search["num_samples"]
        n = 1
        for _, d in self.domains:
            n *= len(d.values)
        return n


@dataclass
class Study:
    name: str
    directory: Path                  # storage / name
    seeds: list[int]
    resources: dict
    concurrency: int | None
    arms: list[Arm]
    retries: int                     # times a failed trial is restarted from its last checkpoint
    source: dict                     # the study as given (after --set), for the record
    notes: list[str] = field(default_factory=list)  # valid but worth a word (e.g. decoupled τ)


def _merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not is_domain(value):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _arm_search(arm: dict, where: str, epochs: int) -> dict:
    search = SEARCH.validate(arm.get("search") or {}, where=f"{where}: search")
    scheduler = search["scheduler"]
    if scheduler is not None:
        if set(scheduler) != {"asha"}:
            raise ConfigError(f"{where}: search.scheduler must be {{asha: {{...}}}}; got {sorted(scheduler)} (only ASHA is supported)")
        asha = ASHA.validate(scheduler["asha"] or {}, where=f"{where}: search.scheduler.asha")
        if asha["max_t"] is None:
            raise ConfigError(f"{where}: search.scheduler.asha needs max_t, the time budget in epochs (e.g. max_t: {epochs})")
        if asha["grace_period"] > asha["max_t"]:
            raise ConfigError(f"{where}: search.scheduler.asha.grace_period exceeds max_t; lower it")
        search["scheduler"] = {"asha": asha}
    return search


def _resolve_paths(config: dict) -> None:
    """Dataset roots and weights files as absolute paths: trials run in other working directories."""
    for section, key in (("dataset", "root"), ("model", "weights")):
        value = (config.get(section) or {}).get(key)
        if isinstance(value, str) and value:
            config[section][key] = str(Path(value).expanduser().resolve())


def _check_resources(study: dict) -> dict:
    res = study.get("resources") or {}
    if not isinstance(res, dict) or set(res) - {"cpu", "gpu"}:
        raise ConfigError(f"study: resources must be {{cpu: N, gpu: fraction}}, got {res!r}")
    cpu = res.get("cpu", 1)
    if isinstance(cpu, bool) or not isinstance(cpu, (int, float)) or cpu <= 0:
        raise ConfigError(f"study: resources.cpu must be a positive number, got {cpu!r}")
    out = {"cpu": cpu}
    if "gpu" in res:
        gpu = res["gpu"]
        if gpu == "auto":  # a fraction per arm, from its backbone (see Arm.gpu)
            out["gpu"] = "auto"
            return out
        if isinstance(gpu, bool) or not isinstance(gpu, (int, float)) or not 0 < gpu <= 1:
            raise ConfigError(f"study: resources.gpu must be a GPU fraction in (0, 1] or auto, got {gpu!r}; "
                              "leave it out for CPU-only trials")
        out["gpu"] = float(gpu)
    return out


def _resolve_arm(config: dict, domains: list, where: str) -> dict:
    """Every candidate value of every domain, and the fixed values, checked against the declared
    parameters; returns the config resolved at each domain's first value."""
    base = config
    for path, domain in domains:
        base = replace_at(base, path, domain.candidates()[0])
    resolved = resolve_config({**base, "seed": 0}, where=where)
    for path, domain in domains:
        for value in domain.candidates():
            try:
                resolve_config({**replace_at(base, path, value), "seed": 0}, where=where)
            except ConfigError as err:
                raise ConfigError(f"{err} (in {domain.kind} {list(domain.values)} of {'.'.join(path)})") from None
    return resolved


def _check_data(arm: Arm, where: str, cache: dict) -> None:
    """The dataset exists and has enough training classes for a batch (loaded once per dataset)."""
    from ..data import load_dataset

    dataset = {k: v for k, v in arm.config["dataset"].items() if k != "transform"}
    if any(is_domain(v) for v in dataset.values()):
        return
    key = repr(sorted(dataset.items()))
    if key not in cache:
        params = dict(dataset)
        try:
            cache[key] = load_dataset(params.pop("name"), **params)
        except ConfigError as err:
            raise ConfigError(f"{where}: dataset: {err}") from None
    splits = cache[key]
    if not any(is_domain(v) for v in (arm.config.get("model") or {}).values()):
        from ..models import check_weights

        try:  # the weights file exists (building the network without loading it would cost too much here)
            check_weights(arm.resolved["model"])
        except ConfigError as err:
            raise ConfigError(f"{where}: model: {err}") from None
    train = arm.config.get("train") or {}
    if not (is_domain(train.get("batch_size")) or is_domain(train.get("k"))):
        batch, k = arm.resolved["train"]["batch_size"], arm.resolved["train"]["k"]
        if splits.train.num_classes < batch // k:
            raise ConfigError(f"{where}: a batch needs {batch // k} classes (train.batch_size {batch} / train.k {k}) "
                              f"but {splits.name} has {splits.train.num_classes} training classes; lower the batch size or raise k")


def _check_analysis(section, arm_names: list[str]) -> None:
    """The ``analysis`` section (reference arm, delta, ...) is valid, so the report cannot fail late."""
    from ..analysis.settings import ANALYSIS

    if section is None:
        return
    if not isinstance(section, dict):
        raise ConfigError(f"study: 'analysis' must be a mapping like {{reference: ARM, delta: 0.01}}, got {section!r}")
    settings = ANALYSIS.validate(section, where="study: analysis")
    if settings["reference"] is not None and settings["reference"] not in arm_names:
        raise ConfigError(f"study: analysis.reference {settings['reference']!r} is not an arm; "
                          f"choose one of {', '.join(arm_names)}")


def _check_simple_name(name, where: str) -> str:
    if not isinstance(name, str) or not SIMPLE_NAME.fullmatch(name):
        raise ConfigError(f"{where}: 'name' must be a simple name (letters, digits, _ . -), got {name!r}")
    return name


def _top_level(raw: dict) -> dict:
    """The study's own values (everything but the arms' contents), checked and with defaults."""
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        raise ConfigError(f"study: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(TOP_KEYS)}")
    top = STUDY.validate(raw, where="study")
    _check_simple_name(top["name"], "study")
    seeds = top["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"study: 'seeds' must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"study: 'seeds' lists a seed twice: {seeds}")
    if not top["arms"]:
        raise ConfigError("study: 'arms' must be a non-empty list of arms")
    return top


def _parse_arm(i: int, arm_raw, shared: dict, seen: set) -> Arm:
    """One arm: its name, its config (shared settings merged under its own), search and domains."""
    if not isinstance(arm_raw, dict):
        raise ConfigError(f"study: arm #{i + 1} must be a mapping with name, miner, loss")
    where = f"arm '{arm_raw.get('name')}'" if arm_raw.get("name") else f"arm #{i + 1}"
    name = _check_simple_name(arm_raw.get("name"), where)
    if name in seen:
        raise ConfigError(f"{where}: the name is used by another arm; arm names must be unique")
    unknown = set(arm_raw) - set(ARM_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; an arm may set {', '.join(ARM_KEYS[1:])}")
    if "loss" not in arm_raw:
        raise ConfigError(f"{where}: 'loss' is missing; give {{name: ...}}")
    config = _merge(shared, {k: v for k, v in arm_raw.items() if k in SHARED})
    _resolve_paths(config)
    config["miner"] = arm_raw.get("miner") or {"name": "none"}
    config["loss"] = arm_raw["loss"]
    try:
        domains = list(find_domains(config))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    resolved = _resolve_arm(config, domains, where)
    search = _arm_search(arm_raw, where, resolved["train"]["epochs"])
    for path, domain in domains:
        key = ".".join(path)
        if search["mode"] == "grid" and domain.kind != "grid":
            raise ConfigError(f"{where}: {key} is a {domain.kind} domain but search.mode is grid; "
                              "use {grid: [...]} or search.mode: random / optuna")
        if search["mode"] == "optuna" and domain.kind == "grid":
            raise ConfigError(f"{where}: {key} is a grid but search.mode is optuna; use {{choice: [...]}}")
    return Arm(name, config, search, domains, resolved)


def parse_study(raw: dict, check_data: bool = True) -> Study:
    top = _top_level(raw)
    shared = {k: raw[k] for k in SHARED if k in raw}
    arms, data_cache, notes = [], {}, []
    for i, arm_raw in enumerate(top["arms"]):
        arm = _parse_arm(i, arm_raw, shared, {a.name for a in arms})
        where = f"arm '{arm.name}'"
        notes.extend(decoupled_notes(arm.config, where))
        if check_data:
            _check_data(arm, where, data_cache)
        arms.append(arm)
    _check_analysis(raw.get("analysis"), [a.name for a in arms])
    storage = Path(top["storage"]).expanduser().resolve()  # relative to the working directory
    return Study(name=top["name"], directory=storage / top["name"], seeds=top["seeds"],
                 resources=_check_resources(raw), concurrency=top["concurrency"], arms=arms,
                 retries=top["retries"], source=raw, notes=notes)


def load_study(path: str | Path, overrides=(), check_data: bool = True) -> Study:
    """Read, override (``--set``) and validate a study file."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides)
    return parse_study(raw, check_data)

