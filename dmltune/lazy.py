"""Heavy libraries imported on first use, so that commands which never compute start fast.

``dmltune list`` and ``dmltune validate`` read every component's declared parameters, and those
live beside the component's code, which uses torch. Importing torch alone takes over a second; a
module that declares a component therefore binds ``torch = lazy_module("torch")``: the name
stands for the real module and imports it the first time any attribute is used. After that the
real module's attributes are copied onto it, so later lookups cost what a plain module's do.

Only the attribute use is deferred: a class that derives from ``torch.nn.Module`` is defined in a
module that the component's factory imports when it builds one.
"""

from __future__ import annotations

import importlib
import sys
import types


class LazyModule(types.ModuleType):
    """Stands for the module ``name`` until one of its attributes is first used."""

    def __getattr__(self, attribute: str):
        if attribute.startswith("__") and attribute.endswith("__"):
            raise AttributeError(attribute)  # copy, pickle and inspect probe these: no import for them
        module = importlib.import_module(self.__name__)
        self.__dict__.update(module.__dict__)
        return getattr(module, attribute)


def lazy_module(name: str) -> types.ModuleType:
    """The module ``name`` itself when it is already imported, else a :class:`LazyModule`."""
    return sys.modules.get(name) or LazyModule(name)


def no_grad(function):
    """``@torch.no_grad()`` for a function in a module that must not import torch when loaded."""
    import functools

    @functools.wraps(function)
    def without_gradients(*args, **kwargs):
        import torch

        with torch.no_grad():
            return function(*args, **kwargs)

    return without_gradients


def lazy_attributes(package: str, homes: dict[str, str]):
    """A package's ``__getattr__`` (PEP 562) that imports ``name`` from its submodule ``homes[name]``
    when first asked for, so that importing the package imports none of them. A name may not be
    its own home: importing that submodule would bind the package's attribute to the module."""
    clashes = [name for name, home in homes.items() if name == home]
    if clashes:
        raise ValueError(f"{package}: {clashes} named like the submodule that holds it; rename the submodule")

    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{homes[name]}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
