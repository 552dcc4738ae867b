"""
Iterators for blocking code, fed from Twisted (AsynQueue's
C{threads.Consumerator}, C{Filerator} and C{OrderedItemProducer}).

Items are written on one side, in the reactor thread (a L{Filerator}:
any thread), and come out of a plain blocking iterator on the other side,
in a thread of its own. The iterating thread waits on a condition; the
reactor hears of what it took through C{callFromThread}: no polling.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.python.failure import Failure
from twisted.python.threadable import isInIOThread
from zope.interface import implementer

from asynqueue.util import DeferredTracker

__all__ = [
    "Consumerator",
    "Filerator",
    "IterationGetter",
    "OrderedItemProducer",
    "PoolUser",
]


class PoolUser:
    """
    AsynQueue's base of the objects below, which shared a thread pool of
    their own; they now need none but the reactor's, which these use.
    """

    @classmethod
    def setup(cls, maxThreads: int | None = None) -> None:
        """Accepted for AsynQueue's code: there is no pool of mine to size."""

    @classmethod
    def shutdown(cls) -> Deferred[None]:
        """Nothing of mine to stop (the reactor stops its own pool)."""
        return succeed(None)

    @classmethod
    def deferToThreadInPool(
        cls, f: Callable[..., Any], *args: Any, **kw: Any
    ) -> Deferred[Any]:
        """Run C{f(*args, **kw)} in a thread of the reactor's pool."""
        from twisted.internet.threads import deferToThread

        return deferToThread(f, *args, **kw)

    @property
    def pool(self) -> Any:
        """The reactor's thread pool."""
        from twisted.internet import reactor

        return reactor.getThreadPool()  # type: ignore[attr-defined]


class IterationGetter(PoolUser):
    """
    A blocking iterator over items written to me: C{next()} waits in its
    own thread for the next item, and ends once I am ended and every item
    written has been taken.

    @ivar runState: C{'init'}, C{'started'}, C{'running'} (iterated),
        C{'stopping'} (ended, items left) or C{'stopped'} (iteration over).
    """

    def __init__(self, maxThreads: int | None = None, reactor: Any = None) -> None:
        # maxThreads sized AsynQueue's shared pool; the iterating thread is
        # now the caller's own.
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.runState = "init"
        self._cond = threading.Condition()
        self._items: deque[Any] = deque()
        self._written = 0
        self._taken = 0
        self._ended = False
        self._done: Deferred[None] = Deferred()
        self._doneWaiters: list[Deferred[None]] = []

    def _inReactor(self, f: Callable[..., object], *args: Any) -> None:
        if isInIOThread():
            f(*args)
        else:
            self.reactor.callFromThread(f, *args)

    def _put(self, item: Any) -> int:
        """Add an item; its number (0 for the first)."""
        with self._cond:
            self._items.append(item)
            number = self._written
            self._written += 1
            self._cond.notify()
        return number

    def _end(self) -> None:
        with self._cond:
            self._ended = True
            if self.runState != "stopped":
                self.runState = "stopping"
            self._cond.notify_all()

    def _tookOne(self, taken: int) -> None:
        """The iterating thread took item C{taken - 1} (run in the reactor)."""

    def _finished(self) -> None:
        waiters, self._doneWaiters = self._doneWaiters, []
        for d in waiters:
            d.callback(None)

    def deferUntilDone(self) -> Deferred[None]:
        """A Deferred that fires once the iteration is over."""
        if self.runState == "stopped":
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._doneWaiters.append(d)
        return d

    # The blocking end ----------------------------------------------------

    def __iter__(self) -> IterationGetter:
        return self

    def __next__(self) -> Any:
        """Wait for the next item (in a thread other than the reactor's)."""
        with self._cond:
            if self.runState in ("init", "started"):
                self.runState = "running"
            while not self._items and not self._ended:
                self._cond.wait()
            if not self._items:
                if self.runState != "stopped":
                    self.runState = "stopped"
                    self._inReactor(self._finished)
                raise StopIteration
            item = self._items.popleft()
            self._taken += 1
            taken = self._taken
        self._inReactor(self._tookOne, taken)
        return item


@implementer(IConsumer)
class Consumerator(IterationGetter):
    """
    An C{IConsumer} for your Twisted code and an iterator for your blocking
    code (running in a thread, by a L{ThreadWorker} say)::

        c = Consumerator()
        c.deferUntilDone().addCallback(lambda _: request.finish())
        producePixelRows(c)         # registers a producer, writes to c
        pngWriter.write(request, c) # iterates c, in a thread

    A push producer is paused on each write and resumed once what was
    written before has been taken; a pull producer is asked for more then.
    L{write} returns a Deferred that fires at that moment too.
    """

    def __init__(
        self, producer: Any = None, maxThreads: int | None = None, reactor: Any = None
    ) -> None:
        super().__init__(maxThreads, reactor)
        self.producer: Any = None
        self.streaming = False
        self._writeWaiters: deque[tuple[int, Deferred[None]]] = deque()
        if producer is not None:
            self.registerProducer(producer, True)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """C{IConsumer}: take a producer (push or pull)."""
        if self.producer is not None:
            raise RuntimeError(f"{self!r} has a producer already")
        self.producer = producer
        self.streaming = streaming
        if self.runState == "init":
            self.runState = "started"
        if not streaming:
            producer.resumeProducing()

    # AsynQueue's Consumerator returns Deferreds where IConsumer says None.
    def unregisterProducer(self) -> Deferred[None]:  # type: ignore[override]
        """
        C{IConsumer}: no more items. The iteration ends once the items
        written are taken; the Deferred fires when they have been.
        """
        if self.producer is None and self._ended:
            return succeed(None)
        self.producer = None
        number = self._written
        self._end()
        return self._whenTaken(number)

    def stop(self) -> Deferred[None]:
        """Stop the producer and end the iteration (see L{unregisterProducer})."""
        if self.producer is not None:
            self.producer.stopProducing()
        return self.unregisterProducer()

    def write(self, data: Any) -> Deferred[None]:  # type: ignore[override]
        """C{IConsumer}: pass an item on; fire once the ones before it are taken."""
        if self._ended:
            raise ValueError(f"{self!r} is ended and takes no more items")
        producer = self.producer
        if producer is not None and self.streaming:
            producer.pauseProducing()
        number = self._put(data)
        return self._whenTaken(number).addCallback(self._resume)

    def _whenTaken(self, number: int) -> Deferred[None]:
        # Item `number` is at the head once `number` items have been taken.
        d: Deferred[None] = Deferred()
        with self._cond:
            atHead = self._taken >= number
            if not atHead:
                self._writeWaiters.append((number, d))
        if atHead:
            d.callback(None)
        return d

    def _tookOne(self, taken: int) -> None:
        waiters = self._writeWaiters
        while waiters and waiters[0][0] <= taken:
            waiters.popleft()[1].callback(None)

    def _resume(self, _: None) -> None:
        if self.producer is not None:
            self.producer.resumeProducing()


class Filerator(IterationGetter):
    """
    A file to write to, in any thread (the reactor's too), that is an
    iterator in another thread: C{write}, C{writelines}, C{flush} and
    C{close} on one side, C{for chunk in filerator} on the other. The
    iteration ends once L{close} is called and all is taken.
    """

    def __init__(self, maxThreads: int | None = None, reactor: Any = None) -> None:
        super().__init__(maxThreads, reactor)
        self.runState = "started"

    @property
    def closed(self) -> bool:
        """Whether L{close} was called."""
        return self._ended

    def write(self, data: Any) -> None:
        """Add a chunk."""
        if self._ended:
            raise ValueError("Closed, not accepting writes")
        self._put(data)

    def writelines(self, lines: Any) -> None:
        """Add each chunk of C{lines}."""
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        """Nothing to do: chunks are there to take as soon as written."""

    def close(self) -> None:
        """End the iteration once the chunks written are taken."""
        self._end()


@implementer(IPushProducer)
class OrderedItemProducer(PoolUser):
    """
    Feed a blocking function, in a thread, items made by non-blocking calls,
    in the order of the calls (not the order the items come in).

    L{start} runs C{fb(i, *args, **kw)} in a thread, where C{i} (a
    L{Consumerator}) iterates the items; each L{produceItem}C{(fp, ...)}
    makes one; L{stop} ends the iteration and fires with what C{fb}
    returned (or fails with the error of C{fb} or of an C{fp}).
    """

    def __init__(self, maxThreads: int | None = None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.itemBuffer: dict[int, Any] = {}
        self.k1 = self.k2 = 0
        self.i = Consumerator(self, maxThreads, reactor)
        self.dt = DeferredTracker()
        # True: producing; False: paused by the consumerator; None: stopped.
        self.produce: bool | None = True
        self._flushing = False
        self._failure: Failure | None = None
        self.dFinished: Deferred[Any] | None = None

    def start(self, fb: Callable[..., Any], *args: Any, **kw: Any) -> Deferred[None]:
        """
        Run C{fb(i, *args, **kw)} in a thread of the reactor's pool; fire
        once it has begun.
        """
        from twisted.internet.threads import deferToThreadPool

        dStarted: Deferred[None] = Deferred()

        def runner() -> Any:
            self.reactor.callFromThread(dStarted.callback, None)
            return fb(self.i, *args, **kw)

        self.dFinished = deferToThreadPool(
            self.reactor, self.reactor.getThreadPool(), runner
        )
        self.dFinished.addBoth(self._fbEnded)
        return dStarted

    def _fbEnded(self, result: Any) -> Any:
        # The function ended, early perhaps: make no more items for it.
        self.stopProducing()
        return result

    def produceItem(
        self, fp: Callable[..., Any], *args: Any, **kw: Any
    ) -> Deferred[Any]:
        """
        Make an item with C{fp(*args, **kw)} (which may return a Deferred);
        fire with it. Once stopped, C{fp} is not called and this fires with
        C{None}. An error of C{fp} ends the iteration; L{stop} fails with it.
        """
        if self.produce is None:
            return succeed(None)
        k = self.k1
        self.k1 += 1

        def gotItem(item: Any) -> Any:
            self.itemBuffer[k] = item
            self._flush()
            return item

        def oops(failure: Failure) -> None:
            if self._failure is None:
                self._failure = failure
            self.stopProducing()

        d = maybeDeferred(fp, *args, **kw).addCallbacks(gotItem, oops)
        self.dt.put(d)
        return d

    def _flush(self, force: bool = False) -> None:
        if self._flushing:
            return
        self._flushing = True
        try:
            while self.k2 in self.itemBuffer and (self.produce or force):
                item = self.itemBuffer.pop(self.k2)
                self.k2 += 1
                if self.i.producer is not None:
                    self.i.write(item)
        finally:
            self._flushing = False

    def stop(self, failureObj: Failure | None = None) -> Deferred[Any]:
        """
        Once the pending L{produceItem} calls are done, end the iteration;
        fire with what C{fb} returned.
        """
        return Deferred.fromCoroutine(self._stop(failureObj))

    async def _stop(self, failureObj: Failure | None) -> Any:
        await self.dt.deferToAll()
        # Items held while paused go too: the iteration takes them all.
        if self.produce is not None:
            self._flush(force=True)
        await self.i.stop()
        result = None
        if self.dFinished is not None:
            dFinished, self.dFinished = self.dFinished, None
            result = await dFinished
        failure = failureObj or self._failure
        if failure is not None:
            failure.raiseException()
        return result

    def stopProducing(self) -> None:
        """C{IPushProducer}: make no more items."""
        self.produce = None

    def pauseProducing(self) -> None:
        """C{IPushProducer}: hold items until resumed."""
        if self.produce is not None:
            self.produce = False

    def resumeProducing(self) -> None:
        """C{IPushProducer}: pass the items on again."""
        if self.produce is not None:
            self.produce = True
            self._flush()
