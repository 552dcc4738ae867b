"""
AsynQueue's queue and call keywords on today's queue: C{warn}, C{verbose},
C{spew}, C{returnFailure}, C{raw}, and C{TaskQueue(timeout=...)}.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import LogLevel

from asynqueue import AsyncWorker, MemoryWorker, ProcessQueue, TaskQueue, ThreadQueue
from asynqueue.errors import UnpicklableError
from asynqueue.iteration import Deferator
from asynqueue.settings import Settings
from asynqueue.tasks import RawCall, RawResult
from helpers import capturedLog, failureOf, result


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """The log events of the C{asynqueue} namespace while the test runs."""
    with capturedLog("asynqueue") as events:
        yield events


def texts(events: list[dict[str, Any]]) -> list[str]:
    from twisted.logger import formatEvent

    return [formatEvent(e) for e in events]


def boom(x: int, label: str = "") -> int:
    raise ValueError(f"bad {x}")


def numbers(n: int) -> Iterator[int]:
    return iter(range(n))


def letters(n: int) -> Iterator[str]:
    yield from "abcdefghij"[:n]


# ----------------------------------------------------------------------
# warn, verbose, spew


def test_quietByDefault(makeQueue: Callable[..., TaskQueue], logged: list[Any]) -> None:
    q = makeQueue(AsyncWorker())
    failureOf(q.call(boom, 1)).trap(ValueError)
    result(q.call(pow, 2, 3))
    assert logged == []


def test_warnLogsAFailureInOneLine(
    makeQueue: Callable[..., TaskQueue], logged: list[Any]
) -> None:
    q = makeQueue(AsyncWorker(), warn=True)
    failure = failureOf(q.call(boom, 7))
    # Logged, and still a failed Deferred with the task's own exception.
    assert failure.check(ValueError)
    assert texts(logged) == ["Task boom failed: ValueError: bad 7"]
    assert logged[0]["log_level"] == LogLevel.error
    result(q.call(pow, 2, 3))
    assert len(logged) == 1


def test_warnPerCall(makeQueue: Callable[..., TaskQueue], logged: list[Any]) -> None:
    q = makeQueue(AsyncWorker())
    failureOf(q.call(boom, 1, warn=True)).trap(ValueError)
    failureOf(q.call(boom, 2)).trap(ValueError)
    assert texts(logged) == ["Task boom failed: ValueError: bad 1"]
    # A call can also silence a warning queue.
    loud = makeQueue(AsyncWorker(), warn=True)
    failureOf(loud.call(boom, 3, warn=False)).trap(ValueError)
    assert len(logged) == 1


def test_verboseDescribesTheCallWithItsTraceback(
    makeQueue: Callable[..., TaskQueue], logged: list[Any]
) -> None:
    q = makeQueue(AsyncWorker(), verbose=True)
    failureOf(q.call(boom, 5, label="x" * 500)).trap(ValueError)
    [event] = logged
    text = texts(logged)[0]
    assert text.startswith("Task boom(5, label='xxx")
    # Arguments are shortened, and the traceback comes with the failure.
    assert len(text) < 200
    assert event["log_failure"].check(ValueError)


def test_spewLogsEveryCallAndItsResult(
    makeQueue: Callable[..., TaskQueue], logged: list[Any]
) -> None:
    q = makeQueue(AsyncWorker())
    assert result(q.call(pow, 2, 10, spew=True)) == 1024
    assert texts(logged) == ["Task pow(2, 10) -> 1024"]
    q2 = makeQueue(AsyncWorker(), spew=True)
    failureOf(q2.call(boom, 3)).trap(ValueError)
    assert texts(logged)[1].startswith("Task boom(3) failed")


def test_returnFailureIsAcceptedEitherWay(makeQueue: Callable[..., TaskQueue]) -> None:
    for queueDefault in (True, False):
        q = makeQueue(AsyncWorker(), returnFailure=queueDefault)
        for perCall in (True, False):
            d = q.call(boom, 1, returnFailure=perCall)
            # Never passed to the function, never stops the reactor: the
            # Deferred fails with the task's exception.
            assert failureOf(d).check(ValueError)


# ----------------------------------------------------------------------
# raw


def test_rawIteratorComesBackAsItIs(makeQueue: Callable[..., TaskQueue]) -> None:
    q = makeQueue(AsyncWorker())
    wrapped = result(q.call(numbers, 3))
    assert isinstance(wrapped, Deferator)
    wrapped.stop()
    raw = result(q.call(numbers, 3, raw=True))
    assert not isinstance(raw, Deferator) and list(raw) == [0, 1, 2]
    # The record keeps the function's own name.
    assert q.records()[-1].name == "numbers"


def test_rawAsTheQueuesDefault(makeQueue: Callable[..., TaskQueue]) -> None:
    q = makeQueue(AsyncWorker(), raw=True)
    assert list(result(q.call(numbers, 2))) == [0, 1]
    # A call can still ask for a Deferator.
    wrapped = result(q.call(numbers, 2, raw=False))
    assert isinstance(wrapped, Deferator)
    wrapped.stop()


@pytest_twisted.inlineCallbacks
def test_threadQueueTakesRaw() -> Any:
    q = ThreadQueue(1, raw=True, shutdownWithReactor=False)
    try:
        it = yield q.call(letters, 2)
        assert list(it) == ["a", "b"]
    finally:
        yield q.shutdown()


def test_rawWaitsForADeferred(makeQueue: Callable[..., TaskQueue]) -> None:
    q = makeQueue(AsyncWorker())
    d: Deferred[Any] = Deferred()
    out = q.call(lambda: d, raw=True)
    assert not out.called
    gen = numbers(2)
    d.callback(gen)
    assert result(out) is gen


def test_rawOnAMemoryWorker(makeQueue: Callable[..., TaskQueue]) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    d = q.call(numbers, 2, raw=True)
    w.runAll()
    assert list(result(d)) == [0, 1]


def test_rawCallPicklesAsItsFunction() -> None:
    import pickle

    call = pickle.loads(pickle.dumps(RawCall(pow)))
    out = call(2, 5)
    assert isinstance(out, RawResult) and out.value == 32


@pytest_twisted.inlineCallbacks
def test_rawInAThread() -> Any:
    q = ThreadQueue(1, shutdownWithReactor=False)
    try:
        it = yield q.call(letters, 3, raw=True)
        assert list(it) == ["a", "b", "c"]
    finally:
        yield q.shutdown()


@pytest_twisted.inlineCallbacks
def test_rawFromAChildProcess() -> Any:
    q = ProcessQueue(1, shutdownWithReactor=False)
    try:
        # An iterator that pickles comes back as it is...
        it = yield q.call(numbers, 3, raw=True)
        assert list(it) == [0, 1, 2]
        # ...one that cannot travel fails, saying why.
        error = yield q.call(letters, 2, raw=True).addErrback(lambda f: f.value)
        assert isinstance(error, UnpicklableError)
        assert "cannot pickle 'generator'" in str(error)
        # Without raw, the generator stays in the child and streams.
        d = yield q.call(letters, 2)
        assert isinstance(d, Deferator)
        assert (yield d.toList()) == ["a", "b"]
    finally:
        yield q.shutdown()


# ----------------------------------------------------------------------
# TaskQueue(timeout=...): AsynQueue's meaning


def test_queueTimeoutIsHowLongShutdownWaits(clock: Clock) -> None:
    q = TaskQueue(AsyncWorker(), clock=clock, shutdownWithReactor=False, timeout=3)
    assert q.settings.shutdownTimeout == 3 and q.settings.timeout is None
    slow: Deferred[Any] = Deferred()
    task = q.call(lambda: slow)
    # No run timeout: the task is not cut off however long it runs.
    clock.advance(100)
    assert not task.called
    down = q.shutdown()
    clock.advance(2.9)
    assert not down.called and not task.called
    clock.advance(0.2)
    # After the queue's timeout, shutdown cancelled what still ran.
    assert failureOf(task)
    assert down.called


def test_taskTimeoutIsTheRunTimeout(makeQueue: Callable[..., TaskQueue]) -> None:
    q = makeQueue(AsyncWorker(), taskTimeout=2)
    assert q.settings.timeout == 2


def test_timeoutAndShutdownTimeoutDisagreeing() -> None:
    with pytest.raises(ValueError, match="give one"):
        TaskQueue(shutdownWithReactor=False, timeout=1, shutdownTimeout=2)


def test_processQueueTakesTheSameKeywords() -> None:
    from asynqueue.settings import settingsForQueue

    keywords: dict[str, Any] = {"timeout": 4, "taskTimeout": 1, "warn": True}
    settings = settingsForQueue(keywords)
    assert isinstance(settings, Settings)
    assert settings.shutdownTimeout == 4 and settings.timeout == 1
    # What is the queue's own stays for TaskQueue.
    assert keywords == {"warn": True}


# ----------------------------------------------------------------------
# AsynQueue's worker keywords


def test_workersTakeTheirSeriesFirst() -> None:
    from asynqueue.workers.threads import ThreadWorker

    worker = ThreadWorker(["big"])
    assert worker.iQualified == ["big"] and worker.name.startswith("ThreadWorker")
    assert AsyncWorker(1, "named").name == "named"
    with pytest.raises(TypeError, match="name is a string"):
        ThreadWorker(["big"], series=["small"])


@pytest_twisted.inlineCallbacks
def test_rawThreadWorker() -> Any:
    from asynqueue.workers.threads import ThreadWorker

    q = TaskQueue(ThreadWorker(raw=True), shutdownWithReactor=False)
    try:
        it = yield q.call(letters, 3)
        assert not isinstance(it, Deferator) and list(it) == ["a", "b", "c"]
    finally:
        yield q.shutdown()


@pytest_twisted.inlineCallbacks
def test_rawProcessWorker() -> Any:
    from asynqueue.workers.process import ProcessWorker

    worker = ProcessWorker(raw=True, useReactor=True)
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        it = yield q.call(numbers, 3)
        assert not isinstance(it, Deferator) and list(it) == [0, 1, 2]
        assert worker.useReactor
    finally:
        yield q.shutdown()


def test_wireWorkerTakesAsynQueuesKeywords() -> None:
    from asynqueue.wire import WireWorker, WireWorkerUniverse

    worker = WireWorker(
        WireWorkerUniverse(),
        "unix:/nonexistent/node.sock",
        series=["logs"],
        raw=True,
        thread=True,
        N_concurrent=3,
        insecurePlaintext=True,
        reactor=Clock(),
    )
    assert worker.iQualified[0] == "logs"
