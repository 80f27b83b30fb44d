"""An arm's trainable config: the shared settings merged under the arm's own, paths made absolute,
and every trial config its search domains may produce resolved against the declared parameters;
a mistake that the shared sections alone make is reported as theirs, not the first arm's."""

from __future__ import annotations

import copy
from pathlib import Path

from ..config import resolve_config
from ..registry import ConfigError
from .domains import find_domains, is_domain, replace_at

SHARED_WHERE = "study (shared by all arms)"                 # names a mistake in the shared sections


def merge_settings(base: dict, override: dict) -> dict:
    """``override`` merged over a copy of ``base``, mapping by mapping (a search domain is a value)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and not is_domain(value):
            out[key] = merge_settings(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def resolve_paths(config: dict) -> None:
    """Dataset roots and weights files as absolute paths: trials run in other working directories."""
    for section, key in (("dataset", "root"), ("model", "weights")):
        value = (config.get(section) or {}).get(key)
        if isinstance(value, str) and value:
            try:
                config[section][key] = str(Path(value).expanduser().resolve())
            except (OSError, RuntimeError):  # a symlink loop (RuntimeError before Python 3.13): the loader names it
                config[section][key] = str(Path(value).expanduser().absolute())


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


def resolve_domains(config: dict, where: str) -> tuple[list, dict]:
    """(search domains, config resolved at each domain's first value) of an arm's config."""
    try:
        domains = list(find_domains(config))
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}") from None
    return domains, _resolve_arm(config, domains, where)


def shared_mistake(err: ConfigError, shared: dict, where: str) -> ConfigError:
    """``err``, found in arm ``where``, reported as a mistake of the shared sections when they alone
    (with a plain loss, no miner) fail in the same way; otherwise ``err`` itself."""
    if not shared:
        return err
    probe = copy.deepcopy({k: v for k, v in shared.items() if v is not None})
    probe["loss"] = {"name": "contrastive"}  # valid with any shared settings: isolates their mistakes
    try:
        resolve_paths(probe)
        resolve_domains(probe, SHARED_WHERE)
    except ConfigError as shared_err:
        same = str(shared_err).removeprefix(SHARED_WHERE) == str(err).removeprefix(where)
        return shared_err if same else err
    except Exception:  # the arm's message stands
        return err
    return err
