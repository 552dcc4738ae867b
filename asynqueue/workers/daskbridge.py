"""
The asyncio loop a L{asynqueue.workers.dask.DaskWorker}'s Dask client lives
on, and the way to and from the reactor (L{Bridge}).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.python.failure import Failure

from asynqueue.errors import NodeLost

__all__ = ["Bridge"]


class Bridge:
    """
    The asyncio loop the Dask client lives on, and the way to and from it.

    L{toLoop} runs a function on that loop, L{toReactor} in the reactor
    thread; L{call} runs a coroutine there and gives a Deferred of it.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        from twisted.internet.asyncioreactor import AsyncioSelectorReactor

        self.shared = isinstance(reactor, AsyncioSelectorReactor)
        self.thread: threading.Thread | None = None
        self.closed = False
        if self.shared:
            self.loop: asyncio.AbstractEventLoop = reactor._asyncioEventloop
        else:
            self.loop = asyncio.new_event_loop()
            self.thread = threading.Thread(
                target=self._runLoop, name="DaskWorker-loop", daemon=True
            )
            self.thread.start()
        # What waits for the other side, and whether it has been woken.
        self._inbox: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._outbox: deque[tuple[Callable[..., Any], tuple[Any, ...]]] = deque()
        self._lock = threading.Lock()
        self._inboxWoken = False
        self._outboxWoken = False

    def _runLoop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def toLoop(self, f: Callable[..., Any], *args: Any) -> None:
        """Run C{f(*args)} on the Dask loop (now, if it is the reactor's)."""
        if self.shared:
            f(*args)
            return
        if self.closed:
            # The loop is gone, and what it held with it.
            return
        with self._lock:
            self._inbox.append((f, args))
            if self._inboxWoken:
                return
            self._inboxWoken = True
        self.loop.call_soon_threadsafe(self._drainInbox)

    def _drainInbox(self) -> None:
        with self._lock:
            self._inboxWoken = False
            calls = list(self._inbox)
            self._inbox.clear()
        for f, args in calls:
            f(*args)

    def toReactor(self, f: Callable[..., Any], *args: Any) -> None:
        """Run C{f(*args)} in the reactor thread (now, if the loop is the reactor's)."""
        if self.shared:
            f(*args)
            return
        with self._lock:
            self._outbox.append((f, args))
            if self._outboxWoken:
                return
            self._outboxWoken = True
        self.reactor.callFromThread(self._drainOutbox)

    def _drainOutbox(self) -> None:
        with self._lock:
            self._outboxWoken = False
            calls = list(self._outbox)
            self._outbox.clear()
        for f, args in calls:
            f(*args)

    def call(
        self,
        coroutine: Callable[..., Awaitable[Any]],
        *args: Any,
        **kwargs: Any,
    ) -> Deferred[Any]:
        """Run C{coroutine(*args, **kwargs)} on the Dask loop; a Deferred of it."""
        if self.closed:
            return fail(NodeLost("the Dask client is closed"))
        d: Deferred[Any] = Deferred()

        def done(future: asyncio.Future[Any]) -> None:
            if future.cancelled():
                self.toReactor(d.errback, Failure(CancelledError()))
            elif future.exception() is not None:
                self.toReactor(d.errback, Failure(future.exception()))
            else:
                self.toReactor(d.callback, future.result())

        def begin() -> None:
            try:
                result = coroutine(*args, **kwargs)
            except BaseException as e:
                self.toReactor(d.errback, Failure(e))
                return
            if not inspect.isawaitable(result):
                # A plain function: its result is the answer.
                self.toReactor(d.callback, result)
                return
            asyncio.ensure_future(result, loop=self.loop).add_done_callback(done)

        self.toLoop(begin)
        return d

    def close(self) -> None:
        """Stop the loop's thread, if I started one; run nothing more there."""
        self.closed = True
        if self.thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread = None
