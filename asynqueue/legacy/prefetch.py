"""
Iteration sources over AsynQueue's "next" callables: L{Prefetcherator}
(both its forms) and L{GetMoreSource}, which a L{Deferator} made the
AsynQueue way (C{Deferator(repr, getMore, *args)}) iterates over.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.interfaces import IIterationSource
from asynqueue.legacy.deferator import CONTAINERS

__all__ = ["GetMoreSource", "Prefetcherator"]

T = TypeVar("T")

# What a next-value call gives: the value, and whether it is one.
_Fetch = tuple[Any, bool]


class _Batches:
    """Calls one "next" at a time, in order, into batches (L{IIterationSource})."""

    _done = False
    _error: Failure | None = None

    def _pull(self) -> Deferred[_Fetch]:
        raise NotImplementedError

    def fetch(self, maxItems: int) -> Deferred[tuple[list[Any], bool]]:
        """Call for up to C{maxItems} values, stopping at the end."""
        return Deferred.fromCoroutine(self._fetch(maxItems))

    async def _fetch(self, maxItems: int) -> tuple[list[Any], bool]:
        if self._error is not None:
            error, self._error = self._error, None
            self._done = True
            error.raiseException()
        items: list[Any] = []
        while not self._done and len(items) < maxItems:
            try:
                value, isValid = await self._pull()
            except Exception:
                self._done = True
                if not items:
                    raise
                # Deliver what came before the error first.
                self._error = Failure()
                return items, False
            if not isValid:
                self._done = True
            else:
                items.append(value)
        return items, self._done

    def close(self) -> None:
        """Make no more calls."""
        self._done = True
        self._error = None


@implementer(IIterationSource)
class Prefetcherator(_Batches, Generic[T]):
    """
    An iteration source over a "next value" callable, in two forms.

    C{Prefetcherator(getNext, *args, **kwargs)}: C{getNext} returns
    C{(value, isValid)} (or a Deferred of it); an invalid value ends the
    iteration. AsynQueue's form, C{Prefetcherator(ID=None)} and then
    L{setup} with an iterator, or with a callable that returns the next
    value and raises C{StopIteration} at the end; L{getNext} then gives
    C{(value, isValid, moreLeft)}, one value ahead. Either way, use it as
    C{Deferator(prefetcherator)}.
    """

    def __init__(self, nextCallable: Any = None, *args: Any, **kwargs: Any) -> None:
        self._ahead: _Fetch | None = None
        self._call: tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None
        if callable(nextCallable):
            self.ID: Any = None
            self._call = (nextCallable, args, kwargs)
            self._pairs = True
        else:
            # AsynQueue's form: an ID (for repr only); setup() comes later.
            self.ID = nextCallable
            self._call = None
            self._pairs = False

    def __repr__(self) -> str:
        return f"<Prefetcherator instance '{self.ID}'>"

    def _pull(self) -> Deferred[_Fetch]:
        if self._call is None:
            return succeed((None, False))
        f, args, kwargs = self._call
        d = maybeDeferred(f, *args, **kwargs)
        if self._pairs:
            return d

        def stopped(failure: Failure) -> _Fetch:
            failure.trap(StopIteration)
            return None, False

        return d.addCallbacks(lambda value: (value, True), stopped)

    async def _fetch(self, maxItems: int) -> tuple[list[Any], bool]:
        items: list[Any] = []
        if self._ahead is not None:
            # The value setup() or getNext() fetched ahead comes first.
            value, isValid = self._ahead
            self._ahead = None
            if not isValid:
                self._done = True
                return items, True
            items.append(value)
        more, done = await super()._fetch(maxItems - len(items))
        return items + more, done

    @property
    def lastFetch(self) -> tuple[Any, bool]:
        """The value fetched ahead and whether it is one (AsynQueue's name)."""
        return self._ahead or (None, False)

    @property
    def asynQueueForm(self) -> bool:
        """Whether I was made AsynQueue's way (an ID, then L{setup})."""
        return not self._pairs

    def isBusy(self) -> bool:
        """Whether I have been set up and may give more values."""
        return self._call is not None and not self._done

    def setup(self, *args: Any, **kw: Any) -> Deferred[bool]:
        """
        Set me up (AsynQueue's form) with an iterator, or a callable and its
        arguments, and fetch the first value: fire with whether there is one.

        Fires with C{False} if I am set up already or given nothing to
        iterate; fails with the error of the first fetch.
        """
        if self.isBusy() or not args:
            return succeed(False)
        first = args[0]
        if isinstance(first, CONTAINERS):
            # Not iterators, as in AsynQueue: give them to a Deferator.
            return succeed(False)
        if hasattr(first, "__next__"):
            self._call = (first.__next__, (), {})
        elif callable(first):
            self._call = (first, args[1:], kw)
        else:
            return succeed(False)
        self._pairs = False
        self._done = False

        def fetched(result: _Fetch) -> bool:
            self._ahead = result
            if not result[1]:
                self._done = True
            return result[1]

        return self._pull().addCallback(fetched)

    def getNext(self) -> Deferred[tuple[Any, bool, bool]]:
        """
        The next value as C{(value, isValid, moreLeft)}, fetching one ahead
        to know C{moreLeft}; C{(None, False, False)} once there is none.

        An error fetching the value after this one fails the next call.
        """
        return Deferred.fromCoroutine(self._getNext())

    async def _getNext(self) -> tuple[Any, bool, bool]:
        if self._error is not None:
            error, self._error = self._error, None
            self._done = True
            error.raiseException()
        if self._ahead is None:
            if self._done or self._call is None:
                return None, False, False
            self._ahead = await self._pull()
        value, isValid = self._ahead
        if not isValid:
            self._done = True
            return None, False, False
        try:
            self._ahead = await self._pull()
        except Exception:
            self._ahead = None
            self._error = Failure()
            return value, True, True
        moreLeft = self._ahead[1]
        if not moreLeft:
            self._done = True
        return value, True, moreLeft


@implementer(IIterationSource)
class GetMoreSource(_Batches):
    """
    An iteration source over AsynQueue's "get more" call: C{f(*args, **kw)}
    gives C{(value, isValid, moreLeft)} (or a Deferred of it), as
    L{Prefetcherator.getNext} does.
    """

    def __init__(
        self, f: Callable[..., Any], args: tuple[Any, ...], kw: dict[str, Any]
    ) -> None:
        self._f = f
        self._args = args
        self._kw = kw
        self._last = False

    def _pull(self) -> Deferred[_Fetch]:
        if self._last:
            return succeed((None, False))

        def got(result: tuple[Any, bool, bool]) -> _Fetch:
            value, isValid, moreLeft = result
            if not moreLeft:
                if not isValid:
                    return None, False
                # A valid last value: the call after it need not be made,
                # and the batch with it is the last.
                self._last = self._done = True
            return (value, True) if isValid else (None, False)

        return maybeDeferred(self._f, *self._args, **self._kw).addCallback(got)
