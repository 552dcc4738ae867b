"""Tests of asynqueue.threads with real threads: ThreadWorker, ThreadQueue."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock

from asynqueue import (
    TaskQueue,
    ThreadQueue,
    ThreadWorker,
    TimeoutError,
    WorkerCrashed,
    deferToThread,
)
from asynqueue.iteration import Deferator


@pytest.fixture
def threadQueue() -> Iterator[ThreadQueue]:
    q = ThreadQueue(2, name="tq", shutdownWithReactor=False)
    yield q
    pytest_twisted.blockon(q.shutdown(cancelPending=True))


class Blocker:
    """A call that blocks its thread until released, and says when it started."""

    def __init__(self) -> None:
        self.started: Deferred[None] = Deferred()
        self.release = threading.Event()

    def __call__(self, value: Any = None) -> Any:
        reactor.callFromThread(self.started.callback, None)  # type: ignore[attr-defined]
        self.release.wait()
        return value


@pytest_twisted.ensureDeferred
async def test_callRunsInAnotherThread(threadQueue: ThreadQueue) -> None:
    main = threading.get_ident()
    assert await threadQueue.call(pow, 2, 10) == 1024
    assert await threadQueue.call(threading.get_ident) != main


@pytest_twisted.ensureDeferred
async def test_manyCallsAllReturn(threadQueue: ThreadQueue) -> None:
    from twisted.internet.defer import gatherResults

    results = await gatherResults(
        [threadQueue.call(lambda i=i: i * 2) for i in range(2000)]
    )
    assert results == [i * 2 for i in range(2000)]
    stats = threadQueue.stats()
    assert stats["done"] == 2000
    assert sum(w["done"] for w in stats["workers"].values()) == 2000


@pytest_twisted.ensureDeferred
async def test_exceptionKeepsTypeAndTraceback(threadQueue: ThreadQueue) -> None:
    def deep() -> None:
        raise KeyError("missing")

    with pytest.raises(KeyError) as info:
        await threadQueue.call(deep)
    assert "deep" in "".join(str(e.name) for e in info.traceback)


@pytest_twisted.ensureDeferred
async def test_deferredAndCoroutineResultsAwaitedInReactor(
    threadQueue: ThreadQueue,
) -> None:
    async def coro(x: int) -> int:
        return x + await succeed(1)

    assert await threadQueue.call(coro, 1) == 2


@pytest_twisted.ensureDeferred
async def test_iteratorItemsMadeInWorkerThread(threadQueue: ThreadQueue) -> None:
    threads: set[int] = set()

    def gen(n: int) -> Iterator[int]:
        for i in range(n):
            threads.add(threading.get_ident())
            yield i

    deferator = await threadQueue.call(gen, 300)
    assert isinstance(deferator, Deferator)
    items = [item async for item in deferator]
    assert items == list(range(300))
    assert len(threads) == 1 and threading.get_ident() not in threads


@pytest_twisted.ensureDeferred
async def test_timeoutAbandonsThreadAndWorkerGoesOn() -> None:
    clock = Clock()
    worker = ThreadWorker(capacity=1)
    q = TaskQueue(worker, clock=clock, shutdownWithReactor=False)
    blocker = Blocker()
    d = q.call(blocker, "late", timeout=3)
    await blocker.started
    clock.advance(3)
    with pytest.raises(TimeoutError):
        await d
    # The worker runs the next task in a fresh thread while the old one is stuck.
    assert await q.call(lambda: "next") == "next"
    blocker.release.set()
    await q.shutdown()


@pytest_twisted.ensureDeferred
async def test_cancelQueuedTaskNeverRuns(threadQueue: ThreadQueue) -> None:
    worker = ThreadWorker(capacity=2)
    q = TaskQueue(worker, shutdownWithReactor=False)
    blocker = Blocker()
    ran: list[str] = []
    first = q.call(blocker)
    second = q.call(ran.append, "second")
    await blocker.started
    second.cancel()
    blocker.release.set()
    await first
    await q.call(ran.append, "third")
    assert ran == ["third"]
    with pytest.raises(CancelledError):
        await second
    await q.shutdown()


@pytest_twisted.ensureDeferred
async def test_crashFailsRunningAndReassignsQueued() -> None:
    w1, w2 = ThreadWorker(capacity=2, name="w1"), ThreadWorker(name="w2")
    q = TaskQueue(w1, shutdownWithReactor=False)
    blocker = Blocker()
    running = q.call(blocker)
    queued = q.call(lambda: "moved")
    await blocker.started
    q.attachWorker(w2)
    await q.detachWorker(w1, crash=True)
    with pytest.raises(WorkerCrashed):
        await running
    assert await queued == "moved"
    assert q.records()[1].worker == "w2"
    blocker.release.set()
    await q.shutdown()


@pytest_twisted.ensureDeferred
async def test_shutdownEndsThreads() -> None:
    q = ThreadQueue(3, shutdownWithReactor=False)
    names = {w.name for w in q.workers()}
    await q.call(lambda: None)
    await q.shutdown()
    for t in threading.enumerate():
        if any(t.name.startswith(n + "-") for n in names):
            t.join(5)
            assert not t.is_alive()
    assert all(
        t.daemon
        for t in threading.enumerate()
        if t is not threading.main_thread() and t.name.startswith("ThreadWorker")
    )


@pytest_twisted.ensureDeferred
async def test_deferToThreadHelpers(threadQueue: ThreadQueue) -> None:
    assert await deferToThread(sum, [1, 2, 3]) == 6
    assert await threadQueue.deferToThread(max, 4, 9) == 9


@pytest_twisted.ensureDeferred
async def test_adaptiveCapacityTakesShortCallsByTheHundred() -> None:
    """
    Calls of a microsecond are handed to a thread up to 256 at a time (with
    32 the thread ran dry between the reactor's turns); calls of 110 us as
    many as take about 2 ms, whatever the ceiling.
    """
    worker = ThreadWorker()
    backlog = worker._backlog
    assert backlog is not None
    try:
        assert [backlog.ran(1e-6) for _ in range(200)][-1] == 256
        assert [backlog.ran(1.1e-4) for _ in range(200)][-1] == 19
    finally:
        await worker.stop()


def test_threadQueueNeedsAThread() -> None:
    with pytest.raises(ValueError):
        ThreadQueue(0)


@pytest_twisted.ensureDeferred
async def test_processExitsCleanlyWhenReactorStops() -> None:
    """A program that stops its reactor with work pending exits at once, status 0."""
    import sys

    from twisted.internet.utils import getProcessOutputAndValue

    script = """
import threading
from twisted.internet import reactor
from asynqueue import ThreadQueue

q = ThreadQueue(2)
gate = threading.Event()
results = []
d = q.call(lambda: 7)
d.addCallback(results.append)
d.addCallback(lambda _: [q.call(gate.wait) for _ in range(4)])
d.addCallback(lambda _: reactor.callLater(0, reactor.stop))
reactor.run()
print("results", results, "running", q.isRunning())
"""
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ["-c", script], env=None, path="."
    )
    assert code == 0, err.decode()
    assert out.decode().strip() == "results [7] running False"


@pytest_twisted.inlineCallbacks
def test_asynqueueStyleLoopWorksAtOnce(threadQueue: ThreadQueue) -> Any:
    """The call fires once the first items are in, so a plain loop can start."""
    deferator = yield threadQueue.call(lambda: (i * 3 for i in range(100)))
    items = []
    for d in deferator:
        items.append((yield d))
    assert items == [i * 3 for i in range(100)]


@pytest_twisted.inlineCallbacks
def test_deferToThreadWithNoFunctionStopsItsThreads() -> Any:
    from asynqueue.workers import threads

    assert (yield threads.deferToThread(lambda: 7)) == 7
    shared = threads._shared
    assert shared is not None and shared.isRunning()
    # AsynQueue's way to end the dedicated thread: call it with nothing.
    yield threads.deferToThread()
    assert not shared.isRunning() and threads._shared is None
    assert (yield threads.deferToThread()) is None
    # It starts again when next given a function.
    assert (yield threads.deferToThread(lambda: 8)) == 8
