"""Lazy public names for a package's ``__init__`` (PEP 562): a name is imported from its module on first
use, so importing the package (or a light module of it) loads no heavy dependency such as torch."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping


class CallableModule(types.ModuleType):
    """A module called as the function of its own name (``subnetviz.checkpoints.align(...)`` is ``align(...)``),
    so that the package's attribute of that name may be the module, as the import system binds it, and still be
    called; ``import subnetviz.checkpoints.align as m`` and its attributes read as a module's. Set a module's class
    to it at the end of the module."""

    def __call__(self, *args, **kwargs):
        return getattr(self, self.__name__.rpartition(".")[2])(*args, **kwargs)


def exports(package: str, table: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``table`` maps a public name to the submodule (relative to
    ``package``) that defines it. The first lookup of any of a submodule's names imports it and keeps all of
    them in the package's namespace: importing a submodule binds its name in the package, so a function
    named like its module (``checkpoints.align``) would otherwise read as the module once another of the
    module's names (``read_aligned``) had been looked up first. Such a module is made callable as its function
    (:class:`CallableModule`), and the package binds the module: a direct import of it binds the module too (``from
    subnetviz.checkpoints.align import ...``, which the Overlap page's module makes), and ``from
    subnetviz.checkpoints import align`` then read a module that could not be called."""

    def __getattr__(name: str):
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        mod, pkg = importlib.import_module(f"{package}.{module}"), sys.modules[package]
        for other, where in table.items():
            if where == module:
                # a function named like its module whose module is callable as it (checkpoints.align): the module,
                # which the import system binds too once anything imports it directly; either way one object
                setattr(pkg, other, mod if other == module and callable(mod) else getattr(mod, other))
        return getattr(pkg, name)

    return __getattr__
