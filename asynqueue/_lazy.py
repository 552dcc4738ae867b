"""
Lazy re-exports: a package's names, imported from their modules only when
first asked for, so that importing a package costs nothing it does not use.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


__all__ = ["lazyExports"]


def lazyExports(package: str, exports: dict[str, str]) -> Callable[[str], Any]:
    """
    A module C{__getattr__} giving C{exports} (name: module) on first use.

    A name found is kept in the package's namespace, so it is looked up
    only once. Any other name is the package's submodule of that name, if
    it has one (imported as C{package.name} would be).
    """
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            try:
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    return __getattr__
