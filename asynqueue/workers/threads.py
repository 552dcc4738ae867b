"""
Threads: L{ThreadWorker} runs calls in a dedicated thread; L{ThreadQueue}
is a L{TaskQueue} of them; L{deferToThread} is the shortcut.

A worker thread hands its news (a task started, a task ended, a batch of
iterator items) to the reactor through one outbox, and wakes the reactor
only when the outbox was empty, so that a busy thread costs the reactor one
wake-up for many results.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from time import perf_counter
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.errors import QueueRunError, ThreadError, WorkerCrashed
from asynqueue.interfaces import IIterationSource, IReportingWorker
from asynqueue.queue.core import TaskQueue
from asynqueue.settings import settingsForQueue
from asynqueue.sources import takeItems
from asynqueue.tasks import RawCall, Task
from asynqueue.workers.base import (
    PLAIN_TYPES,
    AdaptiveBacklog,
    WorkerBase,
    runReporting,
    settle,
)

__all__ = ["ThreadWorker", "ThreadQueue", "deferToThread", "ThreadIterationSource"]

_QUEUED, _RUNNING, _DONE, _CANCELLED = range(4)
_STOP = object()


class _Job:
    """
    One call for the thread: a task (reported to it), or an internal call
    such as a fetch (fired on its Deferred).
    """

    __slots__ = ("call", "deferred", "task", "attempt", "state", "thread")

    def __init__(
        self,
        call: Callable[[], Any] | None,
        deferred: Deferred[Any] | None,
        task: Task | None,
        attempt: int = 0,
    ) -> None:
        self.call = call
        self.deferred = deferred
        self.task = task
        self.attempt = attempt
        self.state = _QUEUED
        self.thread: _Thread | None = None


class _Thread:
    """One thread of a worker; abandoned when a task it runs is cancelled."""

    _ids = itertools.count(1)

    def __init__(self, worker: ThreadWorker) -> None:
        self.abandoned = False
        self.thread = threading.Thread(
            target=worker._loop,
            args=(self,),
            name=f"{worker.name}-{next(self._ids)}",
            daemon=True,
        )
        self.thread.start()


@implementer(IReportingWorker)
class ThreadWorker(WorkerBase):
    """
    Runs calls in a dedicated thread.

    The function runs in the thread; if it returns a Deferred or a
    coroutine, that is awaited in the reactor. An iterator it returns stays
    in the thread: the caller gets a L{Deferator} whose items are made
    there, in batches.

    The queue may hand me up to C{capacity} tasks at once; they run one after
    another in my thread, which keeps the thread busy between round trips
    through the reactor. By default (C{capacity=None}) the number adapts: one
    task, plus as many more as take about C{backlogSeconds} to run by the
    average so far (up to C{maxCapacity}). So short tasks go through in
    bulk, while a more urgent task that arrives later waits at most about
    C{backlogSeconds} behind those already handed to me. The ceiling is
    high (256) since 2 ms of calls of a few microseconds is hundreds of
    them: with fewer, the thread runs dry between the reactor's turns, and
    the reactor wakes for a few results at a time (30 a wake-up with a
    ceiling of 32, 250 with 256, on a burst of trivial calls). Give an int
    for a fixed capacity; C{capacity=1} keeps priorities exact.

    Cancelling a running task, or its timeout, abandons the thread: a
    Python thread cannot be stopped from outside, so it runs the call to its
    end and its result is dropped, while a new thread takes over the
    worker's remaining tasks. Threads are daemon threads, so an abandoned
    one never keeps the process from exiting.
    """

    #: AsynQueue's class qualifications: series every thread worker runs.
    cQualified: ClassVar[list[Any]] = ["thread", "local"]

    def __init__(
        self,
        name: str | None = None,
        series: Iterable[Any] = (),
        capacity: int | None = None,
        reactor: Any = None,
        backlogSeconds: float = 0.002,
        maxCapacity: int = 256,
        raw: bool = False,
    ) -> None:
        super().__init__(name, series, capacity or 1)
        #: AsynQueue's C{raw}: iterators come back as they are (L{RawCall}).
        self.raw = raw
        self._backlog = (
            AdaptiveBacklog(backlogSeconds, maxCapacity) if capacity is None else None
        )
        if reactor is None:
            from twisted.internet import reactor
        self._reactor = reactor
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._outbox: deque[tuple[Any, ...]] = deque()
        self._lock = threading.Lock()
        self._flushPending = False
        self._jobs: set[_Job] = set()
        self._stopped = False
        self._stopDeferred: Deferred[None] | None = None
        self._thread = _Thread(self)

    # -- in the reactor thread -------------------------------------------

    def run(self, task: Task) -> Deferred[Any]:
        """Queue the task for my thread and return a Deferred of its result."""
        return runReporting(self, task)

    def start(self, task: Task) -> None:
        """Queue the task for my thread; report its outcome when it ends."""
        if self._stopped:
            stopped = QueueRunError(f"{self.name} is stopped")
            task.finished(Failure(stopped), task.attempt)
            return
        job = task.handle = _Job(None, None, task, task.runs)
        self._jobs.add(job)
        self._inbox.put(job)

    def abandon(self, task: Task) -> None:
        """Drop the task if it has not begun, or leave its thread to it."""
        job = task.handle
        if isinstance(job, _Job) and job.task is task:
            self._cancel(job)

    def callInThread(self, call: Callable[[], Any]) -> Deferred[Any]:
        """Run a call in my thread, outside the queue (iteration uses it)."""
        if self._stopped:
            return fail(ThreadError(f"{self.name} is stopped"))
        job = _Job(call, None, None)
        job.deferred = Deferred(lambda d: self._cancel(job))
        self._jobs.add(job)
        self._inbox.put(job)
        return job.deferred

    def _cancel(self, job: _Job) -> None:
        with self._lock:
            if job.state == _QUEUED:
                job.state = _CANCELLED
            elif job.state == _RUNNING:
                job.state = _CANCELLED
                if job.thread is self._thread:
                    # The thread is stuck in this call; let a new one carry on.
                    self._thread.abandoned = True
                    self._thread = _Thread(self)
        self._jobs.discard(job)

    def _flush(self) -> None:
        with self._lock:
            self._flushPending = False
            news = list(self._outbox)
            self._outbox.clear()
        jobs, backlog = self._jobs, self._backlog
        if backlog is not None:
            # Once a batch: the same average as a result at a time, for less.
            ran = [item[4] for item in news if item[0] == "done"]
            if ran:
                self.capacity = backlog.ranAll(ran)
        for item in news:
            kind, job = item[0], item[1]
            if kind == "done":
                jobs.discard(job)
                ok, result, ranFor = item[2], item[3], item[4]
                task = job.task
                if task is None:
                    d = job.deferred
                    if not d.called:
                        if not ok:
                            d.errback(result)
                        else:
                            settle(result, self._sourceFor).chainDeferred(d)
                    continue
                if job.state == _CANCELLED:
                    continue
                task.markStarted(ranFor)
                if not ok or type(result) in PLAIN_TYPES:
                    task.finished(result, job.attempt)
                else:
                    settle(result, self._sourceFor).addBoth(task.finished, job.attempt)
            elif kind == "started":
                if job.task is not None and job.state != _CANCELLED:
                    job.task.markStarted()
            elif kind == "stopped":
                self._stopFinished()

    def _sourceFor(self, iterator: Iterator[Any]) -> IIterationSource:
        return ThreadIterationSource(self, iterator)

    def stop(self) -> Deferred[None]:
        """Take no more tasks; fire when my thread has done its tasks and ended."""
        if self._stopDeferred is None:
            self._stopped = True
            self._stopDeferred = Deferred()
            self._inbox.put(_STOP)
        d: Deferred[None] = Deferred()
        self._stopDeferred.addBoth(lambda r: d.callback(None))
        return d

    def _stopFinished(self) -> None:
        if self._stopDeferred is not None and not self._stopDeferred.called:
            self._stopDeferred.callback(None)

    def crash(self) -> list[Task]:
        """Stop at once: abandon my thread; return the tasks it had not started."""
        self._stopped = True
        unstarted: list[Task] = []
        with self._lock:
            self._thread.abandoned = True
            for job in list(self._jobs):
                if job.state == _QUEUED:
                    job.state = _CANCELLED
                    if job.task is not None:
                        unstarted.append(job.task)
        for job in list(self._jobs):
            if job.task is not None:
                if job.state != _CANCELLED:
                    job.state = _CANCELLED
                    crashed = WorkerCrashed(f"{self.name} crashed")
                    job.task.finished(Failure(crashed), job.attempt)
            elif job.deferred is not None and not job.deferred.called:
                job.deferred.errback(ThreadError(f"{self.name} crashed"))
        self._jobs.clear()
        self._inbox.put(_STOP)
        self._stopFinished()
        return unstarted

    # -- in my thread ------------------------------------------------------

    def _post(self, *news: Any) -> None:
        with self._lock:
            self._outbox.append(news)
            if self._flushPending:
                return
            self._flushPending = True
        self._reactor.callFromThread(self._flush)

    def _loop(self, me: _Thread) -> None:
        inbox = self._inbox
        while True:
            job = inbox.get()
            if job is _STOP:
                if not me.abandoned:
                    self._post("stopped", None)
                return
            with self._lock:
                if me.abandoned:
                    # Taken after a crash: leave it for nobody.
                    return
                if job.state != _QUEUED:
                    continue
                job.state = _RUNNING
                job.thread = me
                task = job.task
                if task is not None:
                    # Read now: once a cancel can see it running, the queue
                    # may end the task and let go of its arguments.
                    f, args, kwargs = task.f, task.args, task.kwargs
                    if self.raw and type(f) is not RawCall:
                        f = RawCall(f)
            if task is not None and task.options.timeout is not None:
                # Its timer must start now; other starts ride along with "done".
                self._post("started", job, 0.0)
            began = perf_counter()
            try:
                result = f(*args, **kwargs) if task is not None else job.call()
                ok = True
            except BaseException:
                ok, result = False, Failure()
            news = ("done", job, ok, result, perf_counter() - began)
            with self._lock:
                if me.abandoned:
                    return
                if job.state == _RUNNING:
                    job.state = _DONE
                self._outbox.append(news)
                if self._flushPending:
                    continue
                self._flushPending = True
            self._reactor.callFromThread(self._flush)


@implementer(IIterationSource)
class ThreadIterationSource:
    """The items of an iterator living in a worker's thread, fetched in batches."""

    def __init__(self, worker: ThreadWorker, iterator: Iterator[Any]) -> None:
        self._worker = worker
        self._iterator = iterator
        self._error: Failure | None = None

    def fetch(self, maxItems: int) -> Deferred[tuple[list[Any], bool]]:
        """Take up to C{maxItems} next items in the worker's thread."""
        iterator = self._iterator

        def take() -> tuple[list[Any], bool]:
            items, exhausted, error = takeItems(iterator, maxItems)
            if error is not None:
                if not items:
                    raise error
                # The items before the error go first; the error comes next.
                self._error = Failure(error)
                return items, False
            return items, exhausted

        if self._error is not None:
            return fail(self._error)
        return self._worker.callInThread(take)

    def close(self) -> None:
        """Close the iterator in its thread, if it has close() and the thread lives."""
        close = getattr(self._iterator, "close", None)
        if close is not None and not self._worker._stopped:
            self._worker.callInThread(close).addErrback(lambda _: None)


class ThreadQueue(TaskQueue):
    """
    A L{TaskQueue} of C{n} L{ThreadWorker}s.

    Extra keywords go to L{TaskQueue}; C{capacity} to each worker (see
    L{ThreadWorker}: C{None} adapts it to the tasks' run times, 1 keeps
    priorities exact).
    """

    def __init__(
        self, n: int | None = None, capacity: int | None = None, **kwargs: Any
    ) -> None:
        if n is not None and n < 1:
            raise ValueError(f"a ThreadQueue needs at least one thread, not {n}")
        settings = settingsForQueue(kwargs, workers=n, capacity=capacity)
        super().__init__(settings=settings, **kwargs)
        for _ in range(settings.workers or 1):
            self.attachWorker(ThreadWorker(capacity=settings.capacity))

    def deferToThread(
        self, f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        """AsynQueue's name for L{call}."""
        return self.call(f, *args, **kwargs)


_shared: ThreadQueue | None = None


def deferToThread(
    f: Callable[..., Any] | None = None, *args: Any, **kwargs: Any
) -> Deferred[Any]:
    """
    Run C{f(*args, **kwargs)} in a thread of a shared L{ThreadQueue}.

    The shared queue has one thread per core (at least two); it is made on
    first use and shut down with the reactor. Options such as C{priority}
    and C{timeout} work as in L{TaskQueue.call}. Called with no function
    (AsynQueue's way), it shuts the shared queue down; the Deferred fires
    once its threads are done.
    """
    global _shared
    if f is None:
        if args or kwargs:
            raise TypeError("deferToThread() needs a function to run")
        queue, _shared = _shared, None
        return queue.shutdown() if queue is not None else succeed(None)
    if _shared is None or not _shared.isRunning():
        import os

        _shared = ThreadQueue(max(2, os.cpu_count() or 1), name="deferToThread")
    return _shared.call(f, *args, **kwargs)
