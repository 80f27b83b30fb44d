"""A study arm's data, checked before any trial starts: its dataset loads (and, with a scan, every
image file is sound), its weights file exists, and for every value a search may give them the
class counts fit: the training classes fill a batch and validation has at least 2 classes.

:func:`check_no_download` and :func:`check_pretrained` check, without reading anything, where the
data and weights come from (nothing is downloaded; ``pretrained`` only on a backbone that has
weights): ``validate --no-data`` runs them too."""

from __future__ import annotations

from itertools import product
from typing import TYPE_CHECKING

from ..registry import ConfigError
from .domains import is_domain

if TYPE_CHECKING:
    from .schema import Arm

DATASET_ONLY = ("transform", "val_fraction", "val_seed")  # dataset settings that do not change which dataset loads
DOWNLOAD_ADVICE = ", or set download: true"  # the end of fashion_mnist's missing-file advice: right for `train` only


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


def arm_values(arm: Arm, section: str, key: str) -> list:
    """Every value a trial of ``arm`` may give ``section.key``: the fixed (resolved) value, each
    value of a grid or choice, or the two bounds of a range."""
    return [v for v, _ in _choices(arm.config.get(section), arm.resolved[section], key, f"{section}.{key}")]


def check_no_download(arm: Arm, where: str) -> None:
    """A study never downloads its data: every trial would fetch the files again, and ``validate``
    must not touch the network. Read from the settings alone."""
    if "download" in arm.resolved["dataset"] and any(arm_values(arm, "dataset", "download")):
        raise ConfigError(f"{where}: dataset.download is true, but a study never downloads (every trial would fetch "
                          f"the files again): download {arm.resolved['dataset']['name']} once, then set "
                          "dataset.root to its folder and dataset.download: false")


def check_pretrained(arm: Arm, where: str) -> None:
    """``model.pretrained`` needs a backbone that has pretrained weights, or a ``model.weights`` file
    (as ``train`` refuses it when it builds the model). Read from the settings alone."""
    from ..models.backbones import WEIGHT_FILES

    if not any(arm_values(arm, "model", "pretrained")) or all(arm_values(arm, "model", "weights")):
        return
    for backbone in arm_values(arm, "model", "backbone"):
        if backbone not in WEIGHT_FILES:
            raise ConfigError(f"{where}: model: backbone '{backbone}' has no pretrained weights; set "
                              "model.pretrained=false or give model.weights")


def _noted(*notes: str) -> str:
    notes = [n for n in notes if n]
    return f" (with {', '.join(notes)})" if notes else ""


def check_arm_data(arm: Arm, where: str, cache: dict, scan: bool = True) -> dict:
    """The dataset exists (with ``scan``, every image file is sound: see :mod:`dmltune.data.scan`);
    the weights file exists; for every value a search may give the dataset's settings,
    train.batch_size, train.k and dataset.val_fraction, the training classes fill a batch and, when
    the study evaluates on validation (eval.every > 0), at least 2 validation classes exist. Each
    distinct dataset is loaded (and scanned) once; the class counts of each val_fraction follow
    from its training-class pool without loading it again. Grid and choice values are all checked,
    ranges at their bounds. A missing dataset and a missing weights file are both reported
    (ConfigErrors). Returns what the data showed, for the warnings (:mod:`.mistake_warnings`):
    ``{"dataset", "smallest_class", "side"}`` (images of the smallest training class, image side
    in pixels; the smallest over the datasets a search may name) or ``{}``."""
    from .problems import Problems

    section = arm.config.get("dataset")
    if not isinstance(section, dict) or is_domain(section):
        return {}
    problems = Problems()
    loaded, pools = problems.attempt(_dataset_pools, section, where, cache, scan)
    with problems.collect():
        _check_weights(arm, where)
    if loaded:
        with problems.collect():
            _check_class_counts(arm, section, pools, where)
    problems.raise_if_any()
    sides = [pool[4] for pool in pools if pool[4]]
    return {"dataset": pools[0][0], "smallest_class": min(pool[3] for pool in pools),
            "side": min(sides) if sides else None}


def _dataset_pools(section: dict, where: str, cache: dict, scan: bool) -> list[tuple]:
    """(dataset name, training-class pool before validation is carved out, notes, images of its
    smallest training class, image side or None) of every dataset the arm's dataset settings may
    name; each distinct one is loaded (and scanned) once per ``cache``, a failure too."""
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
                cache[key] = (splits.name, splits.train.num_classes + splits.val.num_classes,
                              _smallest_class(splits), _image_side(splits))
            except ConfigError as err:  # a study never downloads (check_no_download): no advice to
                advice = str(err).replace(DOWNLOAD_ADVICE, "")
                cache[key] = ConfigError(f"{where}: dataset: {advice}{_noted(*notes)}")
        if isinstance(cache[key], ConfigError):
            raise cache[key]
        name, pool, smallest, side = cache[key]
        pools.append((name, pool, notes, smallest, side))
    return pools


def _smallest_class(splits) -> int:
    """Images of the smallest class among the training classes (validation's included)."""
    import numpy as np

    counts = [np.bincount(s.labels)[np.bincount(s.labels) > 0] for s in (splits.train, splits.val) if len(s)]
    return int(min(c.min() for c in counts)) if counts else 0


def _image_side(splits) -> int | None:
    """The side in pixels of an in-memory dataset's images (None for image files: decoded later)."""
    images = splits.train.images
    return int(min(images.shape[-2:])) if images is not None and images.ndim == 4 else None


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
    for (name, pool, notes, *_), (fraction, f_note) in product(pools, fractions):
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
