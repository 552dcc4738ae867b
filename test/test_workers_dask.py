"""Tests of asynqueue.workers.dask against real LocalClusters: DaskWorker, DaskQueue."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults

from asynqueue import TaskQueue, TimeoutError
from asynqueue.iteration import Deferator

distributed = pytest.importorskip("distributed")

from distributed.diagnostics.plugin import SchedulerPlugin  # noqa: E402

from asynqueue.workers import daskside  # noqa: E402
from asynqueue.workers.dask import DaskError, DaskQueue, DaskWorker  # noqa: E402


def localCluster(
    workers: int = 1, threads: int = 1, processes: bool = False, **options: Any
) -> Any:
    """A LocalCluster whose HTTP servers take free ports."""
    return distributed.LocalCluster(
        n_workers=workers,
        threads_per_worker=threads,
        processes=processes,
        dashboard_address=":0",
        worker_dashboard_address=":0",
        **options,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    """One LocalCluster of threads (two workers, two threads each) per module."""
    c = localCluster(workers=2, threads=2)
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
    assert worker.threads == 4 and worker.capacity >= 2 * 4
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
    c = localCluster()
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
            dashboard=False,
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


_order: list[Any] = []
_started: dict[str, Deferred[None]] = {}


def note(name: Any) -> Any:
    """Note that this call ran, in the order of the calls (threads clusters only)."""
    _order.append(name)
    return name


def holdUntil(name: str) -> None:
    """Say so in the reactor when started; then block until gate C{name} opens."""
    reactor.callFromThread(_started[name].callback, None)  # type: ignore[attr-defined]
    blockUntil(name)


class Arrivals(SchedulerPlugin):  # type: ignore[misc]
    """Counts the calls reaching a scheduler in this process, for the reactor."""

    def __init__(self) -> None:
        self.seen = 0
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def update_graph(self, scheduler: Any, *, keys: Any, **kwargs: Any) -> None:
        # On the scheduler's loop: everything else in the reactor thread.
        reactor.callFromThread(self._arrived, len(keys))  # type: ignore[attr-defined]

    def _arrived(self, n: int) -> None:
        self.seen += n
        due = [d for total, d in self._waiters if total <= self.seen]
        self._waiters = [(t, d) for t, d in self._waiters if t > self.seen]
        for d in due:
            d.callback(None)

    def reached(self, total: int) -> Deferred[None]:
        """A Deferred that fires once C{total} calls have reached the scheduler."""
        d: Deferred[None] = Deferred()
        self._waiters.append((total, d))
        self._arrived(0)
        return d


@pytest_twisted.async_yield_fixture()
async def oneAtATime() -> AsyncIterator[tuple[TaskQueue, Arrivals]]:
    """
    A queue on a Dask worker of one thread given one call at a time (the
    rest wait at the scheduler), whose calls all go to Dask at once, and
    what reaches that scheduler.
    """
    import dask

    with dask.config.set({"distributed.scheduler.worker-saturation": 1.0}):
        cluster = localCluster()
    arrivals = Arrivals()
    cluster.scheduler.add_plugin(arrivals, name="arrivals")
    w = DaskWorker(cluster, tasksPerThread=32)
    q = TaskQueue(w, shutdownWithReactor=False)
    await w.whenConnected()
    _order.clear()
    yield q, arrivals
    await q.shutdown()
    cluster.close()


async def occupied(q: TaskQueue, gate: str) -> Deferred[Any]:
    """A call that holds the one Dask thread until C{gate} opens, once running."""
    _started[gate] = Deferred()
    held = q.call(holdUntil, gate)
    await _started[gate]
    return held


@pytest_twisted.ensureDeferred
async def test_callsOfOnePriorityStartInTheOrderTheyWereMade(
    oneAtATime: tuple[TaskQueue, Arrivals],
) -> None:
    """In one graph update and across several, while the Dask worker is busy."""
    q, arrivals = oneAtATime
    held = await occupied(q, "fifo")
    calls = []
    for update in range(4):
        calls += [q.call(note, update * 6 + i) for i in range(6)]
        # All of these at the scheduler before the next are made.
        await arrivals.reached(1 + len(calls))
    openGate("fifo")
    await gatherResults([held, *calls])
    assert _order == list(range(24))


@pytest_twisted.ensureDeferred
async def test_aMoreUrgentCallMadeLaterStartsFirst(
    oneAtATime: tuple[TaskQueue, Arrivals],
) -> None:
    """Lower runs sooner: a later call of -5 starts before the 5s waiting in Dask."""
    q, arrivals = oneAtATime
    held = await occupied(q, "priorities")
    later = [q.call(note, f"later{i}", priority=5) for i in range(3)]
    await arrivals.reached(4)
    sooner = [q.call(note, f"sooner{i}", priority=-5) for i in range(3)]
    await arrivals.reached(7)
    openGate("priorities")
    await gatherResults([held, *later, *sooner])
    assert _order == [f"sooner{i}" for i in range(3)] + [f"later{i}" for i in range(3)]


@pytest_twisted.ensureDeferred
async def test_lanesSeriesAndRecordsWorkUnchanged(queue: TaskQueue) -> None:
    _order.clear()
    calls = [queue.call(note, i, lane="one") for i in range(10)]
    assert await gatherResults(calls) == list(range(10))
    assert _order == list(range(10))
    with pytest.raises(Exception, match="no worker"):
        await queue.call(square, 2, series="elsewhere")
    queue.qualifyWorker(queue.workers()[0], "elsewhere")
    assert await queue.call(square, 3, series="elsewhere") == 9
    assert queue.records()[-1].state == "done"


@pytest_twisted.ensureDeferred
async def test_aLargeArgumentTravelsOnce(queue: TaskQueue, worker: DaskWorker) -> None:
    big = bytes(100 * 2**20)
    before = worker.info()["scattered"]
    sizes = await gatherResults([queue.call(len, big) for _ in range(100)])
    assert sizes == [len(big)] * 100
    assert worker.info()["scattered"] == before + 1
    small = await queue.call(len, b"x" * 100)
    assert small == 100
    assert worker.info()["scattered"] == before + 1


@pytest_twisted.ensureDeferred
async def test_losingTheSchedulerFailsWhatRunsWithNodeLost(smallCluster: Any) -> None:
    """
    The connection drops: calls in flight fail with NodeLost, or run again as
    their retries allow; calls go on once it is back.
    """
    from asynqueue.errors import NodeLost

    w = DaskWorker(smallCluster)
    q = TaskQueue(w, shutdownWithReactor=False)
    try:
        await w.whenConnected()
        _started["lost"] = Deferred()
        running = q.call(holdUntil, "lost")
        await _started["lost"]
        # Behind it: lost with it and run again (retries) once back, or
        # held by the client until it is back; either way it ends well.
        retried = q.call(square, 7, retries=1)
        back: Deferred[None] = Deferred()
        queueObserver = w._capacityObserver
        assert queueObserver is not None

        def observe() -> None:
            queueObserver()
            if w.capacity and not back.called:
                back.callback(None)

        w.setCapacityObserver(observe)
        client = w._link.client
        await w._bridge.call(client.scheduler_comm.comm.abort)
        with pytest.raises(NodeLost, match="lost the connection"):
            await running
        assert w.capacity == 0
        openGate("lost")
        await back
        assert await q.call(square, 3) == 9
        assert await retried == 49
    finally:
        openGate("lost")
        await q.shutdown()


@pytest_twisted.ensureDeferred
async def test_aSchedulerThatNeverAnswersMakesTheWorkerResign() -> None:
    from asynqueue.errors import NoWorkers

    w = DaskWorker("tcp://127.0.0.1:1", timeout=0.2)
    q = TaskQueue(w, shutdownWithReactor=False)
    pending = q.call(square, 2)
    with pytest.raises(DaskError, match="could not connect"):
        await w.whenConnected()
    # It resigned: the queue, with no worker left, fails what waits.
    with pytest.raises(NoWorkers):
        await pending
    await q.shutdown()


def test_importDoesNotLoadDask() -> None:
    import subprocess
    import sys

    code = (
        "import sys, asynqueue; asynqueue.TaskQueue; asynqueue.workers; "
        "assert 'distributed' not in sys.modules and 'dask' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_importErrorNamesTheExtra(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib
    import sys

    monkeypatch.setitem(sys.modules, "distributed", None)  # type: ignore[arg-type]
    monkeypatch.delitem(sys.modules, "asynqueue.workers.dask")
    with pytest.raises(ImportError, match=r"asynqueue\[dask\]"):
        importlib.import_module("asynqueue.workers.dask")


def pidThenWait(name: str) -> int:
    """Say which process runs me (a Dask Queue), then wait for a Dask Event."""
    import os

    from distributed import Event, Queue

    Queue(name).put(os.getpid())
    Event(name).wait()
    return os.getpid()


@pytest_twisted.ensureDeferred
async def test_aDaskWorkerKilledMidTaskIsAbsorbedByDask() -> None:
    """SIGKILL the process running a call: Dask runs it again elsewhere."""
    import os
    import signal

    cluster = localCluster(workers=2, processes=True)
    w = DaskWorker(cluster)
    q = TaskQueue(w, shutdownWithReactor=False)
    try:
        await w.whenConnected()
        client = w._link.client
        started = distributed.Queue("kill", client=client)
        d = q.call(pidThenWait, "kill")
        first = await w._bridge.call(started.get)
        os.kill(first, signal.SIGKILL)
        second = await w._bridge.call(started.get)
        assert second != first
        await w._bridge.call(distributed.Event("kill", client=client).set)
        assert await d == second
        assert queue_stats_ok(q, w)
    finally:
        await q.shutdown()
        cluster.close()


def queue_stats_ok(q: TaskQueue, w: DaskWorker) -> bool:
    stats = q.stats()
    return bool(stats["done"] == 1 and stats["failed"] == 0)


@pytest_twisted.ensureDeferred
async def test_daskQueueStartsAndClosesALocalCluster() -> None:
    before = {t.ident for t in threading.enumerate()}
    q = DaskQueue(
        None,
        workerOptions={"processes": False, "n_workers": 1, "threads_per_worker": 1},
        shutdownWithReactor=False,
    )
    worker = q.daskWorker
    await worker.whenConnected()
    assert worker.info()["scheduler"].startswith("inproc://")
    assert await q.call(square, 5) == 25
    await q.shutdown()
    assert worker.info()["connected"] is False
    # No thread of the worker's, its client's or its cluster's is left. The
    # asyncio reactor's loop may have started its default executor's thread
    # ("asyncio_N": a closing Dask worker shuts its executor down through
    # asyncio.to_thread): the loop's, kept for its life, not ours.
    left = [
        t
        for t in threading.enumerate()
        if t.ident not in before and t.is_alive() and not t.name.startswith("asyncio_")
    ]
    for t in left:
        t.join(5)
    assert [t.name for t in left if t.is_alive()] == []


@pytest_twisted.ensureDeferred
async def test_mcmRendersThroughDask(cluster: Any, tmp_path: Any) -> None:
    """C{mcm --dask ADDRESS} writes the very image the plain loop makes."""
    import io

    pytest.importorskip("numpy")
    from mcmandelbrot import main, render

    path = tmp_path / "m.png"
    argv = ["--dask", cluster.scheduler_address, "-q", "-o", str(path)]
    options = main.parseArguments([*argv, "-N", "60", "96", "-0.7", "0.2", "1.3"])
    stdout, stderr = io.StringIO(), io.StringIO()
    await main.main(reactor, options, stdout, stderr)
    plain = io.BytesIO()
    render.renderPlain(options.view, plain)
    assert path.read_bytes() == plain.getvalue()
    assert "on Dask at" in stdout.getvalue()


@pytest_twisted.ensureDeferred
async def test_theDocsWorkedExampleRuns(capsys: pytest.CaptureFixture[str]) -> None:
    """doc/examples/dask_cluster.py, as doc/dask.rst shows it, prints this."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "doc/examples/dask_cluster.py"
    spec = importlib.util.spec_from_file_location("dask_cluster", path)
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    await example.main(reactor)
    assert capsys.readouterr().out == (
        "Dask threads: 2\n"
        "squares: [0, 1, 4, 9, 16, 25]\n"
        "primes: [2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]\n"
        "calls run: 7\n"
    )


@pytest_twisted.ensureDeferred
async def test_securityGoesThrough() -> None:
    """A mutual-TLS cluster (Security.temporary()): the worker connects with it."""
    pytest.importorskip("cryptography")
    from distributed.security import Security

    security = Security.temporary()
    cluster = localCluster(
        protocol="tls://",
        security=security,
    )
    try:
        assert cluster.scheduler_address.startswith("tls://")
        # By address: without the security, no connection.
        refused = DaskWorker(cluster.scheduler_address, timeout=0.5)
        with pytest.raises(DaskError):
            await refused.whenConnected()
        await refused.stop()
        # Its client was closed, not left for the garbage collector (whose
        # close of an asynchronous client is a coroutine never awaited).
        left = [c.status for c in distributed.Client._instances]
        assert [status for status in left if status != "closed"] == []
        w = DaskWorker(cluster.scheduler_address, security=security)
        q = TaskQueue(w, shutdownWithReactor=False)
        try:
            assert await q.call(square, 6) == 36
        finally:
            await q.shutdown()
    finally:
        cluster.close()
