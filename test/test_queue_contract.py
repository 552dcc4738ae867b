"""
Tests of the worker contract: the queue asks a worker for an optional
ability only when the worker declares its interface, and a worker that
declares none of them (a third party's, implementing only IWorker) works.
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from zope.interface import implementer
from zope.interface.verify import verifyClass

from asynqueue import MemoryWorker, NoWorkers, WorkerCrashed
from asynqueue.errors import UnpicklableError
from asynqueue.interfaces import (
    ICallPickling,
    ICapacityReporting,
    IDescribedWorker,
    IReportingWorker,
    IResignationExplaining,
    IStopPreparing,
    IWorker,
)
from helpers import failureOf, result


@implementer(IWorker)
class BareWorker(MemoryWorker):
    """
    Implements only IWorker, yet has methods named as the optional hooks:
    the queue must not call them, since the worker does not declare them.
    """

    resignedBecause = "a reason nobody declared"

    def __init__(self, capacity: int = 1) -> None:
        super().__init__(capacity)
        self.probed: list[str] = []

    def setCapacityObserver(self, observer: Callable[[], object]) -> None:
        self.probed.append("setCapacityObserver")

    def info(self) -> dict[str, Any]:
        self.probed.append("info")
        return {"secret": 1}

    def prepareToStop(self) -> None:
        self.probed.append("prepareToStop")

    def prepareCall(self, f: Any, args: Any, kwargs: Any) -> bytes:
        self.probed.append("prepareCall")
        return b""


@implementer(
    ICapacityReporting,
    IDescribedWorker,
    ICallPickling,
    IStopPreparing,
    IResignationExplaining,
)
class AbleWorker(MemoryWorker):
    """A memory worker that declares every optional ability."""

    def __init__(self, capacity: int = 1) -> None:
        super().__init__(capacity)
        self.observer: Callable[[], object] | None = None
        self.prepared: list[Any] = []
        self.preparedToStop = False
        self.resignedBecause: str | None = None
        self.resignationError: type[NoWorkers] | None = None

    def setCapacityObserver(self, observer: Callable[[], object]) -> None:
        self.observer = observer

    def info(self) -> dict[str, Any]:
        return {"flavour": "able"}

    def prepareCall(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bytes:
        self.prepared.append(f)
        try:
            return pickle.dumps((f, args, kwargs))
        except Exception as e:
            raise UnpicklableError(f"cannot pickle: {e}") from e

    def prepareToStop(self) -> None:
        self.preparedToStop = True


def test_workersHereDeclareTheirAbilities() -> None:
    from asynqueue.workers.process import ProcessWorker
    from asynqueue.workers.reactor import AsyncWorker
    from asynqueue.workers.remote import RemoteWorker, WireWorker
    from asynqueue.workers.threads import ThreadWorker

    for cls in (AsyncWorker, ThreadWorker, ProcessWorker, RemoteWorker, WireWorker):
        assert verifyClass(IReportingWorker, cls)
    assert verifyClass(IWorker, MemoryWorker)
    for iface in (ICallPickling, IDescribedWorker, IStopPreparing):
        assert verifyClass(iface, ProcessWorker)
    assert IResignationExplaining.implementedBy(ProcessWorker)
    for iface in (ICallPickling, ICapacityReporting, IDescribedWorker):
        assert verifyClass(iface, RemoteWorker)
    # A universe's calls are names and plain data, not pickled at submission.
    assert not ICallPickling.implementedBy(WireWorker)
    assert ICapacityReporting.implementedBy(WireWorker)
    for cls in (AsyncWorker, ThreadWorker, MemoryWorker):
        assert not ICallPickling.implementedBy(cls)


def test_bareWorkerWorksAndIsNotProbed(makeQueue: Any, clock: Clock) -> None:
    w = BareWorker()
    q = makeQueue(w)
    d = q.call(pow, 2, 5)
    assert w.runNext()
    assert result(d) == 32
    stats = q.stats()["workers"][w.name]
    assert "secret" not in stats
    # A call that plain pickle refuses goes through: nothing pickles it.
    lock = threading.Lock()
    d = q.call(lambda lk: lk is lock, lock)
    assert w.runNext()
    assert result(d) is True
    # A hurried shutdown cancels what runs, asking the worker nothing.
    d = q.call(pow, 2, 2)
    w.startNext()
    q.shutdown(timeout=1)
    clock.advance(1)
    assert failureOf(d).check(CancelledError)
    assert w.probed == []


def test_bareWorkerResigningGivesAPlainReason(makeQueue: Any) -> None:
    w = BareWorker()
    q = makeQueue(w)
    w.resign()
    error = failureOf(q.call(pow, 2, 2)).value
    assert isinstance(error, NoWorkers)
    assert "it resigned" in str(error)
    assert "nobody declared" not in str(error)


def test_capacityObserverIsRegisteredAndHeeded(makeQueue: Any) -> None:
    w = AbleWorker(capacity=1)
    q = makeQueue(w)
    assert w.observer is not None
    ds = [q.call(pow, 2, n) for n in range(3)]
    assert len(w.accepted) == 1
    w.capacity = 3
    w.observer()
    assert len(w.accepted) == 3
    w.runAll()
    assert [result(d) for d in ds] == [1, 2, 4]


def test_describedWorkerInfoShowsInStats(makeQueue: Any) -> None:
    w = AbleWorker()
    q = makeQueue(w)
    assert q.stats()["workers"][w.name]["flavour"] == "able"


def test_stopPreparingWorkerIsToldBeforeAHurriedShutdown(
    makeQueue: Any, clock: Clock
) -> None:
    w = AbleWorker()
    q = makeQueue(w)
    d = q.call(pow, 2, 2)
    w.startNext()
    q.shutdown(timeout=1)
    assert not w.preparedToStop
    clock.advance(1)
    assert w.preparedToStop
    assert failureOf(d).check(CancelledError)


def test_resignationReasonReachesTheCaller(makeQueue: Any) -> None:
    w = AbleWorker()
    q = makeQueue(w)
    w.resignedBecause = "its child kept dying"
    w.resign()
    error = failureOf(q.call(pow, 2, 2)).value
    assert isinstance(error, NoWorkers)
    assert "its child kept dying" in str(error)


def test_picklingWorkersPickleAtSubmission(makeQueue: Any) -> None:
    w = AbleWorker()
    q = makeQueue(w)
    d = q.call(pow, 2, 3)
    assert w.prepared == [pow]
    [(task, _)] = list(w.accepted)
    assert task.pickled == pickle.dumps((pow, (2, 3), {}))
    w.runNext()
    assert result(d) == 8


def test_unpicklableCallFailsAtOnce(makeQueue: Any) -> None:
    w = AbleWorker()
    q = makeQueue(w)
    d = q.call(pow, threading.Lock(), 2)
    assert isinstance(failureOf(d).value, UnpicklableError)
    assert not w.accepted


def test_anyErrorOfPreparingFailsTheCallNotTheCaller(makeQueue: Any) -> None:
    class Broken(AbleWorker):
        def prepareCall(self, f: Any, args: Any, kwargs: Any) -> bytes:
            raise RecursionError("too deep")

    w = Broken()
    q = makeQueue(w)
    error = failureOf(q.call(pow, 2, 2)).value
    assert isinstance(error, UnpicklableError)
    assert "RecursionError: too deep" in str(error)
    assert not w.accepted


def test_oneWorkerThatDoesNotPickleMeansNoPicklingAtSubmission(
    makeQueue: Any,
) -> None:
    able, bare = AbleWorker(), MemoryWorker()
    q = makeQueue(able, bare)
    d = q.call(pow, threading.Lock(), 2)
    assert not d.called
    assert able.prepared == []
    d.cancel()
    assert failureOf(d).check(CancelledError)
    # Once the non-pickling worker leaves, calls are pickled at once again.
    q.detachWorker(bare)
    assert isinstance(failureOf(q.call(pow, threading.Lock(), 2)).value, Exception)
    assert able.prepared != []


def test_processWorkerPreparesCallsAsTheWireSendsThem() -> None:
    from asynqueue.wire.pickling import dumpCall
    from asynqueue.workers.process import ProcessWorker
    from asynqueue.workers.remote import RemoteWorker

    for cls in (ProcessWorker, RemoteWorker):
        # Preparing a call needs no child or connection.
        worker: Any = object.__new__(cls)
        assert worker.prepareCall(pow, (2, 3), {}) == dumpCall(pow, (2, 3), {})
        lock = threading.Lock()
        try:
            worker.prepareCall(pow, (lock,), {})
        except UnpicklableError as e:
            assert "argument 0" in str(e)
        else:
            raise AssertionError("a lock was pickled")


def test_theQueueImportsNoWorkerKindAndNothingOfTheWire() -> None:
    import ast
    from pathlib import Path

    import asynqueue.queue

    for path in Path(asynqueue.queue.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            for name in names:
                assert not name.startswith(
                    ("asynqueue.wire", "asynqueue.workers", "asynqueue.node")
                ), f"{path.name} imports {name}"


def test_lastWorkerResigningDuringShutdownFailsWhatWaitsAndShutdownEnds(
    makeQueue: Any,
) -> None:
    """
    The last worker resigning while the queue shuts down leaves nothing to
    run what waits: those calls fail with L{NoWorkers}, and shutdown ends.
    """
    w = BareWorker()
    q = makeQueue(w)
    running = q.call(pow, 2, 1)
    waiting = [q.call(pow, 2, n) for n in range(3)]
    w.startNext()
    done = q.shutdown()
    w.resign()
    assert failureOf(running).check(WorkerCrashed)
    for d in waiting:
        error = failureOf(d).value
        assert isinstance(error, NoWorkers)
        assert "it resigned" in str(error)
    assert done.called
