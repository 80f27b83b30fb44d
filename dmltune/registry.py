"""Named, pluggable components with declared parameters.

Every miner, loss, backbone and dataset is registered under a name together with the parameters it
accepts (type, default, valid range). Study files are validated against these declarations before
anything runs, and ``dmltune list`` prints them. Adding a component means writing it and
decorating it with ``REGISTRY.register(...)``; nothing else needs to change.

Every registry builds the same way, ``REGISTRY.build(name, params, **context)``: ``params`` are the
declared parameters (validated, defaults filled in), ``context`` the runtime objects a factory
needs beside them (a generator's class labels, the trial an adaptive part belongs to).
"""

from __future__ import annotations

import difflib
import math
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping


class ConfigError(ValueError):
    """A configuration mistake, described in one line that says how to fix it.

    A message that would span lines (a value from a file quoted in it, another library's error) is
    joined into one, so the command line always prints exactly one line.
    """

    def __init__(self, message: Any = "", *args: Any) -> None:
        if isinstance(message, str) and any(c in message for c in "\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"):
            message = "; ".join(part.strip() for part in message.splitlines() if part.strip())
        super().__init__(message, *args)

    @property
    def lines(self) -> list[str]:
        """The message, one line per problem (one here; several in :class:`ConfigErrors`)."""
        return [str(self)]


class ConfigErrors(ConfigError):
    """Several independent configuration mistakes found in one pass, one line each (``lines``).

    ``str()`` joins them into one line; the command line prints each on its own line.
    """

    def __init__(self, problems: list[ConfigError]) -> None:
        self.problems = [line for problem in problems for line in problem.lines]
        super().__init__(f"{len(self.problems)} problems: " + "; ".join(self.problems))

    @property
    def lines(self) -> list[str]:
        return list(self.problems)


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to about ``limit`` characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + " ..."


def _did_you_mean(word: str, choices) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


@dataclass(frozen=True)
class Param:
    """One declared parameter of a component.

    ``kind`` is ``float``, ``int``, ``bool`` or ``str``. Numeric parameters may carry an inclusive
    range ``[low, high]``; string parameters a tuple of ``choices``. ``tensor_ok`` lets a float
    parameter also be a 0-dim ``torch.Tensor`` (the loss threshold λ, so gradients can reach it).
    ``nullable`` allows ``None`` as a value. A ``list`` parameter may declare the type of its
    items (``item``: ``int``, ``float`` or ``str``); ``low``, ``high`` and ``choices`` then apply
    to each item, and ``increasing`` asks for each item above the one before.
    """

    name: str
    kind: type
    default: Any
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None
    tensor_ok: bool = False
    nullable: bool = False
    help: str = ""
    item: type | None = None
    increasing: bool = False

    def describe_range(self) -> str:
        if self.item is not None:
            each = Param(self.name, self.item, None, self.low, self.high, self.choices).describe_range()
            return (f"a list of {self.item.__name__}" + ("" if each == "any" else f" in {each}"
                    if each.startswith("[") else f", each {each}") + (", increasing" if self.increasing else ""))
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        if self.kind is bool:
            return "true or false"
        if self.low is not None or self.high is not None:
            lo = "-inf" if self.low is None else f"{self.low:g}"
            hi = "inf" if self.high is None else f"{self.high:g}"
            return f"[{lo}, {hi}]"
        return "any"

    def check(self, value: Any, where: str) -> Any:
        """Return ``value`` coerced to ``kind``; raise ConfigError with a one-line fix otherwise."""
        if value is None:
            if self.nullable:
                return None
            raise ConfigError(f"{where}: '{self.name}' may not be empty; give a {self.kind.__name__}")
        if self.tensor_ok and _is_tensor(value):
            if value.numel() != 1:
                raise ConfigError(f"{where}: '{self.name}' must be a scalar tensor, got shape {tuple(value.shape)}")
            self._check_range(float(value.detach()), where)
            return value
        if self.kind is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where}: '{self.name}' must be true or false, got {value!r}")
            return value
        if self.kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{where}: '{self.name}' must be an integer, got {value!r}")
            self._check_range(value, where)
            return value
        if self.kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f"{where}: '{self.name}' must be a number, got {short_repr(value)}")
            try:
                value = float(value)
            except OverflowError:
                raise ConfigError(f"{where}: '{self.name}' = {_number(value)} is too large; give a number "
                                  f"in {self.describe_range()}") from None
            if not math.isfinite(value):
                raise ConfigError(f"{where}: '{self.name}' must be finite, got {value!r}")
            self._check_range(value, where)
            return value
        if self.kind is str:
            if isinstance(value, bool) and self.choices is not None and str(value).lower() in self.choices:
                value = str(value).lower()  # a choice named "true" / "false" may be written as YAML's boolean
            if not isinstance(value, str):
                wanted = self.describe_range() if self.choices is not None else "a string"
                raise ConfigError(f"{where}: '{self.name}' must be {wanted}, got {short_repr(value)}")
            if self.choices is not None and value not in self.choices:
                raise ConfigError(
                    f"{where}: '{self.name}' = {value!r} is not valid; choose "
                    f"{self.describe_range()}{_did_you_mean(value, self.choices)}"
                )
            return value
        if not isinstance(value, self.kind):
            kind = {"dict": "mapping", "list": "list"}.get(self.kind.__name__, self.kind.__name__)
            raise ConfigError(f"{where}: '{self.name}' must be a {kind}, got {short_repr(value)}")
        if self.item is not None:
            return self._check_items(value, where)
        return value

    def _check_items(self, values: list, where: str) -> list:
        """Each item checked as a parameter ``name[i]`` of type ``item`` (same messages as a single
        value's), then their order."""
        each = [Param(f"{self.name}[{i}]", self.item, None, self.low, self.high, self.choices).check(v, where)
                for i, v in enumerate(values)]
        if self.increasing:
            for i in range(1, len(each)):
                if not each[i] > each[i - 1]:
                    raise ConfigError(f"{where}: '{self.name}' must be increasing (each item above the one "
                                      f"before), but item {i} ({each[i]!r}) follows {each[i - 1]!r}: "
                                      f"{short_repr(values)}")
        return each

    def _check_range(self, value: float, where: str) -> None:
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            raise ConfigError(
                f"{where}: '{self.name}' = {_number(value)} is outside its valid range {self.describe_range()}"
            )


def _number(value: float) -> str:
    """``value`` for a message: ``:g`` formatting, and integers too large for a float shortened."""
    try:
        return f"{value:g}"
    except OverflowError:
        digits = str(value) if abs(value) < 10**4000 else "an integer of over 4000 digits"
        return digits if len(digits) <= 24 else f"{digits[:10]}...({len(digits)} digits)"


def _is_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only once torch is imported: never import it here
    return torch is not None and isinstance(value, torch.Tensor)


@dataclass
class Component:
    """A registered factory and the parameters it declares."""

    kind: str
    name: str
    factory: Callable[..., Any]
    params: tuple[Param, ...]
    help: str = ""

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    @property
    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def validate(self, values: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
        """Check ``values`` against the declared parameters; return them merged over the defaults."""
        where = where or f"{self.kind} '{self.name}'"
        if not isinstance(values, Mapping):
            raise ConfigError(f"{where} must be a mapping of parameter: value (like {{{self.params[0].name}: ...}}), "
                              f"got {short_repr(values)}" if self.params else
                              f"{where} must be a mapping, got {short_repr(values)}")
        by_name = {p.name: p for p in self.params}
        out = self.defaults
        for key, value in values.items():
            if not isinstance(key, str):
                raise ConfigError(f"{where}: the key {key!r} is not a parameter name; "
                                  f"valid parameters: {', '.join(by_name) or 'none'}")
            if key not in by_name:
                valid = ", ".join(by_name) or "none"
                raise ConfigError(
                    f"{where} has no parameter '{key}'{_did_you_mean(key, by_name)}; "
                    f"valid parameters: {valid}"
                )
            out[key] = by_name[key].check(value, where)
        return out

    def build(self, params: Mapping[str, Any] | None = None, /, **context: Any) -> Any:
        """The component built from ``params`` (validated against the declaration, defaults filled in)
        and ``context``: runtime objects the factory needs beside its declared parameters (class
        labels, a device, the trial being built), passed on unchecked."""
        if params is not None and not isinstance(params, Mapping):
            raise ConfigError(f"{self.kind} '{self.name}': parameters must be a mapping of name to value, "
                              f"got {type(params).__name__}")
        return self.factory(**context, **self.validate(params or {}))


@dataclass
class Registry(Mapping[str, Component]):
    """Components of one kind (``"miner"``, ``"loss"``, ...) by name."""

    kind: str
    plural: str = ""
    _items: dict[str, Component] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.plural = self.plural or self.kind + "s"

    def register(self, name: str, *params: Param, help: str = "") -> Callable:
        """Decorator: register ``factory`` under ``name`` with its declared parameters."""

        def decorate(factory: Callable) -> Callable:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is registered twice")
            summary = help or (factory.__doc__ or "").strip().split("\n")[0]
            self._items[name] = Component(self.kind, name, factory, tuple(params), summary)
            return factory

        return decorate

    def lookup(self, name: str) -> Component:
        """The component called ``name``; an unknown name raises ConfigError listing the choices."""
        if not isinstance(name, str) or name not in self._items:
            choices = ", ".join(sorted(self._items))
            hint = _did_you_mean(name, self._items) if isinstance(name, str) else ""
            raise ConfigError(f"unknown {self.kind} {name!r}{hint}; valid choices: {choices}")
        return self._items[name]

    def build(self, name: str, params: Mapping[str, Any] | None = None, /, **context: Any) -> Any:
        """The one factory convention of every registry: ``build(name, params, **context)``; the
        parameters are validated here and nowhere else (see :meth:`Component.build`)."""
        return self.lookup(name).build(params, **context)

    def __getitem__(self, name: str) -> Component:
        return self.lookup(name)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._items

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return self._items.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
