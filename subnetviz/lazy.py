"""Lazy public names for a package's ``__init__`` (PEP 562): a name is imported from its module on first
use, so importing the package (or a light module of it) loads no heavy dependency such as torch."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping


def exports(package: str, table: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``table`` maps a public name to the submodule (relative to
    ``package``) that defines it; the value is kept in the package's namespace after the first lookup."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{module}"), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
