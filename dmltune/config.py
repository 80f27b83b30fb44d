"""The trainable's configuration: its sections, their declared parameters, and validation.

A resolved configuration (what one trial runs) is a nested dict::

    seed: 0
    dataset: {name: digits, ...dataset parameters}
    model:   {backbone: small_cnn, dim: 64, ...model parameters}
    miner:   {name: asms, gamma_pos: 0.1, gamma_neg: 0.01}
    loss:    {name: soft_contrastive, lam: 0.7 | {meta: {...}}, ...}
    train:   {epochs: 10, batch_size: 80, k: 5, lr: 1e-5, ...}
    eval:    {every: 1, metric: map@r, ...}

``resolve_config`` fills defaults and checks every value against the components' declared
parameters, so a mistake is reported in one line before anything is built or trained.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Mapping

from .nmi import NMI_BACKENDS, NMI_DEFAULTS, NMI_INITS
from .meta_lambda import META_PARAMS, check_clamp
from .registry import Component, ConfigError, Param, _did_you_mean, short_repr

MAX_FOLDS = 20
"""At most this many folds of k-fold cross-validation (each fold is a trial of every configuration × seed)."""

COMPILE_MODES = ("false", "true", "max-autotune")
"""``train.compile``: eager, ``torch.compile``'s default mode, or its max-autotune mode."""

TRAIN_PARAMS = (
    Param("epochs", int, 10, low=1, help="training epochs"),
    Param("batch_size", int, 80, low=2, help="B: images per batch (B/K classes × K)"),
    Param("k", int, 5, low=2, help="K: images per class in a batch (≥ 2, or no positive pair exists)"),
    Param("batches_per_epoch", int, None, low=1, nullable=True,
          help="iterations per epoch; empty = training images // batch_size"),
    Param("optimizer", str, "adam", choices=("adam", "adamw"), help="optimizer"),
    Param("lr", float, 1e-5, low=0.0, high=10.0, help="learning rate of the embedding head"),
    Param("backbone_lr_mult", float, 1.0, low=0.0, high=100.0, help="backbone learning rate = lr × this"),
    Param("weight_decay", float, 0.0, low=0.0, high=1.0, help="weight decay"),
    Param("lr_steps", list, [], low=1, item=int, increasing=True,
          help="epochs after which the learning rate is multiplied by lr_gamma (each below train.epochs)"),
    Param("lr_gamma", float, 0.1, low=0.0, high=1.0, help="learning-rate decay factor"),
    Param("checkpoint_every", int, 1, low=0, help="checkpoint every N epochs (0 = only at the end)"),
    Param("device", str, "auto", choices=("auto", "cpu", "cuda"), help="where to train"),
    Param("amp", str, "auto", choices=("auto", "bf16", "off"), help="bf16 autocast (auto = on CUDA)"),
    Param("cache", str, "auto", choices=("auto", "device", "loader"),
          help="decoded-image cache on the device, or a DataLoader"),
    Param("workers", int, 2, low=0, high=64, help="DataLoader workers when not cached"),
    Param("cache_gb", float, 8.0, low=0.0, high=1024.0, help="memory budget of the decoded-image cache per set"),
    Param("compile", str, "false", choices=COMPILE_MODES,
          help="torch.compile the backbone's forward: true (default mode) or max-autotune (longer compile)"),
)

EVAL_PARAMS = (
    Param("every", int, 1, low=0, help="evaluate on the validation classes every N epochs (0 = never)"),
    Param("test_every", int, 0, low=0, help="also evaluate on the test classes every N epochs (0 = at the end only)"),
    Param("metric", str, "map@r", help="selection metric, a key of the evaluation (e.g. map@r, recall@1)"),
    Param("ks", list, [1, 2, 4, 8], help="K values of Recall@K"),
    Param("nmi", bool, True, help="compute NMI (k-means) as well"),
    # NMI's k-means: defaults and choices are evaluate.py's (one source)
    Param("nmi_backend", str, NMI_DEFAULTS["nmi_backend"], choices=NMI_BACKENDS,
          help="k-means of NMI: sklearn (the papers' KMeans), faiss, or auto (sklearn up to 2e6 points × clusters)"),
    Param("nmi_init", str, NMI_DEFAULTS["nmi_init"], choices=NMI_INITS, help="k-means seeding of NMI"),
    Param("nmi_restarts", int, NMI_DEFAULTS["nmi_restarts"], low=1, high=1000,
          help="k-means runs for NMI; the lowest-inertia one counts (sklearn's n_init)"),
    Param("nmi_iterations", int, NMI_DEFAULTS["nmi_iterations"], low=1, high=100000,
          help="most Lloyd iterations per k-means run (sklearn's max_iter)"),
    Param("nmi_seed", int, NMI_DEFAULTS["nmi_seed"], low=0, high=2**31 - 1, help="seed of NMI's k-means"),
    Param("batch_size", int, 256, low=1, help="images per forward pass when embedding"),
    Param("similarity_bins", int, 40, low=0, high=400,
          help="record histograms of validation pair similarities in this many bins (0 = off)"),
)

PROTOCOL_PARAMS = (
    Param("validation", str, "split", choices=("split", "kfold"),
          help="model selection on one validation split, or on class-disjoint k-fold cross-validation"),
    Param("folds", int, 4, low=2, high=MAX_FOLDS, help="k of k-fold (validation: kfold)"),
    Param("fold", int, 0, low=0, high=MAX_FOLDS - 1, help="the fold this trial validates on (0-based)"),
    Param("fold_seed", int, 0, low=0, high=2**31 - 1, help="seed of the assignment of classes to folds"),
    Param("mutable", list, [], help="dotted keys a Population Based Training exploit may change on restore"),
)

TRAIN = Component("section", "train", dict, TRAIN_PARAMS)
EVAL = Component("section", "eval", dict, EVAL_PARAMS)
META = Component("section", "loss.lam.meta", dict, META_PARAMS)
PROTOCOL = Component("section", "protocol", dict, PROTOCOL_PARAMS)

SECTIONS = ("seed", "dataset", "model", "miner", "loss", "generation", "train", "eval", "protocol")
MUTABLE_SECTIONS = ("miner", "loss", "generation")
"""Sections whose numeric parameters Population Based Training may change (``protocol.mutable``)."""

# the shape of each section, for the message when a section is not a mapping
SECTION_EXAMPLES = {
    "dataset": "{name: cub200, root: data/CUB_200_2011}", "model": "{backbone: resnet50, dim: 512}",
    "miner": "{name: asms}", "loss": "{name: soft_contrastive}", "generation": "{name: mirage}",
    "train": "{epochs: 10, lr: 1.0e-5}", "eval": "{metric: map@r}", "protocol": "{validation: kfold, folds: 4}",
}
NAME_KEYS = {"dataset": "name", "model": "backbone", "miner": "name", "loss": "name", "generation": "name"}
MAX_SEED = 2**63 - 1


def section_mapping(value: Any, section: str, where: str, example: str | None = None) -> dict:
    """``value`` as a section's mapping (``{}`` when empty); anything else is a ConfigError that
    shows the shape, e.g. ``'miner' must be a mapping like {name: asms}``."""
    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, str) and value and section in NAME_KEYS:
        example = f"{{{NAME_KEYS[section]}: {value}}}"
    example = example or SECTION_EXAMPLES.get(section, "{key: value}")
    raise ConfigError(f"{where}: '{section}' must be a mapping like {example}, got {short_repr(value)}")


def check_seed(seed: Any, where: str, key: str = "seed") -> int:
    """``seed`` is an integer in 0 … 2**63 − 1 (what every random generator of a trial accepts)."""
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ConfigError(f"{where}: '{key}' must be an integer, got {short_repr(seed)}")
    if not 0 <= seed <= MAX_SEED:
        shown = seed if abs(seed) < 10**30 else f"{str(seed)[:12]}... ({len(str(abs(seed)))} digits)"
        raise ConfigError(f"{where}: '{key}' = {shown} does not fit: a seed is an integer in 0 … 2**63 − 1 "
                          f"(64 bits); use a smaller non-negative seed")
    return seed


def eval_metrics(eval_section: Mapping[str, Any]) -> list[str]:
    """The metrics an evaluation with these (resolved) eval settings computes."""
    return (["map@r", "r_precision"] + [f"recall@{k}" for k in eval_section["ks"]]
            + (["nmi"] if eval_section["nmi"] else []))


def _check_eval(section: dict, where: str) -> None:
    """eval.ks are positive integers, and eval.metric is a metric this evaluation computes."""
    ks = section["ks"]
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in ks):
        raise ConfigError(f"{where}: eval.ks must be positive integers (the K of Recall@K, e.g. [1, 2, 4, 8]), "
                          f"got {short_repr(ks)}")
    metric, computed = section["metric"], eval_metrics(section)
    if metric in computed:
        return
    if metric == "nmi":
        raise ConfigError(f"{where}: eval.metric nmi is never computed because eval.nmi is false; "
                          "set eval.nmi: true or choose another metric")
    recall = re.fullmatch(r"recall@([0-9]+)", metric)
    if recall:
        raise ConfigError(f"{where}: eval.metric {metric} is never computed: {recall.group(1)} is not in eval.ks "
                          f"{ks}; add it to eval.ks or choose one of {', '.join(computed)}")
    raise ConfigError(f"{where}: eval.metric {metric!r} is not a metric the evaluation computes"
                      f"{_did_you_mean(metric, computed)}; choose one of {', '.join(computed)}")


def _dataset_section(config: Mapping, where: str) -> dict:
    """The dataset's own parameters plus its ``transform`` (preset chosen by image size if absent)."""
    from .data import DATASETS, TRANSFORM

    section = section_mapping(config.get("dataset"), "dataset", where)
    transform = section.pop("transform", None) or {}
    if not isinstance(transform, Mapping):
        raise ConfigError(f"{where}: dataset.transform must be a mapping such as {{preset: imagenet}}")
    resolved = _named_section({"dataset": section}, "dataset", "name", DATASETS, where)
    transform = dict(transform)
    transform.setdefault("preset", SMALL_IMAGE_PRESETS.get(resolved["name"], "imagenet"))
    resolved["transform"] = TRANSFORM.validate(transform, where=f"{where}: dataset.transform")
    return resolved


SMALL_IMAGE_PRESETS = {"fashion_mnist": "28px", "digits": "8px"}


def _named_section(config: Mapping, key: str, name_key: str, registry, where: str) -> dict:
    section = section_mapping(config.get(key), key, where)
    if name_key not in section:
        raise ConfigError(f"{where}: '{key}' needs a '{name_key}'; choose one of {', '.join(registry)}")
    name = section.pop(name_key)
    try:
        component = registry.lookup(name)
    except ConfigError as err:
        raise ConfigError(f"{where}: {key}.{name_key}: {err}") from None
    resolved = component.validate(section, where=f"{where}: {key} '{name}'")
    return {name_key: name, **resolved}


def _loss_section(config: Mapping, where: str) -> dict:
    from .pairs import LOSSES

    section = section_mapping(config.get("loss"), "loss", where)
    lam = section.get("lam")
    meta = None
    if isinstance(lam, Mapping):
        if set(lam) != {"meta"}:
            raise ConfigError(f"{where}: loss.lam must be a number or {{meta: {{...}}}}, got keys {sorted(lam)}")
        name = section.get("name")
        if name in LOSSES and not LOSSES.lookup(name).factory.has_lambda:
            raise ConfigError(f"{where}: loss '{name}' has no threshold λ to meta-learn; remove loss.lam")
        meta = META.validate(lam["meta"] or {}, where=f"{where}: loss.lam.meta")
        check_clamp(meta["init"], meta["clamp"], f"{where}: loss.lam.meta")
        batch = meta["meta_batch"]
        if set(batch) - {"classes", "per_class"} or not all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in batch.values()):
            raise ConfigError(f"{where}: loss.lam.meta.meta_batch must be {{classes: int ≥ 1, per_class: int ≥ 1}}, got {batch}")
        if meta["meta_loss"]:
            meta_loss = dict(meta["meta_loss"])
            meta["meta_loss"] = _named_section({"meta_loss": meta_loss}, "meta_loss", "name", LOSSES,
                                               f"{where}: loss.lam.meta")
        section["lam"] = meta["init"]
    resolved = _named_section({"loss": section}, "loss", "name", LOSSES, where)
    if meta is not None:
        resolved["lam"] = {"meta": meta}
    return resolved


def _check_protocol(out: dict, where: str) -> None:
    """The fold is one of the folds, and every mutable key names a numeric parameter of a mutable section."""
    protocol = out["protocol"]
    if protocol["fold"] >= protocol["folds"]:
        raise ConfigError(f"{where}: protocol.fold = {protocol['fold']} is not one of the {protocol['folds']} folds "
                          f"(0 … {protocol['folds'] - 1})")
    for key in protocol["mutable"]:
        section, _, name = str(key).partition(".")
        value = out.get(section, {}).get(name) if section in MUTABLE_SECTIONS else None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: protocol.mutable lists {key!r}, which is not a numeric parameter of "
                              f"{' / '.join(MUTABLE_SECTIONS)} in this configuration (e.g. miner.gamma_pos)")


def resolve_config(config: Mapping[str, Any], where: str = "config") -> dict:
    """Defaults filled in and every value checked; raises ConfigError naming ``where`` and the key."""
    from .generation import GENERATORS
    from .models import resolve_model
    from .pairs import MINERS
    from .pairs.coupling import couple_dynamic_thresholds

    if not isinstance(config, Mapping):
        raise ConfigError(f"{where}: expected a mapping of sections ({', '.join(SECTIONS)}), got {short_repr(config)}")
    unknown = set(config) - set(SECTIONS)
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {sorted(unknown, key=str)}; valid sections: {', '.join(SECTIONS)}")
    sections = {key: section_mapping(config.get(key), key, where) for key in SECTIONS if key != "seed"}
    config = couple_dynamic_thresholds({**config, **sections})  # a dynamic loss takes the dsml miner's τ unless it sets its own
    seed = check_seed(config.get("seed", 0), where)
    out = {
        "seed": seed,
        "dataset": _dataset_section(config, where),
        "model": resolve_model(sections["model"], where=f"{where}: model"),
        "miner": _named_section(config, "miner", "name", MINERS, where)
        if sections["miner"] else {"name": "none"},
        "loss": _loss_section(config, where),
        "generation": _named_section(config, "generation", "name", GENERATORS, where)
        if sections["generation"] else {"name": "none"},
        "train": TRAIN.validate(sections["train"], where=f"{where}: train"),
        "eval": EVAL.validate(sections["eval"], where=f"{where}: eval"),
        "protocol": PROTOCOL.validate(sections["protocol"], where=f"{where}: protocol"),
    }
    _check_eval(out["eval"], where)
    _check_protocol(out, where)
    train = out["train"]
    if train["batch_size"] % train["k"]:
        raise ConfigError(
            f"{where}: train.batch_size = {train['batch_size']} is not divisible by train.k = {train['k']}; "
            f"use a multiple of {train['k']}"
        )
    late = [step for step in train["lr_steps"] if step >= train["epochs"]]
    if late:
        raise ConfigError(f"{where}: train.lr_steps {train['lr_steps']} has {late[0]}, not below train.epochs = "
                          f"{train['epochs']}: the learning rate would never change there; drop it or use steps "
                          f"below {train['epochs']}")
    meta = out["loss"].get("lam")
    if train["compile"] != "false" and isinstance(meta, dict) and meta["meta"]["scope"] == "full":
        raise ConfigError(f"{where}: train.compile = {train['compile']} cannot be combined with loss.lam.meta.scope "
                          "full, whose look-ahead differentiates through the backbone twice (torch.compile has no "
                          "double backward); use scope head or train.compile false")
    return copy.deepcopy(out)
