"""
Tests of asynqueue.process under faults: timeouts and cancels after fast
calls, descriptors over many respawns, a queue whose workers all resigned,
and a child's endless output.

Each pins a defect found in a soak (issue 10); the tests wait on Deferreds
and on the queue's events, and use a Clock for the queue's timers.
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from processes import closeResultPipeAndWait, failureOf, startEndlessThread
from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from asynqueue import (
    NoWorkers,
    ProcessQueue,
    ProcessWorker,
    TaskQueue,
    TimeoutError,
    UnpicklableError,
    WorkerCrashed,
)
from asynqueue.records import TaskRecord
from asynqueue.workers.children import _Child

# -- what the children run ----------------------------------------------------


def spin(line: str) -> None:
    """Say so, then never end (a cancel or timeout must kill the child)."""
    print(line, flush=True)
    while True:
        pass


def identity(x: Any) -> Any:
    return x


# -- helpers ------------------------------------------------------------------


def within(d: Deferred[Any], seconds: float = 20) -> Deferred[Any]:
    """Fail, instead of hanging the run, if C{d} has not fired in time."""
    return d.addTimeout(seconds, reactor)


def whenStarted(q: TaskQueue, name: str) -> Deferred[TaskRecord]:
    """Fire when the queue says the task named C{name} started."""
    d: Deferred[TaskRecord] = Deferred()

    def observer(event: str, record: TaskRecord) -> None:
        if event == "started" and record.name == name and not d.called:
            stop()
            d.callback(record)

    stop = q.observe(observer)
    return d


async def warmUp(q: TaskQueue, n: int = 300) -> None:
    """Enough fast calls that the child holds their results back for batching."""
    await within(gatherResults([q.call(identity, i) for i in range(n)]))


# -- defect 1: a slow call after fast ones ------------------------------------


@pytest_twisted.ensureDeferred
async def test_timeoutOfASlowCallAfterFastOnes(
    makeProcessQueue: Callable[..., ProcessQueue], clock: Clock
) -> None:
    q = makeProcessQueue(1, capacity=32, useClock=True)
    await warmUp(q)
    fast = [q.call(identity, i) for i in range(5)]
    started = whenStarted(q, "slow")
    slow = q.call(time.sleep, 30, timeout=5, name="slow")
    after = q.call(identity, "after")
    # The fast calls' results come back while the slow one runs, and the
    # queue knows it has started: its timer runs.
    assert await within(gatherResults(fast)) == list(range(5))
    await within(started)
    assert not slow.called
    clock.advance(5)
    assert isinstance(await failureOf(slow), TimeoutError)
    assert await within(after) == "after"


@pytest_twisted.ensureDeferred
async def test_cancelOfASpinningCallAfterFastOnes(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1, capacity=32)
    await warmUp(q)
    fast = [q.call(identity, i) for i in range(5)]
    started = whenStarted(q, "spinner")
    spinner = q.call(spin, "spinning", name="spinner")
    behind = [q.call(identity, i) for i in range(20)]
    assert await within(gatherResults(fast)) == list(range(5))
    await within(started)
    spinner.cancel()
    assert isinstance(await failureOf(spinner), CancelledError)
    # The child running it was killed; the calls behind it run in a new one.
    assert await within(gatherResults(behind)) == list(range(20))
    assert q.stats()["running"] == 0


@pytest_twisted.ensureDeferred
async def test_fastResultsDoNotWaitBehindASlowCall(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1, capacity=32)
    await warmUp(q)
    fast = [q.call(identity, i) for i in range(5)]
    spinner = q.call(spin, "spinning", name="spinner")
    # Before the fix these waited for the spinner, that is for ever.
    assert await within(gatherResults(fast)) == list(range(5))
    spinner.cancel()
    assert isinstance(await failureOf(spinner), CancelledError)


def breakTheNextResultWrite() -> str:
    """In the child: its next box (this call's result) cannot be written."""
    import asynqueue.node.child as child

    real = child.writeBox

    def failing(transport: Any, pairs: Any) -> None:
        child.writeBox = real
        raise MemoryError("no room for the result box")

    child.writeBox = failing
    return "written"


@pytest_twisted.ensureDeferred
async def test_resultThatCannotBeWrittenEndsTheChild(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    # Fast calls and then a slow one, sent together: the fast ones' results
    # are held for batching while the slow call runs, so the child's
    # held-results thread writes them, and fails. Before, that thread died,
    # the results were lost and their calls waited for ever (the child went
    # on serving); now the child drops its parent, which sees a crash.
    q = makeProcessQueue(1, capacity=32)
    await warmUp(q)
    fast = [q.call(identity, i) for i in range(5)]
    broken = q.call(breakTheNextResultWrite)
    slow = q.call(say, "slow", 0.3)
    outcomes = await within(
        defer.DeferredList([*fast, broken, slow], consumeErrors=True)
    )
    assert not outcomes[-2][0] and outcomes[-2][1].check(WorkerCrashed)
    for i, (ok, value) in enumerate(outcomes[:-2]):
        assert value == i if ok else value.check(WorkerCrashed), value
    assert await within(q.call(identity, 3)) == 3


# -- defect 2: descriptors and processes over many respawns -------------------


def say(line: str, seconds: float = 0.0) -> str:
    """Say C{line} (it reaches the parent's log), then sleep C{seconds}."""
    print(line, flush=True)
    time.sleep(seconds)
    return line


def killMyself() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def openDescriptors() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def alive(pid: int) -> bool:
    """Whether C{pid} is a process (a zombie not yet reaped counts)."""
    return os.path.exists(f"/proc/{pid}")


class LogLines:
    """Deferreds of lines that children print, as they reach the log."""

    def __init__(self) -> None:
        self.waiting: dict[str, Deferred[None]] = {}
        self.seen: set[str] = set()
        globalLogPublisher.addObserver(self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        line = event.get("line")
        if isinstance(line, str) and "worker" in event:
            self.seen.add(line)
            d = self.waiting.pop(line, None)
            if d is not None:
                d.callback(None)

    def waitFor(self, line: str) -> Deferred[None]:
        if line in self.seen:
            return succeed(None)
        d = self.waiting[line] = Deferred()
        return d

    def stop(self) -> None:
        globalLogPublisher.removeObserver(self.observe)


#: Respawns of each kind per test: 50 on the default reactor; the other
#: reactor runs the same path, fewer times, to keep the suite short.
RESPAWNS = {"default": 50}


async def respawnBy(kind: str, q: ProcessQueue, clock: Clock, lines: LogLines) -> None:
    """One respawn of a child of C{q}, of the given kind; then a call that works."""
    if kind == "killed":
        assert isinstance(await failureOf(q.call(killMyself)), WorkerCrashed)
    elif kind == "closedPipe":
        crash = await failureOf(q.call(closeResultPipeAndWait))
        assert isinstance(crash, WorkerCrashed) and "result pipe" in str(crash)
    elif kind == "retired":
        # With maxTasksPerWorker=1, this call is its child's last.
        await within(q.call(os.getpid))
        return
    elif kind == "outstayed":
        # Its last call too; the thread it starts keeps the child from
        # exiting when asked to stop, so it is killed.
        await within(q.call(startEndlessThread))
        return
    else:
        line = f"{kind} {next(_lines)}"
        running = lines.waitFor(line)
        d = q.call(say, line, 30, timeout=5 if kind == "timedOut" else None)
        await within(running)
        if kind == "timedOut":
            clock.advance(5)
            assert isinstance(await failureOf(d), TimeoutError)
        else:
            d.cancel()
            assert isinstance(await failureOf(d), CancelledError)
    await within(q.call(os.getpid))


_lines = itertools.count()


@pytest.mark.parametrize("start", ["fork", "spawn"])
@pytest.mark.parametrize(
    "kind", ["killed", "closedPipe", "timedOut", "cancelled", "retired", "outstayed"]
)
@pytest_twisted.ensureDeferred
async def test_respawnsGiveBackDescriptorsAndProcesses(
    kind: str,
    start: str,
    clock: Clock,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if kind == "closedPipe":
        # A child living on with its result pipe closed is killed at once.
        monkeypatch.setattr(_Child, "pipeGrace", 0, raising=False)
    if kind == "outstayed":
        # A child that has not exited when asked to stop is killed at once.
        monkeypatch.setattr(_Child, "stopGrace", 0, raising=False)
    # Forked (by a zygote, which ends with the queue) or spawned.
    respawns = RESPAWNS.get(request.config.getoption("reactor"), 12)
    if start == "spawn":
        # The same path, fewer times: a fresh interpreter takes a third of a second.
        respawns = min(respawns, 12)
    # Whatever the reactor opens once for child processes is open by now.
    warm = ProcessQueue(1, shutdownWithReactor=False, start=start)
    await within(warm.call(os.getpid))
    await within(warm.shutdown())
    before = openDescriptors()
    lines = LogLines()
    q = ProcessQueue(
        2,
        clock=clock,
        shutdownWithReactor=False,
        maxTasksPerWorker=1 if kind in ("retired", "outstayed") else None,
        start=start,
    )
    pids: set[int] = set()
    try:

        async def oneWorker(cycles: int) -> None:
            for _ in range(cycles):
                await respawnBy(kind, q, clock, lines)
                # A forked replacement has its pid once its zygote has
                # forked it: wait for that, or a child killed in the next
                # cycle would never be counted.
                for w in q.workers():
                    pids.add(await within(w.whenStarted()))

        if kind == "timedOut":
            # One at a time: the queue's clock is shared, so advancing it for
            # one call's timeout would time out a call another has just
            # begun, before the line it waits for is printed.
            workers = [defer.ensureDeferred(oneWorker(respawns + 1))]
        else:
            workers = [defer.ensureDeferred(oneWorker(respawns // 2 + 1)) for _ in "ab"]
        await within(gatherResults(workers), 120)
        replaced = sum(w["replaced"] for w in q.stats()["workers"].values())
        assert replaced >= respawns
    finally:
        lines.stop()
        await within(q.shutdown(timeout=3, cancelPending=True))
    assert openDescriptors() == before
    assert len(pids) > respawns // 2
    assert [pid for pid in pids if alive(pid)] == []


# -- defect 3: a queue whose workers have all resigned ------------------------


def exitAtOnce() -> None:
    os._exit(1)


@pytest_twisted.ensureDeferred
async def test_callsFailOnceEveryWorkerResigned() -> None:
    worker = ProcessWorker(executable="/bin/false", respawnDelay=0, maxStartFailures=4)
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        pending = [q.call(os.getpid) for _ in range(5)]
        for d in pending:
            error = await failureOf(d)
            assert isinstance(error, NoWorkers)
            assert worker.name in str(error) and "resigned" in str(error)
        # A new call fails at once, saying why.
        later = q.call(os.getpid)
        assert later.called and isinstance(await failureOf(later), NoWorkers)
        # A worker attached again takes calls again.
        await within(q.attachWorker(ProcessWorker()))
        assert await within(q.call(identity, 7)) == 7
    finally:
        await within(q.shutdown(timeout=3))


@pytest_twisted.ensureDeferred
async def test_deathsInCallsNeverMakeAWorkerResign(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    q = makeProcessQueue(1)
    for _ in range(12):
        assert isinstance(await failureOf(q.call(exitAtOnce)), WorkerCrashed)
    assert len(q.workers()) == 1
    assert await within(q.call(identity, "alive")) == "alive"


def isRespawn(f: Callable[..., object]) -> bool:
    """Whether a delayed call is a worker's respawn (others keep their delay)."""
    return getattr(f, "__func__", None) is ProcessWorker._respawn


@pytest_twisted.ensureDeferred
async def test_childrenDyingYoungAreRespawnedWithBackOff(clock: Clock) -> None:
    # Each death before a child came up doubles the wait for the next.
    worker = ProcessWorker(
        executable="/bin/false", respawnDelay=0.5, maxStartFailures=3
    )
    delays: list[float] = []

    class Recording:
        """The reactor, but what a respawn waits is noted, not waited."""

        def __getattr__(self, name: str) -> Any:
            return getattr(reactor, name)

        def callLater(self, delay: float, f: Any, *a: Any, **kw: Any) -> Any:
            if not isRespawn(f):
                return reactor.callLater(delay, f, *a, **kw)
            delays.append(delay)
            return reactor.callLater(0, f, *a, **kw)

    worker.reactor = Recording()
    resigned: Deferred[Any] = Deferred()
    worker.setResignator(resigned.callback)
    assert await within(resigned) is worker
    assert delays == [0.5, 1.0]
    await within(worker.stop())


def dieIfReplayed(marker: str, answerFirst: bool) -> None:
    """
    Mark the first run; in every later one (a kept update's replays) die,
    at once or some time after answering.
    """
    if not os.path.exists(marker):
        Path(marker).touch()
    elif answerFirst:
        # Long after the answer reached the parent (sent within a millisecond).
        threading.Timer(0.2, os._exit, (3,)).start()
    else:
        os._exit(3)


@pytest_twisted.ensureDeferred
@pytest.mark.parametrize("answerFirst", [False, True])
async def test_childrenDyingInTheirSetUpAreRespawnedWithBackOff(
    tmp_path: Path, answerFirst: bool
) -> None:
    # A kept update that kills every child it is replayed in: such a child
    # never runs a call of its own, so it died young, however far it got.
    worker = ProcessWorker(respawnDelay=0.5, maxStartFailures=3)
    q = TaskQueue(worker, shutdownWithReactor=False)
    deaths: list[float] = []
    over: Deferred[None] = Deferred()
    ending: list[bool] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("name") != worker.name or ending:
            return
        if "delay" in event:
            deaths.append(event["delay"])
        # Resigned, or (before the fix) respawning at once for ever.
        if "resigns" in event.get("log_format", "") or len(deaths) > 3:
            # Once out of the log call: a worker resigns right after saying so.
            ending.append(True)
            reactor.callLater(0, over.callback, None)

    globalLogPublisher.addObserver(observer)
    try:
        await within(q.update(dieIfReplayed, str(tmp_path / "ran"), answerFirst))
        worker.reactor = FlakySpawns(failures=0)  # waits noted, not waited
        assert isinstance(await failureOf(q.call(exitAtOnce)), WorkerCrashed)
        await within(over)
        # The death in a call costs nothing; each in a replay doubles the wait.
        assert deaths == [0.0, 0.5, 1.0]
        error = await failureOf(q.call(identity, 1))
        assert isinstance(error, NoWorkers) and "3 processes in a row" in str(error)
    finally:
        globalLogPublisher.removeObserver(observer)
        await within(q.shutdown(timeout=3))


# -- defect 8: a call that cannot be prepared fails its Deferred ---------------


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


class PicklesBadly:
    def __reduce__(self) -> Any:
        raise BrokenStr()


class ReprRaises:
    def __repr__(self) -> str:
        raise RuntimeError("no repr either")

    def __reduce__(self) -> Any:
        raise TypeError("not today")


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "argument, words",
    [
        (nested(100_000), "argument 0 (a list whose repr() failed) cannot be pickled"),
        (PicklesBadly(), "BrokenStr: (its str() failed)"),
        (
            ReprRaises(),
            "(a ReprRaises whose repr() failed) cannot be pickled: TypeError",
        ),
    ],
)
@pytest_twisted.ensureDeferred
async def test_callThatCannotBePreparedFailsItsDeferred(
    makeProcessQueue: Callable[..., ProcessQueue], argument: Any, words: str
) -> None:
    q = makeProcessQueue(1)
    d = q.call(len, argument)
    assert d.called
    error = await failureOf(d)
    assert isinstance(error, UnpicklableError)
    assert words in str(error) and "\n" not in str(error)
    # Nothing is lost: the queue carries on.
    assert await within(q.call(identity, 3)) == 3


# -- defect 7: output without newlines ----------------------------------------


def printWithoutNewlines(chunks: int, size: int) -> int:
    for _ in range(chunks):
        sys.stdout.write("x" * size)
        sys.stdout.flush()
    print("!", flush=True)
    return chunks * size


@pytest_twisted.ensureDeferred
async def test_endlessLineIsLoggedInBoundedParts(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    from asynqueue.workers.children import _LINE_BYTES

    logged: list[dict[str, Any]] = []

    q = makeProcessQueue(1)
    [worker] = q.workers()

    lineEnded: Deferred[None] = Deferred()

    def observer(event: dict[str, Any]) -> None:
        if isinstance(event.get("line"), str) and event.get("worker") == worker.name:
            logged.append(event)
            if not event["part"] and not lineEnded.called:
                lineEnded.callback(None)

    globalLogPublisher.addObserver(observer)
    try:
        total = await within(q.call(printWithoutNewlines, 400, 10_000))
        # The output may come after the result: wait for the line's end.
        await within(lineEnded)
    finally:
        globalLogPublisher.removeObserver(observer)
    lines = [e["line"] for e in logged]
    # Every byte arrives, in parts of bounded size, the last ending the line.
    assert "".join(lines) == "x" * total + "!"
    assert len(lines) > total // (2 * _LINE_BYTES)
    assert all(len(line) < 2 * _LINE_BYTES for line in lines)
    assert all(e["part"] for e in logged[:-1]) and not logged[-1]["part"]


def test_outputIsSplitWithoutJoiningAgain() -> None:
    # Fed byte by byte, the kept start of a line never exceeds the limit.
    from asynqueue.workers.children import _LINE_BYTES, _Child

    class Worker:
        name = "w"

    child = _Child(Worker())  # type: ignore[arg-type]
    parts: list[tuple[bytes, bool]] = []
    child._logLine = lambda line, part=False: parts.append((line, part))  # type: ignore[method-assign]
    data = b"ab\ncd" + b"y" * (_LINE_BYTES + 10) + b"\n"
    for i in range(len(data)):
        child.childDataReceived(1, data[i : i + 1])
    assert parts == [
        (b"ab", False),
        (b"cd" + b"y" * (_LINE_BYTES - 2), True),
        (b"y" * 12, False),
    ]


class FlakySpawns:
    """The reactor, but the next C{failures} process starts fail as at EMFILE."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.delays: list[float] = []
        self._waiters: list[tuple[int, Deferred[None]]] = []

    def whenDelayed(self, n: int) -> Deferred[None]:
        """Fire once C{n} respawns have been put off."""
        d: Deferred[None] = Deferred()
        self._waiters.append((n, d))
        return d

    def __getattr__(self, name: str) -> Any:
        return getattr(reactor, name)

    def spawnProcess(self, *args: Any, **kwargs: Any) -> Any:
        if self.failures:
            self.failures -= 1
            raise OSError(24, "Too many open files")
        return reactor.spawnProcess(*args, **kwargs)

    def callLater(self, delay: float, f: Any, *a: Any, **kw: Any) -> Any:
        if not isRespawn(f):
            return reactor.callLater(delay, f, *a, **kw)
        self.delays.append(delay)
        for n, d in list(self._waiters):
            if len(self.delays) >= n:
                self._waiters.remove((n, d))
                reactor.callLater(0, d.callback, None)
        return reactor.callLater(0, f, *a, **kw)


@pytest_twisted.ensureDeferred
async def test_childThatCannotBeStartedIsRetriedAndCallsWait() -> None:
    worker = ProcessWorker(respawnDelay=0.25, maxStartFailures=5)
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        assert await within(q.call(identity, 1)) == 1
        flaky = worker.reactor = FlakySpawns(failures=2)
        # Its child dies in a call; the next two starts fail; the third works.
        assert isinstance(await failureOf(q.call(exitAtOnce)), WorkerCrashed)
        assert await within(q.call(identity, 2)) == 2
        assert flaky.delays == [0.25, 0.5] and q.workers() == [worker]
    finally:
        await within(q.shutdown(timeout=3))


@pytest_twisted.ensureDeferred
async def test_workerThatCannotStartChildrenResigns() -> None:
    worker = ProcessWorker(respawnDelay=0.25, maxStartFailures=3)
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        assert await within(q.call(identity, 1)) == 1
        worker.reactor = FlakySpawns(failures=10)
        assert isinstance(await failureOf(q.call(exitAtOnce)), WorkerCrashed)
        error = await failureOf(q.call(identity, 2))
        assert isinstance(error, NoWorkers) and "Too many open files" in str(error)
    finally:
        await within(q.shutdown(timeout=3))


@pytest_twisted.ensureDeferred
async def test_childrenKilledYoungFromOutsideNeverMakeAWorkerResign(
    tmp_path: Path,
) -> None:
    # Each child is SIGKILLed before it runs anything, six times in a row.
    script = tmp_path / "killed-young"
    script.write_text("#!/bin/sh\nkill -9 $$\n")
    script.chmod(0o755)
    worker = ProcessWorker(executable=str(script), maxStartFailures=2)
    starts = FlakySpawns(failures=0)
    worker.reactor = starts
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        d = q.call(identity, "at last")
        await within(starts.whenDelayed(6))
        assert q.workers() == [worker] and not d.called
        worker._executable = sys.executable  # type: ignore[attr-defined]
        assert await within(d) == "at last"
    finally:
        await within(q.shutdown(timeout=3))
