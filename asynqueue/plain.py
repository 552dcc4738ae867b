"""
What the child runtime shares with the queue and needs no Twisted for:
which results stream (L{isPlainIterator}), taking a batch of an
iterator's items (L{takeItems}), and loading a function pickled by value
without importing cloudpickle (L{loadsByValue}).
"""

from __future__ import annotations

import builtins
import io
import pickle
import sys
import types
from collections.abc import ItemsView, Iterator, KeysView, ValuesView

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TypeVar

    T = TypeVar("T")

__all__ = [
    "CONTAINERS",
    "ByValueUnpickler",
    "isPlainIterator",
    "loadsByValue",
    "takeItems",
]

#: What L{asynqueue.iteration.isIterator} never streams, though iterable.
CONTAINERS = (
    str,
    bytes,
    bytearray,
    memoryview,
    list,
    tuple,
    dict,
    set,
    frozenset,
    KeysView,
    ValuesView,
    ItemsView,
)


def isPlainIterator(obj: object) -> bool:
    """
    Whether C{obj} has C{__next__} and C{__iter__} and is no container.

    L{asynqueue.iteration.isIterator} says which results stream: these,
    except a C{Deferator} (streamed already), which only a process that
    imported Twisted can have.
    """
    if isinstance(obj, CONTAINERS):
        return False
    return hasattr(obj, "__next__") and hasattr(obj, "__iter__")


def takeItems(
    iterator: Iterator[T], maxItems: int
) -> tuple[list[T], bool, BaseException | None]:
    """
    Take up to C{maxItems} next items: C{(items, exhausted, error)}.

    C{exhausted} says the iterator ended, by running out or by raising
    C{error}; the items it gave before the error are in C{items}. Every
    iteration source reads its iterator through this, with one policy: any
    exception, C{BaseException} included, is the iterator's error. The
    items are the rest of a task's result, and a task's C{SystemExit} or
    C{KeyboardInterrupt} is its outcome, as each worker treats it when the
    call itself raises: it reaches the caller, and never ends the thread,
    child process or reactor that happened to run it.
    """
    items: list[T] = []
    if maxItems < 1:
        return items, False, None
    append = items.append
    try:
        for item in iterator:
            append(item)
            if len(items) >= maxItems:
                return items, False, None
    except BaseException as e:
        return items, True, e
    return items, True, None


# -- functions pickled by value, loaded without cloudpickle -------------------
#
# A function of the user's script (or a closure, a lambda) travels pickled
# by cloudpickle, and its pickle names cloudpickle's reconstructors.
# Importing cloudpickle takes a fresh process some 15 ms (it imports
# dataclasses, inspect, ast, logging, typing): a third of a cold queue's
# time to its first result, where a function needs only the few
# reconstructors below, which are plain Python (those of cloudpickle 3,
# whose pickles name them). Any other name (a class of the script, an
# enum, a dynamic module) imports cloudpickle after all.

_CLOUDPICKLE = "cloudpickle.cloudpickle"


def _makeFunction(
    code: types.CodeType,
    globals: dict[str, Any],
    name: str,
    argdefs: tuple[Any, ...] | None,
    closure: tuple[types.CellType, ...] | None,
) -> types.FunctionType:
    globals["__builtins__"] = builtins.__dict__
    return types.FunctionType(code, globals, name, argdefs, closure)


def _builtinType(name: str) -> Any:
    # "ClassType": pickles of cloudpickle before 1.3.
    return type if name == "ClassType" else getattr(types, name)


def _subimport(name: str) -> types.ModuleType:
    # The module itself, a submodule too (__import__ gives the top package).
    __import__(name)
    return sys.modules[name]


def _makeEmptyCell() -> types.CellType:
    return types.CellType()


def _makeCell(*value: Any) -> types.CellType:
    return types.CellType(*value)


#: What a function's state holds besides the attributes to set.
_NOT_SET = ("__closure__", "__globals__", "_cloudpickle_submodules")


def _functionSetstate(
    f: types.FunctionType, state: tuple[dict[str, Any], dict[str, Any]]
) -> None:
    attributes, slots = state
    f.__dict__.update(attributes)
    # The globals and closure are read-only attributes: filled in place.
    f.__globals__.update(slots["__globals__"])
    f.__globals__["__builtins__"] = builtins.__dict__
    closure, cells = slots["__closure__"], f.__closure__
    if closure is not None and cells is not None:
        for given, cell in zip(closure, cells, strict=False):
            try:
                cell.cell_contents = given.cell_contents
            except ValueError:
                # An empty cell stays empty.
                pass
    # The submodules were there only to be imported as the pickle loaded.
    for name, value in slots.items():
        if name not in _NOT_SET:
            setattr(f, name, value)


#: cloudpickle's reconstructors of a function, by name.
_STAND_INS: dict[str, Any] = {
    "_make_function": _makeFunction,
    "_builtin_type": _builtinType,
    "subimport": _subimport,
    "_make_empty_cell": _makeEmptyCell,
    "_make_cell": _makeCell,
    "_function_setstate": _functionSetstate,
}


class ByValueUnpickler(pickle.Unpickler):
    """Unpickles what cloudpickle pickled, its functions without cloudpickle."""

    def find_class(self, module: str, name: str) -> Any:
        if module == _CLOUDPICKLE:
            standIn = _STAND_INS.get(name)
            if standIn is not None:
                return standIn
        return super().find_class(module, name)


def loadsByValue(data: bytes) -> Any:
    """
    C{pickle.loads} of what cloudpickle pickled: a function pickled by
    value loads without importing cloudpickle, if this process has not.
    """
    if _CLOUDPICKLE in sys.modules:
        return pickle.loads(data)
    return ByValueUnpickler(io.BytesIO(data)).load()
