"""
Feeders: keep a queue supplied with work from a writer, as QuasiQueue does.

A L{Feeder} calls C{writer(desired)} whenever fewer than C{lowWater} tasks
are waiting in the queue, and queues C{f(item)} for each item the writer
gives. It learns that tasks have left the waiting state from the queue's
C{observe} events, never by polling. See C{doc/feeders.rst}.
"""

from __future__ import annotations

from collections import deque
from collections.abc import (
    Callable,
    Hashable,
)
from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Protocol

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from asynqueue.settings import Settings
from asynqueue.tasks import TaskOptions, TaskRecord
from asynqueue.writer import EXHAUSTED, NONE, Answer, WriterTaker, isExhaustion

__all__ = ["FeedableQueue", "Feeder", "FeederStats", "feed"]

#: What the writer is called with (C{desired}) and may return; see L{Feeder}.
Writer = Callable[[int], Any]

_WAITING, _ASKING, _SLEEPING, _STOPPED = "waiting", "asking", "sleeping", "stopped"


class FeedableQueue(Protocol):
    """What a L{Feeder} needs of its queue (a L{asynqueue.TaskQueue} has it)."""

    name: str

    def call(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """Queue C{f(*args)}."""

    def observe(
        self, observer: Callable[[str, TaskRecord], object]
    ) -> Callable[[], None]:
        """Call C{observer(event, record)} as tasks go."""

    def size(
        self, waiting: bool = False, working: bool = False, completed: bool = False
    ) -> int:
        """How many tasks are waiting, working or completed."""

    def isRunning(self) -> bool:
        """True until the queue is shut down."""


@dataclass
class FeederStats:
    """
    What a L{Feeder} has done so far.

    @ivar asks: Calls of the writer.
    @ivar fed: Items queued as tasks.
    @ivar duplicates: Items dropped because they were queued less than
        C{preventRequeueTime} seconds before.
    @ivar empty: Answers of C{None} ("nothing now"), each followed by a
        wait of C{emptySleep} seconds.
    @ivar done: Tasks that succeeded.
    @ivar failed: Tasks that failed or were cancelled.
    """

    asks: int = 0
    fed: int = 0
    duplicates: int = 0
    empty: int = 0
    done: int = 0
    failed: int = 0


class Feeder:
    """
    Feed C{f(item)} calls to a queue from a writer, whenever the queue runs low.

    C{writer(desired)} is called whenever fewer than C{lowWater} tasks are
    waiting in the queue (not yet handed to a worker), with C{desired =
    blockSize}; the feeder keeps asking until C{lowWater} tasks wait, so a
    writer that honours C{desired} keeps between C{lowWater} and
    C{lowWater + blockSize - 1} waiting. The writer may be:

     - a plain function returning an iterable of items, or C{None};
     - a function returning a Deferred of those;
     - an C{async def} function returning those;
     - an async generator function (C{async def} with C{yield}).

    A list (or any iterable that is not an iterator) is queued whole. An
    iterator, a generator or an async generator is drawn C{desired} items
    per ask; one that has more is resumed at the next ask, before the writer
    is called again, so no item is lost. Sync iterators run in the reactor
    thread: keep them quick, or return a Deferred (C{deferToThread}).

    C{None} means "nothing now", whether returned or met as an item (the
    items before it are queued): the feeder waits C{emptySleep} seconds on
    its clock, then asks again if the queue is still low. An answer whose
    items were all duplicates counts as "nothing now" too. The writer is
    I{exhausted}, and the feeder stops, when an answer has no items at all:
    an empty iterable, a generator that ends at once, or C{StopIteration} /
    C{StopAsyncIteration} raised by the writer. Any other exception stops
    the feeder with that failure (after the items taken before it are
    queued). The feeder also stops when the queue is shut down.

    An item queued less than C{preventRequeueTime} seconds ago (by the
    feeder's clock) is dropped as a duplicate, so items must be hashable
    unless C{preventRequeueTime} is 0. The feeder remembers items for that
    long only. Task failures are logged and counted, not raised.

    Settings left C{None} come from the queue's L{Settings} (its C{settings}
    attribute, else the environment by the queue's name; see
    L{asynqueue.settings}).

    @param queue: A L{asynqueue.TaskQueue} (anything L{FeedableQueue}).
    @param callOptions: L{TaskOptions} keywords for each call (C{priority},
        C{timeout}, ...).
    @param clock: Times C{emptySleep}, C{preventRequeueTime} and stop
        timeouts (default: the queue's clock, else the reactor).
    @param total: How many items the writer will give in all, if known: the
        feeder announces them to the queue's watchers (a dashboard then
        shows an ETA; see L{asynqueue.queue.inspection}), and withdraws
        those it never fed when it stops.
    """

    log = Logger()

    def __init__(
        self,
        queue: FeedableQueue,
        writer: Writer,
        f: Callable[..., Any],
        lowWater: int | None = None,
        blockSize: int | None = None,
        emptySleep: float | None = None,
        preventRequeueTime: float | None = None,
        clock: IReactorTime | None = None,
        callOptions: dict[str, Any] | None = None,
        name: str | None = None,
        total: int | None = None,
    ) -> None:
        if not callable(writer):
            raise TypeError(f"the writer {writer!r} is not callable")
        if not callable(f):
            raise TypeError(f"{f!r} is not callable, so it cannot be fed")
        base = getattr(queue, "settings", None)
        if not isinstance(base, Settings):
            base = Settings.resolve(getattr(queue, "name", ""))
        settings = base.override(
            lowWater=lowWater,
            blockSize=blockSize,
            emptySleep=emptySleep,
            preventRequeueTime=preventRequeueTime,
        )
        self.lowWater: int = settings.lowWater
        self.blockSize: int = settings.blockSize
        self.emptySleep: float = settings.emptySleep
        self.preventRequeueTime: float = settings.preventRequeueTime
        self.callOptions = dict(callOptions or {})
        TaskOptions(**self.callOptions)  # Bad options fail here, not per task.
        if total is not None and (
            not isinstance(total, int) or isinstance(total, bool) or total < 0
        ):
            raise ValueError(f"total must be a whole number of items, not {total!r}")
        self.total = total
        announce = getattr(queue, "announceWork", None)
        self._announceWork: Callable[..., object] | None = (
            announce if total and callable(announce) else None
        )
        self.name = name or f"feeder of {getattr(queue, 'name', queue)!r}"
        if clock is None:
            # A TaskQueue keeps its clock private; a test's Clock lives there.
            clock = getattr(queue, "clock", None) or getattr(queue, "_clock", None)
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self._clock: IReactorTime = clock
        self._queue = queue
        self._writer = writer
        self._f = f
        self._stats = FeederStats()
        self._state = _WAITING
        self._started = False
        self._stopping = False
        #: Why the feeder stopped: "exhausted", "stopped", "queueStopped" or
        #: "failed"; None while it runs.
        self.reason: str | None = None
        self._failure: Failure | None = None
        self._taker = WriterTaker(writer, self)
        self._writerCall: Deferred[Any] | None = None
        self._lookCall: IDelayedCall | None = None
        self._sleepCall: IDelayedCall | None = None
        self._stopCall: IDelayedCall | None = None
        self._stopObserving: Callable[[], None] | None = None
        self._seen: dict[Hashable, float] = {}
        self._seenOrder: deque[tuple[float, Hashable]] = deque()
        self._outstanding = 0
        self._stopWaiters: list[Deferred[None]] = []
        self._joinWaiters: list[Deferred[None]] = []

    def __repr__(self) -> str:
        return f"<Feeder {self.name} {self._state}>"

    # ------------------------------------------------------------------
    # Public

    def start(self) -> Deferred[None]:
        """
        Start feeding; return L{whenStopped}.

        The first look at the queue (and the first ask, if it is low)
        happens now. Starting again just returns L{whenStopped}.
        """
        if not self._started and self._state != _STOPPED:
            self._started = True
            self._stopObserving = self._queue.observe(self._observed)
            if self._announceWork is not None:
                self._announceWork(expected=self.total)
            d = self.whenStopped()
            self._look()
            return d
        return self.whenStopped()

    def whenStopped(self) -> Deferred[None]:
        """
        A Deferred that fires when the feeder has stopped.

        It fires with C{None} once the writer is exhausted and its items are
        queued, or after L{stop}, or once the queue is shut down; it fails
        with the writer's exception if the writer raised one.
        """
        d: Deferred[None] = Deferred()
        if self._state == _STOPPED:
            self._fire(d)
        else:
            self._stopWaiters.append(d)
        return d

    def join(self) -> Deferred[None]:
        """Like L{whenStopped}, but also waits for every task fed to end."""
        d: Deferred[None] = Deferred()
        self._joinWaiters.append(d)
        self._checkJoin()
        return d

    def stop(self, timeout: float | None = None) -> Deferred[None]:
        """
        Ask the writer no more; fire (with C{None}) once the feeder has stopped.

        A writer call in progress is waited for and its items are queued
        (if the queue still runs). With a C{timeout}, the feeder waits only
        that many seconds for it: then it cancels the writer's Deferred (or
        coroutine) and drops whatever it would have given. C{timeout=0}
        stops at once.
        """
        d: Deferred[None] = Deferred()
        if self._state == _STOPPED:
            d.callback(None)
            return d
        self.whenStopped().addBoth(lambda _: d.callback(None))
        self._stopping = True
        if self._state == _ASKING:
            if timeout is not None:
                if timeout <= 0:
                    self._abandonWriter()
                else:
                    self._stopCall = self._clock.callLater(timeout, self._abandonWriter)
        else:
            self._finish("stopped")
        return d

    def stats(self) -> FeederStats:
        """A copy of the counts so far."""
        return replace(self._stats, asks=self._taker.asks)

    def isRunning(self) -> bool:
        """True from L{start} until the feeder stops."""
        return self._started and self._state != _STOPPED

    @property
    def outstanding(self) -> int:
        """Tasks fed that have not ended yet."""
        return self._outstanding

    # ------------------------------------------------------------------
    # Looking at the queue

    def _observed(self, event: str, record: TaskRecord) -> None:
        """A queue event: a task may have left the waiting state."""
        if event == "submitted":
            return
        if self._state == _WAITING:
            self._scheduleLook()
        elif self._state == _SLEEPING and not self._queue.isRunning():
            self._cancel("_sleepCall")
            self._state = _WAITING
            self._scheduleLook()

    def _scheduleLook(self) -> None:
        # Looked at after the queue has finished what it is doing: a task
        # that ended frees a slot, and the next task leaves the waiting state
        # only after the "ended" event.
        if self._lookCall is None and self._state != _STOPPED:
            self._lookCall = self._clock.callLater(0, self._look)

    def _look(self) -> None:
        """Ask the writer while the queue is low, up to a budget per turn."""
        self._lookCall = None
        if self._state != _WAITING:
            return
        # More than this per turn would starve the reactor when workers drain
        # the queue as fast as it is fed (an AsyncWorker, say).
        budget = max(self.lowWater, self.blockSize)
        while True:
            if self._stopping:
                self._finish("stopped")
                return
            if not self._queue.isRunning():
                self._finish("queueStopped")
                return
            if self._queue.size(waiting=True) >= self.lowWater:
                return
            if budget <= 0:
                self._scheduleLook()
                return
            self._state = _ASKING
            d = self._taker.pull(self.blockSize)
            catch = _Catch()
            d.addBoth(catch)
            if not catch.caught:
                self._writerCall = d
                catch.later = partial(self._answered, d=d)
                return
            fed = self._handle(catch.result)
            if fed is None:
                return
            budget -= max(fed, 1)

    def _answered(self, result: object, d: Deferred[Answer]) -> None:
        """The writer answered later (a Deferred or coroutine)."""
        if d is not self._writerCall:
            return  # Abandoned by stop(timeout); its outcome is dropped.
        self._writerCall = None
        if self._handle(result) is not None:
            self._look()

    def _handle(self, result: object) -> int | None:
        """
        Queue an answer's items and decide what is next.

        Returns how many items were fed when the feeder should go on looking;
        C{None} when it sleeps or has stopped.
        """
        if isinstance(result, Failure):
            if isExhaustion(result):
                self._finish("exhausted")
            else:
                self._finish("failed", result)
            return None
        assert isinstance(result, Answer)
        try:
            fed = self._submit(result.items)
        except TypeError:
            self._finish("failed", Failure())
            return None
        if result.error is not None:
            self._finish("failed", result.error)
            return None
        if self._state == _STOPPED:
            return None
        if not self._queue.isRunning():
            self._finish("queueStopped")
            return None
        if result.end == EXHAUSTED:
            self._finish("exhausted")
            return None
        if result.end == NONE or (result.items and not fed):
            if result.end == NONE:
                self._stats.empty += 1
            if self._stopping:
                self._finish("stopped")
            else:
                self._cancel("_lookCall")
                self._state = _SLEEPING
                self._sleepCall = self._clock.callLater(self.emptySleep, self._wake)
            return None
        self._state = _WAITING
        return fed

    def _wake(self) -> None:
        self._sleepCall = None
        self._state = _WAITING
        self._look()

    # ------------------------------------------------------------------
    # Queueing items

    def _submit(self, items: list[Any]) -> int:
        """Queue C{f(item)} for each item that is not a duplicate; return how many."""
        fed = 0
        window = self.preventRequeueTime
        now = self._clock.seconds()
        if window > 0:
            self._forgetOld(now)
        queue = self._queue
        for item in items:
            if not queue.isRunning():
                # Dropped: the queue takes no more calls. _look sees it next.
                break
            if window > 0:
                try:
                    queuedAt = self._seen.get(item)
                except TypeError:
                    raise TypeError(
                        f"{self.name} got the unhashable item {item!r}; items must "
                        "be hashable unless preventRequeueTime is 0"
                    ) from None
                if queuedAt is not None and now - queuedAt < window:
                    self._stats.duplicates += 1
                    continue
                self._seen[item] = now
                self._seenOrder.append((now, item))
            d = queue.call(self._f, item, **self.callOptions)
            fed += 1
            self._outstanding += 1
            d.addBoth(self._taskEnded)
        self._stats.fed += fed
        return fed

    def _forgetOld(self, now: float) -> None:
        """Forget the items queued C{preventRequeueTime} seconds ago or more."""
        order, seen, window = self._seenOrder, self._seen, self.preventRequeueTime
        while order and now - order[0][0] >= window:
            queuedAt, item = order.popleft()
            if seen.get(item) == queuedAt:
                del seen[item]

    def _taskEnded(self, result: object) -> None:
        self._outstanding -= 1
        if isinstance(result, Failure):
            self._stats.failed += 1
            if not result.check(CancelledError):
                self.log.failure(
                    "A task fed by {feeder} failed", result, feeder=self.name
                )
        else:
            self._stats.done += 1
        if self._announceWork is not None:
            self._announceWork(done=1)
        self._checkJoin()

    # ------------------------------------------------------------------
    # Stopping

    def _abandonWriter(self) -> None:
        """stop(timeout) ran out while the writer was still working."""
        self._stopCall = None
        d, self._writerCall = self._writerCall, None
        if d is not None:
            d.cancel()
        self._finish("stopped")

    def _cancel(self, attribute: str) -> None:
        call: IDelayedCall | None = getattr(self, attribute)
        setattr(self, attribute, None)
        if call is not None and call.active():
            call.cancel()

    def _finish(self, reason: str, failure: Failure | None = None) -> None:
        if self._state == _STOPPED:
            return
        self._state = _STOPPED
        self.reason = reason
        self._failure = failure
        for attribute in ("_lookCall", "_sleepCall", "_stopCall"):
            self._cancel(attribute)
        if self._stopObserving is not None:
            self._stopObserving()
            self._stopObserving = None
        self._taker.close()
        if self._announceWork is not None and self._started:
            unfed = (self.total or 0) - self._stats.fed
            if unfed > 0:
                self._announceWork(expected=-unfed)
        self._seen.clear()
        self._seenOrder.clear()
        if failure is not None:
            self.log.failure(
                "The writer of {feeder} failed; it stops", failure, feeder=self.name
            )
        waiters, self._stopWaiters = self._stopWaiters, []
        for d in waiters:
            self._fire(d)
        self._checkJoin()

    def _fire(self, d: Deferred[None]) -> None:
        if self._failure is not None:
            d.errback(self._failure)
        else:
            d.callback(None)

    def _checkJoin(self) -> None:
        if self._joinWaiters and self._state == _STOPPED and not self._outstanding:
            waiters, self._joinWaiters = self._joinWaiters, []
            for d in waiters:
                self._fire(d)


def feed(
    queue: FeedableQueue, writer: Writer, f: Callable[..., Any], **options: Any
) -> Feeder:
    """
    Make a L{Feeder} with C{options} and start it.

    A writer failure is logged by the feeder; L{Feeder.whenStopped} and
    L{Feeder.join} also fail with it.
    """
    feeder = Feeder(queue, writer, f, **options)
    feeder.start().addErrback(lambda _: None)
    return feeder


class _Catch:
    """A callback that keeps a result that came at once, and passes a later one on."""

    __slots__ = ("caught", "later", "result")

    def __init__(self) -> None:
        self.caught = False
        self.result: object = None
        self.later: Callable[[object], object] | None = None

    def __call__(self, result: object) -> None:
        if self.later is not None:
            self.later(result)
        else:
            self.caught, self.result = True, result
