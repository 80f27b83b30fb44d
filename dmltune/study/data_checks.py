"""A study arm's data, checked before any trial starts: its dataset loads (and, with a scan, every
image file is sound), its weights file exists, and for every value a search may give them the
class counts fit: the training classes fill a batch and validation has at least 2 classes."""

from __future__ import annotations

from itertools import product
from typing import TYPE_CHECKING

from ..registry import ConfigError
from .domains import is_domain

if TYPE_CHECKING:
    from .schema import Arm

DATASET_ONLY = ("transform", "val_fraction", "val_seed")  # dataset settings that do not change which dataset loads


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


def check_arm_data(arm: Arm, where: str, cache: dict, scan: bool = True) -> None:
    """The dataset exists (with ``scan``, every image file is sound: see :mod:`dmltune.data.scan`);
    for every value a search may give the dataset's settings, train.batch_size, train.k and
    dataset.val_fraction, the training classes fill a batch and, when the study evaluates on
    validation (eval.every > 0), at least 2 validation classes exist. Each distinct dataset is
    loaded (and scanned) once; the class counts of each val_fraction follow from its training-class
    pool without loading it again. Grid and choice values are all checked, ranges at their bounds."""
    section = arm.config.get("dataset")
    if not isinstance(section, dict) or is_domain(section):
        return
    pools = _dataset_pools(section, where, cache, scan)
    _check_weights(arm, where)
    _check_class_counts(arm, section, pools, where)


def _dataset_pools(section: dict, where: str, cache: dict, scan: bool) -> list[tuple]:
    """(dataset name, training-class pool before validation is carved out, notes) of every dataset
    the arm's dataset settings may name; each distinct one is loaded (and scanned) once per ``cache``."""
    from ..data import load_dataset

    dataset = {k: v for k, v in section.items() if k not in DATASET_ONLY}
    keys = [k for k, v in dataset.items() if is_domain(v)]
    variants = product(*(_choices(dataset, {}, k, f"dataset.{k}") for k in keys))
    pools = []
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
    return pools


def _check_weights(arm: Arm, where: str) -> None:
    """The weights file exists, when the model settings are fixed (building the network without
    loading it would cost too much here)."""
    if any(is_domain(v) for v in (arm.config.get("model") or {}).values()):
        return
    from ..models import check_weights

    try:
        check_weights(arm.resolved["model"])
    except ConfigError as err:
        raise ConfigError(f"{where}: model: {err}") from None


def _check_class_counts(arm: Arm, section: dict, pools: list[tuple], where: str) -> None:
    """For every pool and every val_fraction, batch size and k a trial may use: the training classes
    fill a batch, and validation (when evaluated) has at least 2 classes."""
    from ..data.splits import split_train_val

    train, evals = arm.config.get("train"), arm.config.get("eval")
    batches = _choices(train, arm.resolved["train"], "batch_size", "train.batch_size")
    ks = _choices(train, arm.resolved["train"], "k", "train.k")
    fractions = _choices(section, arm.resolved["dataset"], "val_fraction", "dataset.val_fraction")
    every = [(e, n) for e, n in _choices(evals, arm.resolved["eval"], "every", "eval.every") if e]
    metric = arm.resolved["eval"]["metric"]
    if arm.folds > 1:  # k-fold: the dataset's own validation split plays no part
        fractions = [(None, "")]
    for (name, pool, notes), (fraction, f_note) in product(pools, fractions):
        if arm.folds > 1:
            fit, val, f_note = _fold_sizes(name, pool, arm.folds, where)
        else:
            fit, val = (len(part) for part in split_train_val(range(pool), fraction, 0))
        for (batch, b_note), (k, k_note) in product(batches, ks):
            if fit < batch // k:
                more = (", or use fewer folds" if arm.folds > 1 else ", or lower dataset.val_fraction" if val else "")
                raise ConfigError(f"{where}: a batch needs {batch // k} classes (train.batch_size {batch} / train.k {k}) "
                                  f"but {name} has {fit} training classes{_noted(*notes, f_note, b_note, k_note)}; "
                                  f"lower the batch size or raise k{more}")
        if every and val < 2:
            _refuse_validation(where, name, pool, val, fraction, [*notes, f_note], every[0], metric)


def _fold_sizes(name: str, pool: int, folds: int, where: str) -> tuple[int, int, str]:
    """(fewest training classes of a fold, fewest validation classes, note) of k-fold over ``pool`` classes."""
    from ..data.folds import class_folds

    try:
        groups = class_folds(range(pool), folds)
    except ConfigError as err:
        raise ConfigError(f"{where}: {name}: {err}") from None
    sizes = [len(g) for g in groups]
    return pool - max(sizes), min(sizes), f"the smallest fold of protocol.folds = {folds}"


def _refuse_validation(where: str, name: str, pool: int, val: int, fraction, notes: list[str],
                       every: tuple, metric: str) -> None:
    """The ConfigError of a val_fraction that leaves fewer than 2 validation classes while the
    study evaluates on them (``every``: the first eval.every > 0 and its note)."""
    e, e_note = every
    if fraction == 0:
        raise ConfigError(f"{where}: dataset.val_fraction is 0{_noted(*notes)}, so there are no "
                          f"validation classes, but eval.every = {e}{_noted(e_note)} evaluates on them and "
                          f"trials are compared on val/{metric}; set dataset.val_fraction above 0 (e.g. 0.25)")
    raise ConfigError(f"{where}: dataset.val_fraction {fraction:g} leaves {val} validation class(es) of "
                      f"{name}'s {pool} training classes{_noted(*notes, e_note)}; retrieval on "
                      "validation needs at least 2: raise dataset.val_fraction or use more classes")
