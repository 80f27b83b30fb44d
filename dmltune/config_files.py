"""Reading YAML configuration files and applying ``--set key.path=value`` overrides.

Files and ``--set`` values are read by :class:`StudyLoader`: ``yaml.safe_load`` (no code, no custom
tags) with the checks a hand-written configuration never needs to pass but a wrong or hostile file
would otherwise turn into a traceback, a hang or a silently different study:

- a file over 1 MiB, or holding NUL bytes or bytes that are not UTF-8, is not read;
- nesting deeper than ``MAX_DEPTH`` levels, aliases that refer to themselves, and aliases whose
  expansion exceeds ``MAX_NODES`` values ("billion laughs") are refused before anything is built;
- a key given twice in one mapping is an error (YAML would silently keep the last one), and so is
  a key that is not text (``1:``, ``null:``, ``yes:``; quote it if it is meant as a name);
- a NUL character in a value (written as an escape, ``"\\0"``) is refused: no name or path holds one;
- ``1e-3`` is the number 0.001, as in YAML 1.2 (YAML 1.1 would read the text ``"1e-3"``).
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, Iterable

import yaml

from .registry import ConfigError

MAX_BYTES = 1 << 20        # a study file is a short text; anything larger is the wrong file
MAX_DEPTH = 50             # nesting levels (a study needs about 8)
MAX_NODES = 1_000_000      # values once aliases are expanded (a 1 MiB file without aliases has fewer)

_STR, _MERGE = "tag:yaml.org,2002:str", "tag:yaml.org,2002:merge"
_KEY_KINDS = {"tag:yaml.org,2002:int": "a number", "tag:yaml.org,2002:float": "a number",
              "tag:yaml.org,2002:bool": "true/false", "tag:yaml.org,2002:null": "empty (null)",
              "tag:yaml.org,2002:timestamp": "a date"}


class _Refused(yaml.YAMLError):
    """A document :class:`StudyLoader` will not build: what is wrong, and where."""

    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.message, self.mark = message, mark


class StudyLoader(yaml.SafeLoader):
    """``yaml.safe_load``'s loader, with limits on nesting and aliases, no duplicate or non-text keys,
    and YAML 1.2 floats (``1e-3``). Use :func:`load_yaml_text`."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep; a study needs only a few levels",
                               self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_tree(node)
        return node


# YAML 1.2 floats with an exponent and no dot or no sign (1e-3, 5E4, 1.5e3); YAML 1.1 reads them as text
StudyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


def _check_tree(root) -> None:
    """Refuse recursive aliases, expansions over MAX_NODES values or MAX_DEPTH levels, and mapping
    keys given twice or that are not text; each node is visited once (aliases share nodes)."""
    done: dict[int, tuple[int, int]] = {}   # id(node) -> (values once expanded, levels)
    active: set[int] = set()

    def visit(node, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in active:
            raise _Refused("an alias refers to the value that contains it; write the value out", node.start_mark)
        if key not in done:
            if depth > MAX_DEPTH:
                raise _Refused(f"nested more than {MAX_DEPTH} levels deep once aliases are expanded", node.start_mark)
            active.add(key)
            size, levels = 1, 0
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                _check_keys(node)
                children = [value for _, value in node.value]
                size += len(node.value)  # the keys
            else:
                children = []
                if "\0" in node.value:  # only an escape ("\0", "\x00") writes one; no path or name holds it
                    raise _Refused("a value contains a NUL character (\\0); remove it", node.start_mark)
            for child in children:
                child_size, child_levels = visit(child, depth + 1)
                size += child_size
                levels = max(levels, child_levels + 1)
                if size > MAX_NODES:
                    raise _Refused(f"its aliases expand to more than {MAX_NODES:,} values; write the values out "
                                   "instead of nesting aliases", node.start_mark)
            active.discard(key)
            done[key] = (size, levels)
        size, levels = done[key]
        if depth + levels > MAX_DEPTH:
            raise _Refused(f"nested more than {MAX_DEPTH} levels deep once aliases are expanded", node.start_mark)
        return size, levels

    visit(root, 1)


def _check_keys(node) -> None:
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        line = key_node.start_mark.line + 1
        if key_node.tag == _MERGE:
            continue
        if not isinstance(key_node, yaml.ScalarNode):
            raise _Refused("a key is a list or mapping; keys are names", key_node.start_mark)
        if key_node.tag != _STR:
            kind = _KEY_KINDS.get(key_node.tag, f"tagged {key_node.tag}")
            raise _Refused(f"the key {key_node.value!r} reads as {kind}, not a name; keys are names "
                           f"(quote it, '{key_node.value}':, if it is one)", key_node.start_mark)
        if key_node.value in seen:
            lines = f"line {line}" if seen[key_node.value] == line else f"lines {seen[key_node.value]} and {line}"
            raise _Refused(f"the key {key_node.value!r} appears twice in one mapping ({lines}); YAML would "
                           "silently keep the last one, so remove one of them", key_node.start_mark)
        seen[key_node.value] = line


def load_yaml_text(text: str, source: str) -> Any:
    """``text`` parsed by :class:`StudyLoader`; a mistake is a one-line ConfigError starting with ``source``."""
    loader = StudyLoader(text)
    try:
        return loader.get_single_data()
    except _Refused as err:
        where = f" (line {err.mark.line + 1})" if err.mark is not None else ""
        raise ConfigError(f"{source}{where}: {err.message}") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{source}: invalid YAML{where}: {problem}") from None
    except (ValueError, OverflowError) as err:  # a scalar YAML resolves but Python cannot build: 2024-13-45, 10**5000
        problem = "an integer of over 4300 digits" if "digits" in str(err) else str(err)
        raise ConfigError(f"{source}: a value cannot be read ({problem}); quote it if it is meant as text") from None
    except RecursionError:  # not reached with MAX_DEPTH; a last guard against a traceback
        raise ConfigError(f"{source}: nested too deeply to read; a study needs only a few levels") from None
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from ``path``, read by :class:`StudyLoader` (see the module's docstring)."""
    path = Path(path)
    try:
        kind = "file" if path.is_file() else "folder" if path.is_dir() else "other" if path.exists() else None
        if kind == "file":
            with path.open("rb") as handle:
                data = handle.read(MAX_BYTES + 1)
    except OSError as err:
        raise ConfigError(f"{path}: cannot be read ({err.strerror}); check the path and its permissions") from None
    except ValueError as err:  # a NUL byte in the path
        raise ConfigError(f"{str(path)!r}: not a usable path ({err})") from None
    if kind is None:
        raise ConfigError(f"{path}: no such file")
    if kind != "file":
        raise ConfigError(f"{path}: is a {'folder' if kind == 'folder' else 'special file'}; give the path of a YAML file")
    if len(data) > MAX_BYTES:
        raise ConfigError(f"{path}: larger than {MAX_BYTES // (1 << 20)} MiB; a study file is a short YAML text, "
                          "check that this is the right file")
    nul = data.find(b"\0")
    if nul >= 0:
        raise ConfigError(f"{path}: not a text file (byte {nul} is NUL); give a YAML file saved as UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not a text file (byte {err.start} is not UTF-8); give a YAML study file") from None
    data = load_yaml_text(text, str(path))
    if not isinstance(data, dict):
        got = "an empty file" if data is None else f"a {type(data).__name__}"
        raise ConfigError(f"{path}: expected a mapping of sections at the top level (name: ..., arms: ...), got {got}")
    return data


def apply_overrides(config: dict, overrides: Iterable[str]) -> dict:
    """A copy of ``config`` with each ``a.b.c=value`` applied; values are parsed as YAML scalars/lists.

    A list of named mappings (a study's ``arms``) is entered by name: ``arms.NAME.train.lr=0.1``
    changes that arm only; an unknown name is a ConfigError with "did you mean"."""
    out = copy.deepcopy(config)
    for item in overrides:
        key, sep, raw = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(part.strip() for part in parts):
            raise ConfigError(f"--set {item!r}: write it as key.path=value, e.g. --set train.epochs=5")
        parts = [part.strip() for part in parts]
        value: Any = load_yaml_text(raw, f"--set {item!r}")
        node, i = out, 0
        while i < len(parts) - 1:
            part, child = parts[i], node.get(parts[i])
            if child is None:
                child = node[part] = {}
            if _named_list(child) and i + 2 < len(parts):  # arms.NAME.key...: into the arm called NAME
                i += 1
                child = _named_item(child, parts[i], part, item)
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: '{part}' is a value, not a section")
            node, i = child, i + 1
        node[parts[-1]] = value
    return out


def _named_list(value: Any) -> bool:
    """A non-empty list of mappings that each have a ``name`` (a study's arms)."""
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) and "name" in v for v in value)


def _named_item(items: list, name: str, key: str, item: str) -> dict:
    """The mapping of ``items`` (the list at ``key``) whose ``name`` is ``name``; else a one-line
    error with the names to choose from."""
    from .registry import _did_you_mean

    for entry in items:
        if str(entry["name"]) == name:
            return entry
    names = [str(entry["name"]) for entry in items]
    raise ConfigError(f"--set {item!r}: {key} has no {'arm' if key == 'arms' else 'entry'} named {name!r}"
                      f"{_did_you_mean(name, names)}; choose one of {', '.join(names)}")
