"""
Iteration, Twisted style: iterators whose items arrive as Deferreds.

A task that returns an iterator leaves it where it was made; its caller gets
a L{Deferator} that pulls the items from an L{IIterationSource} in batches,
with back-pressure, and hands them out in order: as Deferreds to a plain
C{for} loop, to C{async for}, as a list (L{Deferator.toList}) or written to
an C{IConsumer} by an L{IterationProducer}. AsynQueue's other names of this
module are here too: C{Delay}, C{deferToDelay} and C{ListConsumer}.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, overload

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.errors import ImplementationError, NotReadyError
from asynqueue.interfaces import IIterationSource
from asynqueue.legacy.consumers import ListConsumer
from asynqueue.legacy.deferator import DeferatorCompat
from asynqueue.legacy.delay import Delay, deferToDelay
from asynqueue.legacy.prefetch import GetMoreSource, Prefetcherator
from asynqueue.plain import isPlainIterator
from asynqueue.sources import LocalIterationSource

__all__ = [
    "Delay",
    "Deferator",
    "IterationProducer",
    "ListConsumer",
    "LocalIterationSource",
    "Prefetcherator",
    "deferToDelay",
    "isIterator",
    "iteratorToProducer",
]

T = TypeVar("T")

_log = Logger()


def isIterator(obj: object) -> bool:
    """
    Tell whether C{obj} is an iterator whose items should be streamed.

    True for generators and other objects with C{__next__} and C{__iter__};
    false for strings, bytes, containers and their views, and for a
    L{Deferator} (it is already streamed).
    """
    return isPlainIterator(obj) and not isinstance(obj, Deferator)


def _closeSource(source: IIterationSource, name: str) -> None:
    # Run by a weakref.finalize, possibly during garbage collection, so it
    # must not raise; a remote close may return a Deferred that fails later.
    try:
        result = source.close()
    except Exception:
        _log.failure("Closing the iteration source of {name}", name=name)
        return
    if isinstance(result, Deferred):
        result.addErrback(
            lambda f: _log.failure(
                "Closing the iteration source of {name}", failure=f, name=name
            )
        )


class Deferator(DeferatorCompat, Generic[T]):
    """
    An iterator whose items arrive as Deferreds, pulled from an iteration source.

    Items are fetched in batches of up to C{batchSize}; the next batch is
    fetched while the consumer works, but never more than C{maxBuffered}
    (default C{2 * batchSize}) items ahead of what the consumer has asked
    for, and never more than one fetch at a time. The source is closed
    exactly once: when it reports it is exhausted or fails, on L{close}, or
    when the Deferator is garbage-collected.

    Three ways to consume it, all in order:

        - C{for d in deferator: item = yield d} under C{inlineCallbacks},
          waiting for each Deferred before asking for the next
          (L{NotReadyError} otherwise). A Deferred is handed out only for an
          item that exists, so the loop never sees a bogus value: the
          Deferred for item k fires once it is known whether item k+1
          exists. The first C{next()} must therefore wait for the first
          batch: L{ready} fires when it has arrived (at once for
          L{fromIterator}); before that, C{next()} raises L{NotReadyError}.
        - C{async for item in deferator}, which waits by itself.
        - L{toList}.

    If the iterator raises, the items before the error arrive first, then
    the Deferred (or C{await}) for the failing position fails with the
    original exception, and iteration ends.

    AsynQueue's forms work too, one call at a time: C{Deferator(repr,
    getMore, *args, **kw)}, where C{getMore} gives (a Deferred of)
    C{(value, isValid, moreLeft)}, and C{Deferator(iterator)}; so do its
    C{d}, C{moreLeft} and C{isIterator} (see L{DeferatorCompat}).
    """

    @overload
    def __init__(
        self,
        source: IIterationSource,
        batchSize: int = 64,
        maxBuffered: int | None = None,
        name: str = "",
    ) -> None: ...

    @overload
    def __init__(
        self, source: object, getMore: Callable[..., Any], /, *args: Any, **kw: Any
    ) -> None: ...

    def __init__(self, source: Any, *args: Any, **kwargs: Any) -> None:
        #: Fires with C{True} when the iteration ended, C{False} if it was
        #: stopped (or failed) first; it never fails (AsynQueue's C{d}).
        self.d: Deferred[bool] = Deferred()
        if (args and callable(args[0])) or not IIterationSource.providedBy(source):
            # AsynQueue's forms: Deferator(repr, getMore, *args, **kw), where
            # getMore gives (value, isValid, moreLeft), or Deferator(iterator).
            # One call at a time, as there: no batches fetched ahead.
            if isinstance(source, str):
                representation = source.strip("<>")
            else:
                representation = repr(source)
            if args:
                source = GetMoreSource(args[0], args[1:], kwargs)
            elif isIterator(source):
                source = LocalIterationSource(source)
            else:
                raise ImplementationError(
                    f"{source!r} is neither an iteration source nor an iterator"
                )
            self._lenient = True
            self._setUp(source, 1, 1, representation)
        elif (
            isinstance(source, Prefetcherator)
            and source.asynQueueForm
            and not (args or kwargs)
        ):
            # Set up AsynQueue's way: iterated as AsynQueue did, too.
            self._lenient = True
            self._setUp(source, 1, 1)
        else:
            self._setUp(source, *args, **kwargs)
        self.representation = self.name

    def _setUp(
        self,
        source: IIterationSource,
        batchSize: int = 64,
        maxBuffered: int | None = None,
        name: str = "",
    ) -> None:
        if maxBuffered is None:
            maxBuffered = 2 * batchSize
        if batchSize < 1 or maxBuffered < 1:
            raise ValueError(
                f"batchSize and maxBuffered must be at least 1, "
                f"not {batchSize} and {maxBuffered}"
            )
        self.name = name or repr(source)
        self.batchSize = batchSize
        self.maxBuffered = maxBuffered
        self._batch = min(batchSize, maxBuffered)
        self._source = source
        self._buffer: deque[T] = deque()
        self._exhausted = False
        self._failure: Failure | None = None
        self._closed = False
        self._fetching = False
        self._pumping = False
        self._waiters: list[Deferred[None]] = []
        self._handedOut: Deferred[T] | None = None
        # Holds the source, not me, so that dropping me closes it.
        self._closer = weakref.finalize(self, _closeSource, source, self.name)
        # At interpreter exit the reactor is gone and a remote close cannot run.
        self._closer.atexit = False
        self._pump()

    @classmethod
    def fromIterator(
        cls,
        iterator: Iterable[T],
        batchSize: int = 64,
        maxBuffered: int | None = None,
        name: str = "",
    ) -> Deferator[T]:
        """Make a Deferator over an iterator (or iterable) in the reactor's thread."""
        it = iter(iterator)
        return cls(LocalIterationSource(it), batchSize, maxBuffered, name or repr(it))

    def __repr__(self) -> str:
        return f"<Deferator {self.name}>"

    # State --------------------------------------------------------------

    def _decided(self) -> bool:
        # Whether the next position is known to hold an item, an error or
        # the end.
        return bool(
            self._buffer or self._failure is not None or self._exhausted or self._closed
        )

    def _whenDecided(self) -> Deferred[None]:
        d: Deferred[None] = Deferred(self._waiters.remove)
        self._waiters.append(d)
        return d

    def _notify(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def _pump(self) -> None:
        # A loop, not recursion: a local source fires its fetch before
        # fetch() returns, and the callback lands back here.
        if self._pumping:
            return
        self._pumping = True
        try:
            batch = min(self.batchSize, self.maxBuffered)
            while (
                not (self._fetching or self._exhausted or self._closed)
                and self._failure is None
                and self.maxBuffered - len(self._buffer) >= batch
            ):
                self._fetching = True
                d = maybeDeferred(self._source.fetch, batch)
                d.addCallbacks(self._gotBatch, self._fetchFailed)
        finally:
            self._pumping = False

    def _gotBatch(self, result: tuple[Iterable[T], bool]) -> None:
        self._fetching = False
        if self._closed:
            return
        try:
            items, exhausted = result
            self._buffer.extend(items)
        except Exception:
            # A malformed answer would otherwise stall iteration for good.
            self._fetchFailed(Failure())
            return
        if exhausted:
            self._exhausted = True
            self._closer()
        self._pump()
        if self._decided():
            self._notify()

    def _fetchFailed(self, failure: Failure) -> None:
        self._fetching = False
        if self._closed:
            return
        self._failure = failure
        self._closer()
        self._notify()

    def _takeNow(self) -> T:
        # The next position, once decided: its item, its error raised, or
        # StopIteration at the end.
        buffer = self._buffer
        if buffer:
            item = buffer.popleft()
            # Only when a whole batch fits again is there anything to fetch.
            if not self._fetching and self.maxBuffered - len(buffer) >= self._batch:
                self._pump()
            return item
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self.close()
            failure.raiseException()
        if self._exhausted or self._closed:
            self._markDone(True)
            self.close()
            raise StopIteration
        raise NotReadyError(f"{self!r} has not received its next items yet")

    # Public API ---------------------------------------------------------

    def ready(self) -> Deferred[Deferator[T]]:
        """
        Fire with me once a plain C{for} loop can start.

        That is when the first batch (or error) has arrived; for a
        Deferator over a local iterator, at once.
        """
        if self._decided():
            return succeed(self)
        return self._whenDecided().addCallback(lambda _: self)

    def isRunning(self) -> bool:
        """Tell whether items may still come: false once ended or closed."""
        return not self._closed

    def close(self) -> None:
        """
        Stop early: close the source, drop the buffered items, end iteration.

        A Deferred already handed out by C{next()} still fires with its
        item. Calling me again does nothing.
        """
        if self._closed:
            return
        self._markDone(False)
        self._closed = True
        self._buffer.clear()
        self._failure = None
        self._closer()
        self._notify()

    stop = close

    @classmethod
    def isIterator(cls, obj: object) -> bool:
        """L{isIterator}, as AsynQueue's class method."""
        return isIterator(obj)

    def __iter__(self) -> Deferator[T]:
        return self

    def __next__(self) -> Deferred[T]:
        """Return a Deferred of the next item; raise StopIteration at the end."""
        if not self._decided():
            # Only the message needs to know why: the Deferred handed out
            # last fires as soon as the next position is decided.
            if self._handedOut is not None and not self._handedOut.called:
                raise NotReadyError(
                    f"wait for the Deferred of the previous item of {self!r} "
                    "before asking for the next one"
                )
            if self._lenient:
                return self._waitForNext()
            raise NotReadyError(
                f"{self!r} has no items yet: wait for ready() before a plain for loop"
            )
        self._handedOut = None
        if not self._buffer:
            if self._failure is not None:
                failure, self._failure = self._failure, None
                self.close()
                return fail(failure)
            self._markDone(True)
            self.close()
            raise StopIteration
        item = self._buffer.popleft()
        self._pump()
        if self._decided():
            return succeed(item)
        # Hold the item until it is known whether another follows, so that
        # the next call can end the loop instead of handing out a dud.
        d = self._whenDecided().addCallback(lambda _: item)
        self._handedOut = d
        return d

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        """Wait for the next item and return it."""
        if self._buffer:
            return self._takeNow()
        while not self._decided():
            await self._whenDecided()
        try:
            return self._takeNow()
        except StopIteration:
            # A StopIteration may not leave a coroutine (PEP 479).
            raise StopAsyncIteration from None

    def toList(self) -> Deferred[list[T]]:
        """Collect all the (remaining) items; fails with the iterator's error."""

        async def collect() -> list[T]:
            return [item async for item in self]

        return Deferred.fromCoroutine(collect())


@implementer(IPushProducer)
class IterationProducer(Generic[T]):
    """
    Write the items of a L{Deferator} to an C{IConsumer}, one C{write} each.

    Give the consumer here or with L{registerConsumer}, then call L{run}.
    While the consumer has paused me, no items are taken, so the
    Deferator's bound stops fetching too.
    """

    def __init__(
        self, deferator: Deferator[T], consumer: IConsumer | None = None
    ) -> None:
        if not isinstance(deferator, Deferator):
            raise TypeError(f"{deferator!r} is not a Deferator")
        self.deferator = deferator
        self.consumer: IConsumer | None = None
        self._paused = False
        self._started = False
        self._finished = False
        self._registered = False
        self._producing = False
        self._waiting = False
        self._failure: Failure | None = None
        self._observers: list[Deferred[IConsumer]] = []
        if consumer is not None:
            self.registerConsumer(consumer)

    def registerConsumer(self, consumer: IConsumer) -> None:
        """Set the consumer that L{run} writes to."""
        if not IConsumer.providedBy(consumer):
            raise ImplementationError(f"{consumer!r} does not provide IConsumer")
        self.consumer = consumer

    @property
    def dr(self) -> Deferator[T]:
        """My Deferator (AsynQueue's name)."""
        return self.deferator

    def deferUntilDone(self) -> Deferred[IConsumer]:
        """
        Fire with my consumer when I am done producing (as L{run}'s Deferred
        does, without starting me).
        """
        d: Deferred[IConsumer] = Deferred()
        if self._finished:
            self._fire(d)
        else:
            self._observers.append(d)
        return d

    def run(self) -> Deferred[IConsumer]:
        """
        Write all the items; fire with the consumer when done.

        Registers me with the consumer as a streaming producer and
        unregisters me at the end. Fails with the iterator's error (after
        writing the items before it), or with L{NotReadyError} if there is
        no consumer. Calling it again gives another Deferred of the same.
        """
        if self.consumer is None:
            return fail(NotReadyError(f"{self!r} has no consumer to write to"))
        d: Deferred[IConsumer] = Deferred()
        if self._finished:
            self._fire(d)
            return d
        self._observers.append(d)
        if not self._started:
            self._started = True
            try:
                self.consumer.registerProducer(self, True)
            except Exception:
                self._finish(Failure())
                return d
            self._registered = True
            self._produce()
        return d

    def _produce(self) -> None:
        # Reentrant calls (a consumer pausing and resuming me inside its
        # write) leave the work to the loop already running.
        if self._producing or self._waiting:
            return
        self._producing = True
        try:
            dr, consumer = self.deferator, self.consumer
            assert consumer is not None
            while not (self._paused or self._finished):
                if not dr._decided():
                    self._waiting = True
                    dr._whenDecided().addCallback(self._wake)
                    return
                try:
                    item = dr._takeNow()
                except StopIteration:
                    self._finish()
                    return
                except BaseException:
                    self._finish(Failure())
                    return
                try:
                    # IConsumer.write is typed for bytes; any item will do here.
                    consumer.write(item)  # type: ignore[arg-type]
                except Exception:
                    dr.close()
                    self._finish(Failure())
                    return
        finally:
            self._producing = False

    def _wake(self, _: None) -> None:
        self._waiting = False
        self._produce()

    def _finish(self, failure: Failure | None = None) -> None:
        if self._finished:
            return
        self._finished = True
        self._failure = failure
        if self._registered and self.consumer is not None:
            self._registered = False
            self.consumer.unregisterProducer()
        observers, self._observers = self._observers, []
        for d in observers:
            self._fire(d)

    def _fire(self, d: Deferred[IConsumer]) -> None:
        if self._failure is not None:
            d.errback(self._failure)
        elif self.consumer is not None:
            d.callback(self.consumer)

    def pauseProducing(self) -> None:
        """Write nothing more until L{resumeProducing}."""
        self._paused = True

    def resumeProducing(self) -> None:
        """Go on writing."""
        self._paused = False
        if self._started:
            self._produce()

    def stopProducing(self) -> None:
        """Close the Deferator and fire L{run}'s Deferred with the consumer."""
        self._finish()
        self.deferator.close()


def iteratorToProducer(
    iterator: Iterable[T],
    consumer: IConsumer | None = None,
    wrapper: Callable[..., Any] | None = None,
    batchSize: int = 64,
) -> Deferred[IterationProducer[T] | None]:
    """
    Make an L{IterationProducer} of a local iterator, as AsynQueue did.

    With a C{consumer}, the items are written to it, and the Deferred fires
    with the producer once all are written (or fails with the iterator's
    error); without one, it fires at once with the producer, for you to
    L{IterationProducer.registerConsumer} and L{IterationProducer.run}. It
    fires with C{None} if C{iterator} is empty or not iterable at all.

    C{wrapper(next)} is called for each item instead of C{next()}, and may
    return a Deferred: C{wrapper=deferToThread} pulls the items in a thread.
    """
    if wrapper is not None and not callable(wrapper):
        raise TypeError(f"Wrapper {wrapper!r} is not a callable")
    try:
        it = iter(iterator)
    except TypeError:
        return succeed(None)
    return Deferred.fromCoroutine(_toProducer(it, consumer, wrapper, batchSize))


async def _toProducer(
    it: Iterator[T],
    consumer: IConsumer | None,
    wrapper: Callable[..., Any] | None,
    batchSize: int,
) -> IterationProducer[T] | None:
    dr: Deferator[T]
    if wrapper is not None:
        source: Prefetcherator[T] = Prefetcherator()
        if not await source.setup(wrapper, it.__next__):
            return None
        dr = Deferator(source, batchSize)
    else:
        dr = Deferator.fromIterator(it, batchSize)
    await dr.ready()
    if not dr._buffer and dr._failure is None:
        # Empty: AsynQueue gave no producer at all.
        dr.close()
        return None
    producer = IterationProducer(dr, consumer)
    if consumer is not None:
        await producer.run()
    return producer
