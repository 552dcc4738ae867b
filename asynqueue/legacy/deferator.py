"""
AsynQueue's API of a Deferator, kept on today's L{asynqueue.iteration.Deferator}:
its done-Deferred C{d} (which a Deferator stood for), C{moreLeft} and
C{builtIns}; and the container types that are never streamed.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from asynqueue.plain import CONTAINERS

__all__ = ["CONTAINERS", "DeferatorCompat"]


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
    _buffer: deque[Any]
    _failure: Failure | None
    _handedOut: Deferred[Any] | None

    #: Made AsynQueue's way: next() may be asked before the next item is in.
    _lenient = False

    if TYPE_CHECKING:

        def _decided(self) -> bool: ...

        def _whenDecided(self) -> Deferred[None]: ...

        def _pump(self) -> None: ...

        def close(self) -> None: ...

    def _waitForNext(self) -> Deferred[Any]:
        """
        AsynQueue's next() before the next item is in: a Deferred of it.

        If it turns out there is none, it fires with C{None}, as AsynQueue's
        bogus last value did.
        """
        d = self._whenDecided().addCallback(self._takeWhenDecided)
        self._handedOut = d
        return d

    def _takeWhenDecided(self, _: object) -> Any:
        if self._buffer:
            item = self._buffer.popleft()
            self._pump()
            if self._decided():
                return item
            # Held until it is known whether another follows (see __next__).
            return self._whenDecided().addCallback(lambda _: item)
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self.close()
            return failure
        self._markDone(True)
        self.close()
        return None

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
