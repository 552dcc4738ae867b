"""
L{OrderedQueue}: results leave in the order their tasks went in, while the
tasks run in parallel on any L{TaskQueue} (parallel-queue's semantics).

The adapter only calls C{queue.call}; it does not change the queue, which
stays the caller's to use for other work and to shut down.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from asynqueue.errors import QueueRunError
from asynqueue.queue.core import TaskQueue

__all__ = ["OrderedQueue"]

#: What an internal taker gets once the stream is stopped and drained.
_END = object()


class _Slot:
    """One item's place in the order: its result (or Failure) once it is in."""

    __slots__ = ("done", "result")

    def __init__(self) -> None:
        self.done = False
        self.result: object = None


class _Waiting:
    """A C{put} that found no room: the call to make, and the put's Deferred."""

    __slots__ = ("f", "args", "kwargs", "deferred")

    def __init__(
        self,
        f: object,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        canceller: Callable[[_Waiting], None],
    ) -> None:
        self.f = f
        self.args = args
        self.kwargs = kwargs
        self.deferred: Deferred[None] = Deferred(lambda _: canceller(self))


class OrderedQueue:
    """
    Put calls in, get their results out in the same order; the calls run in
    parallel on C{queue}.

    An item is I{in the window} from the moment it goes to the queue
    (a call submitted with C{queue.call}, or a marker) until L{get} hands it
    out, whether its task is pending, running or done. At most
    C{bufferSize} items are in the window. A L{put} that finds the window
    full waits, outside the queue, until a L{get} makes room; its Deferred
    fires when the item enters the window. So a slow task holds the
    producer back only once C{bufferSize} items (itself included) are in
    the window, and memory stays bounded by C{bufferSize} results.

    @param queue: Any L{TaskQueue}; it is used, never changed or shut down.
    @param bufferSize: The window's size; by default 10 times the number
        of workers attached to C{queue} now (at least 10).
    @param clock: What times L{join}'s timeout (default: the reactor).
    """

    def __init__(
        self,
        queue: TaskQueue,
        bufferSize: int | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if bufferSize is None:
            # The queue's settings (from its name's environment) may say.
            settings = getattr(queue, "settings", None)
            bufferSize = getattr(settings, "bufferSize", None)
        if bufferSize is None:
            bufferSize = 10 * max(1, len(queue.workers()))
        if bufferSize < 1:
            raise ValueError(f"bufferSize must be at least 1, not {bufferSize}")
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.queue = queue
        self.bufferSize = bufferSize
        self._clock: IReactorTime = clock
        self._window: deque[_Slot] = deque()
        self._backlog: deque[_Waiting] = deque()
        self._takers: deque[Deferred[Any]] = deque()
        self._joiners: list[tuple[Deferred[bool], IDelayedCall | None]] = []
        self._stopped = False
        self._pumping = False
        self._pumpAgain = False

    # ------------------------------------------------------------------
    # Putting in

    def put(self, task: object, *args: Any, **kwargs: Any) -> Deferred[None]:
        """
        Add C{queue.call(task, *args, **kwargs)} to the stream, or C{task}
        itself as a marker if it is not callable.

        Keywords are handled by C{queue.call}, so task options such as
        C{priority} and C{timeout} work (they change when a task runs, not
        where its result comes out). The Deferred fires at once while the
        window has room, otherwise when L{get} makes room for this item;
        cancelling it then withdraws the item. It fails with
        L{QueueRunError} after L{stop}, and with C{TypeError} for a marker
        given arguments.
        """
        if self._stopped:
            return fail(QueueRunError("the OrderedQueue is stopped and takes no items"))
        if not callable(task) and (args or kwargs):
            return fail(TypeError(f"marker {task!r} is not callable: it takes no args"))
        if not self._backlog and len(self._window) < self.bufferSize:
            self._enter(task, args, kwargs)
            return succeed(None)
        waiting = _Waiting(task, args, kwargs, self._withdraw)
        self._backlog.append(waiting)
        return waiting.deferred

    def _withdraw(self, waiting: _Waiting) -> None:
        """A put waiting for room was cancelled: its item never enters."""
        # Only a full window leaves puts waiting, so the stream cannot end
        # here: nothing else to do.
        if waiting in self._backlog:
            self._backlog.remove(waiting)

    def _enter(self, f: object, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Give an item its place in the window (and its task to the queue)."""
        slot = _Slot()
        self._window.append(slot)
        if callable(f):
            # It may fire at once (an AsyncWorker, a bad option): the slot
            # is already in place.
            self.queue.call(f, *args, **kwargs).addBoth(self._settled, slot)
        else:
            slot.done, slot.result = True, f
            if len(self._window) == 1 and self._takers:
                self._pump()

    def _settled(self, result: object, slot: _Slot) -> None:
        # Returns None: a task's failure is delivered by get(), not logged.
        slot.done, slot.result = True, result
        if self._takers and self._window and self._window[0] is slot:
            self._pump()

    # ------------------------------------------------------------------
    # Getting out

    def get(self) -> Deferred[Any]:
        """
        A Deferred of the next result in the order the items were put.

        It fires when that result is in: with the task's result (or the
        marker), or it fails with the task's exception; the stream goes on
        either way. Once the stream is stopped and drained it fails with
        L{QueueRunError}. Cancelling it gives its place to the next L{get}.
        """
        return self._take().addCallback(_noEnd)

    def _take(self) -> Deferred[Any]:
        d: Deferred[Any] = Deferred(self._takers.remove)
        self._takers.append(d)
        self._pump()
        return d

    def __aiter__(self) -> OrderedQueue:
        return self

    async def __anext__(self) -> Any:
        """
        The next result; the iteration ends once stopped and drained.

        A failed task raises its exception out of the loop; the stream goes
        on, so a loop that catches it may iterate again.
        """
        result = await self._take()
        if result is _END:
            raise StopAsyncIteration
        return result

    def __len__(self) -> int:
        """The number of items put and not yet got, those waiting for room included."""
        return len(self._window) + len(self._backlog)

    # ------------------------------------------------------------------
    # Ending

    def stop(self) -> None:
        """
        Take no more items; those already put still run and can be got.

        Returns at once (see L{join}). The wrapped queue is not shut down.
        """
        if not self._stopped:
            self._stopped = True
            self._pump()

    def isAlive(self) -> bool:
        """True until L{stop} has been called and every item has been got."""
        return not (self._stopped and not self._window and not self._backlog)

    def join(self, timeout: float | None = None) -> Deferred[bool]:
        """
        Wait until I am no longer alive: stopped, and every item got.

        The Deferred fires with C{True} then, or with C{False} if C{timeout}
        seconds pass first (so ignoring it never logs an error); L{isAlive}
        says the same afterwards. Without L{stop} and a consumer it never
        fires with C{True}.
        """
        if not self.isAlive():
            return succeed(True)
        call: IDelayedCall | None = None
        d: Deferred[bool] = Deferred(lambda d: self._unjoin(d, False))
        if timeout is not None:
            call = self._clock.callLater(timeout, self._unjoin, d, True)
        self._joiners.append((d, call))
        return d

    def _unjoin(self, d: Deferred[bool], timedOut: bool) -> None:
        for entry in self._joiners:
            if entry[0] is d:
                self._joiners.remove(entry)
                call = entry[1]
                if call is not None and call.active():
                    call.cancel()
                if timedOut:
                    d.callback(False)
                return

    # ------------------------------------------------------------------
    # The one place where items move

    def _pump(self) -> None:
        """Hand out ready results, let waiting puts in, end the stream if due."""
        if self._pumping:
            # A callback fired from here put or got again: loop once more.
            self._pumpAgain = True
            return
        self._pumping = True
        try:
            again = True
            while again:
                self._pumpAgain = False
                window, takers, backlog = self._window, self._takers, self._backlog
                while takers and window and window[0].done:
                    _fire(takers.popleft(), window.popleft().result)
                while backlog and len(window) < self.bufferSize:
                    waiting = backlog.popleft()
                    self._enter(waiting.f, waiting.args, waiting.kwargs)
                    waiting.deferred.callback(None)
                if self._stopped and not window and not backlog:
                    while takers:
                        takers.popleft().callback(_END)
                    joiners, self._joiners = self._joiners, []
                    for d, call in joiners:
                        if call is not None and call.active():
                            call.cancel()
                        d.callback(True)
                again = self._pumpAgain
        finally:
            self._pumping = False


def _fire(d: Deferred[Any], result: object) -> None:
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def _noEnd(result: object) -> object:
    if result is _END:
        raise QueueRunError("the OrderedQueue is stopped and every item has been got")
    return result
