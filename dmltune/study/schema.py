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

from ..config import check_seed, resolve_config, section_mapping
from ..config_files import apply_overrides, read_yaml
from ..pairs.coupling import decoupled_notes
from ..registry import Component, ConfigError, Param, short_repr
from .domains import Domain, find_domains, is_domain, replace_at

SHARED = ("dataset", "model", "generation", "train", "eval")
ARM_KEYS = ("name", "miner", "loss", "search") + SHARED
SIMPLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # study and arm names: they become folder names
MAX_NAME = 100                                              # characters of a study or arm name
SHARED_WHERE = "study (shared by all arms)"                 # names a mistake in the shared sections
SYSTEM_FOLDERS = ("/proc", "/sys", "/dev")                  # never a storage folder

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
    search = SEARCH.validate(section_mapping(arm.get("search"), "search", where, "{mode: random, num_samples: 8}"),
                             where=f"{where}: search")
    scheduler = search["scheduler"]
    if scheduler is not None:
        if set(scheduler) != {"asha"}:
            raise ConfigError(f"{where}: search.scheduler must be {{asha: {{...}}}}; got {sorted(scheduler, key=str)} (only ASHA is supported)")
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
            try:
                config[section][key] = str(Path(value).expanduser().resolve())
            except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13): the loader names it
                config[section][key] = str(Path(value).expanduser().absolute())


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
    resolved = _resolve_trial(base, where)
    for path, domain in domains:
        for value in domain.candidates():
            try:
                _resolve_trial(replace_at(base, path, value), where)
            except ConfigError as err:
                raise ConfigError(f"{err} (in {domain.kind} {list(domain.values)} of {'.'.join(path)})") from None
    return resolved


def _resolve_trial(config: dict, where: str) -> dict:
    """One trial's config resolved (:func:`resolve_config`), plus what a study needs of it: the
    selection metric is computed (eval.every > 0), or trials could never be compared."""
    resolved = resolve_config({**config, "seed": 0}, where=where)
    if resolved["eval"]["every"] == 0:
        raise ConfigError(f"{where}: eval.every is 0, so the selection metric val/{resolved['eval']['metric']} is "
                          "never computed and the trials cannot be compared; set eval.every: 1 (every epoch) or N "
                          "(every N epochs; the last epoch is always evaluated)")
    return resolved


def _resolve(config: dict, where: str) -> tuple[list, dict]:
    """(search domains, config resolved at each domain's first value) of an arm's config."""
    try:
        domains = list(find_domains(config))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return domains, _resolve_arm(config, domains, where)


def _shared_mistake(err: ConfigError, shared: dict, where: str) -> ConfigError:
    """``err``, found in arm ``where``, reported as a mistake of the shared sections when they alone
    (with a plain loss, no miner) fail in the same way; otherwise ``err`` itself."""
    if not shared:
        return err
    probe = copy.deepcopy({k: v for k, v in shared.items() if v is not None})
    probe["loss"] = {"name": "contrastive"}  # valid with any shared settings: isolates their mistakes
    try:
        _resolve_paths(probe)
        _resolve(probe, SHARED_WHERE)
    except ConfigError as shared_err:
        same = str(shared_err).removeprefix(SHARED_WHERE) == str(err).removeprefix(where)
        return shared_err if same else err
    except Exception:  # the arm's message stands
        return err
    return err


def _choices(section, resolved: dict, key: str, where_key: str) -> list[tuple]:
    """(value, note) for every value a trial may give ``key``: a fixed value, each value of a grid or
    choice, or the two bounds of a uniform / loguniform range (its worst cases: the class counts
    checked below are monotone in every setting that is a number)."""
    value = (section or {}).get(key) if isinstance(section, dict) else None
    if not is_domain(value):
        return [(resolved[key], "")]
    kind, values = next(iter(value.items()))
    domain = f"{{{kind}: {list(values)}}}"
    if kind in ("uniform", "loguniform"):
        return [(v, f"{where_key} {v!r} ({end} bound of {domain})") for v, end in zip(values, ("lower", "upper"))]
    return [(v, f"{where_key} {v!r} from {domain}") for v in values]


def _noted(*notes: str) -> str:
    notes = [n for n in notes if n]
    return f" (with {', '.join(notes)})" if notes else ""


def _check_data(arm: Arm, where: str, cache: dict, scan: bool = True) -> None:
    """The dataset exists (with ``scan``, every image file is sound: see :mod:`dmltune.data.scan`);
    for every value a search may give the dataset's settings, train.batch_size, train.k and
    dataset.val_fraction, the training classes fill a batch and, when the study evaluates on
    validation (eval.every > 0), at least 2 validation classes exist. Each distinct dataset is
    loaded (and scanned) once; the class counts of each val_fraction follow from its training-class
    pool without loading it again. Grid and choice values are all checked, ranges at their bounds."""
    from itertools import product

    from ..data import load_dataset
    from ..data.splits import split_train_val

    section = arm.config.get("dataset")
    if not isinstance(section, dict) or is_domain(section):
        return
    dataset = {k: v for k, v in section.items() if k not in ("transform", "val_fraction", "val_seed")}
    keys = [k for k, v in dataset.items() if is_domain(v)]
    variants = product(*(_choices(dataset, {}, k, f"dataset.{k}") for k in keys))
    pools = []  # (dataset name, training-class pool before validation is carved out, notes)
    for variant in variants:
        params = {**dataset, **{k: v for k, (v, _) in zip(keys, variant)}}
        notes = [n for _, n in variant]
        key = (repr(sorted(params.items())), scan)
        if key not in cache:
            name = params.pop("name")
            try:
                splits = load_dataset(name, scan=scan, **params)
            except ConfigError as err:
                raise ConfigError(f"{where}: dataset: {err}{_noted(*notes)}") from None
            cache[key] = (splits.name, splits.train.num_classes + splits.val.num_classes)
        pools.append((*cache[key], notes))
    if not any(is_domain(v) for v in (arm.config.get("model") or {}).values()):
        from ..models import check_weights

        try:  # the weights file exists (building the network without loading it would cost too much here)
            check_weights(arm.resolved["model"])
        except ConfigError as err:
            raise ConfigError(f"{where}: model: {err}") from None
    train, evals = arm.config.get("train"), arm.config.get("eval")
    batches = _choices(train, arm.resolved["train"], "batch_size", "train.batch_size")
    ks = _choices(train, arm.resolved["train"], "k", "train.k")
    fractions = _choices(section, arm.resolved["dataset"], "val_fraction", "dataset.val_fraction")
    every = [(e, n) for e, n in _choices(evals, arm.resolved["eval"], "every", "eval.every") if e]
    metric = arm.resolved["eval"]["metric"]
    for (name, pool, notes), (fraction, f_note) in product(pools, fractions):
        fit, val = (len(part) for part in split_train_val(range(pool), fraction, 0))
        for (batch, b_note), (k, k_note) in product(batches, ks):
            if fit < batch // k:
                more = ", or lower dataset.val_fraction" if val else ""
                raise ConfigError(f"{where}: a batch needs {batch // k} classes (train.batch_size {batch} / train.k {k}) "
                                  f"but {name} has {fit} training classes{_noted(*notes, f_note, b_note, k_note)}; "
                                  f"lower the batch size or raise k{more}")
        if every and val < 2:
            e, e_note = every[0]
            if fraction == 0:
                raise ConfigError(f"{where}: dataset.val_fraction is 0{_noted(*notes, f_note)}, so there are no "
                                  f"validation classes, but eval.every = {e}{_noted(e_note)} evaluates on them and "
                                  f"trials are compared on val/{metric}; set dataset.val_fraction above 0 (e.g. 0.25)")
            raise ConfigError(f"{where}: dataset.val_fraction {fraction:g} leaves {val} validation class(es) of "
                              f"{name}'s {pool} training classes{_noted(*notes, f_note, e_note)}; retrieval on "
                              "validation needs at least 2: raise dataset.val_fraction or use more classes")


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
        raise ConfigError(f"{where}: 'name' must be a simple name (letters, digits, _ . -), got {short_repr(name)}")
    if len(name) > MAX_NAME:
        raise ConfigError(f"{where}: 'name' is {len(name)} characters long; keep it to {MAX_NAME} "
                          f"(it becomes a folder name): {short_repr(name, 40)}")
    return name


def _check_storage(storage: str, name: str) -> None:
    """``storage/name`` can be the study's folder: not a system folder, no file in the way."""
    if not storage.strip():
        raise ConfigError("study: 'storage' is empty; give the folder that holds study folders, e.g. storage: results")
    if "\0" in storage:
        raise ConfigError(f"study: 'storage' {short_repr(storage)} contains a NUL character; give a folder path")
    try:
        folder = Path(storage).expanduser().resolve()
    except (OSError, RuntimeError, ValueError) as err:
        raise ConfigError(f"study: 'storage' {short_repr(storage)} is not a usable folder ({err}); "
                          "give a folder path such as results") from None
    for system in SYSTEM_FOLDERS:
        if folder == Path(system) or Path(system) in folder.parents:
            raise ConfigError(f"study: 'storage' {short_repr(storage)} is under {system}, a system folder; "
                              "give a folder of your own, e.g. storage: results")
    target = folder / name
    for path in (target, *target.parents):
        try:
            if not path.exists():
                continue
            if not path.is_dir():
                raise ConfigError(f"study: 'storage' {short_repr(storage)} is not writable: {path} is a file, "
                                  "not a folder; choose another storage folder (or move the file)")
        except OSError as err:
            raise ConfigError(f"study: 'storage' {short_repr(storage)}: {path} cannot be used ({err.strerror}); "
                              "choose another storage folder") from None
        return


def _top_level(raw: dict) -> dict:
    """The study's own values (everything but the arms' contents), checked and with defaults."""
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        per_arm = " (miner and loss are set in each arm: arms: [{name: a, miner: {name: asms}, loss: ...}])" \
            if unknown & {"miner", "loss", "search"} else ""
        raise ConfigError(f"study: unknown key(s) {sorted(unknown, key=str)}; valid keys: {', '.join(TOP_KEYS)}{per_arm}")
    for section in SHARED:  # the shape of each section first: `train: 5` names the section and its shape
        section_mapping(raw.get(section), section, "study")
    section_mapping(raw.get("resources"), "resources", "study", "{cpu: 1, gpu: 0.5}")
    section_mapping(raw.get("analysis"), "analysis", "study", "{reference: ARM, delta: 0.01}")
    if raw.get("arms") is not None and not isinstance(raw["arms"], list):
        raise ConfigError("study: 'arms' must be a list of arms like [{name: a, miner: {name: asms}, loss: "
                          f"{{name: soft_contrastive}}}}], got {short_repr(raw['arms'])}")
    if raw.get("seeds") is not None and not isinstance(raw["seeds"], list):
        raise ConfigError(f"study: 'seeds' must be a list of integers like [0, 1, 2], got {short_repr(raw['seeds'])}")
    if "storage" in raw and not isinstance(raw["storage"], str):
        raise ConfigError(f"study: 'storage' must be a folder path such as results, got {short_repr(raw['storage'])}")
    top = STUDY.validate(raw, where="study")
    _check_simple_name(top["name"], "study")
    _check_storage(top["storage"], top["name"])
    seeds = top["seeds"]
    if not seeds or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
        raise ConfigError(f"study: 'seeds' must be a non-empty list of non-negative integers, got {short_repr(seeds)}")
    for seed in seeds:
        check_seed(seed, "study", key="seeds")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"study: 'seeds' lists a seed twice: {short_repr(seeds)}")
    if not top["arms"]:
        raise ConfigError("study: 'arms' must be a non-empty list of arms")
    return top


def _parse_arm(i: int, arm_raw, shared: dict, seen: set) -> Arm:
    """One arm: its name, its config (shared settings merged under its own), search and domains."""
    if not isinstance(arm_raw, dict):
        raise ConfigError(f"study: arm #{i + 1} must be a mapping like {{name: a, miner: {{name: asms}}, "
                          f"loss: {{name: soft_contrastive}}}}, got {short_repr(arm_raw)}")
    raw_name = arm_raw.get("name")
    simple = isinstance(raw_name, str) and SIMPLE_NAME.fullmatch(raw_name) and len(raw_name) <= MAX_NAME
    where = f"arm '{raw_name}'" if simple else f"arm #{i + 1}"
    name = _check_simple_name(raw_name, where)
    if name in seen:
        raise ConfigError(f"{where}: the name is used by another arm; arm names must be unique")
    unknown = set(arm_raw) - set(ARM_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown, key=str)}; an arm may set {', '.join(ARM_KEYS[1:])}")
    if "loss" not in arm_raw:
        raise ConfigError(f"{where}: 'loss' is missing; give {{name: ...}}")
    for key in ("miner", "loss", *SHARED):  # `miner: asms` names the section and its shape
        section_mapping(arm_raw.get(key), key, where)
    config = _merge(shared, {k: v for k, v in arm_raw.items() if k in SHARED})
    _resolve_paths(config)
    config["miner"] = arm_raw.get("miner") or {"name": "none"}
    config["loss"] = arm_raw["loss"]
    try:
        domains, resolved = _resolve(config, where)
    except ConfigError as err:  # a mistake of the shared sections names them, not the first arm
        raise _shared_mistake(err, shared, where) from None
    search = _arm_search(arm_raw, where, resolved["train"]["epochs"])
    for path, domain in domains:
        key = ".".join(path)
        if search["mode"] == "grid" and domain.kind != "grid":
            raise ConfigError(f"{where}: {key} is a {domain.kind} domain but search.mode is grid; "
                              "use {grid: [...]} or search.mode: random / optuna")
        if search["mode"] == "optuna" and domain.kind == "grid":
            raise ConfigError(f"{where}: {key} is a grid but search.mode is optuna; use {{choice: [...]}}")
    return Arm(name, config, search, domains, resolved)


def parse_study(raw: dict, check_data: bool = True, scan_data: bool = True) -> Study:
    """A validated :class:`Study` from the parsed file. ``check_data``: load each dataset and check its
    class counts (and weights files); ``scan_data`` (with ``check_data``): also check every image
    file of file-based datasets (header only, :mod:`dmltune.data.scan`); ``--no-data-scan`` clears it."""
    top = _top_level(raw)
    shared = {k: raw[k] for k in SHARED if k in raw}
    arms, data_cache, notes = [], {}, []
    for i, arm_raw in enumerate(top["arms"]):
        arm = _parse_arm(i, arm_raw, shared, {a.name for a in arms})
        where = f"arm '{arm.name}'"
        notes.extend(decoupled_notes(arm.config, where))
        if check_data:
            _check_data(arm, where, data_cache, scan=scan_data)
        arms.append(arm)
    _check_analysis(raw.get("analysis"), [a.name for a in arms])
    storage = Path(top["storage"]).expanduser().resolve()  # relative to the working directory
    return Study(name=top["name"], directory=storage / top["name"], seeds=top["seeds"],
                 resources=_check_resources(raw), concurrency=top["concurrency"], arms=arms,
                 retries=top["retries"], source=raw, notes=notes)


def load_study(path: str | Path, overrides=(), check_data: bool = True, scan_data: bool = True) -> Study:
    """Read, override (``--set``) and validate a study file (``scan_data``: see :func:`parse_study`)."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides)
    return parse_study(raw, check_data, scan_data=scan_data)

