"""Population Based Training as an arm (``search: {mode: pbt, ...}``): Ray Tune's
``PopulationBasedTraining`` over the thresholds named in ``search.mutations``.

Each seed runs one population (its own Tune experiment, like a random arm's replicate). Every
``perturbation_interval`` epochs the population is compared on validation (synchronously: members
wait for each other, so every exploit copies a checkpoint of the same epoch). A member in the bottom
``quantile_fraction`` continues from the checkpoint of one in the top quantile (model, optimizer,
sampler and random state) with the donor's thresholds perturbed (×0.8 or ×1.2, or resampled from
its domain with ``resample_probability``); the new values apply from its next step (the trainable:
``protocol.mutable`` lets such a restore change exactly these keys). Each member reports the values it
trained with per epoch (``schedule/KEY``), and the analysis counts every member's own epochs as its
cost, so the whole population's compute is counted. The selected result of a seed is its best member
on validation.
"""

from __future__ import annotations

import copy

from ..config import MUTABLE_SECTIONS
from ..registry import ConfigError, Param, short_repr
from .domains import find_domains, parse_domain, replace_at

PBT_PARAMS = (
    Param("population", int, None, low=2, high=1000, nullable=True, help="members of each seed's population (pbt)"),
    Param("perturbation_interval", int, None, low=1, nullable=True, help="epochs between exploit/explore steps (pbt)"),
    Param("mutations", dict, None, nullable=True,
          help="{miner.gamma_pos: {uniform: [0, 0.3]}, ...}: the thresholds PBT samples and perturbs (pbt)"),
    Param("quantile_fraction", float, 0.25, low=0.0, high=0.5, help="bottom share that exploits the top share (pbt)"),
    Param("resample_probability", float, 0.25, low=0.0, high=1.0,
          help="chance that an explored value is resampled from its domain instead of perturbed (pbt)"),
)
PBT_ONLY = ("population", "perturbation_interval", "mutations")


def check_pbt(config: dict, search: dict, where: str, resolved: dict | None = None):
    """Before resolution (``resolved`` None): the arm's config with each mutation's domain put at its
    key and ``protocol.mutable`` listing the keys. After: the search section checked against the
    resolved settings (epochs, checkpoint cadence), returned."""
    if resolved is None:
        return _with_mutations(config, search, where)
    epochs, interval = resolved["train"]["epochs"], search["perturbation_interval"]
    if search["scheduler"] is not None:
        raise ConfigError(f"{where}: search.scheduler cannot be combined with search.mode pbt (PBT is the scheduler)")
    if interval >= epochs:
        raise ConfigError(f"{where}: search.perturbation_interval = {interval} is not below train.epochs = {epochs}, "
                          f"so PBT would never act; use an interval below {epochs}")
    every = resolved["train"]["checkpoint_every"]
    if every == 0 or interval % every:
        raise ConfigError(f"{where}: search.perturbation_interval = {interval} needs a checkpoint at each perturbation, "
                          f"but train.checkpoint_every is {every}; set train.checkpoint_every: 1")
    return search


def _with_mutations(config: dict, search: dict, where: str) -> dict:
    for key in PBT_ONLY:
        if search[key] is None:
            example = {"population": "population: 8", "perturbation_interval": "perturbation_interval: 2",
                       "mutations": "mutations: {miner.gamma_pos: {uniform: [0.0, 0.3]}}"}[key]
            raise ConfigError(f"{where}: search.mode pbt needs search.{key} (e.g. {example})")
    if search["num_samples"] != 1:
        raise ConfigError(f"{where}: a pbt arm's size is search.population; remove search.num_samples")
    found = [".".join(p) for p, _ in find_domains(config)]
    if found:
        raise ConfigError(f"{where}: {found[0]} is a search domain, but a pbt arm searches only what "
                          "search.mutations names; move it there (or fix its value)")
    mutations = search["mutations"]
    if not mutations:
        raise ConfigError(f"{where}: search.mutations is empty; name at least one threshold, "
                          "e.g. {miner.gamma_pos: {uniform: [0.0, 0.3]}}")
    config = copy.deepcopy(config)
    for key, spec in mutations.items():
        section, _, name = str(key).partition(".")
        if section not in MUTABLE_SECTIONS or not name or "." in name:
            raise ConfigError(f"{where}: search.mutations key {short_repr(key)} must name a parameter of "
                              f"{' / '.join(MUTABLE_SECTIONS)} as SECTION.PARAMETER, e.g. miner.gamma_pos")
        spec = {"choice": spec} if isinstance(spec, list) else spec
        domain = parse_domain(spec, f"{where}: search.mutations.{key}")
        if domain is None or domain.kind == "grid":
            raise ConfigError(f"{where}: search.mutations.{key} must be a domain {{uniform: [low, high]}}, "
                              f"{{loguniform: [low, high]}} or {{choice: [...]}}, got {short_repr(spec)}")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in domain.values):
            raise ConfigError(f"{where}: search.mutations.{key} must hold numbers (PBT perturbs them), "
                              f"got {short_repr(list(domain.values))}")
        own = config.get(section)
        if not isinstance(own, dict):
            raise ConfigError(f"{where}: search.mutations.{key}: the arm has no {section} section")
        if name in own:
            raise ConfigError(f"{where}: {key} is set in the arm ({short_repr(own[name])}) and in search.mutations; "
                              "keep it in one place (PBT samples its start values from the mutation's domain)")
        config = replace_at(config, (section, name), spec)
    config["protocol"] = {**(config.get("protocol") or {}), "mutable": [str(k) for k in mutations]}
    return config


def hyperparam_mutations(arm) -> dict:
    """PBT's ``hyperparam_mutations`` (nested like the config) from the arm's mutation domains."""
    out: dict = {}
    for path, domain in arm.domains:
        node = out
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = list(domain.values) if domain.kind == "choice" else domain.to_tune()
    return out


def restart_interrupted_population(folder, retry_errored: bool = False) -> str | None:
    """Before a resume: a PBT experiment whose population did not finish is moved aside whole
    (``seed_S.interrupted-TIME``, nothing deleted) so that the population runs again from the start.
    Ray Tune does not continue a restored synchronous population reliably: in our test (Ray 2.60) its
    last member waited forever. A population's members depend on each other, so no member can be
    finished alone either; nor retried alone (``retry_errored``): Tune would start an errored member
    from scratch with the thresholds an exploit gave it, under a new id, beside members that had
    exploited it (found by the chaos run), so a population with a member in error starts again whole.
    Returns the line to print, or None when the population had finished (and is not retried)."""
    import time
    from pathlib import Path

    from ray.tune import ExperimentAnalysis

    folder = Path(folder)
    try:
        trials = ExperimentAnalysis(str(folder)).trials
    except Exception:  # an unreadable record: recover_record has dealt with it, Tune will say more
        return None
    errored = retry_errored and any(t.status == "ERROR" for t in trials)
    if trials and all(t.status in ("TERMINATED", "ERROR") for t in trials) and not errored:
        return None
    aside = folder.with_name(f"{folder.name}.interrupted-{time.strftime('%Y-%m-%d_%H-%M-%S')}")
    folder.rename(aside)
    what = "had a member in error" if errored else "was interrupted"
    return (f"{folder}: the PBT population {what} and starts again from the first epoch (a population "
            f"runs only as a whole); its earlier run is kept in {aside.name}")


class _ThreadRandom:
    """Stands in for the ``random`` module inside Tune's PBT scheduler: each thread (each PBT
    experiment's Tune loop, several of which run at once in one study) draws from its own seeded
    generator, so that one experiment's exploit partners and explorations do not depend on another's."""

    def __init__(self):
        import threading

        self.local = threading.local()

    def seed(self, value) -> None:
        import random

        self.local.rng = random.Random(value)

    def __getattr__(self, name):
        import random

        return getattr(getattr(self.local, "rng", None) or random._inst, name)


_PBT_RANDOM = _ThreadRandom()


def seed_pbt_random(seed: int) -> None:
    """Seed the generator Tune's PBT scheduler draws from in this thread (see :class:`_ThreadRandom`)."""
    import ray.tune.schedulers.pbt as tune_pbt

    tune_pbt.random = _PBT_RANDOM
    _PBT_RANDOM.seed(seed)


def population_scheduler(**settings):
    """Ray Tune's ``PopulationBasedTraining`` (``settings`` as its own) with one fix for Ray 2.60.

    A member that reaches a perturbation point before the rest is paused, and pausing saves a
    checkpoint first. If the last member arrives while that save is still in flight and the early one
    is exploited, Tune stops the early one's actor and caches a STOP to apply "after the save" (the
    save is then dropped with the actor). Nothing clears that STOP when the member restarts from its
    donor's checkpoint, so it is applied at the member's next checkpoint: the member ends TERMINATED
    after one more epoch, as if it had finished (about 1 run in 3 of the chaos run's population;
    ``tests/test_pbt.py`` holds the sequence). Here the stale STOP is dropped once the exploit is set up.

    And one saving: no perturbation at a member's last epoch. Tune would pause every member there
    (synchronous PBT) and restart each, one after another, from its own or a donor's checkpoint, only
    for it to stop at once without training: with ``epochs`` a multiple of ``perturbation_interval``
    (40 and 5 in studies/fixed_vs_dynamic.yaml) that is one whole pause and restart of the population
    for nothing. Its results, ledger and cost are those of the members' own last epochs either way."""
    from ray.tune.schedulers import PopulationBasedTraining, TrialScheduler

    class _PopulationBasedTraining(PopulationBasedTraining):
        def on_trial_result(self, tune_controller, trial, result):
            if _at_last_epoch(trial.config, result.get(self._time_attr)):
                return TrialScheduler.CONTINUE  # the member ends here: nothing left to train
            return super().on_trial_result(tune_controller, trial, result)

        def _exploit(self, tune_controller, trial, trial_to_clone):
            super()._exploit(tune_controller, trial, trial_to_clone)
            cached = getattr(tune_controller, "_cached_trial_decisions", None)
            if isinstance(cached, dict) and cached.get(trial.trial_id) == TrialScheduler.STOP:
                del cached[trial.trial_id]  # the restarted member must train on

    return _PopulationBasedTraining(**settings)


def _at_last_epoch(config: dict, epoch) -> bool:
    """Whether a member that reported ``epoch`` has trained its ``train.epochs``."""
    train = config.get("train") if isinstance(config, dict) else None
    epochs = train.get("epochs") if isinstance(train, dict) else None
    try:
        return epoch is not None and epochs is not None and float(epoch) >= float(epochs)
    except (TypeError, ValueError):
        return False
