"""
AsynQueue's API of a Deferator, kept on today's L{asynqueue.iteration.Deferator}:
its done-Deferred C{d} (which a Deferator stood for), C{moreLeft} and
C{builtIns}; and the container types that are never streamed.
"""

from __future__ import annotations

from collections.abc import Callable, ItemsView, KeysView, Sized, ValuesView
from typing import Any

from twisted.internet.defer import Deferred

__all__ = ["CONTAINERS", "DeferatorCompat"]

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


class DeferatorCompat:
    """
    What AsynQueue's Deferator had besides iteration: C{d}, which fires with
    C{True} when the iteration ended or C{False} if it was stopped (or
    failed) first, and never fails; its C{addCallback} and kin on the
    Deferator itself; C{moreLeft}; C{builtIns}.
    """

    #: What L{asynqueue.iteration.isIterator} never streams (AsynQueue's name).
    builtIns = CONTAINERS

    d: Deferred[bool]
    _closed: bool
    _exhausted: bool
    _buffer: Sized

    @property
    def moreLeft(self) -> bool:
        """Whether another item is (or may be) there to ask for."""
        return not (self._closed or (self._exhausted and not self._buffer))

    def _markDone(self, complete: bool) -> None:
        if not self.d.called:
            self.d.callback(complete)

    def addCallback(self, callback: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """C{d.addCallback}: AsynQueue let a Deferator stand for its C{d}."""
        return self.d.addCallback(callback, *args, **kw)

    def addErrback(self, errback: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """C{d.addErrback} (see L{addCallback})."""
        return self.d.addErrback(errback, *args, **kw)

    def addBoth(self, callback: Callable[..., Any], *args: Any, **kw: Any) -> Any:
        """C{d.addBoth} (see L{addCallback})."""
        return self.d.addBoth(callback, *args, **kw)

    def chainDeferred(self, d: Deferred[Any]) -> Any:
        """C{d.chainDeferred} (see L{addCallback})."""
        return self.d.chainDeferred(d)
