"""
What a function captures, pickled with it by value: listed once
(L{listCaptured}) and compared since with what it captures now
(L{sameCaptured}), as L{asynqueue.wire.functions.definitionOf} does before
reusing a function's pickle for each of its calls.
"""

from __future__ import annotations

import types

#: Stand-ins, in a list of what a function captures, for a global name it
#: reads that is not set, and for an empty cell of its closure.
MISSING = object()
EMPTY_CELL = object()


def listCaptured(
    f: types.FunctionType, names: tuple[str, ...], into: list[object]
) -> None:
    """Add to C{into} everything C{f} itself captures: pickled with it by value."""
    into += (f.__code__, f.__name__, f.__qualname__, f.__module__, f.__defaults__)
    keywords, attributes = f.__kwdefaults__, f.__dict__
    if keywords:
        for item in keywords.items():
            into += item
    if attributes:
        for item in attributes.items():
            into += item
    closure = f.__closure__
    if closure:
        for cell in closure:
            try:
                into.append(cell.cell_contents)
            except ValueError:
                into.append(EMPTY_CELL)
    found = f.__globals__.get
    into += [found(name, MISSING) for name in names]


def sameCaptured(
    f: types.FunctionType,
    names: tuple[str, ...],
    snapshot: list[object],
    at: int,
    weakAt: tuple[int, ...],
) -> int:
    """
    Where what C{f} captures ends in C{snapshot}, if it is there from C{at}
    on (the very same objects, listed as L{listCaptured} lists them); else -1.
    """
    if at + 5 > len(snapshot) or not (
        f.__code__ is snapshot[at]
        and f.__name__ is snapshot[at + 1]
        and f.__qualname__ is snapshot[at + 2]
        and f.__module__ is snapshot[at + 3]
        and f.__defaults__ is snapshot[at + 4]
    ):
        return -1
    at += 5
    if f.__kwdefaults__ or f.__dict__ or f.__closure__:
        # Rare: listed by L{listCaptured}, at the cost of a list.
        values: list[object] = []
        listCaptured(f, (), values)
        for value in values[5:]:
            if not _sameAt(value, snapshot, at, weakAt):
                return -1
            at += 1
    if names:
        found = f.__globals__.get
        for name in names:
            if not _sameAt(found(name, MISSING), snapshot, at, weakAt):
                return -1
            at += 1
    return at


def _sameAt(
    value: object, snapshot: list[object], at: int, weakAt: tuple[int, ...]
) -> bool:
    """Whether C{value} is what C{snapshot} keeps at C{at} (a function, weakly)."""
    if at >= len(snapshot):
        return False
    kept = snapshot[at]
    return kept is value or (
        at in weakAt and type(value) is types.FunctionType and kept() is value  # type: ignore[operator]
    )
