"""
L{ThreadLooper}: AsynQueue's dedicated thread that runs calls one at a
time, in the order given (or next, with C{doNext}), and answers with
C{(status, result)}.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.errors import QueueRunError
from asynqueue.interfaces import IIterationSource
from asynqueue.iteration import Deferator, IterationProducer, isIterator
from asynqueue.sources import takeItems
from asynqueue.util import DeferredLock, DeferredTracker

__all__ = ["ThreadLooper"]

# What a call may answer with (AsynQueue's status codes): a result, or an
# iterator (streamed as a Deferator).
_RESULT = b"r"
_ITERATOR = b"i"

# A call for the thread: the function, its arguments, and the Deferred its
# outcome fires, from the reactor thread.
_Call = tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any], Deferred[Any]]


@implementer(IIterationSource)
class _LooperSource:
    """The items of an iterator that lives in a looper's thread."""

    def __init__(self, looper: ThreadLooper, iterator: Iterator[Any]) -> None:
        self._looper = looper
        self._iterator = iterator
        self._error: BaseException | None = None

    def fetch(self, maxItems: int) -> Deferred[tuple[list[Any], bool]]:
        if self._error is not None:
            error, self._error = self._error, None
            return fail(error)

        def take() -> tuple[list[Any], bool]:
            items, exhausted, error = takeItems(self._iterator, maxItems)
            if error is not None:
                if not items:
                    raise error
                self._error = error
                return items, False
            return items, exhausted

        return self._looper._submit(take, (), {}, False, internal=True)

    def close(self) -> None:
        close = getattr(self._iterator, "close", None)
        if close is not None and self._looper.threadRunning:
            self._looper._submit(close, (), {}, False, internal=True).addErrback(
                lambda _: None
            )


class ThreadLooper:
    """
    Run calls in a dedicated thread, one at a time, in order.

    L{call} fires with C{(b"r", result)}, or C{(b"i", deferator)} for an
    iterator (which stays in my thread; its items are fetched there), unless
    C{raw}. A call that raises fails the Deferred with its exception
    (AsynQueue answered C{(b"e", tracebackText)}).

    @ivar thread: My thread.
    @ivar threadRunning: Whether it still runs.
    @ivar dLock: Its stoppers (L{DeferredLock.addStopper}) run at L{stop}.
    """

    #: AsynQueue's wake-up interval; nothing waits on a timer any more.
    timeout = 60

    def __init__(self, raw: bool = False, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.raw = raw
        self.threadRunning = True
        self.dLock = DeferredLock()
        self.dt = DeferredTracker()
        self._calls: deque[_Call | None] = deque()
        self._ready = threading.Condition()
        self._stopping: Deferred[None] | None = None
        self._stopWaiters: list[Deferred[None]] = []
        self._ended: Deferred[None] = Deferred()
        self.thread = threading.Thread(name=repr(self), target=self.loop, daemon=True)
        self.thread.start()

    def __repr__(self) -> str:
        return f"<ThreadLooper at 0x{id(self):x}>"

    # The thread -------------------------------------------------------------

    def loop(self) -> None:
        """My thread: run each call given, until told to end."""
        while True:
            with self._ready:
                while not self._calls:
                    self._ready.wait()
                call = self._calls.popleft()
            if call is None:
                break
            f, args, kw, d = call
            try:
                result = f(*args, **kw)
            except BaseException:
                self.reactor.callFromThread(d.errback, Failure())
            else:
                self.reactor.callFromThread(d.callback, result)
        self.threadRunning = False
        self.reactor.callFromThread(self._ended.callback, None)

    def _submit(
        self,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kw: dict[str, Any],
        first: bool,
        internal: bool = False,
    ) -> Deferred[Any]:
        # Once stopping, only the iterations it waits for may still fetch.
        if (self._stopping is not None and not internal) or not self.threadRunning:
            return fail(QueueRunError(f"{self!r} is stopped"))
        d: Deferred[Any] = Deferred()
        with self._ready:
            if first:
                self._calls.appendleft((f, args, kw, d))
            else:
                self._calls.append((f, args, kw, d))
            self._ready.notify()
        return d

    # Calls ------------------------------------------------------------------

    def call(self, f: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[Any]:
        """
        Run C{f(*args, **kw)} in my thread after the calls before it (first,
        with C{doNext=True}); fire with C{(status, result)}.

        C{raw=True} (or False) overrides my C{raw} for this call.
        """
        doNext = bool(kw.pop("doNext", False))
        raw = kw.pop("raw", None)
        if raw is None:
            raw = self.raw

        def done(result: Any) -> Any:
            if raw or not isIterator(result):
                return _RESULT, result
            dr: Deferator[Any] = Deferator(_LooperSource(self, result))
            # Stopping waits for the iteration, as in AsynQueue.
            self.dt.put(dr.d)
            return dr.ready().addCallback(lambda _: (_ITERATOR, dr))

        return self._submit(f, args, kw, doNext).addCallback(done)

    def deferToThread(
        self, f: Callable[..., Any], *args: Any, **kw: Any
    ) -> Deferred[Any]:
        """
        Run C{f(*args, **kw)} in my thread (as L{call}); fire with its
        result: a L{Deferator} for an iterator, or, given a C{consumer},
        write the iterator's items to it and fire with the consumer when
        done.
        """
        consumer = kw.pop("consumer", None)

        def done(statusResult: tuple[bytes, Any]) -> Any:
            status, result = statusResult
            if status == _ITERATOR and consumer is not None:
                return self.dr2ip(result, consumer)
            return result

        return self.call(f, *args, **kw).addCallback(done)

    def dr2ip(self, dr: Deferator[Any], consumer: IConsumer | None = None) -> Any:
        """
        An L{IterationProducer} of C{dr}; given a C{consumer}, run it and
        return the Deferred that fires with the consumer when done.
        """
        ip: IterationProducer[Any] = IterationProducer(dr)
        if consumer is not None:
            ip.registerConsumer(consumer)
            return ip.run()
        return ip

    def stop(self) -> Deferred[None]:
        """
        Once every call given and every Deferator made is done, end my
        thread and run my stoppers; fire when all that is done.
        """
        if not self.threadRunning and not self._stopWaiters:
            # Stopped already (or the thread ended by itself).
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._stopWaiters.append(d)
        if self._stopping is not None:
            return d

        def end(_: object) -> Deferred[None]:
            with self._ready:
                self._calls.append(None)
                self._ready.notify()
            return self._ended

        def stopLock(_: object) -> Deferred[Any]:
            return self.dLock.stop()

        def stopped(result: object) -> None:
            waiters, self._stopWaiters = self._stopWaiters, []
            for waiter in waiters:
                waiter.callback(None)

        # Calls given before stop() still run: the end marker follows them.
        lastCall = self._submit(lambda: None, (), {}, False)
        self._stopping = (
            lastCall.addCallback(lambda _: self.dt.deferToAll())
            .addCallback(end)
            .addCallback(stopLock)
            .addBoth(stopped)
        )
        return d
