"""
Iterators in this process: taking a batch of items while keeping the error
that ends it (L{takeItems}), and the iteration source over such an iterator
(L{LocalIterationSource}), which a L{asynqueue.iteration.Deferator} pulls
from.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Generic, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.interfaces import IIterationSource
from asynqueue.plain import takeItems

__all__ = ["LocalIterationSource", "takeItems"]

T = TypeVar("T")


# Iterable but never streamed: their items are all there already, and a
# subclass that grew a __next__ would still be a container first.
@implementer(IIterationSource)
class LocalIterationSource(Generic[T]):
    """
    An iteration source over an iterator in this (the reactor's) thread.

    C{fetch} runs C{next()} right away and returns an already-fired
    Deferred. If the iterator raises after some items of a batch, those
    items are returned and the exception fails the following fetch.
    """

    def __init__(self, iterator: Iterator[T]) -> None:
        self._iterator: Iterator[T] | None = iterator
        self._error: Failure | None = None

    def __repr__(self) -> str:
        return f"<LocalIterationSource of {self._iterator!r}>"

    def fetch(self, maxItems: int) -> Deferred[tuple[list[T], bool]]:
        """Take up to C{maxItems} next items now."""
        if self._error is not None:
            failure, self._error = self._error, None
            return fail(failure)
        iterator = self._iterator
        if iterator is None:
            return succeed(([], True))
        items, exhausted, error = takeItems(iterator, maxItems)
        if exhausted:
            self._iterator = None
        if error is not None:
            if not items:
                return fail(error)
            # The items before the error go first; the error comes next.
            self._error = Failure(error)
            return succeed((items, False))
        return succeed((items, exhausted))

    def close(self) -> None:
        """Close the iterator (if it has a C{close}); fetches then find it exhausted."""
        iterator, self._iterator = self._iterator, None
        self._error = None
        close = getattr(iterator, "close", None)
        if close is not None:
            close()
