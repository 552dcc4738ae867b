"""
AsynQueue 0.9.9's process extras, with real children: ProcessQueue(callStats=True)
and its stats(), crashWorkers(), ProcessWorker.memUsage() and ProcessBase.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

import asynqueue
from asynqueue import ProcessQueue, WorkerCrashed
from asynqueue.process import ProcessBase
from asynqueue.tasks import TaskRecord


class Keeper(ProcessBase):
    """Keeps a value in the data of the process it is in."""

    def keep(self, value: int) -> tuple[int, int]:
        self.data["value"] = value
        return self.value, self.pid


def within(d: Deferred[Any], seconds: float = 10) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


@pytest.fixture
def makeProcessQueue() -> Iterator[Callable[..., ProcessQueue]]:
    made: list[ProcessQueue] = []

    def make(n: int = 1, **kwargs: Any) -> ProcessQueue:
        kwargs.setdefault("shutdownWithReactor", False)
        q = ProcessQueue(n, **kwargs)
        made.append(q)
        return q

    yield make
    for q in made:
        pytest_twisted.blockon(within(q.shutdown(timeout=3, cancelPending=True), 15))


def test_processBaseIsExported() -> None:
    assert asynqueue.ProcessBase is ProcessBase


def test_processBaseDataIsPerProcess() -> None:
    keeper = Keeper()
    assert keeper.pid == os.getpid()
    keeper.data["here"] = 1
    assert keeper.here == 1
    with pytest.raises(AttributeError):
        keeper.elsewhere  # noqa: B018


@pytest_twisted.inlineCallbacks
def test_processBaseInAChild(makeProcessQueue: Callable[..., ProcessQueue]) -> Any:
    q = makeProcessQueue()
    keeper = Keeper()
    value, pid = yield within(q.call(keeper.keep, 5))
    assert value == 5
    assert pid != os.getpid()
    # What the child kept is not here.
    with pytest.raises(AttributeError):
        keeper.value  # noqa: B018


@pytest_twisted.inlineCallbacks
def test_callStats(makeProcessQueue: Callable[..., ProcessQueue]) -> Any:
    q = makeProcessQueue(callStats=True)
    yield within(q.call(time.sleep, 0.01))
    yield within(q.call(pow, 2, 3))
    stats = yield q.stats()
    assert len(stats) == 2
    for roundTrip, inChild in stats:
        assert isinstance(roundTrip, float) and roundTrip >= 0
        assert isinstance(inChild, float) and inChild >= 0
    # The sleeping call ran longer in the child than the other one.
    assert stats[0][1] > stats[1][1]


@pytest_twisted.inlineCallbacks
def test_workerCallStats() -> Any:
    worker = asynqueue.ProcessWorker(callStats=True)
    q = asynqueue.TaskQueue(worker, shutdownWithReactor=False)
    try:
        for x in range(3):
            yield within(q.call(pow, x, 2))
        stats = yield worker.stats()
        assert len(stats) == 3
        assert all(roundTrip >= inChild >= 0 for roundTrip, inChild in stats)
    finally:
        yield within(q.shutdown(timeout=3))


def test_statsNeedsCallStats() -> None:
    worker = asynqueue.ProcessWorker()
    try:
        with pytest.raises(ValueError, match="callStats=True"):
            worker.stats()  # type: ignore[attr-defined]
    finally:
        worker.crash()


@pytest_twisted.inlineCallbacks
def test_statsWithoutCallStats(makeProcessQueue: Callable[..., ProcessQueue]) -> Any:
    q = makeProcessQueue()
    yield within(q.call(pow, 2, 3))
    assert q.stats()["done"] == 1


@pytest_twisted.inlineCallbacks
def test_memUsage(makeProcessQueue: Callable[..., ProcessQueue]) -> Any:
    q = makeProcessQueue()
    yield within(q.call(pow, 2, 3))
    (worker,) = q.workers()
    size = worker.memUsage()  # type: ignore[attr-defined]
    assert isinstance(size, int) and size > 1000


def test_processWorkerQualifications() -> None:
    assert asynqueue.ProcessWorker.cQualified == ["process", "local"]


def test_cores() -> None:
    assert ProcessQueue.cores() == asynqueue.ProcessWorker.cores() == os.cpu_count()


@pytest_twisted.inlineCallbacks
def test_crashWorkers(makeProcessQueue: Callable[..., ProcessQueue]) -> Any:
    q = makeProcessQueue(2)
    started: Deferred[None] = Deferred()

    def observer(event: str, record: TaskRecord) -> None:
        if event == "started" and not started.called:
            started.callback(None)

    q.observe(observer)
    d = q.call(time.sleep, 60)
    yield within(started)
    pids = [w.info()["pid"] for w in q.workers()]  # type: ignore[attr-defined]
    # A child not started yet has no pid.
    pids = [pid for pid in pids if pid]
    records = yield within(q.crashWorkers())
    assert q.workers() == []
    assert [r.state for r in records] == ["failed"]
    assert records[0].outcome == "WorkerCrashed"
    with pytest.raises(WorkerCrashed):
        yield within(d)
    for pid in pids:
        # Killed already (maybe not yet reaped): reap them here.
        yield within(asynqueue.util.killProcess(pid, timeout=0))
