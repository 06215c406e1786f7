"""Lazy public names for a package's ``__init__`` (PEP 562): a name is imported from its module on first
use, so importing the package (or a light module of it) loads no heavy dependency such as torch."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable, Mapping


class _Package(types.ModuleType):
    """A package whose public functions are named like the submodules defining them (``checkpoints.align``).
    The import system binds a submodule in its package once the submodule is loaded: after a direct import of it
    (``from subnetviz.checkpoints.align import AlignedTensor``, which the Overlap page's module makes),
    ``from subnetviz.checkpoints import align`` read the module, not the function, and calling it raised
    "'module' object is not callable" on whichever page came next. The function is bound instead."""

    def __setattr__(self, name: str, value) -> None:
        if (
            name in self.__dict__.get("_named_like_modules", ())
            and isinstance(value, types.ModuleType)
            and value.__name__ == f"{self.__name__}.{name}"
        ):
            value = getattr(value, name)
        super().__setattr__(name, value)


def exports(package: str, table: Mapping[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` for ``package``: ``table`` maps a public name to the submodule (relative to
    ``package``) that defines it. The first lookup of any of a submodule's names imports it and keeps all of
    them in the package's namespace: importing a submodule binds its name in the package, so a function
    named like its module (``checkpoints.align``) would otherwise read as the module once another of the
    module's names (``read_aligned``) had been looked up first; and since a direct import of such a submodule
    binds it too, the package's class becomes :class:`_Package`, which binds the function in its place."""

    pkg_module = sys.modules[package]
    pkg_module.__dict__["_named_like_modules"] = frozenset(n for n, m in table.items() if n == m)
    pkg_module.__class__ = _Package

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
