"""
Tests of asynqueue.process with real child processes: ProcessQueue,
ProcessWorker and iterators kept in a child.

Functions defined at module level here travel by reference, so the child
imports this module to run them (it gets the parent's sys.path); lambdas and
closures travel by value. A task may block or sleep in the child as its
workload; the tests themselves only wait on Deferreds, with a watchdog so
that a bug makes a test fail instead of hanging the run.
"""

from __future__ import annotations

import gc
import hashlib
import os
import random
import signal
import sys
import threading
import time
import types
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from processes import assertGone, failureOf, within, workerPids
from twisted.internet import defer
from twisted.internet.defer import CancelledError, Deferred, DeferredList, gatherResults
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from zope.interface import implementer

import asynqueue
from asynqueue import (
    Deferator,
    ProcessQueue,
    ProcessWorker,
    RemoteError,
    TimeoutError,
    UnpicklableError,
    WorkerCrashed,
)
from asynqueue.errors import WorkerError
from asynqueue.interfaces import ITaskReporter
from asynqueue.tasks import IN_THE_PICKLE
from asynqueue.workers.base import AdaptiveBacklog

# -- what the children run ----------------------------------------------------


class TaskFailed(Exception):
    """A task's own exception, importable on both sides."""


def whereAmI() -> tuple[str, int]:
    return __name__, os.getpid()


def failDeep(message: str) -> None:
    def innermost() -> None:
        raise TaskFailed(message)

    innermost()


def childOnlyModule() -> types.ModuleType:
    """A module that exists in the child only (the parent cannot unpickle from it)."""
    name = "_aq_child_only"
    module = sys.modules.get(name)
    if module is None:
        module = sys.modules[name] = types.ModuleType(name)
        error = type("ChildOnlyError", (Exception,), {"__module__": name})
        value = type("ChildOnlyValue", (), {"__module__": name})
        module.ChildOnlyError = error  # type: ignore[attr-defined]
        module.ChildOnlyValue = value  # type: ignore[attr-defined]
    return module


def raiseChildOnlyError() -> None:
    raise childOnlyModule().ChildOnlyError("only the child knows me")


def returnChildOnlyValue() -> Any:
    return childOnlyModule().ChildOnlyValue()


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def raiseBadStr() -> None:
    raise BadStr()


def echoWithDigest(data: bytes) -> tuple[bytes, bytes]:
    return hashlib.sha256(data).digest(), data


_produced = 0


def countForever() -> Iterator[int]:
    global _produced
    while True:
        _produced += 1
        yield _produced - 1


def producedSoFar() -> int:
    return _produced


def guardedCount(n: int, marker: str) -> Iterator[tuple[int, int]]:
    try:
        for i in range(n):
            yield i, os.getpid()
    finally:
        Path(marker).write_text("closed")


def itemsThenError(n: int) -> Iterator[int]:
    yield from range(n)
    raise TaskFailed("mid-iteration")


def lockAfterOne() -> Iterator[Any]:
    yield 1
    yield threading.Lock()


def setUpContext(tag: str, size: int) -> dict[str, Any]:
    return {"tag": tag, "size": size, "pid": os.getpid()}


def readContext() -> Any:
    return asynqueue.context()


def failToSetUp() -> None:
    raise TaskFailed("no context today")


def printSomething(line: str) -> int:
    print(line)
    sys.stderr.write(f"{line} on stderr\n")
    return 5


def printAndFlush(line: str) -> int:
    print(line, flush=True)
    return 6


def pidAndMarks() -> tuple[int, Any, Any]:
    return (
        os.getpid(),
        getattr(sys, "_aqKept", None),
        getattr(sys, "_aqEphemeral", None),
    )


def crashOnce(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).write_text("crashed")
        os._exit(1)
    return "second attempt"


def touch(path: str) -> str:
    Path(path).write_text("ran")
    return path


def announceThenSleep(line: str, seconds: float) -> str:
    print(line, flush=True)
    time.sleep(seconds)
    return "slept"


# -- helpers and fixtures -----------------------------------------------------


async def pidsOf(q: ProcessQueue) -> dict[str, int]:
    """The pids of the queue's children, once they have them (forked: soon)."""
    await within(gatherResults([w.whenStarted() for w in q.workers()]))
    return workerPids(q)


def assertNoProcess(pid: int) -> None:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return
    raise AssertionError(f"process {pid} still exists")


async def allFired(ds: list[Deferred[Any]], seconds: float) -> list[Any]:
    """The DeferredList of C{ds}; fail naming the stranded ones if some never fire."""
    done: Deferred[Any] = Deferred()
    DeferredList(ds, consumeErrors=True).addCallback(done.callback)
    try:
        return await within(done, seconds)  # type: ignore[no-any-return]
    except defer.TimeoutError:
        stranded = [i for i, d in enumerate(ds) if not d.called]
        raise AssertionError(
            f"{len(stranded)} of {len(ds)} tasks stranded: {stranded[:20]}"
        ) from None


@pytest.fixture(params=["fork", "spawn"])
def startMethod(request: pytest.FixtureRequest) -> str:
    """Each test of process workers runs with children forked and spawned."""
    method: str = request.param
    return method


@pytest.fixture
def logLines() -> Iterator[Callable[[str], Deferred[dict[str, Any]]]]:
    """Wait for a child's output line to reach the Twisted log."""
    waiting: dict[str, Deferred[dict[str, Any]]] = {}
    seen: dict[str, dict[str, Any]] = {}

    def observer(event: dict[str, Any]) -> None:
        line = event.get("line")
        if isinstance(line, str) and "worker" in event:
            seen.setdefault(line, event)
            d = waiting.pop(line, None)
            if d is not None:
                d.callback(event)

    def waitFor(line: str) -> Deferred[dict[str, Any]]:
        d: Deferred[dict[str, Any]] = Deferred()
        if line in seen:
            d.callback(seen[line])
        else:
            waiting[line] = d
        return d

    globalLogPublisher.addObserver(observer)
    yield waitFor
    globalLogPublisher.removeObserver(observer)


# -- calls, errors, pickling --------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_callsRunInTheChild(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    [pid] = (await pidsOf(q)).values()
    assert pid != os.getpid()
    # A module-level function travels by reference: the child imports this module.
    assert await within(q.call(whereAmI)) == (__name__, pid)
    assert await within(q.call(lambda x: x**2, 12)) == 144
    base = 100

    def closure(x: int, *, plus: int = 0) -> tuple[int, int]:
        return base + x + plus, os.getpid()

    assert await within(q.call(closure, 5, plus=1)) == (106, pid)

    async def coroutine(x: int) -> int:
        from twisted.internet import reactor as childReactor
        from twisted.internet.task import deferLater

        return await deferLater(childReactor, 0, lambda: x + os.getpid())

    assert await within(q.call(coroutine, 1)) == pid + 1


@pytest_twisted.ensureDeferred
async def test_aLargeFunctionReachesChildrenBehindCallsBuffered(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    # A function pickled by value whose definition (its closure's table,
    # 1.2 MB) is more than a pipe holds, called many times at once on two
    # children: its definition goes out behind what waits in the pipe
    # already, and every call is answered (before: a TypeError in the
    # writer, and the calls waited for ever).
    table = list(range(200)) * 3000

    def lookup(i: int) -> int:
        return table[i] + len(table)

    q = makeProcessQueue(2)
    results = await within(gatherResults([q.call(lookup, i) for i in range(20)]))
    assert results == [i + len(table) for i in range(20)]


@pytest_twisted.ensureDeferred
async def test_finishedTaskHoldsNothingOfItsCall(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    # Without the cyclic collector: what a finished task held (its
    # arguments, the pickled call, the worker's note of it) is let go at
    # once, so map() over many items stays in bounded memory.
    q = makeProcessQueue(1)
    gc.disable()
    try:
        d = q.call(len, b"x" * 100_000)
        # The caller's Deferred is the task itself.
        task: Any = d
        assert await within(d) == 100_000
        assert task.args == () and task.kwargs == {} and task.pickled is None
        assert task.handle is None
        worker = q.workers()[0]
        assert all(s.call for s in worker._child.inFlight.values())  # type: ignore[attr-defined]
    finally:
        gc.enable()


@pytest_twisted.ensureDeferred
async def test_moduleFunctionsWorkWhenPYTHONPATHIsSet(
    makeProcessQueue: Callable[..., ProcessQueue],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """The child finds what the parent imports even if the user set PYTHONPATH."""
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    q = makeProcessQueue(1)
    [pid] = (await pidsOf(q)).values()
    assert await within(q.call(whereAmI)) == (__name__, pid)


@pytest_twisted.ensureDeferred
async def test_exceptionKeepsTypeAndChildTraceback(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    [(name, pid)] = (await pidsOf(q)).items()
    error = await failureOf(q.call(failDeep, "it broke"))
    assert type(error) is TaskFailed
    assert error.args == ("it broke",)
    text = error.remoteTraceback  # type: ignore[attr-defined]
    assert "innermost" in text and "TaskFailed: it broke" in text
    assert any(
        note.startswith(f"Traceback from {name} (pid {pid})") and "innermost" in note
        for note in error.__notes__
    )

    def closureFails() -> None:
        {}["missing"]

    error = await failureOf(q.call(closureFails))
    assert type(error) is KeyError
    assert "closureFails" in error.remoteTraceback  # type: ignore[attr-defined]


@pytest_twisted.ensureDeferred
async def test_exceptionUnknownToParentArrivesAsRemoteError(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    error = await failureOf(q.call(raiseChildOnlyError))
    assert isinstance(error, RemoteError)
    assert error.typeName == "ChildOnlyError"
    assert error.message == "only the child knows me"
    assert "raiseChildOnlyError" in error.remoteTraceback
    assert await within(q.call(lambda: "still there")) == "still there"


@pytest_twisted.ensureDeferred
async def test_exceptionWithBrokenStrDoesNotKillTheChild(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    [pid] = (await pidsOf(q)).values()
    error = await failureOf(q.call(raiseBadStr))
    assert not isinstance(error, WorkerCrashed), error
    assert "BadStr" in repr(error) + str(getattr(error, "remoteTraceback", ""))
    assert await within(q.call(os.getpid)) == pid


@pytest_twisted.ensureDeferred
async def test_unpicklableCallFailsAtOnceAndQueueCarriesOn(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    [pid] = (await pidsOf(q)).values()
    lock = threading.Lock()

    def usesLock() -> bool:
        return lock.locked()

    cases = [
        (q.call(usesLock), "the callable ("),
        (q.call(lambda a, b: a, 1, lock), "argument 1 ("),
        (
            q.call(lambda a, key=None: a, 1, key=threading.RLock()),
            "keyword argument 'key' (",
        ),
    ]
    for d, culprit in cases:
        assert d.called, "an unpicklable call fails at once"
        error = await failureOf(d)
        assert isinstance(error, UnpicklableError)
        assert str(error).startswith(culprit), str(error)
        assert "cannot be pickled" in str(error) and "lock" in str(error)
    assert await within(q.call(os.getpid)) == pid


@pytest_twisted.ensureDeferred
async def test_unpicklableCallFailsAtOnceWhileWorkersAreBusy(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    """The call is pickled when it is made, not when a worker frees up."""
    q = makeProcessQueue(1, capacity=1)
    busy = q.call(time.sleep, 30)
    d = q.call(lambda x: x, threading.Lock())
    failedAtOnce = d.called
    busy.cancel()
    with pytest.raises(CancelledError):
        await within(busy)
    error = await failureOf(d)
    assert failedAtOnce, "the unpicklable call waited for a free worker"
    assert isinstance(error, UnpicklableError)


@pytest_twisted.ensureDeferred
async def test_unpicklableResultFails(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    [pid] = (await pidsOf(q)).values()
    error = await failureOf(q.call(threading.Lock))
    assert isinstance(error, UnpicklableError)
    assert "lock" in str(error) and "cannot be pickled" in str(error)
    error = await failureOf(q.call(returnChildOnlyValue))
    assert isinstance(error, UnpicklableError)
    assert "_aq_child_only" in str(error)
    assert await within(q.call(os.getpid)) == pid


# -- large values -------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_hundredMegabytesBothWays(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    data = random.Random(5).randbytes(100 * 2**20)
    digest, back = await within(q.call(echoWithDigest, data), 60)
    assert digest == hashlib.sha256(data).digest(), "the argument arrived changed"
    assert len(back) == len(data)
    assert back == data, "the result arrived changed"


@pytest_twisted.ensureDeferred
async def test_largeMultiByteTextBothWays(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    text = "aé€😀" * 100_000  # multi-byte characters across every chunk boundary
    length, back = await within(q.call(lambda s: (len(s), s + "✓"), text))
    assert length == len(text)
    assert back == text + "✓"


# -- iterators ----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_iteratorItemsAreMadeInTheChild(
    makeProcessQueue: Callable[..., ProcessQueue], tmp_path: Path
) -> None:
    q = makeProcessQueue(1)
    [pid] = (await pidsOf(q)).values()
    deferator = await within(q.call(guardedCount, 500, str(tmp_path / "m")))
    assert isinstance(deferator, Deferator)
    items = await within(deferator.toList())
    assert items == [(i, pid) for i in range(500)]
    assert (tmp_path / "m").read_text() == "closed"


@pytest_twisted.ensureDeferred
async def test_iteratorBackPressure(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    [worker] = q.workers()
    assert isinstance(worker, ProcessWorker)
    deferator = await within(q.call(countForever))
    # A round trip to the child: whatever fetch was sent before has been answered.
    await within(worker.nodeInfo())
    produced = await within(q.call(producedSoFar))
    assert 0 < produced <= deferator.maxBuffered
    consumed = 0
    async for item in deferator:
        assert item == consumed
        consumed += 1
        if consumed == 3 * deferator.batchSize:
            break
    await within(worker.nodeInfo())
    produced = await within(q.call(producedSoFar))
    assert consumed < produced <= consumed + deferator.maxBuffered
    deferator.close()


@pytest_twisted.ensureDeferred
async def test_iteratorErrorArrivesAfterEarlierItems(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    deferator = await within(q.call(itemsThenError, 150))
    items = []
    with pytest.raises(TaskFailed) as info:
        async for item in deferator:
            items.append(item)
    assert items == list(range(150))
    assert "itemsThenError" in info.value.remoteTraceback  # type: ignore[attr-defined]
    assert await within(q.call(lambda: "after")) == "after"


@pytest_twisted.ensureDeferred
async def test_unpicklableItemFailsIterationWithUnpicklableError(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    [pid] = (await pidsOf(q)).values()
    deferator = await within(q.call(lockAfterOne))
    error = await failureOf(deferator.toList())
    assert isinstance(error, UnpicklableError), repr(error)
    assert await within(q.call(os.getpid)) == pid


@pytest_twisted.ensureDeferred
async def test_closingOrDroppingDeferatorClosesChildGenerator(
    makeProcessQueue: Callable[..., ProcessQueue], tmp_path: Path
) -> None:
    q = makeProcessQueue(1)
    [worker] = q.workers()
    assert isinstance(worker, ProcessWorker)
    closed, dropped = tmp_path / "closed", tmp_path / "dropped"
    deferator = await within(q.call(guardedCount, 10_000, str(closed)))
    other = await within(q.call(guardedCount, 10_000, str(dropped)))
    pid = (await pidsOf(q))[worker.name]
    assert [await deferator.__anext__() for _ in range(3)] == [
        (i, pid) for i in range(3)
    ]
    await within(worker.nodeInfo())
    assert not closed.exists() and not dropped.exists()
    deferator.close()
    del other
    gc.collect()
    # The close goes before this round trip, and the child handles it first.
    await within(q.call(os.getpid))
    assert closed.read_text() == "closed"
    assert dropped.read_text() == "closed"


@pytest_twisted.ensureDeferred
async def test_shutdownIsNotHeldUpByAnUnfinishedDeferator(
    makeProcessQueue: Callable[..., ProcessQueue], tmp_path: Path
) -> None:
    q = makeProcessQueue(1)
    [pid] = (await pidsOf(q)).values()
    deferator = await within(q.call(guardedCount, 10_000, str(tmp_path / "m")))
    try:
        await within(q.shutdown(), 5)
    finally:
        deferator.close()
    assertGone(pid)


# -- output -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_printGoesToLogWithWorkerName(
    makeProcessQueue: Callable[..., ProcessQueue],
    logLines: Callable[[str], Deferred[dict[str, Any]]],
) -> None:
    q = makeProcessQueue(1)
    [(name, pid)] = (await pidsOf(q)).items()
    seen = logLines("flushed line from a task")
    assert await within(q.call(printAndFlush, "flushed line from a task")) == 6
    event = await within(seen)
    assert event["worker"] == name and event["pid"] == pid
    assert await within(q.call(lambda: "protocol intact")) == "protocol intact"


@pytest_twisted.ensureDeferred
async def test_unflushedPrintReachesLogWhileChildLives(
    makeProcessQueue: Callable[..., ProcessQueue],
    logLines: Callable[[str], Deferred[dict[str, Any]]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # As for a user who has not set it: the child's stdout is then a buffered pipe.
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)
    q = makeProcessQueue(1)
    [name] = await pidsOf(q)
    out, err = logLines("plain print"), logLines("plain print on stderr")
    assert await within(q.call(printSomething, "plain print")) == 5
    assert (await within(err, 10))["worker"] == name
    assert (await within(out, 10))["worker"] == name
    assert q.isRunning()


# -- initializer, updates, statistics -----------------------------------------


@pytest_twisted.ensureDeferred
async def test_initializerContextInTasks(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(2, initializer=setUpContext, initargs=("model", 3))
    contexts = await within(q.update(readContext))
    assert sorted(c["pid"] for c in contexts) == sorted((await pidsOf(q)).values())
    assert all(c["tag"] == "model" and c["size"] == 3 for c in contexts)
    context = await within(q.call(lambda: (asynqueue.context(), os.getpid())))
    assert context[0]["pid"] == context[1]
    assert asynqueue.context() is None, "the parent has no context"


@pytest_twisted.ensureDeferred
async def test_failingInitializerFailsTasks(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1, initializer=failToSetUp)
    for _ in range(2):
        error = await failureOf(q.call(lambda: asynqueue.context()))
        assert isinstance(error, WorkerError), repr(error)
        assert "no context today" in str(error)


@pytest_twisted.ensureDeferred
async def test_updateStatsAndNodeInfoPerChild(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(2)
    pids = await pidsOf(q)
    assert len(set(pids.values())) == 2
    assert sorted(await within(q.update(os.getpid))) == sorted(pids.values())
    await within(DeferredList([q.call(os.getpid) for _ in range(6)]))
    infos = await within(q.nodeInfo())
    assert sorted(i["pid"] for i in infos) == sorted(pids.values())
    assert all(i["rss"] > 2**20 for i in infos)
    assert sum(i["done"] for i in infos) >= 6 + 2
    stats = q.stats()
    assert stats["done"] == 6
    assert sum(w["done"] for w in stats["workers"].values()) == 6
    assert {w["pid"] for w in stats["workers"].values()} == set(pids.values())


@pytest_twisted.ensureDeferred
async def test_maxTasksPerWorkerReplacesChildAndReplaysKeptUpdates(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1, maxTasksPerWorker=3)
    [first] = (await pidsOf(q)).values()
    await within(q.update(lambda: setattr(sys, "_aqKept", "kept")))
    await within(q.update(lambda: setattr(sys, "_aqEphemeral", 1), ephemeral=True))
    results = await within(DeferredList([q.call(pidAndMarks) for _ in range(7)]))
    assert all(ok for ok, _ in results), results
    values = [value for _, value in results]
    perPid = Counter(pid for pid, _, _ in values)
    assert len(perPid) >= 3, perPid
    assert max(perPid.values()) <= 3, perPid
    assert values[0][0] == first
    assert all(kept == "kept" for _, kept, _ in values), "kept update not replayed"
    assert all((eph == 1) == (pid == first) for pid, _, eph in values)
    assert q.stats()["workers"][q.workers()[0].name]["replaced"] >= 2
    await within(q.shutdown())
    for pid in perPid:
        assertGone(pid)


# -- crashes, timeouts, cancels -----------------------------------------------


@pytest_twisted.ensureDeferred
async def test_crashFailsTaskAndNewChildRunsNextTasks(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1, capacity=1)
    [(name, old)] = (await pidsOf(q)).items()
    crash = q.call(os._exit, 1)
    queued = [q.call(os.getpid) for _ in range(3)]  # waiting in the queue
    error = await failureOf(crash)
    assert isinstance(error, WorkerCrashed)
    assert str(old) in str(error)
    after = await within(q.call(os.getpid))
    assert after != old and after == (await pidsOf(q))[name]
    assert (
        await within(DeferredList(queued, fireOnOneErrback=True)) == [(True, after)] * 3
    )
    assert q.stats()["workers"][name]["replaced"] == 1
    await within(q.shutdown())
    assertGone(old)


@pytest_twisted.ensureDeferred
async def test_retryAfterCrashOnFirstAttempt(
    makeProcessQueue: Callable[..., ProcessQueue], tmp_path: Path
) -> None:
    q = makeProcessQueue(1)
    result = await within(q.call(crashOnce, str(tmp_path / "a"), retries=1))
    assert result == "second attempt"
    assert q.records()[-1].attempts == 2
    error = await failureOf(q.call(crashOnce, str(tmp_path / "b")))
    assert isinstance(error, WorkerCrashed)
    assert (tmp_path / "b").exists()


@pytest_twisted.ensureDeferred
async def test_tasksOfAWorkerThatCannotStartChildrenGoElsewhere() -> None:
    # /bin/false exits at once: none of the broken worker's children comes up.
    broken = ProcessWorker(executable="/bin/false", respawnDelay=0, maxStartFailures=3)
    good = ProcessWorker(capacity=1)
    q = asynqueue.TaskQueue(broken, good, shutdownWithReactor=False)
    try:
        ds = [q.call(os.getpid) for _ in range(6)]
        assert any(d.record.worker == broken.name for d in ds)  # type: ignore[attr-defined]
        pids = await allFired(ds, 20)
        assert all(ok for ok, _ in pids)
        assert {pid for _, pid in pids} == {good._child.pid}  # type: ignore[attr-defined]
        assert q.workers() == [good]
        assert "died before they could run a call" in (broken.resignedBecause or "")
    finally:
        await within(q.shutdown(timeout=3))


@pytest_twisted.ensureDeferred
async def test_repeatedSigkillsUnderLoad(
    makeProcessQueue: Callable[..., ProcessQueue], tmp_path: Path
) -> None:
    """No task is lost, stranded, or run more often than it was attempted."""
    q = makeProcessQueue(2)
    path = str(tmp_path / "ran")
    n = 300
    killAfter = [50, 100, 150, 200, 250]
    kills: list[int] = []

    def appendNumber(path: str, i: int, workload: float) -> tuple[int, int]:
        # Travels by value: a fresh child need not import this module first.
        with open(path, "a") as f:
            f.write(f"{i}\n")
        time.sleep(workload)
        return i, os.getpid()

    def killOne(result: Any, i: int) -> Any:
        # Kill the child that has just answered: it is alive, and busy.
        if killAfter and i >= killAfter[0] and not isinstance(result, Failure):
            pid = result[1]
            if pid not in kills:
                killAfter.pop(0)
                kills.append(pid)
                os.kill(pid, signal.SIGKILL)
        return result

    ds = []
    for i in range(n):
        d = q.call(appendNumber, path, i, 0.002, retries=int(i % 3 == 0), name=f"t{i}")
        d.addBoth(killOne, i)
        ds.append(d)
    results = await allFired(ds, 20)
    ran = Counter(int(line) for line in Path(path).read_text().split())
    attempts = {r.name: r.attempts for r in q.records()}
    lost, duplicated, succeeded = [], [], 0
    for i, (ok, value) in enumerate(results):
        if ok:
            succeeded += 1
            if value[0] != i or ran[i] == 0:
                lost.append((i, value, ran[i]))
        elif not value.check(WorkerCrashed):
            lost.append((i, value.value))
        if ran[i] > attempts[f"t{i}"] or (i % 3 and ran[i] > 1):
            duplicated.append((i, ran[i], attempts[f"t{i}"]))
    assert lost == [] and duplicated == []
    assert len(kills) == 5
    assert sum(w["replaced"] for w in q.stats()["workers"].values()) >= len(kills)
    assert succeeded >= n // 2
    await within(q.shutdown())
    for pid in kills:
        assertGone(pid)


@pytest_twisted.ensureDeferred
async def test_timeoutKillsChildAndNextTasksRun(
    makeProcessQueue: Callable[..., ProcessQueue],
    clock: Clock,
    logLines: Callable[[str], Deferred[dict[str, Any]]],
) -> None:
    q = makeProcessQueue(1, capacity=1, useClock=True)
    [(name, old)] = (await pidsOf(q)).items()
    started = logLines("slow task started")
    slow = q.call(announceThenSleep, "slow task started", 30, timeout=5)
    queued = q.call(os.getpid)
    # Running in the child, so the timeout must kill it.
    await within(started)
    clock.advance(4.9)
    assert not slow.called
    clock.advance(0.1)
    assert isinstance(await failureOf(slow), TimeoutError)
    assert await within(queued) != old
    assert await within(q.call(os.getpid)) == (await pidsOf(q))[name] != old
    assert q.records()[0].state == "timedOut"
    await within(q.shutdown())
    assertGone(old)


@pytest_twisted.ensureDeferred
async def test_cancelRunningTaskKillsChild(
    makeProcessQueue: Callable[..., ProcessQueue],
    logLines: Callable[[str], Deferred[dict[str, Any]]],
) -> None:
    q = makeProcessQueue(1, capacity=1)
    [(name, old)] = (await pidsOf(q)).items()
    started = logLines("slow task started")
    slow = q.call(announceThenSleep, "slow task started", 30)
    await within(started)
    slow.cancel()
    assert isinstance(await failureOf(slow), CancelledError)
    assert await within(q.call(os.getpid)) == (await pidsOf(q))[name] != old
    await within(q.shutdown())
    assertGone(old)


@pytest_twisted.ensureDeferred
async def test_cancelQueuedTaskWithdrawsIt(
    makeProcessQueue: Callable[..., ProcessQueue],
    logLines: Callable[[str], Deferred[dict[str, Any]]],
    tmp_path: Path,
) -> None:
    q = makeProcessQueue(1, capacity=4)
    [pid] = (await pidsOf(q)).values()
    m2, m3, m4 = (str(tmp_path / f"m{i}") for i in (2, 3, 4))
    started = logLines("first task started")
    first = q.call(announceThenSleep, "first task started", 0.5)
    second = q.call(touch, m2)
    third = q.call(touch, m3)
    # Sent to the child, behind a task that is running there: withdrawn by a message.
    await within(started)
    second.cancel()
    # Not even sent yet: withdrawn in the parent.
    fourth = q.call(touch, m4)
    fourth.cancel()
    assert await within(first) == "slept"
    assert await within(third) == m3
    assert await within(q.call(os.getpid)) == pid, "a queued cancel kills no child"
    for d in (second, fourth):
        assert isinstance(await failureOf(d), CancelledError)
    assert not os.path.exists(m2) and not os.path.exists(m4)


class Measured:
    """An argument the parent can watch go; the child gets a copy."""

    def __init__(self, n: int) -> None:
        self.n = n


def measure(m: Measured, extra: int = 0) -> int:
    return m.n + extra


@pytest.mark.parametrize("raw", [False, True])
@pytest_twisted.ensureDeferred
async def test_aWaitingCallKeepsItsArgumentsOnlyPickled(raw: bool) -> None:
    """
    Behind a running call, the next waits pickled: the queue lets its
    arguments go, and the child (a raw worker too, which pickles the call
    again) still runs it with them.
    """
    q = asynqueue.TaskQueue(shutdownWithReactor=False)
    q.attachWorker(ProcessWorker(capacity=1, raw=raw))
    try:
        first = q.call(measure, Measured(1))
        arg = Measured(20)
        watched = weakref.ref(arg)
        d = q.call(measure, arg, extra=3)
        del arg
        gc.collect()
        assert d.args is IN_THE_PICKLE, d.args
        assert watched() is None, "the queue kept the argument"
        assert await within(first) == 1
        assert await within(d) == 23
    finally:
        await within(q.shutdown(timeout=3, cancelPending=True), 15)


# -- ending -------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_shutdownLeavesNoChildAndNoZombie(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(2)
    pids = set((await pidsOf(q)).values())
    await within(DeferredList([q.call(os.getpid) for _ in range(10)]))
    pids |= set(await within(q.update(os.getpid)))
    assert len(pids) == 2
    await within(q.shutdown())
    for pid in pids:
        assertGone(pid)
        assertNoProcess(pid)


def test_newsOfAnEarlierRunDoesNotStartTheNextOne() -> None:
    # A dead child's late results must not date (or start the timer of) the
    # run of the same task that another worker has since been given.
    from asynqueue.tasks import Task, TaskOptions, TaskRecord
    from asynqueue.wire.pickling import dumps
    from asynqueue.workers.children import _Child, _Sent

    class Worker:
        name = "w"
        callStats = False

        def ran(self, times: list[float]) -> None:
            pass

    starts: list[float] = []
    reports: list[tuple[Any, int]] = []
    record = TaskRecord(1, "t", "t", 0, None, None, 0)
    task = Task(int, (), {}, TaskOptions(), record, Deferred())

    @implementer(ITaskReporter)
    class Hearing:
        def started(self, task: Task, ago: float) -> None:
            starts.append(ago)

        def done(self, task: Task, outcome: object, attempt: int) -> None:
            reports.append((outcome, attempt))

    task.reporter = Hearing()
    task.runs = 2  # its second run is on another worker now
    child = _Child(Worker())  # type: ignore[arg-type]
    old = _Sent(7, b"", task, None, attempt=1)
    waiting = _Sent(8, b"", task, None, attempt=1)
    child.inFlight[7] = old
    child.inFlight[8] = waiting
    child.resultsReceived([(7, "r", dumps(5), 0.25)])
    assert starts == [] and reports == [(5, 1)]
    assert waiting.started  # noted, but the task was not told
    # The current run's news does date it.
    current = _Sent(9, b"", task, None, attempt=2)
    child.inFlight[9] = current
    child.resultsReceived([(9, "r", dumps(6), 0.5)])
    assert starts == [0.5] and reports[-1] == (6, 2)


def test_aBatchOfRunTimesAdaptsCapacityAsEachInTurn() -> None:
    """A worker notes a child's batch of run times at once, as one by one."""
    times = [1e-6, 0.004, 2e-5, 0.0009, 3e-6] * 7
    one, batch = AdaptiveBacklog(0.002, 64, floor=2), AdaptiveBacklog(0.002, 64, 2)
    capacities = [one.ran(t) for t in times]
    assert batch.ranAll(times) == capacities[-1] and batch.average == one.average
    assert len(set(capacities)) > 1
