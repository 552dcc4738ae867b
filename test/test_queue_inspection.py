"""The queue's public extension points for tools that watch it."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure

from asynqueue import MemoryWorker
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
