"""Study files: parsing and validation, before any trial starts.

A study file holds shared settings (dataset, model, train, eval), the seeds, per-trial resources,
and a list of arms. Each arm sets its miner and loss (and may override shared settings), with any
value either fixed or a search domain, and a search mode (grid, random, optuna) with an optional
ASHA scheduler. ``load_study`` returns a validated :class:`Study` or raises a one-line ConfigError
naming the arm and key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from types import SimpleNamespace

from ..config import section_mapping
from ..config_files import apply_overrides, read_yaml
from ..pairs.coupling import decoupled_notes
from .design_settings import Design, parse_design
from ..registry import Component, ConfigError, Param, short_repr
from .arm_config import SHARED_WHERE, merge_settings, resolve_domains, resolve_paths, shared_mistake
from .data_checks import check_arm_data, check_no_download, check_pretrained
from .domains import Domain
from .mistake_warnings import arm_warnings
from .problems import Problems
from .resources import check_devices, check_resources
from .same_across_arms import check_same_across_arms
from .top_level_checks import (MAX_NAME, SIMPLE_NAME, VALUE_SHAPES, check_analysis, check_resources_section,
                               check_seeds, check_simple_name, check_storage, check_value_shape)
from .pbt import PBT_PARAMS, check_pbt
from .protocol import check_kfold_arm, parse_protocol
from .tracking import TRACKING_EXAMPLE, parse_tracking

SHARED = ("dataset", "model", "generation", "train", "eval")
ARM_KEYS = ("name", "miner", "loss", "search") + SHARED

STUDY = Component("section", "study", dict, (
    Param("name", str, None, nullable=True, help="the study's name (letters, digits, _ . -); its folder under storage"),
    Param("description", str, "", help="free text, kept in the study record"),
    Param("storage", str, "results", help="folder that holds study folders (relative to the working directory)"),
    Param("seeds", list, [0], help="training seeds; every arm runs every seed"),
    Param("resources", dict, {}, nullable=True, help="{cpu: N, gpu: fraction or auto} per trial"),
    Param("concurrency", int, None, low=1, nullable=True, help="at most this many trials at once; empty = as resources allow"),
    Param("retries", int, 0, low=0, high=100, help="times a failed trial is restarted from its last checkpoint"),
    Param("reuse_actors", str, "auto", choices=("auto", "true", "false"),
          help="run trials one after another in the same Ray worker (no fresh process and imports per trial); "
               "auto: yes unless an arm uses DataLoader workers (train.workers > 0)"),
    *(Param(section, dict, {}, nullable=True, help=f"shared {section} settings (an arm may override them)")
      for section in SHARED),
    Param("arms", list, None, nullable=True, help="the arms: name, miner, loss, optional search and overrides"),
    Param("protocol", dict, None, nullable=True,
          help="{validation: split | kfold, folds: 4, fold_seed: 0}: how each configuration is validated"),
    Param("analysis", dict, None, nullable=True, help="{reference, delta, confidence, ...} of the report"),
    Param("tracking", dict, None, nullable=True, help="{mlflow: {...}, wandb: {...}, optuna: {...}}: log every trial to MLflow and/or Weights & "
          "Biases; keep optuna arms' searches in an Optuna database (`dmltune list tracking`)"),
    Param("design", object, None, nullable=True,
          help="fixed (default), {two_stage: {select_seeds, confirm_seeds, max_confirm_seeds}} or "
               "{sequential: {looks, max_seeds}}: how seeds are spent (docs/studies.md, Designs)"),
    Param("budget", dict, None, nullable=True, help="{trials: N} or {gpu_hours: H}: no stage or look starts beyond it"),
))
TOP_KEYS = tuple(STUDY.param_names)

SEARCH = Component("section", "search", dict, (
    Param("mode", str, "grid", choices=("grid", "random", "optuna", "pbt"),
          help="how the arm's domains are explored (pbt: Population Based Training over search.mutations)"),
    Param("num_samples", int, 1, low=1, high=100000, help="trials per seed (random, optuna)"),
    Param("scheduler", dict, None, nullable=True, help="{asha: {max_t, grace_period, reduction_factor}}"),
    Param("concurrency", int, None, low=1, nullable=True,
          help="at most this many of the arm's trials at once, all its seeds together (default: its share of the slots)"),
    *PBT_PARAMS,
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
    folds: int = 1                   # k-fold validation: each configuration × seed is this many trials

    def gpu(self, requested) -> float:
        """This arm's GPU share per trial: the study's number, or the backbone's default for ``auto``."""
        if requested != "auto":
            return float(requested or 0)
        from ..models.backbones import default_gpu_fraction

        return default_gpu_fraction(self.resolved["model"]["backbone"])

    @property
    def trials_per_seed(self) -> int:
        if self.search["mode"] == "pbt":
            return self.search["population"]
        if self.search["mode"] != "grid":
            return self.search["num_samples"]
        return self.configurations * self.folds

    @property
    def configurations(self) -> int:
        """Distinct configurations of a grid arm (its grid's size)."""
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
    warnings: list[str] = field(default_factory=list)  # valid but most likely a mistake (mistake_warnings.py)
    unchecked: list[str] = field(default_factory=list)  # what was not checked (validate --no-data)
    tracking: dict | None = None     # {"mlflow": {tracking_uri, experiment, tags}} or None (tracking.py)
    reuse_actors: bool = False       # `reuse_actors` resolved (auto → see reuse_actors())
    protocol: dict = field(default_factory=lambda: {"validation": "split"})  # {validation, folds, fold_seed}
    design: Design = field(default_factory=Design)  # how seeds are spent: fixed, two_stage, sequential


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


def _top_level(raw: dict, problems: Problems) -> tuple[dict, set]:
    """The study's own values (everything but the arms' contents), checked and with defaults, and
    the keys that are broken (their values left out: what depends on them is not checked). Every
    independent problem is added to ``problems``. ``"arms"`` is among the broken keys when the
    arms cannot be read: no list of arms, or a shared section of the wrong shape (each arm would
    only repeat it)."""
    unknown = set(raw) - set(TOP_KEYS)
    if unknown:
        per_arm = " (miner and loss are set in each arm: arms: [{name: a, miner: {name: asms}, loss: ...}])" \
            if unknown & {"miner", "loss", "search"} else ""
        problems.add(ConfigError(f"study: unknown key(s) {sorted(unknown, key=str)}; valid keys: "
                                 f"{', '.join(TOP_KEYS)}{per_arm}"))
    broken = set()
    for section in SHARED:  # the shape of each section first: `train: 5` names the section and its shape
        if not problems.attempt(section_mapping, raw.get(section), section, "study")[0]:
            broken |= {section, "arms"}
    for key in VALUE_SHAPES:
        if not problems.attempt(check_value_shape, raw, key)[0]:
            broken.add(key)
    if not problems.attempt(section_mapping, raw.get("tracking"), "tracking", "study", TRACKING_EXAMPLE)[0]:
        broken.add("tracking")
    known = {k: v for k, v in raw.items() if k in TOP_KEYS and k not in broken}
    for key in list(known):  # each value on its own: one wrong value does not hide another
        if not problems.attempt(STUDY.validate, {key: known[key]}, "study")[0]:
            del known[key]
            broken |= {key, "arms"} if key in SHARED else {key}
    top = STUDY.validate(known, where="study")
    if not problems.attempt(check_simple_name, top["name"], "study")[0]:
        broken.add("name")
    elif "storage" not in broken:
        problems.attempt(check_storage, top["storage"], top["name"])
    if "seeds" not in broken and not problems.attempt(check_seeds, top["seeds"])[0]:
        broken.add("seeds")
    if "arms" not in broken and not top["arms"]:
        problems.add(ConfigError("study: 'arms' must be a non-empty list of arms"))
        broken.add("arms")
    return top, broken


def _parse_arm(i: int, arm_raw, shared: dict, seen: set, protocol: dict | None = None) -> Arm:
    """One arm: its name, its config (shared settings merged under its own), search and domains."""
    if not isinstance(arm_raw, dict):
        raise ConfigError(f"study: arm #{i + 1} must be a mapping like {{name: a, miner: {{name: asms}}, "
                          f"loss: {{name: soft_contrastive}}}}, got {short_repr(arm_raw)}")
    raw_name = arm_raw.get("name")
    simple = isinstance(raw_name, str) and SIMPLE_NAME.fullmatch(raw_name) and len(raw_name) <= MAX_NAME
    where = f"arm '{raw_name}'" if simple else f"arm #{i + 1}"
    name = check_simple_name(raw_name, where)
    if name in seen:
        raise ConfigError(f"{where}: the name is used by another arm; arm names must be unique")
    unknown = set(arm_raw) - set(ARM_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown, key=str)}; an arm may set {', '.join(ARM_KEYS[1:])}")
    if "loss" not in arm_raw:
        raise ConfigError(f"{where}: 'loss' is missing; give {{name: ...}}")
    for key in ("miner", "loss", *SHARED):  # `miner: asms` names the section and its shape
        section_mapping(arm_raw.get(key), key, where)
    config = merge_settings(shared, {k: v for k, v in arm_raw.items() if k in SHARED})
    resolve_paths(config)
    config["miner"] = arm_raw.get("miner") or {"name": "none"}
    config["loss"] = arm_raw["loss"]
    protocol = protocol or {"validation": "split"}
    if protocol["validation"] == "kfold":
        config["protocol"] = dict(protocol)
    epochs = (config.get("train") or {}).get("epochs")
    search = _arm_search(arm_raw, where, epochs if isinstance(epochs, int) and not isinstance(epochs, bool) else 10)
    if search["mode"] == "pbt":
        config = check_pbt(config, search, where)
    try:
        domains, resolved = resolve_domains(config, where)
    except ConfigError as err:  # a mistake of the shared sections names them, not the first arm
        raise shared_mistake(err, shared, where) from None
    if search["mode"] == "pbt":
        search = check_pbt(config, search, where, resolved)
    if protocol["validation"] == "kfold":
        check_kfold_arm(search, where)
    for path, domain in domains:
        key = ".".join(path)
        repeated = _repeated(domain.values) if domain.kind == "grid" else []
        if repeated:
            raise ConfigError(f"{where}: {key}: {{grid: {list(domain.values)}}} repeats {repeated[0]!r} (1 and 1.0 are "
                              "one value); list each value once")
        if search["mode"] == "grid" and domain.kind != "grid":
            raise ConfigError(f"{where}: {key} is a {domain.kind} domain but search.mode is grid; "
                              "use {grid: [...]} or search.mode: random / optuna")
        if search["mode"] == "optuna" and domain.kind == "grid":
            raise ConfigError(f"{where}: {key} is a grid but search.mode is optuna; use {{choice: [...]}}")
    folds = protocol["folds"] if protocol["validation"] == "kfold" else 1
    return Arm(name, config, search, domains, resolved, folds)


def _repeated(values) -> list:
    from .experiments import value_key

    seen, out = set(), []
    for value in values:
        key = value_key(value)
        if key in seen:
            out.append(value)
        seen.add(key)
    return out


def parse_study(raw: dict, check_data: bool = True, scan_data: bool = True,
                machine: tuple[dict, str] | None = None) -> Study:
    """A validated :class:`Study` from the parsed file. ``check_data``: load each dataset and check its
    class counts (and weights files); ``scan_data`` (with ``check_data``): also check every image
    file of file-based datasets (header only, :mod:`dmltune.data.scan`); ``--no-data-scan`` clears it.
    ``machine``: ``(resources, where)`` to check the trials' requests against (``validate``, and
    ``run`` on this machine). Every independent problem is found in one pass: one is raised as a
    ConfigError, several as ConfigErrors (one line each); an arm that fails is not checked further."""
    problems = Problems()
    top, broken = _top_level(raw, problems)
    tracking, protocol = None, {"validation": "split"}
    if not broken & {"tracking", "name"}:
        tracking = problems.attempt(parse_tracking, raw.get("tracking"), top["name"])[1]
    ok, parsed = problems.attempt(parse_protocol, raw.get("protocol"))
    protocol = parsed if ok else protocol
    shared = {k: raw[k] for k in SHARED if k in raw}
    arms_raw = [] if "arms" in broken else top["arms"]
    arms, data_cache, notes, warnings, seen = [], {}, [], [], set()
    for i, arm_raw in enumerate(arms_raw):
        ok, arm = problems.attempt(_parse_arm, i, arm_raw, shared, set(seen), protocol)
        seen.add(arm_raw.get("name") if isinstance(arm_raw, dict) else None)
        if not ok:
            continue
        where = f"arm '{arm.name}'"
        notes.extend(decoupled_notes(arm.config, where))
        # a mistake in the shared data settings is named as the shared section's
        own = isinstance(arm_raw, dict) and any(k in arm_raw for k in ("dataset", "model", "train", "eval"))
        problems.attempt(check_pretrained, arm, where if own else SHARED_WHERE)
        data = {}
        if problems.attempt(check_no_download, arm, where if own else SHARED_WHERE)[0] and check_data:
            data = problems.attempt(check_arm_data, arm, where if own else SHARED_WHERE, data_cache, scan_data)[1]
        warnings.extend(arm_warnings(arm, data or {}))
        arms.append(arm)
    for err in check_same_across_arms(arms):
        problems.add(err)
    if "arms" not in broken and "analysis" not in broken:
        names = [a.get("name") for a in arms_raw if isinstance(a, dict)]
        problems.attempt(check_analysis, raw.get("analysis"), [str(n) for n in names])
    seeds = top["seeds"] if "seeds" not in broken else [0]
    ok, design = problems.attempt(parse_design, raw.get("design"), raw.get("budget"), seeds)
    if ok and len(arms) == len(arms_raw) and arms:
        problems.attempt(check_design, design, arms, {**raw, "seeds": seeds})
    resources = None
    if "resources" not in broken:
        resources = problems.attempt(check_resources_section, raw)[1]
    if resources is not None:
        problems.attempt(check_devices, resources, arms)
        if machine is not None:
            available, where = machine  # available: a mapping, or a function that gives it (a cluster to ask)
            ok, available = problems.attempt(available) if callable(available) else (True, available)
            if ok:
                problems.attempt(check_resources, SimpleNamespace(resources=resources, arms=arms), available, where)
    problems.raise_if_any()
    storage = Path(top["storage"]).expanduser().resolve()  # relative to the working directory
    return Study(name=top["name"], directory=storage / top["name"], seeds=design.first_seeds(top["seeds"]),
                 resources=resources, concurrency=top["concurrency"], arms=arms,
                 retries=top["retries"], source=raw, notes=notes, warnings=warnings, tracking=tracking,
                 reuse_actors=reuse_actors(top["reuse_actors"], arms), protocol=protocol, design=design,
                 unchecked=[] if check_data else unchecked_without_data(arms))


def unchecked_without_data(arms: list[Arm]) -> list[str]:
    """What a study parsed without its data (``validate --no-data``) has not checked."""
    datasets = sorted({a.resolved["dataset"]["name"] + (f" at {a.resolved['dataset']['root']}"
                                                        if a.resolved["dataset"].get("root") else "") for a in arms})
    weights = sorted({a.resolved["model"]["weights"] or f"{a.resolved['model']['backbone']} pretrained"
                      for a in arms if a.resolved["model"]["pretrained"] or a.resolved["model"]["weights"]})
    lines = [f"the dataset files ({', '.join(datasets)}) and their class counts against train.batch_size, train.k "
             "and dataset.val_fraction"]
    if weights:
        lines.append(f"the weights files ({', '.join(weights)})")
    return lines


def check_design(design: Design, arms: list[Arm], raw: dict) -> None:
    """A staged design needs a single-configuration reference, and a budget must fit the first stage."""
    first = sum(a.trials_per_seed for a in arms) * len(design.first_seeds(raw.get("seeds") or [0]))
    if design.budget_trials is not None and design.budget_trials < first:
        what = "the fixed design plans" if not design.staged else "its first stage needs"
        raise ConfigError(f"budget.trials is {design.budget_trials} but {what} {first} trials; raise the budget"
                          + (" or use a staged design (design: {two_stage: ...})" if not design.staged else
                             " or lower the first stage's seeds"))
    if not design.staged:
        return
    analysis = raw.get("analysis") if isinstance(raw.get("analysis"), dict) else {}
    name = analysis.get("reference") or next((a.name for a in reversed(arms) if not a.domains), None)
    ref = next((a for a in arms if a.name == name), None)
    if ref is None or ref.domains or ref.search["mode"] != "grid" or ref.folds > 1:
        raise ConfigError(f"design {design.kind} needs a reference arm that runs one configuration (no search, no "
                          "k-fold): set analysis.reference to such an arm, or use design: fixed")
    if any(a.folds > 1 for a in arms):
        raise ConfigError(f"design {design.kind} does not run k-fold studies yet; use design: fixed with protocol kfold")


def reuse_actors(setting: str, arms: list[Arm]) -> bool:
    """Whether trials run one after another in the same Ray worker. The trainable resets what a trial
    could inherit (``training.runtime.reset_process_state``). ``auto``: yes, except where an arm may
    decode image files in DataLoader worker processes (a file-based dataset, ``train.workers`` > 0):
    those trials are long, so a fresh worker costs little, and none of their processes is carried over."""
    if setting != "auto":
        return setting == "true"
    from ..data import DATASETS

    def decodes_files(arm: Arm) -> bool:
        dataset = DATASETS.get(arm.resolved["dataset"]["name"])
        return "max_pixels" in dataset.param_names and int(arm.resolved["train"].get("workers") or 0) > 0

    return not any(decodes_files(arm) for arm in arms)


def load_study(path: str | Path, overrides=(), check_data: bool = True, scan_data: bool = True,
               machine: tuple[dict, str] | None = None) -> Study:
    """Read, override (``--set``) and validate a study file (``scan_data``, ``machine``: see :func:`parse_study`)."""
    path = Path(path)
    raw = apply_overrides(read_yaml(path), overrides)
    return parse_study(raw, check_data, scan_data=scan_data, machine=machine)

