"""
AsynQueue 0.9.9's small helpers, as its docs describe them: util.o2p/p2o,
util.killProcess, errors.InvariantError, iteration.Delay and deferToDelay.
"""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from zope.interface import Invalid

import asynqueue
from asynqueue import iteration, util
from asynqueue.errors import AsynQueueError, InvariantError


def firedWith(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    return results[0]


# o2p / p2o ------------------------------------------------------------------


def test_o2pRoundTrip() -> None:
    assert util.p2o(util.o2p({"a": [1, 2]})) == {"a": [1, 2]}


@pytest.mark.parametrize("empty", [[], (), {}])
def test_o2pEmptyContainerIsBlank(empty: object) -> None:
    assert util.o2p(empty) == b""


def test_p2oBlankGivesTheDefaultItself() -> None:
    default: list[int] = []
    assert util.p2o(b"", default) is default
    assert util.p2o(b"") is None


# InvariantError ---------------------------------------------------------------


def test_invariantError() -> None:
    error = InvariantError("worker")
    assert isinstance(error, Invalid)
    assert isinstance(error, AsynQueueError)
    assert repr(error) == "InvariantError(('worker',))"


# killProcess ------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start(code: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    assert process.stdout is not None
    # The child says when it is ready (its signal handler set).
    assert process.stdout.readline().strip() == b"ready"
    return process


@pytest_twisted.inlineCallbacks
def test_killProcessEndsAndReapsAChild() -> Any:
    process = _start("import time; print('ready', flush=True); time.sleep(60)")
    killed = yield util.killProcess(process.pid)
    assert killed is True
    # Reaped: not even a zombie is left.
    assert not _alive(process.pid)
    process.stdout.close()  # type: ignore[union-attr]


@pytest_twisted.inlineCallbacks
def test_killProcessKillsOneThatIgnoresSigterm() -> Any:
    process = _start(
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)"
    )
    killed = yield util.killProcess(process.pid, timeout=0.05)
    assert killed is True
    assert not _alive(process.pid)
    process.stdout.close()  # type: ignore[union-attr]


@pytest_twisted.inlineCallbacks
def test_killProcessOfOneGoneAlready() -> Any:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    killed = yield util.killProcess(process.pid)
    assert killed is False


def test_killProcessRefusesBadPid() -> None:
    with pytest.raises(ValueError, match="above 0"):
        util.killProcess(0)


# Delay ------------------------------------------------------------------------


def test_delayIsExported() -> None:
    assert iteration.Delay is asynqueue.legacy.delay.Delay
    assert iteration.deferToDelay is asynqueue.legacy.delay.deferToDelay


def test_delayFiresAfterItsDelay(clock: Clock) -> None:
    delay = iteration.Delay(reactor=clock)
    d = delay(1.5)
    clock.advance(1.4)
    assert not d.called
    clock.advance(0.1)
    assert firedWith(d) is None


def test_delayDefaultsToItsInterval(clock: Clock) -> None:
    d = iteration.Delay(interval=0.5, reactor=clock)()
    clock.advance(0.5)
    assert d.called


def test_deferToDelay(clock: Clock) -> None:
    d = iteration.deferToDelay(2, reactor=clock)
    clock.advance(2)
    assert d.called


def test_delayCancelled(clock: Clock) -> None:
    delay = iteration.Delay(reactor=clock)
    d = delay(1)
    d.cancel()
    d.addErrback(lambda f: None)
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("backoff", [0.9, 1.5])
def test_delayRefusesUnworkableBackoff(backoff: float) -> None:
    with pytest.raises(ValueError, match="backoff"):
        iteration.Delay(backoff=backoff)


def test_untilEventAlreadyTrue(clock: Clock) -> None:
    d = iteration.Delay(reactor=clock).untilEvent(lambda: True)
    assert firedWith(d) is True


def test_untilEventPassesArgs(clock: Clock) -> None:
    d = iteration.Delay(reactor=clock).untilEvent(lambda x, y=0: x + y == 3, 1, y=2)
    assert firedWith(d) is True


def test_untilEventFiresOnNotify(clock: Clock) -> None:
    state = {"ready": False}
    delay = iteration.Delay(reactor=clock)
    d = delay.untilEvent(lambda: state["ready"])
    assert not d.called
    state["ready"] = True
    delay.notify()
    # No time passed: the notification, not a poll, fired it.
    assert firedWith(d) is True
    assert clock.getDelayedCalls() == []


def test_untilEventChecksAgainOnBackoff(clock: Clock) -> None:
    state = {"ready": False}
    d = iteration.Delay(interval=0.1, backoff=1.2, reactor=clock).untilEvent(
        lambda: state["ready"]
    )
    clock.advance(0.1)
    assert not d.called
    state["ready"] = True
    clock.advance(0.11)
    assert not d.called
    clock.advance(0.01)
    assert firedWith(d) is True


def test_untilEventTimesOut(clock: Clock) -> None:
    d = iteration.Delay(interval=0.1, timeout=1.0, reactor=clock).untilEvent(
        lambda: False
    )
    clock.pump([0.1] * 9)
    assert not d.called
    clock.advance(0.2)
    assert firedWith(d) is False
    assert clock.getDelayedCalls() == []


def test_untilEventCheckerError(clock: Clock, loggedErrors: list[Any]) -> None:
    d = iteration.Delay(reactor=clock).untilEvent(lambda: 1 / 0)
    assert firedWith(d) is None
    assert len(loggedErrors) == 1


def test_untilEventDeferredChecker(clock: Clock) -> None:
    answer: Deferred[bool] = Deferred()
    d = iteration.Delay(reactor=clock).untilEvent(lambda: answer)
    assert not d.called
    answer.callback(True)
    assert firedWith(d) is True


def test_untilEventNeedsCallable() -> None:
    with pytest.raises(TypeError, match="callable"):
        iteration.Delay().untilEvent(42)  # type: ignore[arg-type]


def test_delayShutdownFiresEverything(clock: Clock) -> None:
    delay = iteration.Delay(reactor=clock)
    d1 = delay(10)
    d2 = delay.untilEvent(lambda: False)
    delay.shutdown()
    assert firedWith(d1) is None
    assert firedWith(d2) is True
    assert clock.getDelayedCalls() == []
    assert firedWith(delay(5)) is None
    assert firedWith(delay.untilEvent(lambda: False)) is True


@pytest_twisted.inlineCallbacks
def test_delayWithTheReactorLeavesNoTrigger() -> Any:
    from twisted.internet import reactor

    delay = iteration.Delay()
    d = delay(0)
    assert delay.triggerID is not None
    yield d
    assert delay.triggerID is None
    flag = yield delay.untilEvent(lambda: succeed(True))
    assert flag is True
    assert delay.triggerID is None
    del reactor


# IWorker's cQualified and invariant ------------------------------------------------


def test_qualificationsJoinClassAndInstanceSeries() -> None:
    from asynqueue.interfaces import qualifications

    class Worker(asynqueue.AsyncWorker):
        cQualified = ["async", "local"]

    worker = Worker(series=["logs", "local"])
    assert qualifications(worker) == ["logs", "local", "async"]
    assert qualifications(asynqueue.AsyncWorker(series=["x"])) == [
        "x",
        "async",
        "local",
    ]


def test_iWorkerInvariant() -> None:
    from asynqueue.interfaces import IWorker

    worker = asynqueue.AsyncWorker()
    IWorker.validateInvariants(worker)
    worker.iQualified = ("not", "a list")  # type: ignore[assignment]
    with pytest.raises(InvariantError):
        IWorker.validateInvariants(worker)


# util: callAfterDeferred, DeferredLock's and DeferredTracker's 0.9.9 forms ----------


class Holder:
    d: Deferred[Any]


def test_callAfterDeferredWaits() -> None:
    holder = Holder()
    holder.d = Deferred()
    d2 = util.callAfterDeferred(holder, "d", pow, 2, 5)
    assert not d2.called
    holder.d.callback("ignored")
    assert firedWith(d2) == 32
    assert not hasattr(holder, "d")


def test_callAfterDeferredWithoutOne() -> None:
    assert firedWith(util.callAfterDeferred(Holder(), "d", pow, 2, 2)) == 4
    holder = Holder()
    holder.d = succeed(None)
    assert firedWith(util.callAfterDeferred(holder, "d", pow, 3, 2)) == 9
    assert not hasattr(holder, "d")


def test_deferredLockAllowZombiesAndAcquireAndRelease() -> None:
    lock = util.DeferredLock(allowZombies=True)
    firedWith(lock.acquire())
    d = lock.acquireAndRelease()
    assert not d.called
    lock.release()
    assert firedWith(d) is None
    assert not lock.locked


def test_deferredLockWithContextUnderInlineCallbacks() -> None:
    from twisted.internet.defer import inlineCallbacks

    lock = util.DeferredLock()
    seen: list[bool] = []

    @inlineCallbacks
    def hold() -> Any:
        with lock.context() as d:
            yield d
            seen.append(lock.locked)
        seen.append(lock.locked)

    firedWith(hold())
    assert seen == [True, False]


def test_deferredLockWithContextNotWaitedFor() -> None:
    lock = util.DeferredLock()
    firedWith(lock.acquire())
    with lock.context() as d:
        assert not d.called
    # The request was withdrawn: releasing frees the lock for good.
    d.addErrback(lambda f: None)
    lock.release()
    assert not lock.locked


def test_deferredTrackerTakesIntervalAndBackoff(clock: Clock) -> None:
    for tracker in (
        util.DeferredTracker(interval=0.01, backoff=1.1),
        util.DeferredTracker(0.01),
    ):
        d: Deferred[None] = Deferred()
        tracker.put(d)
        done = tracker.deferToAll()
        assert not done.called
        d.callback(None)
        assert firedWith(done) is True


def test_processError() -> None:
    from asynqueue.errors import ProcessError, WorkerError

    assert issubclass(ProcessError, WorkerError)


def test_killProcessNotAllowed(monkeypatch: pytest.MonkeyPatch) -> None:
    # As for a process of another user (root may signal any, so the
    # kernel's refusal is stood in for).
    def refuse(pid: int, sig: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "kill", refuse)
    with pytest.raises(PermissionError, match="not allowed to signal process 1"):
        util.killProcess(1)
