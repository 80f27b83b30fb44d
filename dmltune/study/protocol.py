"""The study's validation protocol: one validation split (the default), or class-disjoint k-fold
cross-validation over the training classes (the Metric Learning Reality Check's protocol).

With ``protocol: {validation: kfold, folds: K}`` every configuration × seed of an arm trains K models,
each its own Tune trial (``protocol.fold`` is a grid dimension of the arm's experiment, so folds run
in parallel). Fold ``i`` trains on the other folds' classes and validates on its own
(:mod:`dmltune.data.folds`). The assignment of classes to folds depends only on the dataset's training
classes and ``fold_seed``, so it is the same for every trial and every machine; ``folds.yaml`` in the
study folder records it. The analysis scores a configuration by its validation value averaged over
its folds, counts all folds' cost, and reports the test metric both as the mean over the fold models
and as the ensemble of their concatenated embeddings (:mod:`dmltune.analysis.fold_ensemble`).
"""

from __future__ import annotations

from ..config import MAX_FOLDS, section_mapping
from ..registry import Component, ConfigError, Param

STUDY_PROTOCOL = Component("section", "protocol", dict, (
    Param("validation", str, "split", choices=("split", "kfold"),
          help="split: one validation split of the training classes (dataset.val_fraction); "
               "kfold: class-disjoint k-fold cross-validation over them"),
    Param("folds", int, 4, low=2, high=MAX_FOLDS, help="k of k-fold"),
    Param("fold_seed", int, 0, low=0, high=2**31 - 1, help="seed of the assignment of classes to folds"),
))

FOLDS_RECORD = "folds.yaml"


def parse_protocol(section) -> dict:
    """``{validation, folds, fold_seed}`` of the study's ``protocol`` section, validated."""
    raw = section_mapping(section, "protocol", "study", "{validation: kfold, folds: 4}")
    protocol = STUDY_PROTOCOL.validate(raw, where="study: protocol")
    if protocol["validation"] == "split" and ("folds" in raw or "fold_seed" in raw):
        raise ConfigError("study: protocol.folds and protocol.fold_seed apply to validation: kfold; "
                          "set protocol.validation: kfold or remove them")
    return protocol


def check_kfold_arm(search: dict, where: str) -> None:
    """k-fold needs every fold of a configuration to train the same configuration: grid arms only."""
    if search["mode"] != "grid":
        raise ConfigError(f"{where}: protocol.validation kfold needs search.mode grid (each fold of a configuration "
                          f"is its own trial, and a {search['mode']} search would give each fold other values); "
                          "use a grid arm or protocol.validation: split")


def fold_classes_text(splits, folds: int, seed: int) -> list[list]:
    """The classes of each fold as plain values (for ``folds.yaml``)."""
    from ..data.folds import fold_assignment

    return [[c.item() if hasattr(c, "item") else c for c in group] for group in fold_assignment(splits, folds, seed)]


def write_folds_record(study) -> None:
    """``folds.yaml``: for each arm's dataset, the classes of each fold (k-fold studies only). Loading a
    dataset here is what the study check already did; a dataset that cannot load is left out (its
    trials fail with the reason)."""
    import yaml

    from ..data import load_dataset
    from ..atomic import write_atomic
    from .data_checks import DATASET_ONLY

    if study.protocol["validation"] != "kfold":
        return
    record, seen = {"folds": study.protocol["folds"], "fold_seed": study.protocol["fold_seed"], "datasets": {}}, {}
    for arm in study.arms:
        dataset = {k: v for k, v in arm.resolved["dataset"].items() if k not in DATASET_ONLY}
        key = repr(sorted(dataset.items()))
        if key not in seen:
            params = dict(dataset)
            name = params.pop("name")
            try:
                splits = load_dataset(name, **params)
            except (ConfigError, OSError):
                continue
            seen[key] = name if name not in record["datasets"] else f"{name} ({len(seen)})"
            groups = fold_classes_text(splits, study.protocol["folds"], study.protocol["fold_seed"])
            record["datasets"][seen[key]] = {f"fold {i}": group for i, group in enumerate(groups)}
    write_atomic(study.directory / FOLDS_RECORD, yaml.safe_dump(record, sort_keys=False))
