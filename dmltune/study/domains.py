"""Search domains inside study files: ``{grid: [...]}``, ``{choice: [...]}``, ``{uniform: [a, b]}``,
``{loguniform: [a, b]}``, found anywhere in an arm's nested settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

from ..registry import ConfigError

KINDS = ("grid", "choice", "uniform", "loguniform")


@dataclass(frozen=True)
class Domain:
    kind: str
    values: tuple

    def candidates(self) -> tuple:
        """Values to check against a parameter's declared type and range (the bounds for ranges)."""
        return self.values

    def to_tune(self):
        from ray import tune

        if self.kind == "grid":
            return tune.grid_search(list(self.values))
        if self.kind == "choice":
            return tune.choice(list(self.values))
        if self.kind == "uniform":
            return tune.uniform(*self.values)
        return tune.loguniform(*self.values)


def is_domain(value: Any) -> bool:
    """Whether ``value`` is written as a search domain (``{grid: [...]}`` and the like)."""
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in KINDS


def parse_domain(value: Any, where: str) -> Domain | None:
    """The domain a value describes, or None for a plain value."""
    if not is_domain(value):
        if isinstance(value, dict) and len(value) == 1 and next(iter(value)) in ("grid_search", "range", "randint"):
            raise ConfigError(f"{where}: unknown search domain '{next(iter(value))}'; use one of {', '.join(KINDS)}")
        return None
    kind, values = next(iter(value.items()))
    if not isinstance(values, list) or not values:
        raise ConfigError(f"{where}: {{{kind}: ...}} needs a non-empty list of values")
    if kind in ("uniform", "loguniform"):
        if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            raise ConfigError(f"{where}: {{{kind}: [low, high]}} needs exactly two numbers, got {values}")
        low, high = values
        if not low < high:
            raise ConfigError(f"{where}: {{{kind}: [{low}, {high}]}} needs low < high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: {{loguniform: [{low}, {high}]}} needs positive bounds")
    return Domain(kind, tuple(values))


def find_domains(tree: Any, path: tuple = ()) -> Iterator[tuple[tuple, Domain]]:
    """Every (key path, domain) in a nested dict."""
    if isinstance(tree, dict):
        domain = parse_domain(tree, ".".join(path))
        if domain is not None:
            yield path, domain
            return
        for key, value in tree.items():
            yield from find_domains(value, path + (str(key),))


def replace_at(tree: dict, path: tuple, value: Any) -> dict:
    """A copy of ``tree`` with the value at ``path`` replaced."""
    out = dict(tree)
    if len(path) == 1:
        out[path[0]] = value
    else:
        out[path[0]] = replace_at(tree[path[0]], path[1:], value)
    return out
