"""One τ_p, τ_n for dynamic sampling: the dynamic loss takes the ``dsml`` miner's thresholds.

Dynamic sampling (dynamic_sampling §3.1–3.2) uses the same τ_p and τ_n to select pairs (the
``dsml`` miner) and to weight them (w = 2r(τ − S)² in a loss with ``dynamic: true``); its Fig. 5
varies them together. The miner and the loss declare their own τ, so when the miner is ``dsml``
and the loss is dynamic, every τ the loss does not set is copied from the miner, per trial: a grid
or search over the miner's τ moves the loss's τ with it. A loss that sets its own τ keeps it (the
two are then decoupled on purpose), and :func:`decoupled_notes` says so.

Both functions read the configuration as written (before defaults are filled in), so they work on a
trial's concrete configuration and on a study arm whose values may still be search domains.
"""

from __future__ import annotations

from typing import Any, Mapping

COUPLED = ("tau_p", "tau_n")


def _applies(config: Mapping[str, Any]) -> bool:
    from .losses import LOSSES

    miner, loss = config.get("miner"), config.get("loss")
    if not isinstance(miner, Mapping) or not isinstance(loss, Mapping) or miner.get("name") != "dsml":
        return False
    name = loss.get("name")
    if not isinstance(name, str) or name not in LOSSES or not LOSSES.lookup(name).factory.has_dynamic:
        return False
    return loss.get("dynamic", False) is not False  # true, or a search domain that may be true


def _miner_value(miner: Mapping[str, Any], key: str):
    from .miners import MINERS

    return miner[key] if key in miner else MINERS.lookup("dsml").defaults[key]


def couple_dynamic_thresholds(config: Mapping[str, Any]) -> dict:
    """``config`` with the loss's unset τ_p, τ_n taken from the ``dsml`` miner (a shallow copy)."""
    out = dict(config)
    if not _applies(config):
        return out
    loss = dict(config["loss"])
    for key in COUPLED:
        if key not in loss:
            loss[key] = _miner_value(config["miner"], key)
    out["loss"] = loss
    return out


def decoupled_notes(config: Mapping[str, Any], where: str) -> list[str]:
    """One line per τ that a dynamic loss sets apart from its ``dsml`` miner's."""
    if not _applies(config):
        return []
    notes = []
    for key in COUPLED:
        if key in config["loss"] and config["loss"][key] != _miner_value(config["miner"], key):
            notes.append(f"{where}: note: loss.{key} = {config['loss'][key]!r} differs from miner.{key} = "
                         f"{_miner_value(config['miner'], key)!r}, so pair selection and the dynamic weights use "
                         f"different τ (decoupled); leave loss.{key} out to use the miner's")
    return notes
