"""Lazy public names for a package's ``__init__`` (PEP 562): a name is imported from its module on first
use, so importing the package (or a light module of it) loads no heavy dependency such as torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def exports(package: str, table: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``table`` maps a public name to the submodule (relative to
    ``package``) that defines it. The first lookup of any of a submodule's names imports it and keeps all of
    them in the package's namespace: importing a submodule binds its name in the package, so a function
    named like its module (``checkpoints.align``) would otherwise read as the module once another of the
    module's names (``read_aligned``) had been looked up first."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        mod, pkg = importlib.import_module(f"{package}.{module}"), sys.modules[package]
        for other, where in table.items():
            if where == module:
                setattr(pkg, other, getattr(mod, other))
        return getattr(pkg, name)

    return __getattr__
