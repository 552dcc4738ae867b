"""Tests of asynqueue.ordered.OrderedQueue: order, markers, back-pressure, ending."""

from __future__ import annotations

import gc
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock

from asynqueue import (
    AsyncWorker,
    MemoryWorker,
    ProcessQueue,
    QueueRunError,
    TaskQueue,
    ThreadQueue,
    TimeoutError,
)
from asynqueue.ordered import OrderedQueue
from asynqueue.tasks import Task
from helpers import failureOf, result

EXAMPLE = (
    Path(__file__).resolve().parent.parent
    / "doc"
    / "examples"
    / "parallel_queue_batches.py"
)


def identity(x: Any) -> Any:
    return x


def startAll(w: MemoryWorker) -> list[Task]:
    """Start every task the worker has accepted, without finishing any."""
    started = []
    while (task := w.startNext()) is not None:
        started.append(task)
    return started


def finish(w: MemoryWorker, task: Task) -> None:
    """Run a started task's call and fire its Deferred with what it returned."""
    w.finish(task, task.f(*task.args, **task.kwargs))


def work(w: MemoryWorker, hold: Iterable[Any] = ()) -> list[Task]:
    """
    Run accepted tasks (and those accepted meanwhile) until none is left,
    except those whose first argument is in C{hold}: started, not finished.
    """
    hold = set(hold)
    held = []
    while w.accepted:
        task = w.accepted[0][0]
        if task.args and task.args[0] in hold:
            held.append(w.startNext())
        else:
            w.runNext()
    return held


@pytest.fixture
def worker() -> MemoryWorker:
    return MemoryWorker(capacity=10)


@pytest.fixture
def queue(makeQueue: Callable[..., TaskQueue], worker: MemoryWorker) -> TaskQueue:
    return makeQueue(worker)


@pytest.fixture
def threadQueue() -> Iterator[ThreadQueue]:
    q = ThreadQueue(3, capacity=1, name="ordered", shutdownWithReactor=False)
    yield q
    pytest_twisted.blockon(q.shutdown(cancelPending=True))


# ----------------------------------------------------------------------
# Order


def test_resultsLeaveInPutOrderWhileTasksFinishOutOfOrder(
    queue: TaskQueue, worker: MemoryWorker
) -> None:
    oq = OrderedQueue(queue, bufferSize=10)
    puts = [oq.put(identity, i) for i in range(5)]
    assert all(d.called for d in puts)
    # All five went to the worker at once: they run in parallel.
    tasks = startAll(worker)
    assert len(tasks) == 5
    gets = [oq.get() for _ in range(5)]
    finish(worker, tasks[3])
    finish(worker, tasks[1])
    assert not any(d.called for d in gets)
    finish(worker, tasks[0])
    assert [d.called for d in gets] == [True, True, False, False, False]
    finish(worker, tasks[4])
    assert not gets[2].called
    finish(worker, tasks[2])
    assert [result(d) for d in gets] == [0, 1, 2, 3, 4]
    assert len(oq) == 0


def test_getAfterResultsAreInFiresAtOnce(
    queue: TaskQueue, worker: MemoryWorker
) -> None:
    oq = OrderedQueue(queue)
    for word in ["a", "b", "c"]:
        oq.put(str.upper, word)
    worker.runAll()
    assert len(oq) == 3
    assert [result(oq.get()) for _ in range(3)] == ["A", "B", "C"]
    later = oq.get()
    assert not later.called
    oq.put(str.upper, "d")
    worker.runAll()
    assert result(later) == "D"


def test_optionsGoToTheQueueAndOrderStays(
    makeQueue: Callable[..., TaskQueue], clock: Clock
) -> None:
    w = MemoryWorker(capacity=1)
    oq = OrderedQueue(makeQueue(w))
    ran: list[str] = []

    def record(x: str) -> str:
        ran.append(x)
        return x

    oq.put(record, "first")
    oq.put(record, "late", priority=5)
    oq.put(record, "urgent", priority=-5)
    oq.put(record, "slow", timeout=2)
    w.runNext()
    w.runNext()
    assert ran == ["first", "urgent"]
    slow = w.startNext()
    assert slow is not None and slow.args == ("slow",)
    clock.advance(2)
    w.runAll()
    assert ran == ["first", "urgent", "late"]
    assert [result(oq.get()) for _ in range(3)] == ["first", "late", "urgent"]
    assert failureOf(oq.get()).check(TimeoutError)


def test_reentrantPutsAndGetsKeepOrder(makeQueue: Callable[..., TaskQueue]) -> None:
    # An AsyncWorker fires plain calls at once, inside put(); each result's
    # callback gets and puts again while results are being handed out.
    oq = OrderedQueue(makeQueue(AsyncWorker()), bufferSize=1)
    got: list[Any] = []
    last = 2000

    def consume(value: int) -> None:
        got.append(value)
        if value < last:
            oq.get().addCallback(consume)
            oq.get().addCallback(got.append)
            oq.put(identity, value + 1)
            oq.put(("marker", value))

    oq.get().addCallback(consume)
    oq.put(identity, 0)
    expected: list[Any] = [0]
    for value in range(last):
        expected += [value + 1, ("marker", value)]
    # Handed out one after another, not by recursion.
    assert got == expected
    assert len(oq) == 0


# ----------------------------------------------------------------------
# Markers


class BatchDone(int):
    """A marker: the end of a batch of this many documents."""


def test_markersPassThroughInOrderWithoutRunning(
    queue: TaskQueue, worker: MemoryWorker
) -> None:
    oq = OrderedQueue(queue)
    oq.put(identity, "a")
    oq.put(BatchDone(1))
    oq.put(identity, "b")
    oq.put(None)
    oq.put("end")
    assert queue.size() == 2
    first = oq.get()
    marker = oq.get()
    assert not first.called and not marker.called
    tasks = startAll(worker)
    finish(worker, tasks[1])
    assert not marker.called
    finish(worker, tasks[0])
    assert result(first) == "a"
    got = result(marker)
    assert type(got) is BatchDone and got == 1
    assert [result(oq.get()) for _ in range(3)] == ["b", None, "end"]


def test_markerTakesNoArguments(queue: TaskQueue) -> None:
    oq = OrderedQueue(queue)
    assert failureOf(oq.put("marker", 1)).check(TypeError)
    assert failureOf(oq.put(BatchDone(2), priority=1)).check(TypeError)
    assert len(oq) == 0


# ----------------------------------------------------------------------
# Back-pressure


def test_putWaitsWhenBufferIsFullAndFiresAfterGet(
    queue: TaskQueue, worker: MemoryWorker
) -> None:
    oq = OrderedQueue(queue, bufferSize=3)
    assert all(oq.put(identity, i).called for i in range(3))
    fourth = oq.put(identity, 3)
    assert not fourth.called
    # The waiting item stays out of the queue: memory is bounded.
    assert queue.size() == 3 and len(oq) == 4
    slow, *others = startAll(worker)
    for task in others:
        finish(worker, task)
    # Two results wait behind the slow task: the window is still full.
    assert not fourth.called
    first = oq.get()
    assert not first.called and not fourth.called
    finish(worker, slow)
    assert result(first) == 0
    assert result(fourth) is None
    assert len(worker.accepted) == 1
    worker.runAll()
    assert [result(oq.get()) for _ in range(3)] == [1, 2, 3]


def test_resultsNotGotHoldThePutsBack(queue: TaskQueue, worker: MemoryWorker) -> None:
    oq = OrderedQueue(queue, bufferSize=2)
    oq.put(identity, "a")
    oq.put(identity, "b")
    worker.runAll()
    waiting = [oq.put(identity, c) for c in "cde"]
    waiting.append(oq.put("marker"))
    assert not any(d.called for d in waiting)
    assert len(oq) == 6
    assert result(oq.get()) == "a"
    assert [d.called for d in waiting] == [True, False, False, False]
    assert result(oq.get()) == "b"
    assert [d.called for d in waiting] == [True, True, False, False]
    worker.runAll()
    assert result(oq.get()) == "c"
    assert result(oq.get()) == "d"
    assert all(d.called for d in waiting)
    worker.runAll()
    assert [result(oq.get()) for _ in range(2)] == ["e", "marker"]


def test_cancellingAWaitingPutWithdrawsItsItem(
    queue: TaskQueue, worker: MemoryWorker
) -> None:
    oq = OrderedQueue(queue, bufferSize=1)
    oq.put(identity, 1)
    withdrawn = oq.put(identity, 2)
    kept = oq.put(identity, 3)
    withdrawn.cancel()
    assert failureOf(withdrawn).check(CancelledError)
    assert len(oq) == 2
    worker.runAll()
    assert result(oq.get()) == 1
    assert kept.called
    worker.runAll()
    assert result(oq.get()) == 3
    assert [r.state for r in queue.records()] == ["done", "done"]


def test_defaultBufferSizeIsTenPerWorker(makeQueue: Callable[..., TaskQueue]) -> None:
    assert OrderedQueue(makeQueue(MemoryWorker(), MemoryWorker())).bufferSize == 20
    assert OrderedQueue(makeQueue()).bufferSize == 10
    with pytest.raises(ValueError):
        OrderedQueue(makeQueue(), bufferSize=0)


# ----------------------------------------------------------------------
# Failures


def test_failureIsDeliveredInPlaceAndStreamGoesOn(
    queue: TaskQueue, worker: MemoryWorker, loggedErrors: list[Any]
) -> None:
    oq = OrderedQueue(queue)
    oq.put(identity, 1)
    oq.put(lambda: 1 / 0)
    oq.put(identity, 3)
    gets = [oq.get() for _ in range(3)]
    worker.runAll()
    assert result(gets[0]) == 1
    assert failureOf(gets[1]).check(ZeroDivisionError)
    assert result(gets[2]) == 3
    del gets
    gc.collect()
    assert loggedErrors == []


def test_failureNobodyGetsIsNotLogged(
    queue: TaskQueue, worker: MemoryWorker, loggedErrors: list[Any]
) -> None:
    oq = OrderedQueue(queue)
    oq.put(lambda: 1 / 0)
    worker.runAll()
    assert len(oq) == 1
    del oq
    gc.collect()
    assert loggedErrors == []


def test_queueShutDownFailsItemsInPlace(queue: TaskQueue) -> None:
    oq = OrderedQueue(queue)
    queue.shutdown()
    oq.put("marker")
    oq.put(identity, 1)
    assert result(oq.get()) == "marker"
    assert failureOf(oq.get()).check(QueueRunError)


# ----------------------------------------------------------------------
# stop, join, isAlive


def test_stopLetsWhatWasPutRunThenGetEnds(
    queue: TaskQueue, worker: MemoryWorker
) -> None:
    oq = OrderedQueue(queue, bufferSize=1)
    oq.put(identity, 1)
    waiting = oq.put(identity, 2)
    oq.stop()
    assert failureOf(oq.put(identity, 3)).check(QueueRunError)
    assert oq.isAlive()
    worker.runAll()
    assert result(oq.get()) == 1
    assert waiting.called
    last = oq.get()
    ended = oq.get()
    assert not ended.called and oq.isAlive()
    worker.runAll()
    assert result(last) == 2
    assert failureOf(ended).check(QueueRunError)
    assert not oq.isAlive()
    assert failureOf(oq.get()).check(QueueRunError)
    # The wrapped queue is the caller's: it still runs.
    assert queue.isRunning()


def test_getWaitingWhenStoppedEmptyEnds(queue: TaskQueue) -> None:
    oq = OrderedQueue(queue)
    d = oq.get()
    assert not d.called
    oq.stop()
    assert failureOf(d).check(QueueRunError)


def test_cancelledGetGivesItsPlaceToTheNext(
    queue: TaskQueue, worker: MemoryWorker
) -> None:
    oq = OrderedQueue(queue)
    first = oq.get()
    second = oq.get()
    first.cancel()
    assert failureOf(first).check(CancelledError)
    oq.put(identity, "x")
    worker.runAll()
    assert result(second) == "x"


def test_joinFiresTrueOnceStoppedAndDrained(
    queue: TaskQueue, worker: MemoryWorker, clock: Clock
) -> None:
    oq = OrderedQueue(queue, clock=clock)
    oq.put(identity, 1)
    joined = oq.join()
    oq.stop()
    worker.runAll()
    # Done is not enough: the result must have been got.
    assert not joined.called and oq.isAlive()
    assert result(oq.get()) == 1
    assert result(joined) is True
    assert result(oq.join(timeout=1)) is True


def test_joinTimesOutWithFalse(
    queue: TaskQueue, worker: MemoryWorker, clock: Clock
) -> None:
    oq = OrderedQueue(queue, clock=clock)
    oq.put(identity, 1)
    oq.stop()
    joined = oq.join(timeout=2)
    clock.advance(1.9)
    assert not joined.called
    clock.advance(0.1)
    assert result(joined) is False
    assert oq.isAlive()
    later = oq.join(timeout=5)
    worker.runAll()
    oq.get()
    assert result(later) is True
    assert clock.getDelayedCalls() == []


def test_cancelledJoinLeavesNoTimer(queue: TaskQueue, clock: Clock) -> None:
    oq = OrderedQueue(queue, clock=clock)
    joined = oq.join(timeout=3)
    joined.cancel()
    assert failureOf(joined).check(CancelledError)
    assert clock.getDelayedCalls() == []
    oq.stop()
    assert not oq.isAlive()


# ----------------------------------------------------------------------
# async for


def test_asyncForYieldsResultsUntilStoppedAndDrained(
    queue: TaskQueue, worker: MemoryWorker
) -> None:
    oq = OrderedQueue(queue)
    got: list[Any] = []

    async def consume() -> None:
        async for item in oq:
            got.append(item)
            assert len(got) <= 3, "the iteration did not end"

    done = Deferred.fromCoroutine(consume())
    oq.put(identity, 1)
    oq.put("marker")
    oq.put(identity, 2)
    tasks = startAll(worker)
    finish(worker, tasks[1])
    assert got == []
    finish(worker, tasks[0])
    assert got == [1, "marker", 2]
    assert not done.called
    oq.stop()
    assert done.called and result(done) is None


def test_asyncForRaisesAFailureAndCanGoOn(
    queue: TaskQueue, worker: MemoryWorker
) -> None:
    oq = OrderedQueue(queue)
    got: list[Any] = []

    async def consume() -> None:
        while True:
            try:
                async for item in oq:
                    got.append(item)
                    assert len(got) <= 3, "the iteration did not end"
                return
            except ZeroDivisionError:
                got.append("error")

    done = Deferred.fromCoroutine(consume())
    oq.put(identity, 1)
    oq.put(lambda: 1 / 0)
    oq.put(identity, 3)
    oq.stop()
    worker.runAll()
    assert got == [1, "error", 3]
    assert result(done) is None


def test_len(queue: TaskQueue, worker: MemoryWorker) -> None:
    oq = OrderedQueue(queue, bufferSize=2)
    assert len(oq) == 0
    for i in range(3):
        oq.put(identity, i)
    assert len(oq) == 3
    worker.runAll()
    oq.get()
    assert len(oq) == 2


# ----------------------------------------------------------------------
# parallel-queue's README scenario


def test_readmeScenarioSlowDocumentHoldsOnlyTheLog(
    queue: TaskQueue, worker: MemoryWorker
) -> None:
    batches = [
        ["a1", "a2-slow", "a3"],
        ["b1", "b2"],
        ["c1", "c2", "c3"],
    ]
    indexed: list[str] = []
    log: list[str] = []

    def index(document: str) -> str:
        indexed.append(document)
        return document

    async def producer(queue: OrderedQueue) -> None:
        for batch in batches:
            for document in batch:
                await queue.put(index, document)
            await queue.put(BatchDone(len(batch)))
        queue.stop()

    async def consumer(queue: OrderedQueue) -> None:
        documents: list[str] = []
        async for resultOrBatchDone in queue:
            assert len(log) < len(batches), "the iteration did not end"
            if isinstance(resultOrBatchDone, BatchDone):
                log.append(f"{int(resultOrBatchDone)} done: {' '.join(documents)}")
                documents = []
            else:
                documents.append(resultOrBatchDone)

    oq = OrderedQueue(queue, bufferSize=6)
    produced = Deferred.fromCoroutine(producer(oq))
    consumed = Deferred.fromCoroutine(consumer(oq))
    [slow] = work(worker, hold={"a2-slow"})
    # The next batch was indexed while the slow document still runs...
    assert indexed == ["a1", "a3", "b1", "b2"]
    # ...but nothing is logged before the slow batch, and the producer waits
    # with a full buffer (a1 a2 a3 BatchDone b1 b2).
    assert log == []
    assert len(oq) == 7 and not produced.called
    finish(worker, slow)
    work(worker)
    assert log == ["3 done: a1 a2-slow a3", "2 done: b1 b2", "3 done: c1 c2 c3"]
    assert result(produced) is None and result(consumed) is None
    assert not oq.isAlive()


def test_readmeExampleRuns() -> None:
    run = subprocess.run(
        [sys.executable, str(EXAMPLE)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert [line.split(", indexed by")[0] for line in lines] == [
        "batch 1 done: 4 documents (doc-1-1 to doc-1-4)",
        "batch 2 done: 3 documents (doc-2-1 to doc-2-3)",
        "batch 3 done: 5 documents (doc-3-1 to doc-3-5)",
    ]


# ----------------------------------------------------------------------
# Real threads and processes


def within(d: Deferred[Any], seconds: float = 30) -> Deferred[Any]:
    """A real-reactor test that hangs fails instead."""
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


@pytest_twisted.ensureDeferred
async def test_threadQueueOrderWhileFinishingInReverse(
    threadQueue: ThreadQueue,
) -> None:
    oq = OrderedQueue(threadQueue)
    released = [threading.Event() for _ in range(3)]
    finished: list[int] = []

    def task(i: int) -> int:
        # Task i waits for task i + 1: they finish in reverse order.
        assert released[i].wait(10)
        finished.append(i)
        if i:
            released[i - 1].set()
        return i

    for i in range(3):
        await oq.put(task, i)
    released[2].set()
    assert [await within(oq.get()) for _ in range(3)] == [0, 1, 2]
    assert finished == [2, 1, 0]


@pytest_twisted.ensureDeferred
async def test_threadQueueManyWithBackPressure(threadQueue: ThreadQueue) -> None:
    oq = OrderedQueue(threadQueue, bufferSize=4)
    got: list[Any] = []
    expected: list[Any] = []
    for i in range(200):
        expected.append(i * i)
        if i % 50 == 49:
            expected.append(BatchDone(50))

    async def consume() -> None:
        async for item in oq:
            got.append(item)
            assert len(got) <= len(expected), "the iteration did not end"

    async def produce() -> None:
        for i in range(200):
            await oq.put(pow, i, 2)
            assert len(oq) <= 4
            if i % 50 == 49:
                await oq.put(BatchDone(50))
        oq.stop()

    consumed = Deferred.fromCoroutine(consume())
    await within(Deferred.fromCoroutine(produce()))
    assert await oq.join(timeout=30) is True
    await within(consumed)
    assert got == expected


def waitForGo(path: str) -> str:
    """In a child: block until the test says go on the unix socket at C{path}."""
    import socket

    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)
        s.recv(2)
    return "slow"


class GoSignal(Protocol):
    """The test's side of L{waitForGo}: says go once L{release} was called."""

    def __init__(self, gate: Deferred[None]) -> None:
        self.gate = gate

    def connectionMade(self) -> None:
        self.gate.addCallback(lambda _: self.transport.write(b"go"))  # type: ignore[union-attr]


@pytest_twisted.ensureDeferred
async def test_processQueue(tmp_path: Path) -> None:
    from twisted.internet import reactor
    from twisted.internet.protocol import Factory

    # One call at a time per child, so that the second runs beside the first.
    processes = ProcessQueue(2, capacity=1, shutdownWithReactor=False)
    # The first call is held until the second has ended, so its result
    # comes out first only because the ordering adapter waits for it.
    gate: Deferred[None] = Deferred()
    path = str(tmp_path / "go")
    port = reactor.listenUNIX(path, Factory.forProtocol(lambda: GoSignal(gate)))

    def released(event: str, record: Any) -> None:
        if event == "ended" and record.function == "pow" and not gate.called:
            gate.callback(None)

    processes.observe(released)

    async def body() -> None:
        oq = OrderedQueue(processes)
        assert oq.bufferSize == 20
        await oq.put(waitForGo, path)
        await oq.put(pow, 2, 10)
        await oq.put(BatchDone(2))
        await oq.put(lambda: 1 // 0)
        await oq.put(lambda x: x * 3, "ab")
        oq.stop()
        assert await oq.get() == "slow"
        assert gate.called, "the held call ended before the one after it"
        assert await oq.get() == 1024
        assert await oq.get() == BatchDone(2)
        with pytest.raises(ZeroDivisionError):
            await oq.get()
        rest = []
        async for item in oq:
            rest.append(item)
            assert len(rest) == 1, "the iteration did not end"
        assert rest == ["ababab"]
        assert await oq.join() is True

    try:
        await within(Deferred.fromCoroutine(body()))
    finally:
        await processes.shutdown(timeout=5)
        await port.stopListening()
