"""
Workers in the reactor: L{AsyncWorker} runs calls (and coroutines) in the
reactor thread, and L{MemoryWorker} runs them only when a test says so.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.errors import QueueRunError, WorkerCrashed
from asynqueue.interfaces import IReportingWorker, IWorker
from asynqueue.tasks import Task
from asynqueue.workers.base import PLAIN_TYPES, WorkerBase, runReporting, settle


@implementer(IReportingWorker)
class AsyncWorker(WorkerBase):
    """
    Runs calls in the reactor thread.

    Meant for functions that return Deferreds or are coroutine functions;
    with C{concurrency} > 1 that many of them run at once. A plain function
    runs to completion before the reactor does anything else, so keep those
    short. Cancelling a running task (or its timeout) cancels the Deferred
    or coroutine it is waiting on.
    """

    #: AsynQueue's class qualifications: series every reactor worker runs.
    cQualified: ClassVar[list[Any]] = ["async", "local"]

    def __init__(
        self, concurrency: int = 1, name: str | None = None, series: Iterable[Any] = ()
    ) -> None:
        super().__init__(name, series, concurrency)
        self._running: dict[Task, tuple[Deferred[Any], int]] = {}
        self._stopped = False
        self._stopWaiters: list[Deferred[None]] = []
        self._starting: Task | None = None
        self._startAbandoned = False

    def run(self, task: Task) -> Deferred[Any]:
        """Call the task's function now and return a Deferred of its result."""
        return runReporting(self, task)

    def start(self, task: Task) -> None:
        """Call the task's function now; report its result when it has one."""
        attempt = task.runs
        if self._stopped:
            task.finished(Failure(QueueRunError(f"{self.name} is stopped")), attempt)
            return
        f, args, kwargs = task.f, task.args, task.kwargs
        # Marking it started may end it (an observer that cancels it): then
        # it is not called at all.
        self._starting, self._startAbandoned = task, False
        try:
            task.markStarted()
        finally:
            self._starting = None
        if self._startAbandoned:
            return
        try:
            result = f(*args, **kwargs)
        except BaseException:
            task.finished(Failure(), attempt)
            return
        if type(result) in PLAIN_TYPES:
            task.finished(result, attempt)
            return
        inner = settle(result)
        if inner.called and not inner.paused:
            inner.addBoth(task.finished, attempt)
            return
        self._running[task] = (inner, attempt)
        inner.addBoth(self._finished, task, attempt)

    def _finished(self, result: object, task: Task, attempt: int) -> None:
        running = self._running.get(task)
        if running is not None and running[1] == attempt:
            del self._running[task]
            task.finished(result, attempt)
        if not self._running and self._stopWaiters:
            waiters, self._stopWaiters = self._stopWaiters, []
            for d in waiters:
                d.callback(None)

    def abandon(self, task: Task) -> None:
        """Cancel the Deferred or coroutine the task waits on."""
        if task is self._starting:
            self._startAbandoned = True
        running = self._running.get(task)
        if running is not None:
            running[0].cancel()

    def stop(self) -> Deferred[None]:
        """Take no more tasks; fire when those running are done."""
        self._stopped = True
        d: Deferred[None] = Deferred()
        if self._running:
            self._stopWaiters.append(d)
        else:
            d.callback(None)
        return d

    def crash(self) -> list[Task]:
        """Stop now; running tasks fail with L{WorkerCrashed} and are cancelled."""
        self._stopped = True
        for task, (inner, attempt) in list(self._running.items()):
            del self._running[task]
            task.finished(
                Failure(WorkerCrashed(f"{self.name} crashed while running {task!r}")),
                attempt,
            )
            inner.cancel()
        if self._stopWaiters:
            waiters, self._stopWaiters = self._stopWaiters, []
            for d in waiters:
                d.callback(None)
        return []


@implementer(IWorker)
class MemoryWorker(WorkerBase):
    """
    A worker that runs tasks only when told to: for deterministic tests.

    The queue hands it tasks as it would any worker; they wait in
    L{accepted} until the test calls L{runNext} (or L{startNext} and then
    L{finish}). Modelled on C{twisted._threads.createMemoryWorker}.
    """

    def __init__(
        self, capacity: int = 1, name: str | None = None, series: Iterable[Any] = ()
    ) -> None:
        super().__init__(name, series, capacity)
        self.accepted: deque[tuple[Task, Deferred[Any]]] = deque()
        self.started: dict[Task, Deferred[Any]] = {}
        self.stopped = False
        self.crashed = False
        self._stopWaiters: list[Deferred[None]] = []

    def run(self, task: Task) -> Deferred[Any]:
        """Accept a task; it runs when the test says so."""
        if self.stopped:
            return fail(QueueRunError(f"{self.name} is stopped"))
        d: Deferred[Any] = Deferred(lambda d: self._cancel(task, d))
        self.accepted.append((task, d))
        return d

    def _cancel(self, task: Task, d: Deferred[Any]) -> None:
        if (task, d) in self.accepted:
            self.accepted.remove((task, d))
        self.started.pop(task, None)
        self._maybeStopped()

    def startNext(self) -> Task | None:
        """Mark the next accepted task started, without running it yet."""
        if not self.accepted:
            return None
        task, d = self.accepted.popleft()
        self.started[task] = d
        task.markStarted()
        return task

    def finish(self, task: Task, result: object = None) -> None:
        """Fire a started task's Deferred with C{result} (a Failure fails it)."""
        d = self.started.pop(task)
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)
        self._maybeStopped()

    def runNext(self) -> bool:
        """Start and run the next accepted task; False if there was none."""
        task = self.startNext()
        if task is None:
            return False
        d = self.started[task]
        try:
            settled = settle(task.f(*task.args, **task.kwargs))
        except BaseException:
            settled = fail()

        def done(result: object) -> None:
            if self.started.get(task) is d:
                self.finish(task, result)

        settled.addBoth(done)
        return True

    def runAll(self) -> int:
        """Run accepted tasks (including any accepted meanwhile) until none is left."""
        count = 0
        while self.runNext():
            count += 1
        return count

    def stop(self) -> Deferred[None]:
        """Take no more tasks; fire once every accepted task is done."""
        self.stopped = True
        d: Deferred[None] = Deferred()
        self._stopWaiters.append(d)
        self._maybeStopped()
        return d

    def _maybeStopped(self) -> None:
        if self.stopped and not self.accepted and not self.started:
            waiters, self._stopWaiters = self._stopWaiters, []
            for d in waiters:
                d.callback(None)

    def crash(self) -> list[Task]:
        """Stop now; started tasks fail with L{WorkerCrashed}, others are returned."""
        self.stopped = self.crashed = True
        unstarted = [task for task, _ in self.accepted]
        self.accepted.clear()
        for task, d in list(self.started.items()):
            del self.started[task]
            d.errback(WorkerCrashed(f"{self.name} crashed while running {task!r}"))
        return unstarted
