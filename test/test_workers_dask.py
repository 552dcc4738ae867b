"""Tests of asynqueue.workers.dask against real LocalClusters: DaskWorker, DaskQueue."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred, gatherResults

from asynqueue import TaskQueue, TimeoutError
from asynqueue.iteration import Deferator

distributed = pytest.importorskip("distributed")

from asynqueue.workers import daskside  # noqa: E402
from asynqueue.workers.dask import DaskWorker  # noqa: E402


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One LocalCluster of threads (two workers, two threads each) per module."""
    c = distributed.LocalCluster(
        n_workers=2,
        threads_per_worker=2,
        processes=False,
        dashboard_address=None,
    )
    yield c
    c.close()


@pytest_twisted.async_yield_fixture()
async def worker(cluster: Any) -> AsyncIterator[DaskWorker]:
    w = DaskWorker(cluster)
    await w.whenConnected()
    yield w


@pytest_twisted.async_yield_fixture()
async def queue(worker: DaskWorker) -> AsyncIterator[TaskQueue]:
    q = TaskQueue(worker, shutdownWithReactor=False)
    yield q
    await q.shutdown(cancelPending=True)


def square(x: int) -> int:
    return x * x


class Oops(Exception):
    pass


def failing(message: str) -> None:
    raise Oops(message)


_gates: dict[str, threading.Event] = {}


def blockUntil(name: str, value: Any = None) -> Any:
    """Block this Dask thread until the test opens gate C{name}."""
    _gates.setdefault(name, threading.Event()).wait()
    return value


def openGate(name: str) -> None:
    _gates.setdefault(name, threading.Event()).set()


def countTo(n: int) -> Iterator[int]:
    yield from range(n)


@pytest_twisted.ensureDeferred
async def test_callsRunOnTheCluster(queue: TaskQueue, worker: DaskWorker) -> None:
    assert worker.capacity == 2 * 4
    assert await queue.call(square, 7) == 49
    results = await gatherResults([queue.call(square, i) for i in range(200)])
    assert results == [i * i for i in range(200)]


@pytest_twisted.ensureDeferred
async def test_resultsArriveInTheReactorThread(queue: TaskQueue) -> None:
    main = threading.get_ident()
    seen: list[int] = []
    d = queue.call(square, 3)
    d.addCallback(lambda r: seen.append(threading.get_ident()) or r)
    assert await d == 9
    assert seen == [main]


@pytest_twisted.ensureDeferred
async def test_failureKeepsItsClassAndRemoteTraceback(queue: TaskQueue) -> None:
    with pytest.raises(Oops, match="no good") as info:
        await queue.call(failing, "no good")
    assert "in failing" in info.value.remoteTraceback  # type: ignore[attr-defined]
    assert any("Traceback from Dask" in n for n in info.value.__notes__)


@pytest_twisted.ensureDeferred
async def test_statsAndRecordsNameTheDaskHost(
    queue: TaskQueue, worker: DaskWorker, cluster: Any
) -> None:
    await gatherResults([queue.call(square, i) for i in range(20)])
    stats = queue.stats()["workers"][worker.name]
    assert sum(stats["hosts"].values()) == 20
    assert set(stats["hosts"]) <= set(cluster.scheduler_info["workers"])
    host = queue.records()[-1].worker
    assert host is not None and host.startswith(f"{worker.name}@")
    assert host.split("@", 1)[1] in cluster.scheduler_info["workers"]


@pytest_twisted.ensureDeferred
async def test_cancelFailsAtOnceAndCancelsTheFuture(queue: TaskQueue) -> None:
    d = queue.call(blockUntil, "cancel")
    d.cancel()
    with pytest.raises(CancelledError):
        await d
    openGate("cancel")
    assert await queue.call(square, 2) == 4


@pytest_twisted.ensureDeferred
async def test_timeoutFailsTheCall(queue: TaskQueue) -> None:
    d = queue.call(blockUntil, "timeout", timeout=0.05)
    with pytest.raises(TimeoutError):
        await d
    openGate("timeout")


@pytest_twisted.ensureDeferred
async def test_iteratorStreamsFromTheDaskWorker(queue: TaskQueue) -> None:
    d = await queue.call(countTo, 1000)
    assert isinstance(d, Deferator)
    assert await d.toList() == list(range(1000))
    assert daskside.liveIterators() == 0


@pytest_twisted.ensureDeferred
async def test_closingADeferatorReleasesItsIterator(queue: TaskQueue) -> None:
    before = daskside.liveIterators()
    d = await queue.call(countTo, 10**9)
    assert daskside.liveIterators() == before + 1
    first = await next(d)
    assert first == 0
    d.close()
    await d._source.released  # type: ignore[attr-defined]
    assert daskside.liveIterators() == before


def remember(value: Any) -> str:
    from distributed import get_worker

    worker = get_worker()
    worker.asynqueueTest = value  # type: ignore[attr-defined]
    return str(worker.address)


def remembered() -> Any:
    from distributed import get_worker

    return getattr(get_worker(), "asynqueueTest", None)


def recallEverywhere(dask_worker: Any) -> Any:
    return getattr(dask_worker, "asynqueueTest", None)


def makeContext(base: int) -> dict[str, int]:
    return {"base": base}


def fromContext(x: int) -> int:
    import asynqueue

    context = asynqueue.context()
    return int(context["base"]) + x


def brokenInitializer() -> None:
    raise RuntimeError("no context today")


@pytest.fixture
def smallCluster() -> Iterator[Any]:
    """A LocalCluster of threads with one worker of one thread, for one test."""
    c = distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    )
    yield c
    c.close()


@pytest_twisted.ensureDeferred
async def test_updateRunsOnEveryDaskWorkerAndOnLaterOnes(smallCluster: Any) -> None:
    w = DaskWorker(smallCluster)
    q = TaskQueue(w, shutdownWithReactor=False)
    try:
        await w.whenConnected()
        [byAddress] = await q.update(remember, "kept")
        assert sorted(byAddress.values()) == sorted(byAddress)
        [ephemeral] = await q.update(remembered, ephemeral=True)
        assert list(ephemeral.values()) == ["kept"]
        grown: Deferred[None] = Deferred()
        w.setCapacityObserver(lambda: w.threads == 2 and grown.callback(None))
        # A Dask worker joining later, on the DaskWorker's own loop.
        joined = await w._bridge.call(
            distributed.Worker,
            smallCluster.scheduler_address,
            nthreads=1,
            dashboard_address=None,
        )
        await grown
        client = w._link.client
        seen = await w._bridge.call(client.run, recallEverywhere)
        assert list(seen.values()) == ["kept", "kept"]
        await w._bridge.call(joined.close)
    finally:
        await q.shutdown()


@pytest_twisted.ensureDeferred
async def test_initializerGivesEachDaskWorkerItsContext(smallCluster: Any) -> None:
    w = DaskWorker(smallCluster, initializer=makeContext, initargs=(100,))
    q = TaskQueue(w, shutdownWithReactor=False)
    try:
        assert await q.call(fromContext, 5) == 105
    finally:
        await q.shutdown()


@pytest_twisted.ensureDeferred
async def test_aFailedInitializerFailsEveryCall(smallCluster: Any) -> None:
    from asynqueue.errors import WorkerError

    w = DaskWorker(smallCluster, initializer=brokenInitializer)
    q = TaskQueue(w, shutdownWithReactor=False)
    try:
        with pytest.raises(WorkerError, match="no context today"):
            await q.call(square, 2)
    finally:
        await q.shutdown()
        # The process-wide context of the threads cluster: not the next test's.
        from asynqueue.node import child

        child._setupError = None
        child._context = None
