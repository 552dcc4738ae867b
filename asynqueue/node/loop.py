"""
A child's loop, without Twisted (L{ChildLoop}): what serves a queue's
child until a call needs a reactor, when Twisted's takes over.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import threading
import time
from collections.abc import Callable

from asynqueue.wire.framing import ReadBuffer, Value

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


class _Call:
    """A call a L{ChildLoop} runs when it is due, unless cancelled first."""

    __slots__ = ("when", "f", "args", "cancelled")

    def __init__(
        self, when: tuple[float, int], f: Callable[..., object], args: Any
    ) -> None:
        #: When it is due, and then in the order asked.
        self.when = when
        self.f = f
        self.args = args
        self.cancelled = False

    def __lt__(self, other: _Call) -> bool:
        return self.when < other.when

    def cancel(self) -> None:
        self.cancelled = True

    def run(self) -> None:
        if not self.cancelled:
            self.cancelled = True
            self.f(*self.args)


class ChildLoop:
    """
    A child's loop, without Twisted: reads its pipe into one reused
    buffer (a L{ReadBuffer}), feeds what came to its node, and runs the calls due.

    Once a call needs a reactor (L{needReactor}), L{run} returns, and
    L{handToReactor} moves the pipe and the calls still due to Twisted's
    reactor, which this loop then stands for (L{callLater}, L{stop}).
    """

    def __init__(self, readFD: int) -> None:
        self.readFD = readFD
        os.set_blocking(readFD, False)
        self._buffer = ReadBuffer()
        self._calls: list[_Call] = []
        self._order = itertools.count()
        self._running = True
        self._wantReactor = False
        self._reactor: Any = None
        self._mainThread = threading.get_ident()
        #: What takes the bytes read, and hears of the end of input (after
        #: which this loop ends, but a reactor it handed over to runs on).
        self.feed: Callable[[Value], object] = lambda data: None
        self.lost: Callable[[], object] = lambda: None

    def callLater(self, delay: float, f: Callable[..., object], /, *args: Any) -> Any:
        reactor = self._reactor
        if reactor is not None:
            return reactor.callLater(delay, f, *args)
        call = _Call((time.monotonic() + delay, next(self._order)), f, args)
        heapq.heappush(self._calls, call)
        return call

    def needReactor(self) -> None:
        """A call waits on what only a reactor can settle: hand over to one."""
        self._wantReactor = True

    def stop(self) -> None:
        """End the loop (or the reactor it handed over to); from any thread."""
        reactor = self._reactor
        if reactor is None:
            # Seen by the loop once the call it runs returns.
            self._running = False
        elif threading.get_ident() == self._mainThread:
            if reactor.running:
                reactor.stop()
        else:
            # A child's held-results thread drops its parent this way.
            reactor.callFromThread(self.stop)

    def readNow(self) -> bool:
        """Read what has come, if anything; False at the end of input."""
        try:
            data = self._buffer.readFrom(self.readFD)
        except (BlockingIOError, InterruptedError):
            return True
        except OSError:
            return False
        if not data:
            return False
        self.feed(data)
        return True

    def run(self) -> bool:
        """Serve until stopped (False) or a reactor is needed (True)."""
        calls = self._calls
        while self._running:
            if self._wantReactor:
                return True
            timeout = None
            while calls:
                call = calls[0]
                if call.cancelled:
                    heapq.heappop(calls)
                    continue
                timeout = call.when[0] - time.monotonic()
                if timeout > 0:
                    break
                heapq.heappop(calls)
                call.run()
                timeout = None
                if self._wantReactor or not self._running:
                    break
            else:
                timeout = None
            if self._wantReactor or not self._running:
                continue
            try:
                readable, _, _ = select.select([self.readFD], [], [], timeout)
            except InterruptedError:
                continue
            # At the end of input, so is this node (a read mid-task, by the
            # runner, leaves the end to be seen here).
            if readable and not self.readNow():
                self.lost()
                self._running = False
        return False

    def handToReactor(self) -> Any:
        """Go on in Twisted's reactor: the pipe, the calls due and L{stop}."""
        from twisted.internet import reactor

        from asynqueue.wire.pipes import PipeReader

        self._reactor = reactor
        now = time.monotonic()
        for call in sorted(self._calls):
            if not call.cancelled:
                reactor.callLater(max(0.0, call.when[0] - now), call.run)
        self._calls.clear()
        loop = self

        class Reading:
            def dataReceived(self, data: Value) -> None:
                loop.feed(data)

            def connectionLost(self, reason: object) -> None:
                loop.lost()

        return PipeReader(self.readFD, Reading(), reactor)
