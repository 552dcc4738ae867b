"""
What the child runtime shares with the queue and needs no Twisted for:
which results stream (L{isPlainIterator}) and taking a batch of an
iterator's items (L{takeItems}).
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, ValuesView

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeVar

    T = TypeVar("T")

__all__ = ["CONTAINERS", "isPlainIterator", "takeItems"]

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
