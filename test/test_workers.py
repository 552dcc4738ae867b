"""Tests of asynqueue.workers: AsyncWorker, MemoryWorker and settle()."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from zope.interface.verify import verifyObject

from asynqueue import AsyncWorker, IWorker, MemoryWorker, TimeoutError, WorkerCrashed
from asynqueue.iteration import Deferator
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
