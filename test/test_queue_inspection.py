"""The queue's public extension points for tools that watch it."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from asynqueue import MemoryWorker
from asynqueue.tasks import recordRow
from helpers import failureOf, result


def boom(x: int) -> int:
    raise ValueError(x)


def test_observeEndsHearsArgumentsAndOutcome(makeQueue: Any) -> None:
    worker = MemoryWorker()
    q = makeQueue(worker)
    heard: list[tuple[Any, ...]] = []
    stop = q.observeEnds(lambda *a: heard.append(a))
    q.call(pow, 2, 5, name="power")
    failing = q.call(boom, 7)
    worker.runAll()
    failureOf(failing)
    (r1, args1, kw1, out1), (r2, args2, _, out2) = heard
    assert (r1.name, r1.state, args1, kw1, out1) == ("power", "done", (2, 5), {}, 32)
    assert r2.state == "failed" and args2 == (7,)
    assert isinstance(out2, Failure) and out2.check(ValueError)
    stop()
    q.call(pow, 2, 1)
    worker.runAll()
    assert len(heard) == 2


def test_anObserverThatRaisesHarmsNothing(makeQueue: Any) -> None:
    worker = MemoryWorker()
    q = makeQueue(worker)
    q.observeEnds(lambda *a: 1 / 0)
    d = q.call(pow, 3, 2)
    worker.runAll()
    assert result(d) == 9


def test_pendingAndRunning(makeQueue: Any) -> None:
    worker = MemoryWorker(capacity=1)
    q = makeQueue(worker)
    ds = [
        q.call(pow, 1, 1),
        q.call(pow, 2, 1, priority=5),
        q.call(pow, 3, 1, lane="L"),
        q.call(pow, 4, 1, lane="L"),
    ]
    for d in ds:
        # The fixture's shutdown cancels what is left.
        d.addErrback(lambda _: None)
    assert [r.id for r in q.runningRecords()] == [0]
    assert [r.id for r in q.pendingRecords(10)] == [2, 1, 3]
    assert len(q.pendingRecords(2)) == 2
    assert q.pendingCounts() == {(0.0, None, "L"): 2, (5.0, None, None): 1}


def test_cancelTaskByItsID(makeQueue: Any) -> None:
    worker = MemoryWorker(capacity=1)
    q = makeQueue(worker)
    running = q.call(pow, 1, 1)
    pending = q.call(pow, 2, 1)
    assert q.cancelTask(1) and failureOf(pending).check(CancelledError)
    assert q.cancelTask(0) and failureOf(running).check(CancelledError)
    assert not q.cancelTask(99)


def test_workerStates(makeQueue: Any) -> None:
    worker = MemoryWorker()
    q = makeQueue(worker)
    assert q.workerStates() == {worker.name: "attached"}
    q.call(pow, 1, 1).addErrback(lambda _: None)
    q.detachWorker(worker)
    assert q.workerStates() == {worker.name: "leaving"}


def test_notifyShutdown(makeQueue: Any, clock: Any) -> None:
    q = makeQueue(MemoryWorker())
    told: list[str] = []
    q.notifyShutdown(lambda: told.append("first"))
    cancel = q.notifyShutdown(lambda: told.append("cancelled"))
    cancel()
    d = q.shutdown()
    clock.advance(0)
    assert d.called and told == ["first"]


def test_announcedWorkReachesItsObserversUntilStopped(makeQueue: Any) -> None:
    q = makeQueue(MemoryWorker())
    q.announceWork(expected=5)  # No one watches yet: nothing to do.
    heard: list[tuple[int, int]] = []
    stop = q.observeWork(lambda expected, done: heard.append((expected, done)))
    q.announceWork(expected=3)
    q.announceWork(done=2)
    stop()
    stop()  # Stopping twice is harmless.
    q.announceWork(done=1)
    assert heard == [(3, 0), (0, 2)]


def test_aRecordTakenMidwayFollowsItsTaskToTheEnd(makeQueue: Any, clock: Any) -> None:
    """
    A queued task makes its record only when asked for; from then on the
    record follows the task as it is retried, named by its worker, and ends.
    """
    worker = MemoryWorker(name="mem")
    q = makeQueue(worker)
    heard: list[str] = []
    d = q.call(pow, 2, 10, name="power", retries=1)
    clock.advance(1)
    (pending,) = q.runningRecords()
    assert (pending.name, pending.function, pending.worker) == ("power", "pow", "mem")
    assert (pending.state, pending.started, pending.attempts) == ("running", None, 1)
    task = worker.startNext()
    assert task is not None and task.record is pending and pending.started == 1
    task.noteWorker("mem@elsewhere")
    assert pending.worker == "mem@elsewhere"
    clock.advance(4)
    stop = q.observe(lambda event, record: heard.append(f"{event} {record.state}"))
    worker.finish(task, 1024)
    assert result(d) == 1024
    assert heard == ["ended done"]
    stop()
    assert (pending.state, pending.outcome, pending.ended) == ("done", "result", 5)
    (kept,) = q.records()
    assert kept is not pending and recordRow(kept) == recordRow(pending) == task.row()
    assert (kept.worker, kept.runTime, kept.state) == ("mem@elsewhere", 4, "done")
    with pytest.raises(AttributeError):
        task.record = pending


def test_aRecordMadeBeforeARetryIsPendingAgain(makeQueue: Any) -> None:
    worker = MemoryWorker(name="mem")
    q = makeQueue(worker)
    d = q.call(pow, 3, 2, retries=1)
    task = worker.startNext()
    assert task is not None
    record = task.record
    q.detachWorker(worker, crash=True)
    # It ran once (a crash of a task that started uses up an attempt).
    assert (record.state, record.worker, record.attempts) == ("pending", None, 1)
    other = MemoryWorker(name="other")
    q.attachWorker(other)
    again = other.startNext()
    assert again is task and (record.state, record.worker) == ("running", "other")
    other.finish(again, 9)
    assert result(d) == 9 and (record.state, record.attempts) == ("done", 2)
