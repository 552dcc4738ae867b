"""Tests of asynqueue.workers: AsyncWorker, MemoryWorker and settle()."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from asynqueue import AsyncWorker, IWorker, MemoryWorker, TimeoutError, WorkerCrashed
from asynqueue.errors import QueueRunError
from asynqueue.interfaces import IReportingWorker
from asynqueue.iteration import Deferator
from asynqueue.queue.core import TaskQueue
from asynqueue.tasks import Task, TaskOptions, TaskRecord
from asynqueue.workers.base import WorkerBase, runReporting
from asynqueue.workers.threads import ThreadWorker
from helpers import failureOf, result


def test_workersProvideIWorker() -> None:
    assert verifyObject(IWorker, AsyncWorker())
    assert verifyObject(IWorker, MemoryWorker())


def test_capacityMustBePositive() -> None:
    import pytest

    with pytest.raises(ValueError):
        AsyncWorker(concurrency=0)


def test_asyncWorkerRunsPlainDeferredAndCoroutineFunctions(makeQueue: Any) -> None:
    q = makeQueue(AsyncWorker())
    gate: Deferred[int] = Deferred()

    async def coro(x: int) -> int:
        return x + await gate

    assert result(q.call(lambda: 5)) == 5
    assert result(q.call(lambda: succeed(6))) == 6
    d = q.call(coro, 1)
    assert not d.called
    gate.callback(10)
    assert result(d) == 11


def test_asyncWorkerConcurrency(makeQueue: Any) -> None:
    gates = [Deferred[int]() for _ in range(3)]
    started: list[int] = []

    def f(i: int) -> Deferred[int]:
        started.append(i)
        return gates[i]

    q = makeQueue(AsyncWorker(concurrency=2))
    ds = [q.call(f, i) for i in range(3)]
    assert started == [0, 1]
    gates[1].callback(1)
    assert started == [0, 1, 2]
    gates[0].callback(0)
    gates[2].callback(2)
    assert [result(d) for d in ds] == [0, 1, 2]


def test_asyncWorkerTimeoutCancelsWhatItWaitsOn(makeQueue: Any, clock: Any) -> None:
    cancelled: list[bool] = []
    inner: Deferred[None] = Deferred(lambda d: cancelled.append(True))
    q = makeQueue(AsyncWorker())
    d = q.call(lambda: inner, timeout=2)
    clock.advance(2)
    assert failureOf(d).check(TimeoutError)
    assert cancelled == [True]


def test_asyncWorkerCancelRunningCoroutine(makeQueue: Any) -> None:
    gate: Deferred[None] = Deferred()
    reached: list[str] = []

    async def coro() -> None:
        try:
            await gate
        except CancelledError:
            reached.append("cancelled inside")
            raise

    q = makeQueue(AsyncWorker())
    d = q.call(coro)
    d.cancel()
    assert failureOf(d).check(CancelledError)
    assert reached == ["cancelled inside"]


def test_asyncWorkerStopWaitsForRunning() -> None:
    from asynqueue.tasks import Task, TaskOptions, TaskRecord

    w = AsyncWorker()
    gate: Deferred[int] = Deferred()
    task = Task(
        lambda: gate,
        (),
        {},
        TaskOptions(),
        TaskRecord(0, "t", "t", 0, None, None, 0),
        Deferred(),
    )
    d = w.run(task)
    stopped = w.stop()
    assert not stopped.called
    assert failureOf(w.run(task)).type.__name__ == "QueueRunError"
    gate.callback(3)
    assert result(d) == 3 and stopped.called


def test_asyncWorkerCrashFailsRunning(makeQueue: Any) -> None:
    w = AsyncWorker()
    q = makeQueue(w)
    d = q.call(lambda: Deferred())
    q.detachWorker(w, crash=True, reassign=False)
    assert failureOf(d).check(WorkerCrashed)


def test_iteratorResultBecomesDeferator(makeQueue: Any) -> None:
    q = makeQueue(AsyncWorker())
    d = q.call(lambda: (i * i for i in range(5)))
    deferator = result(d)
    assert isinstance(deferator, Deferator)
    assert result(deferator.toList()) == [0, 1, 4, 9, 16]
    assert result(q.call(lambda: [1, 2])) == [1, 2]


def test_consumerOptionFeedsIteratorResult(makeQueue: Any) -> None:
    from twisted.internet.interfaces import IConsumer
    from zope.interface import implementer

    @implementer(IConsumer)
    class Collector:
        def __init__(self) -> None:
            self.items: list[Any] = []
            self.producer: Any = None

        def registerProducer(self, producer: Any, streaming: bool) -> None:
            self.producer = producer

        def unregisterProducer(self) -> None:
            self.producer = None

        def write(self, data: Any) -> None:
            self.items.append(data)

    c = Collector()
    q = makeQueue(AsyncWorker())
    d = q.call(lambda: iter("abc"), consumer=c)
    assert result(d) is c
    assert c.items == ["a", "b", "c"] and c.producer is None


def test_memoryWorkerStartAndFinishByHand(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    d = q.call(lambda: "never called")
    task = w.startNext()
    assert task is not None and q.records()[0].state == "running"
    w.finish(task, "by hand")
    assert result(d) == "by hand"
    assert w.startNext() is None and not w.runNext()


# -- Reporting workers: IReportingWorker, runReporting and the queue's fast path

Run = tuple[Task, int]


@implementer(IReportingWorker)
class ReportingWorker(WorkerBase):
    """
    A reporting worker that runs tasks only when the test says so.

    Like L{MemoryWorker}, but it keeps C{(task, attempt)} pairs and reports
    with C{task.finished(outcome, attempt)}, so that a test can also send the
    late report of a run the queue has given up on.
    """

    def __init__(
        self,
        capacity: int = 1,
        name: str | None = None,
        series: Iterable[Any] = (),
        reportOnCrash: bool = True,
    ) -> None:
        super().__init__(name, series, capacity)
        self.accepted: deque[Run] = deque()
        self.running: list[Run] = []
        self.abandoned: list[Task] = []
        self.reportOnCrash = reportOnCrash
        self.stopped = False
        self._stopWaiters: list[Deferred[None]] = []

    def run(self, task: Task) -> Deferred[Any]:
        return runReporting(self, task)

    def start(self, task: Task) -> None:
        if self.stopped:
            task.finished(Failure(QueueRunError(f"{self.name} stopped")), task.attempt)
            return
        self.accepted.append((task, task.attempt))

    def abandon(self, task: Task) -> None:
        """Note it and forget it; the test may still send a late report."""
        self.abandoned.append(task)
        self.accepted = deque(r for r in self.accepted if r[0] is not task)
        self.running = [r for r in self.running if r[0] is not task]
        self._maybeStopped()

    def startNext(self) -> Run:
        run = self.accepted.popleft()
        self.running.append(run)
        run[0].markStarted()
        return run

    def report(self, run: Run, outcome: object) -> None:
        if run in self.running:
            self.running.remove(run)
        task, attempt = run
        task.finished(outcome, attempt)
        self._maybeStopped()

    def runNext(self) -> Run:
        run = self.startNext()
        task = run[0]
        try:
            outcome = task.f(*task.args, **task.kwargs)
        except Exception:
            outcome = Failure()
        self.report(run, outcome)
        return run

    def runAll(self) -> list[Run]:
        runs = []
        while self.accepted:
            runs.append(self.runNext())
        return runs

    def stop(self) -> Deferred[None]:
        self.stopped = True
        d: Deferred[None] = Deferred()
        self._stopWaiters.append(d)
        self._maybeStopped()
        return d

    def _maybeStopped(self) -> None:
        if self.stopped and not self.accepted and not self.running:
            waiters, self._stopWaiters = self._stopWaiters, []
            for d in waiters:
                d.callback(None)

    def crash(self) -> list[Task]:
        self.stopped = True
        unstarted = [task for task, _ in self.accepted]
        self.accepted.clear()
        running, self.running = self.running, []
        if self.reportOnCrash:
            for task, attempt in running:
                crashed = WorkerCrashed(f"{self.name} crashed running {task!r}")
                task.finished(Failure(crashed), attempt)
        self._maybeStopped()
        return unstarted


class StartRaises(ReportingWorker):
    def start(self, task: Task) -> None:
        raise RuntimeError("no room")


def outcomes(d: Deferred[Any]) -> list[Any]:
    """Everything C{d} fires with (a late report must add nothing)."""
    out: list[Any] = []
    d.addBoth(out.append)
    return out


def handMadeTask(f: Any = lambda: None, *args: Any) -> Task:
    """A task outside any queue, as runReporting may be given."""
    record = TaskRecord(0, "t", "t", 0, None, None, 0)
    record.attempts = 1
    task = Task(f, args, {}, TaskOptions(), record, Deferred())
    task.runs = 1
    return task


def test_reportingWorkersProvideIReportingWorker() -> None:
    assert verifyObject(IReportingWorker, ReportingWorker())
    assert verifyObject(IReportingWorker, AsyncWorker())
    worker = ThreadWorker()
    try:
        assert verifyObject(IReportingWorker, worker)
        assert IReportingWorker.providedBy(worker)
    finally:
        worker.crash()
    assert not IReportingWorker.providedBy(MemoryWorker())


def test_queueStartsReportingWorkerWithoutRun(makeQueue: Any) -> None:
    w = ReportingWorker()
    w.run = lambda task: pytest.fail("the queue used run()")  # type: ignore[method-assign]
    q = makeQueue(w)
    d = q.call(pow, 2, 5)
    assert [(t.record.id, attempt) for t, attempt in w.accepted] == [(0, 1)]
    assert q.records()[0].state == "running" and not d.called
    w.runNext()
    assert result(d) == 32
    assert q.records()[0].state == "done" and q.records()[0].outcome == "result"


def test_reportedResultFiresCallerAndFreesTheSlot(makeQueue: Any) -> None:
    w = ReportingWorker(capacity=1)
    q = makeQueue(w)
    d1, d2 = q.call(lambda: None), q.call(lambda: None)
    assert len(w.accepted) == 1
    run = w.startNext()
    assert q.records()[0].started is not None
    w.report(run, "first")
    assert result(d1) == "first" and not d2.called
    assert [t.record.id for t, _ in w.accepted] == [1]
    w.report(w.startNext(), "second")
    assert result(d2) == "second"


def test_reportedFailureFailsCaller(makeQueue: Any) -> None:
    w = ReportingWorker()
    q = makeQueue(w)
    d = q.call(lambda: None)
    w.report(w.startNext(), Failure(ValueError("bad")))
    f = failureOf(d)
    assert f.check(ValueError) and str(f.value) == "bad"
    record = q.records()[0]
    assert (record.state, record.outcome) == ("failed", "ValueError")


def test_exceptionFromTaskFailsCaller(makeQueue: Any) -> None:
    w = ReportingWorker()
    q = makeQueue(w)
    d = q.call(int, "not a number")
    w.runNext()
    assert failureOf(d).check(ValueError)


def test_secondReportOfSameRunIsIgnored(makeQueue: Any) -> None:
    w = ReportingWorker(capacity=2)
    q = makeQueue(w)
    d1, d2 = q.call(lambda: None), q.call(lambda: None)
    run = w.startNext()
    w.report(run, "once")
    w.report(run, "twice")
    w.report(run, Failure(ValueError("thrice")))
    assert result(d1) == "once"
    assert q.stats()["done"] == 1 and q.stats()["failed"] == 0
    # The stray reports freed no slot the other task holds.
    assert not d2.called and len(w.accepted) == 1


def test_staleReportAfterCrashRetryIsIgnored(makeQueue: Any) -> None:
    """A worker reports its crash; the task runs again; the first run's news is old."""
    w = ReportingWorker()
    q = makeQueue(w)
    d = q.call(lambda: None, retries=1)
    first = w.startNext()
    w.report(first, Failure(WorkerCrashed("child died")))
    assert not d.called
    [(task, attempt)] = w.accepted
    assert task is first[0] and attempt == 2 == task.record.attempts
    second = w.startNext()
    w.report(first, "stale")
    w.report(first, Failure(ValueError("stale")))
    assert not d.called
    w.report(second, "fresh")
    assert result(d) == "fresh"
    assert q.records()[0].attempts == 2


def test_crashWithoutRetriesLeft(makeQueue: Any) -> None:
    w = ReportingWorker()
    q = makeQueue(w)
    d = q.call(lambda: None, retries=1)
    w.report(w.startNext(), Failure(WorkerCrashed("one")))
    w.report(w.startNext(), Failure(WorkerCrashed("two")))
    f = failureOf(d)
    assert f.check(WorkerCrashed) and str(f.value) == "two"


def test_cancelRunningTaskAbandonsItThoughWorkerNeverReports(makeQueue: Any) -> None:
    w = ReportingWorker(capacity=1)
    q = makeQueue(w)
    d, later = q.call(lambda: None), q.call(lambda: None)
    out = outcomes(d)
    run = w.startNext()
    d.cancel()
    assert w.abandoned == [run[0]]
    assert len(out) == 1 and out[0].check(CancelledError)
    assert q.records()[0].state == "cancelled"
    # The slot is free again: the next task went to the worker.
    assert [t.record.id for t, _ in w.accepted] == [1]
    w.report(run, "late")
    assert len(out) == 1
    assert q.records()[0].state == "cancelled" and q.stats()["done"] == 0
    w.report(w.startNext(), "next")
    assert result(later) == "next"


def test_cancelTaskAcceptedButNotBegun(makeQueue: Any, clock: Clock) -> None:
    w = ReportingWorker()
    q = makeQueue(w)
    d = q.call(lambda: None, timeout=5)
    out = outcomes(d)
    [(task, attempt)] = w.accepted
    d.cancel()
    assert w.abandoned == [task] and not w.accepted
    assert len(out) == 1 and out[0].check(CancelledError)
    # News that the call began after all starts no timer.
    task.markStarted()
    assert clock.getDelayedCalls() == []
    assert q.records()[0].started is None
    task.finished("late", attempt)
    assert len(out) == 1 and q.records()[0].state == "cancelled"


def test_timeoutAbandonsAndFailsWithTimeoutError(makeQueue: Any, clock: Clock) -> None:
    w = ReportingWorker()
    q = makeQueue(w)
    d = q.call(lambda: None, timeout=5)
    out = outcomes(d)
    clock.advance(100)  # Accepted but not begun: no timer runs yet.
    assert out == [] and w.abandoned == []
    run = w.startNext()
    clock.advance(4.9)
    assert out == [] and w.abandoned == []
    clock.advance(0.1)
    assert w.abandoned == [run[0]]
    assert len(out) == 1 and out[0].check(TimeoutError)
    assert "5" in str(out[0].value)
    assert q.records()[0].state == "timedOut"
    w.report(run, "too late")
    w.report(run, Failure(ValueError("too late")))
    assert len(out) == 1
    assert q.records()[0].state == "timedOut"
    assert q.stats()["done"] == 0 and q.stats()["failed"] == 1


def test_timeoutOptionViaCallWith(makeQueue: Any, clock: Clock) -> None:
    w = ReportingWorker()
    q = makeQueue(w)
    d = q.callWith(TaskOptions(timeout=2), lambda: None)
    run = w.startNext()
    clock.advance(2)
    assert failureOf(d).check(TimeoutError) and w.abandoned == [run[0]]


def test_reportInTimeCancelsTheTimer(makeQueue: Any, clock: Clock) -> None:
    w = ReportingWorker()
    q = makeQueue(w)
    d = q.call(lambda: None, timeout=5)
    run = w.startNext()
    assert len(clock.getDelayedCalls()) == 1
    w.report(run, "in time")
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert result(d) == "in time" and w.abandoned == []


def test_crashRunsUnstartedTasksOnAnotherWorker(makeQueue: Any) -> None:
    w1, w2 = ReportingWorker(capacity=3, name="w1"), ReportingWorker(name="w2")
    q = makeQueue(w1)
    ds = [q.call(lambda i=i: i * 10) for i in range(3)]
    out = outcomes(ds[0])
    running = w1.startNext()
    q.attachWorker(w2)
    assert not w2.accepted  # nothing was pending
    detached = q.detachWorker(w1, crash=True)
    assert detached.called
    assert len(out) == 1 and out[0].check(WorkerCrashed)
    # Task 1 was handed to w1 (run 1) and back: on w2 it is run 2, though
    # its record counts one attempt, since it never began on w1.
    assert [(t.record.id, a) for t, a in w2.accepted] == [(1, 2)]
    handedBack = [t for t, _ in w1.accepted if t.record.id == 1]
    w2.runNext()
    # The crashed worker's late word on the task it handed back is ignored.
    for task in handedBack:
        task.finished("ghost of a handed-back task", 1)
    w2.runNext()
    assert [result(d) for d in ds[1:]] == [10, 20]
    assert [r.worker for r in q.records()] == ["w1", "w2", "w2"]
    assert [r.attempts for r in q.records()] == [1, 1, 1]
    # What the crashed worker says of its old run changes nothing.
    w1.report(running, "ghost")
    assert len(out) == 1 and q.records()[0].state == "failed"


def test_crashRetriesRunningTaskOnAnotherWorker(makeQueue: Any) -> None:
    w1, w2 = ReportingWorker(name="w1"), ReportingWorker(name="w2")
    q = makeQueue(w1)
    d = q.call(lambda: "again", retries=1)
    first = w1.startNext()
    q.attachWorker(w2)
    q.detachWorker(w1, crash=True)
    assert not d.called
    [(task, attempt)] = w2.accepted
    assert attempt == 2
    second = w2.startNext()
    w1.report(first, "stale")
    assert not d.called
    w2.report(second, "again")
    assert result(d) == "again"


def test_crashedWorkerThatDoesNotReportStillFailsItsRunningTasks(
    makeQueue: Any,
) -> None:
    w = ReportingWorker(capacity=2, reportOnCrash=False)
    q = makeQueue(w)
    d1, d2 = q.call(lambda: None), q.call(lambda: None)
    w.startNext()
    q.detachWorker(w, crash=True, reassign=False)
    assert failureOf(d1).check(WorkerCrashed)
    assert failureOf(d2).check(WorkerCrashed)
    assert q.workers() == []


def test_startThatRaisesFailsTheTask(makeQueue: Any) -> None:
    q = makeQueue(StartRaises())
    d = q.call(lambda: None)
    f = failureOf(d)
    assert f.check(RuntimeError) and str(f.value) == "no room"
    assert q.records()[0].state == "failed"


def test_stoppedWorkerReportsAtOnce() -> None:
    w = ReportingWorker()
    w.stop()
    d = runReporting(w, handMadeTask())
    assert failureOf(d).check(QueueRunError)


def test_runReportingFiresWithTheReport() -> None:
    w = ReportingWorker()
    task = handMadeTask(pow, 3, 2)
    d = runReporting(w, task)
    out = outcomes(d)
    [(run, attempt)] = w.accepted
    # A run of its own: the caller's task is not touched.
    assert run is not task and run.record is task.record and attempt == 1
    assert task.reporter is None and not task.deferred.called
    assert out == []
    w.runNext()
    assert out == [9]
    w.report((run, attempt), "again")
    assert out == [9]


def test_runReportingFailure() -> None:
    w = ReportingWorker()
    d = runReporting(w, handMadeTask())
    w.report(w.startNext(), Failure(KeyError("k")))
    assert failureOf(d).check(KeyError)


def test_runReportingCancelAbandons() -> None:
    w = ReportingWorker()
    task = handMadeTask()
    d = runReporting(w, task)
    out = outcomes(d)
    run = w.startNext()
    d.cancel()
    assert w.abandoned == [run[0]] and run[0] is not task
    assert len(out) == 1 and out[0].check(CancelledError)
    w.report(run, "late")
    assert len(out) == 1


def test_runReportingTwiceOnOneTaskKeepsRunsApart() -> None:
    w = ReportingWorker(capacity=2)
    task = handMadeTask()
    d1, d2 = runReporting(w, task), runReporting(w, task)
    r1, r2 = w.startNext(), w.startNext()
    w.report(r2, "two")
    w.report(r1, "one")
    assert (result(d1), result(d2)) == ("one", "two")


def test_asyncWorkerRunCancelAbandonsWhatItWaitsOn() -> None:
    cancelled: list[bool] = []
    inner: Deferred[None] = Deferred(lambda _: cancelled.append(True))
    w = AsyncWorker()
    d = w.run(handMadeTask(lambda: inner))
    assert not d.called
    d.cancel()
    assert cancelled == [True]
    assert failureOf(d).check(CancelledError)
    assert result(w.stop()) is None


def test_asyncWorkerLateOutcomeAfterTimeoutIgnored() -> None:
    """A coroutine that shrugs off the cancel and returns later: too late."""
    clock = Clock()
    gate: Deferred[None] = Deferred()
    after: Deferred[str] = Deferred()

    async def stubborn() -> str:
        try:
            await gate
        except CancelledError:
            pass
        return await after

    w = AsyncWorker()
    q = TaskQueue(w, clock=clock, shutdownWithReactor=False)
    d = q.call(stubborn, timeout=1)
    out = outcomes(d)
    clock.advance(1)
    assert len(out) == 1 and out[0].check(TimeoutError)
    after.callback("late")
    assert len(out) == 1 and q.stats()["done"] == 0
    assert result(q.shutdown(timeout=0)) is None


@pytest_twisted.ensureDeferred
async def test_threadWorkerRunReportsThroughRunReporting() -> None:
    w = ThreadWorker(capacity=1)
    try:
        assert await w.run(handMadeTask(pow, 2, 8)) == 256
        with pytest.raises(ZeroDivisionError):
            await w.run(handMadeTask(divmod, 1, 0))
    finally:
        await w.stop()


# -- what a review of the reporting path found ----------------------------------


def test_asyncWorkerCallsNothingCancelledAsItStarts(makeQueue: Any) -> None:
    # An observer of "started" that cancels the task: the call is not made
    # (the queue has let go of its arguments by then).
    q = makeQueue(AsyncWorker())
    calls: list[tuple[Any, Any]] = []

    def f(x: Any = "missing", y: Any = "missing") -> Any:
        calls.append((x, y))
        return x

    gate: Deferred[None] = Deferred()
    q.call(lambda: gate)
    d = q.call(f, 42, y=7)
    record = d.record  # type: ignore[attr-defined]

    def observer(event: str, seen: Any) -> None:
        if event == "started" and seen is record:
            d.cancel()

    q.observe(observer)
    gate.callback(None)
    assert failureOf(d).check(CancelledError)
    assert calls == []
    assert q.stats()["running"] == 0
    # The worker takes the next task as usual.
    assert result(q.call(f, 1, y=2)) == 1 and calls == [(1, 2)]


@implementer(IWorker)
class Delegating(WorkerBase):
    """A plain IWorker that hands its calls to a reporting worker's run()."""

    def __init__(self, inner: Any) -> None:
        super().__init__("delegating", (), 1)
        self.inner = inner

    def run(self, task: Task) -> Deferred[Any]:
        return self.inner.run(task)  # type: ignore[no-any-return]

    def stop(self) -> Deferred[None]:
        return self.inner.stop()  # type: ignore[no-any-return]

    def crash(self) -> list[Task]:
        return self.inner.crash()  # type: ignore[no-any-return]


def test_delegatedRunKeepsTheQueuesTimeout(makeQueue: Any, clock: Clock) -> None:
    inner = ReportingWorker()
    q = makeQueue(Delegating(inner))
    d = q.call(lambda: None, timeout=5)
    [(run, attempt)] = inner.accepted
    task: Any = d  # the caller's Deferred is the task
    # It holds none of the queue's state: that stays the task's.
    assert run is not task and run.reporter is not task.reporter
    run.markStarted()
    # The start reached the queue's own task, whose timer runs.
    assert task.record.started is not None
    assert task.timeoutCall is not None
    clock.advance(5)
    assert failureOf(d).check(TimeoutError)
    assert inner.abandoned == [run]
    assert clock.getDelayedCalls() == []


def test_abandonThatRaisesStillEndsTheTask(
    makeQueue: Any, clock: Clock, loggedErrors: Any
) -> None:
    class Flaky(AsyncWorker):
        def abandon(self, task: Task) -> None:
            raise RuntimeError("cannot start a new thread")

    q = makeQueue(Flaky())
    never: Deferred[None] = Deferred()
    d = q.call(lambda: never, timeout=1)
    clock.advance(1)
    assert failureOf(d).check(TimeoutError)
    assert q.stats()["running"] == 0
    assert any("failed to abandon" in str(e.get("log_format")) for e in loggedErrors)
    # What the worker could not stop ends by itself; its news is ignored.
    never.callback(None)
    [record] = q.records()
    assert record.state == "timedOut" and record.outcome == "TimeoutError"


def test_cancelInsidePlainRunIsLeftToItsDeferred(makeQueue: Any) -> None:
    # A plain worker marks the task started inside run(), as IWorker asks; a
    # cancel from an observer of that start has no worker Deferred to
    # cancel yet, and must not ask a plain worker to abandon (it cannot).
    @implementer(IWorker)
    class Eager(WorkerBase):
        def __init__(self) -> None:
            super().__init__("eager", (), 1)

        def run(self, task: Task) -> Deferred[Any]:
            task.markStarted()
            return succeed(task.f(*task.args, **task.kwargs))

        def stop(self) -> Deferred[None]:
            return succeed(None)

        def crash(self) -> list[Task]:
            return []

    q = makeQueue(Eager())
    calls: list[Any] = []

    def observer(event: str, record: Any) -> None:
        if event == "started":
            calls.append(record.id)
            # The caller's Deferred, before call() has even returned it.
            [task] = [t for t in q._running if t.record is record]
            task.deferred.cancel()

    q.observe(observer)
    d = q.call(lambda: 1)
    assert failureOf(d).check(CancelledError)
    assert len(calls) == 1 and q.stats()["running"] == 0
