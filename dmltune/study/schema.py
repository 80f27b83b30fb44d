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
from .domains import Domain, find_domains, replace_at

TOP_KEYS = ("name", "description", "storage", "seeds", "resources", "concurrency", "retries", "dataset",
            "model", "generation", "train", "eval", "arms", "analysis")
SHARED = ("dataset", "model", "generation", "train", "eval")
ARM_KEYS = ("name", "miner", "loss", "search") + SHARED

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

    def gpu(self, requested) -> float:
        """This arm's GPU share per trial: the study's number, or the backbone's default for ``auto``."""
        if requested != "auto":
            return float(requested or 0)
        from ..models.backbones import default_gpu_fraction

        return default_gpu_fraction((self.config.get("model") or {}).get("backbone", "resnet50"))

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
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not _is_domain(value):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _is_domain(value) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("grid", "choice", "uniform", "loguniform")


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


def _validate_arm_values(arm: Arm, where: str) -> None:
    """Every candidate value of every domain, and the fixed values, against the declared parameters."""
    base = arm.config
    for path, domain in arm.domains:
        base = replace_at(base, path, domain.candidates()[0])
    resolve_config({**base, "seed": 0}, where=where)
    for path, domain in arm.domains:
        for value in domain.candidates():
            try:
                resolve_config({**replace_at(base, path, value), "seed": 0}, where=where)
            except ConfigError as err:
                raise ConfigError(f"{err} (in {domain.kind} {list(domain.values)} of {'.'.join(path)})") from None


def _check_data(arm: Arm, where: str, cache: dict) -> None:
    """The dataset exists and has enough training classes for a batch (loaded once per dataset)."""
    from ..data import load_dataset

    dataset = {k: v for k, v in arm.config["dataset"].items() if k != "transform"}
    if any(_is_domain(v) for v in dataset.values()):
        return
    key = repr(sorted(dataset.items()))
    if key not in cache:
        params = dict(dataset)
        try:
            cache[key] = load_dataset(params.pop("name"), **params)
        except ConfigError as err:
            raise ConfigError(f"{where}: dataset: {err}") from None
    splits = cache[key]
    model = arm.config.get("model") or {}
    if model.get("pretrained") is True or model.get("weights"):
        from ..models.backbones import BACKBONES

        backbone = model.get("backbone", "resnet50")
        if backbone in BACKBONES and not any(_is_domain(v) for v in model.values()):
            try:  # the weights file exists (building the network without loading it would cost too much here)
                _weights_present(backbone, model)
            except ConfigError as err:
                raise ConfigError(f"{where}: model: {err}") from None
    train = arm.config.get("train", {})
    batch, k = train.get("batch_size", 80), train.get("k", 5)
    if isinstance(batch, int) and isinstance(k, int) and k and splits.train.num_classes < batch // k:
        raise ConfigError(f"{where}: a batch needs {batch // k} classes (train.batch_size {batch} / train.k {k}) "
                          f"but {splits.name} has {splits.train.num_classes} training classes; lower the batch size or raise k")


def _weights_present(backbone: str, model: dict) -> None:
    from ..models.backbones import WEIGHT_FILES
    from ..models.weights import find_weights

    if backbone in WEIGHT_FILES:
        files, url = WEIGHT_FILES[backbone]
        find_weights(backbone, files, url, model.get("weights"))
    elif model.get("weights"):
        find_weights(backbone, (), "", model["weights"])


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


def parse_study(raw: dict, check_data: bool = True) -> Study:
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        raise ConfigError(f"study: unknown key(s) {sorted(unknown)}; valid keys: {', '.join(TOP_KEYS)}")
    name = raw.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise ConfigError(f"study: 'name' must be a simple name (letters, digits, _ . -), got {name!r}")
    seeds = raw.get("seeds", [0])
    if (not isinstance(seeds, list) or not seeds
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"study: 'seeds' must be a non-empty list of non-negative integers, got {seeds!r}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"study: 'seeds' lists a seed twice: {seeds}")
    concurrency = raw.get("concurrency")
    if concurrency is not None and (isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1):
        raise ConfigError(f"study: 'concurrency' must be a positive integer, got {concurrency!r}")
    storage = Path(str(raw.get("storage", "results"))).expanduser().resolve()  # relative to the working directory
    arms_raw = raw.get("arms")
    if not isinstance(arms_raw, list) or not arms_raw:
        raise ConfigError("study: 'arms' must be a non-empty list of arms")
    shared = {k: raw[k] for k in SHARED if k in raw}
    arms, seen, data_cache, notes = [], set(), {}, []
    for i, arm_raw in enumerate(arms_raw):
        if not isinstance(arm_raw, dict):
            raise ConfigError(f"study: arm #{i + 1} must be a mapping with name, miner, loss")
        arm_name = arm_raw.get("name")
        where = f"arm '{arm_name}'" if arm_name else f"arm #{i + 1}"
        if not isinstance(arm_name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", arm_name):
            raise ConfigError(f"{where}: 'name' must be a simple name (letters, digits, _ . -), got {arm_name!r}")
        if arm_name in seen:
            raise ConfigError(f"{where}: the name is used by another arm; arm names must be unique")
        seen.add(arm_name)
        unknown = set(arm_raw) - set(ARM_KEYS)
        if unknown:
            raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; an arm may set {', '.join(ARM_KEYS[1:])}")
        if "loss" not in arm_raw:
            raise ConfigError(f"{where}: 'loss' is missing; give {{name: ...}}")
        config = _merge(shared, {k: v for k, v in arm_raw.items() if k in SHARED})
        _resolve_paths(config)
        config["miner"] = arm_raw.get("miner") or {"name": "none"}
        config["loss"] = arm_raw["loss"]
        epochs = config.get("train", {}).get("epochs", 10)
        search = _arm_search(arm_raw, where, epochs if isinstance(epochs, int) else 10)
        try:
            domains = list(find_domains(config))
        except ConfigError as err:
            raise ConfigError(f"{where}: {err}") from None
        arm = Arm(arm_name, config, search, domains)
        for path, domain in arm.domains:
            key = ".".join(path)
            if search["mode"] == "grid" and domain.kind != "grid":
                raise ConfigError(f"{where}: {key} is a {domain.kind} domain but search.mode is grid; "
                                  "use {grid: [...]} or search.mode: random / optuna")
            if search["mode"] == "optuna" and domain.kind == "grid":
                raise ConfigError(f"{where}: {key} is a grid but search.mode is optuna; use {{choice: [...]}}")
        _validate_arm_values(arm, where)
        notes.extend(decoupled_notes(config, where))
        if check_data:
            _check_data(arm, where, data_cache)
        arms.append(arm)
    _check_analysis(raw.get("analysis"), [a.name for a in arms])
    retries = raw.get("retries", 0)
    if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
        raise ConfigError(f"study: 'retries' must be an integer from 0 to 100, got {retries!r}")
    return Study(name=name, directory=storage / name, seeds=seeds, resources=_check_resources(raw),
                 concurrency=concurrency, arms=arms, retries=retries, source=raw, notes=notes)


def load_study(path: str | Path, overrides=(), check_data: bool = True) -> Study:
    """Read, override (``--set``) and validate a study file."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides)
    return parse_study(raw, check_data)

