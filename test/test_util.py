"""Tests for asynqueue.util: DeferredTracker, DeferredLock and callableName."""

from __future__ import annotations

import functools
import gc
import warnings
from collections.abc import Callable
from typing import Any, cast

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import (
    AlreadyCalledError,
    CancelledError,
    Deferred,
    DeferredList,
    succeed,
)
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from asynqueue.errors import QueueRunError
from asynqueue.util import DeferredLock, DeferredTracker, callableName


def chainOf(d: Deferred[Any]) -> list[Any]:
    """A copy of d's callback chain (Deferred.callbacks is deprecated, not gone)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return list(cast(Any, d).callbacks)


def outcomes(d: Deferred[Any]) -> list[Any]:
    """Collect what d fires with (a result or a Failure), without consuming it later."""
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


# DeferredTracker.put: the tracked Deferred is left alone


def test_putReturnsItsDeferredAndCountsIt() -> None:
    tracker = DeferredTracker()
    d: Deferred[int] = Deferred()
    assert tracker.put(d) is d
    assert len(tracker) == 1
    assert isinstance(d, Deferred)
    d.callback(1)
    assert len(tracker) == 0
    assert d.result == 1


def test_putLeavesTheCallbackChainAsBuilt() -> None:
    tracker = DeferredTracker()
    d: Deferred[object] = Deferred()
    d.addCallback(lambda r: ("first", r))
    d.addErrback(lambda f: "recovered")
    before = chainOf(d)
    tracker.put(d)
    after = chainOf(d)
    assert after == before
    assert all(a is b for a, b in zip(after, before, strict=True))

    value = object()
    seen = outcomes(d)
    d.callback(value)
    assert seen == [("first", value)]
    assert seen[0][1] is value
    assert len(tracker) == 0


def test_callbacksAddedAfterPutSeeTheExactResult() -> None:
    tracker = DeferredTracker()
    d: Deferred[object] = Deferred()
    tracker.put(d)
    assert chainOf(d) == []
    value = object()
    seen = outcomes(d)
    d.callback(value)
    assert seen[0] is value


def test_failurePassesThroughUntouched(loggedErrors: list[dict[str, Any]]) -> None:
    tracker = DeferredTracker()
    d: Deferred[object] = Deferred()
    tracker.put(d)
    failure = Failure(ValueError("boom"))
    d.errback(failure)
    assert len(tracker) == 0
    seen: list[Failure] = []
    d.addErrback(seen.append)
    assert seen == [failure]
    assert seen[0] is failure
    del d
    gc.collect()
    assert loggedErrors == []


def test_unhandledFailureIsStillReported(loggedErrors: list[dict[str, Any]]) -> None:
    """The tracker neither causes nor swallows an 'Unhandled error in Deferred'."""

    def dropUnhandled(track: bool) -> list[dict[str, Any]]:
        d: Deferred[object] = Deferred()
        if track:
            tracker.put(d)
        d.errback(ValueError("nobody handles me"))
        del d
        gc.collect()
        logged = loggedErrors[:]
        del loggedErrors[:]
        return logged

    tracker = DeferredTracker()
    untracked = dropUnhandled(False)
    tracked = dropUnhandled(True)
    assert len(tracker) == 0
    assert len(tracked) == len(untracked) > 0
    failures = [e["log_failure"] for e in tracked if "log_failure" in e]
    assert [f.check(ValueError) for f in failures] == [ValueError]


def test_alreadyCalledIsNotPending() -> None:
    tracker = DeferredTracker()
    d = succeed(3)
    assert tracker.put(d) is d
    assert len(tracker) == 0
    assert type(d) is Deferred
    assert tracker.deferToAll().result is True


def test_classIsRestoredOnceFired() -> None:
    tracker = DeferredTracker()
    d: Deferred[int] = Deferred()
    tracker.put(d)
    assert type(d) is not Deferred
    d.callback(1)
    assert type(d) is Deferred
    assert "_asynqueueTrackers" not in vars(d)


def test_putTwiceTracksOnce() -> None:
    tracker = DeferredTracker()
    d: Deferred[int] = Deferred()
    tracker.put(d)
    tracker.put(d)
    assert len(tracker) == 1
    d.callback(1)
    assert len(tracker) == 0


def test_putRejectsNonDeferreds() -> None:
    tracker = DeferredTracker()
    for thing in (None, 1, object(), Failure(ValueError())):
        with pytest.raises(TypeError):
            tracker.put(thing)  # type: ignore[arg-type]
    assert len(tracker) == 0


def test_errbackIsNoticed() -> None:
    tracker = DeferredTracker()
    d: Deferred[int] = Deferred()
    tracker.put(d)
    errors: list[Failure] = []
    d.addErrback(errors.append)
    d.errback(KeyError("k"))
    assert len(tracker) == 0
    assert errors[0].check(KeyError)


def test_cancelIsNoticed() -> None:
    tracker = DeferredTracker()
    d: Deferred[int] = Deferred()
    tracker.put(d)
    done = tracker.deferToAll()
    d.cancel()
    assert len(tracker) == 0
    assert done.result is True
    errors: list[Failure] = []
    d.addErrback(errors.append)
    assert errors[0].check(CancelledError)
    # Without a canceller, the operation's late callback is swallowed by
    # Deferred itself; the tracker must not count it again.
    d.callback(5)
    assert len(tracker) == 0


def test_cancelWithACancellerThatCallsBackIsNoticed() -> None:
    tracker = DeferredTracker()
    d: Deferred[str] = Deferred(lambda d: d.callback("cancelled politely"))
    tracker.put(d)
    d.cancel()
    assert len(tracker) == 0
    assert d.result == "cancelled politely"


def test_callbackBoundBeforePutIsNoticed(clock: Clock) -> None:
    """Bound methods taken before put() (callLater, chainDeferred) still count."""
    tracker = DeferredTracker(clock)
    d1: Deferred[int] = Deferred()
    clock.callLater(1, d1.callback, 1)
    source: Deferred[int] = Deferred()
    d2: Deferred[int] = Deferred()
    source.chainDeferred(d2)
    d3 = deferLater(clock, 2, lambda: 3)
    for d in (d1, d2, d3):
        tracker.put(d)
    assert len(tracker) == 3
    clock.advance(1)
    assert len(tracker) == 2
    source.callback(2)
    assert len(tracker) == 1
    clock.advance(1)
    assert len(tracker) == 0
    assert (d1.result, d2.result, d3.result) == (1, 2, 3)


def test_pausedDeferredIsNoticedWhenCalled() -> None:
    tracker = DeferredTracker()
    d: Deferred[int] = Deferred()
    seen = outcomes(d)
    d.pause()
    tracker.put(d)
    d.callback(7)
    assert len(tracker) == 0
    assert seen == []
    d.unpause()
    assert seen == [7]


@pytest_twisted.ensureDeferred
async def test_trackedDeferredCanBeAwaited(clock: Clock) -> None:
    tracker = DeferredTracker(clock)
    d: Deferred[str] = Deferred()
    tracker.put(d)
    clock.callLater(1, d.callback, "awaited")

    async def wait() -> str:
        return await d

    result = Deferred.fromCoroutine(wait())
    assert not result.called
    clock.advance(1)
    assert await result == "awaited"
    assert len(tracker) == 0


def test_trackedDeferredReturnedFromACallbackStillChains() -> None:
    tracker = DeferredTracker()
    inner: Deferred[int] = Deferred()
    tracker.put(inner)
    outer: Deferred[None] = Deferred()
    seen = outcomes(outer.addCallback(lambda _: inner))
    outer.callback(None)
    assert seen == []
    inner.callback(9)
    assert seen == [9]
    assert len(tracker) == 0


def test_twoTrackersOnOneDeferred() -> None:
    first, second = DeferredTracker(), DeferredTracker()
    d: Deferred[int] = Deferred()
    first.put(d)
    second.put(d)
    before = chainOf(d)
    doneFirst, doneSecond = first.deferToAll(), second.deferToAll()
    assert chainOf(d) == before
    seen = outcomes(d)
    d.callback(4)
    assert (len(first), len(second)) == (0, 0)
    assert (doneFirst.result, doneSecond.result) == (True, True)
    assert seen == [4]
    assert type(d) is Deferred


def test_deferredSubclassKeepsItsBehaviour() -> None:
    tracker = DeferredTracker()
    members: list[Deferred[int]] = [Deferred(), Deferred()]
    dl = DeferredList(members, consumeErrors=True)
    tracker.put(dl)
    assert isinstance(dl, cast(type, DeferredList))
    # DeferredList.cancel (an override) still cancels its members.
    dl.cancel()
    assert all(m.called for m in members)
    assert len(tracker) == 0
    assert type(dl) is DeferredList


# Waiting


def test_deferToAll(clock: Clock) -> None:
    tracker = DeferredTracker(clock)
    assert tracker.deferToAll().result is True
    ds: list[Deferred[int]] = [tracker.put(Deferred()) for _ in range(3)]
    done = tracker.deferToAll(timeout=10)
    for d in ds[:2]:
        d.callback(0)
        assert not done.called
    # One put while waiting counts too.
    late: Deferred[int] = tracker.put(Deferred())
    ds[2].callback(0)
    assert not done.called
    late.callback(0)
    assert done.result is True
    assert clock.getDelayedCalls() == []


def test_deferToAllTimesOut(clock: Clock) -> None:
    tracker = DeferredTracker(clock)
    d: Deferred[int] = tracker.put(Deferred())
    done = tracker.deferToAll(timeout=5)
    clock.advance(4.9)
    assert not done.called
    clock.advance(0.1)
    assert done.result is False
    assert clock.getDelayedCalls() == []
    d.callback(1)  # No AlreadyCalledError on the timed-out waiter.
    assert done.result is False


def test_deferToAnyWatchesOnlyWhatIsPendingNow(clock: Clock) -> None:
    tracker = DeferredTracker(clock)
    assert tracker.deferToAny().result is True
    a: Deferred[int] = tracker.put(Deferred())
    b: Deferred[int] = tracker.put(Deferred())
    anyOne = tracker.deferToAny(timeout=3)
    late: Deferred[int] = tracker.put(Deferred())
    late.callback(0)
    assert not anyOne.called
    b.callback(0)
    assert anyOne.result is True
    assert clock.getDelayedCalls() == []
    assert len(tracker) == 1
    a.callback(0)


def test_deferToAnyTimesOut(clock: Clock) -> None:
    tracker = DeferredTracker(clock)
    tracker.put(Deferred())
    anyOne = tracker.deferToAny(timeout=3)
    clock.advance(3)
    assert anyOne.result is False


def test_deferToAnyAndManualWaits() -> None:
    tracker = DeferredTracker()
    d: Deferred[int] = tracker.put(Deferred())
    withoutManual = tracker.deferToAny()
    tracker.addWait()
    withManual = tracker.deferToAny()
    tracker.removeWait()
    assert withManual.result is True
    assert not withoutManual.called
    d.callback(0)
    assert withoutManual.result is True


def test_deferUntilFewer(clock: Clock) -> None:
    tracker = DeferredTracker(clock)
    assert tracker.deferUntilFewer(1).result is True
    ds: list[Deferred[int]] = [tracker.put(Deferred()) for _ in range(3)]
    assert tracker.deferUntilFewer(4).result is True
    fewer = tracker.deferUntilFewer(2, timeout=1)
    ds[0].callback(0)
    assert not fewer.called
    cameAndWent: Deferred[int] = tracker.put(Deferred())
    cameAndWent.callback(0)  # Back to where it was: still not fewer than 2.
    extra: Deferred[int] = tracker.put(Deferred())
    ds[1].callback(0)
    assert not fewer.called  # extra, put while waiting, counts.
    extra.callback(0)
    assert fewer.result is True
    assert len(tracker) == 1
    assert clock.getDelayedCalls() == []


def test_deferUntilFewerTimesOut(clock: Clock) -> None:
    tracker = DeferredTracker(clock)
    tracker.put(Deferred())
    tracker.put(Deferred())
    fewer = tracker.deferUntilFewer(2, timeout=2)
    clock.advance(2)
    assert fewer.result is False
    assert clock.getDelayedCalls() == []


def test_deferUntilFewerRejectsImpossibleCounts() -> None:
    tracker = DeferredTracker()
    for n in (0, -1):
        with pytest.raises(ValueError):
            tracker.deferUntilFewer(n)


def test_firingOrder() -> None:
    """The owner's callbacks run first, then waiters in the order they were made."""
    tracker = DeferredTracker()
    order: list[str] = []
    d: Deferred[int] = Deferred()

    def note(name: str) -> Callable[[object], object]:
        def noted(result: object) -> object:
            order.append(name)
            return result

        return noted

    d.addCallback(note("owner"))
    tracker.put(d)
    tracker.deferUntilFewer(1).addCallback(note("fewer"))
    tracker.deferToAny().addCallback(note("any"))
    tracker.deferToAll().addCallback(note("all"))
    d.addCallback(note("added later"))
    d.callback(1)
    assert order == ["owner", "added later", "fewer", "any", "all"]


def test_waiterCallbacksMayUseTheTracker() -> None:
    """A waiter's callbacks can put and wait again while others fire."""
    tracker = DeferredTracker()
    d: Deferred[int] = tracker.put(Deferred())
    nextOne: Deferred[int] = Deferred()
    waits: list[Deferred[bool]] = []

    def again(_: bool) -> None:
        tracker.put(nextOne)
        waits.append(tracker.deferToAll())

    tracker.deferToAll().addCallback(again)
    second = tracker.deferToAny()
    d.callback(0)
    assert second.result is True
    assert not waits[0].called
    nextOne.callback(0)
    assert waits[0].result is True


def test_quitWaiting(clock: Clock) -> None:
    tracker = DeferredTracker(clock)
    d: Deferred[int] = tracker.put(Deferred())
    waiters = [
        tracker.deferToAll(timeout=5),
        tracker.deferToAny(),
        tracker.deferUntilFewer(1, timeout=9),
    ]
    assert not tracker.notWaiting()
    tracker.quitWaiting()
    assert [w.result for w in waiters] == [True, True, True]
    assert clock.getDelayedCalls() == []
    assert tracker.notWaiting()
    assert tracker.deferToAll().result is True
    assert tracker.deferToAny().result is True
    assert len(tracker) == 1  # Still counted, just no longer waited for.
    d.callback(0)
    assert len(tracker) == 0


def test_cancellingAWaiterRemovesItAndItsTimeout(clock: Clock) -> None:
    tracker = DeferredTracker(clock)
    d: Deferred[int] = tracker.put(Deferred())
    cancelled = tracker.deferToAll(timeout=5)
    other = tracker.deferToAll(timeout=7)
    errors: list[Failure] = []
    cancelled.addErrback(errors.append)
    cancelled.cancel()
    assert errors[0].check(CancelledError)
    assert len(clock.getDelayedCalls()) == 1
    d.callback(0)  # Must not call the cancelled waiter again.
    assert other.result is True
    assert clock.getDelayedCalls() == []


def test_waiterCancelledByAnotherWaiterFiringTheSameTime() -> None:
    tracker = DeferredTracker()
    d: Deferred[int] = tracker.put(Deferred())
    second: list[Deferred[bool]] = []
    first = tracker.deferToAll().addCallback(lambda _: second[0].cancel())
    second.append(tracker.deferToAll())
    errors: list[Failure] = []
    second[0].addErrback(errors.append)
    d.callback(0)  # No AlreadyCalledError from firing the cancelled one.
    assert first.result is None
    assert errors[0].check(CancelledError)


def test_addWaitAndRemoveWait() -> None:
    tracker = DeferredTracker()
    assert tracker.notWaiting()
    tracker.addWait()
    tracker.addWait()
    assert len(tracker) == 2
    assert not tracker.notWaiting()
    done = tracker.deferToAll()
    tracker.removeWait()
    assert not done.called
    tracker.removeWait()
    assert done.result is True
    assert tracker.notWaiting()
    with pytest.raises(ValueError):
        tracker.removeWait()
    assert len(tracker) == 0


def test_emptyTrackerIsStillTrue() -> None:
    tracker = DeferredTracker()
    assert len(tracker) == 0
    assert (tracker or None) is tracker


_operations = st.lists(
    st.tuples(
        st.sampled_from(
            ["put", "callback", "errback", "cancel", "addWait", "removeWait"]
        ),
        st.integers(0, 50),
    ),
    max_size=30,
)


class _Model:
    """Drives a tracker and counts what should be pending, independently."""

    def __init__(self) -> None:
        self.tracker = DeferredTracker()
        self.pending: list[Deferred[int]] = []
        self.manual = 0

    @property
    def count(self) -> int:
        return len(self.pending) + self.manual

    def apply(self, op: str, i: int) -> None:
        if op == "put":
            d: Deferred[int] = Deferred()
            d.addErrback(lambda _: None)
            self.pending.append(self.tracker.put(d))
        elif op in ("callback", "errback", "cancel") and self.pending:
            d = self.pending.pop(i % len(self.pending))
            if op == "callback":
                d.callback(i)
            elif op == "errback":
                d.errback(ValueError(i))
            else:
                d.cancel()
        elif op == "addWait":
            self.tracker.addWait()
            self.manual += 1
        elif op == "removeWait" and self.manual:
            self.tracker.removeWait()
            self.manual -= 1

    def drain(self) -> list[tuple[str, int]]:
        return [("callback", 0)] * len(self.pending) + [("removeWait", 0)] * self.manual


@given(before=_operations, after=_operations, n=st.integers(1, 6))
def test_deferUntilFewerFiresExactlyWhenFewerArePending(
    before: list[tuple[str, int]], after: list[tuple[str, int]], n: int
) -> None:
    model = _Model()
    for op, i in before:
        model.apply(op, i)
        assert len(model.tracker) == model.count
    fewer = model.tracker.deferUntilFewer(n)
    reached = model.count < n
    assert fewer.called == reached
    for op, i in after:
        model.apply(op, i)
        reached = reached or model.count < n
        assert fewer.called == reached
    for op, i in model.drain():
        model.apply(op, i)
        reached = reached or model.count < n
        assert fewer.called == reached
    assert len(model.tracker) == 0
    assert fewer.result is True


# DeferredLock


def _acquireInto(
    lock: DeferredLock, order: list[str], name: str, vip: bool = False
) -> Deferred[DeferredLock]:
    def got(lock: DeferredLock) -> DeferredLock:
        order.append(name)
        return lock

    return lock.acquire(vip).addCallback(got)


def test_lockVipsGoFirstInTheirOrder() -> None:
    lock = DeferredLock()
    order: list[str] = []
    _acquireInto(lock, order, "holder")
    for name in ("r1", "v1", "r2", "v2"):
        _acquireInto(lock, order, name, vip=name.startswith("v"))
    assert order == ["holder"]
    for _ in range(4):
        lock.release()
    assert order == ["holder", "v1", "v2", "r1", "r2"]
    lock.release()
    assert not lock.locked


def test_lockCancelledWaitersKeepTheVipLineStraight() -> None:
    lock = DeferredLock()
    order: list[str] = []
    lock.acquire()
    v1 = _acquireInto(lock, order, "v1", vip=True)
    r1 = _acquireInto(lock, order, "r1")
    _acquireInto(lock, order, "r2")
    for d in (v1, r1):
        d.addErrback(lambda f: f.trap(CancelledError))
        d.cancel()
    _acquireInto(lock, order, "v2", vip=True)
    _acquireInto(lock, order, "v3", vip=True)
    _acquireInto(lock, order, "r3")
    for _ in range(4):
        lock.release()
    assert order == ["v2", "v3", "r2", "r3"]


def test_lockStopRunsStoppersInOrderOnceFree() -> None:
    lock = DeferredLock()
    calls: list[object] = []
    gate: Deferred[None] = Deferred()

    def second() -> Deferred[None]:
        calls.append("second")
        return gate

    async def fourth(x: int, y: int = 0) -> None:
        calls.append(("fourth", x, y))

    lock.addStopper(calls.append, "first")
    lock.addStopper(second)
    lock.addStopper(calls.append, "third")
    lock.addStopper(fourth, 1, y=2)
    lock.acquire()
    waiter = lock.acquire()
    stopped = lock.stop()
    assert calls == []
    lock.release()
    assert waiter.called  # Those waiting before stop() get the lock first.
    assert calls == []
    lock.release()
    assert calls == ["first", "second"]
    assert not stopped.called
    assert lock.locked  # The stoppers hold the lock while they run.
    gate.callback(None)
    assert calls == ["first", "second", "third", ("fourth", 1, 2)]
    assert stopped.called
    assert stopped.result is None
    assert not lock.locked


def test_lockStopWhenFreeRunsAtOnce() -> None:
    lock = DeferredLock()
    calls: list[str] = []
    lock.addStopper(calls.append, "only")
    stopped = lock.stop()
    assert calls == ["only"]
    assert stopped.called
    again = lock.stop()
    assert again.called
    assert again.result is None
    with pytest.raises(QueueRunError):
        lock.addStopper(calls.append, "too late")


def test_lockStopCalledTwiceWhileWaitingFiresBoth() -> None:
    lock = DeferredLock()
    lock.acquire()
    first, second = lock.stop(), lock.stop()
    assert not first.called and not second.called
    lock.release()
    assert first.called and second.called


def test_lockAcquireAfterStopFails() -> None:
    lock = DeferredLock()
    lock.stop()
    failures: list[Failure] = []
    for vip in (False, True):
        lock.acquire(vip).addErrback(failures.append)
    ran: list[int] = []
    lock.run(ran.append, 1).addErrback(failures.append)
    assert [f.check(QueueRunError) for f in failures] == [QueueRunError] * 3
    assert ran == []
    assert not lock.locked


def test_lockStopperFailures(loggedErrors: list[dict[str, Any]]) -> None:
    lock = DeferredLock()
    calls: list[str] = []

    def boom(exception: Exception) -> None:
        raise exception

    lock.addStopper(boom, ValueError("first"))
    lock.addStopper(calls.append, "after")
    lock.addStopper(boom, KeyError("second"))
    failures: list[Failure] = []
    lock.stop().addErrback(failures.append)
    assert calls == ["after"]
    assert failures[0].check(ValueError)
    assert [e["log_failure"].check(KeyError) for e in loggedErrors] == [KeyError]
    assert not lock.locked


@pytest_twisted.ensureDeferred
async def test_lockContextReleasesOnException() -> None:
    lock = DeferredLock()
    with pytest.raises(ZeroDivisionError):
        async with lock.context() as held:
            assert held is lock
            assert lock.locked
            1 / 0  # noqa: B018
    assert not lock.locked
    async with lock.context(vip=True):
        assert lock.locked
    assert not lock.locked


def test_lockContextWaitsItsTurn() -> None:
    lock = DeferredLock()
    order: list[str] = []

    async def use(name: str, vip: bool) -> None:
        async with lock.context(vip):
            order.append(name)

    lock.acquire()
    users = [
        Deferred.fromCoroutine(use("regular", False)),
        Deferred.fromCoroutine(use("vip", True)),
    ]
    assert order == []
    lock.release()
    assert order == ["vip", "regular"]
    assert all(u.called for u in users)
    assert not lock.locked


@pytest_twisted.ensureDeferred
async def test_lockContextAfterStopFails() -> None:
    lock = DeferredLock()
    await lock.stop()
    with pytest.raises(QueueRunError):
        async with lock.context():
            pytest.fail("entered a stopped lock")


def test_lockStillWorksAsTwistedsLock() -> None:
    lock = DeferredLock()
    assert lock.run(lambda x: x * 2, 21).result == 42
    assert not lock.locked
    lock.acquire()
    with pytest.raises(AssertionError):
        lock.release()
        lock.release()


# callableName


def _function() -> None:
    pass


class _Thing:
    def method(self) -> None:
        pass

    @classmethod
    def classMethod(cls) -> None:
        pass

    @staticmethod
    def staticMethod() -> None:
        pass

    def __call__(self) -> None:
        pass


def _nested() -> Any:
    def inner() -> None:
        pass

    return inner


@pytest.mark.parametrize(
    ("f", "name"),
    [
        (_function, "_function"),
        (_Thing().method, "_Thing.method"),
        (_Thing.method, "_Thing.method"),
        (_Thing.classMethod, "_Thing.classMethod"),
        (_Thing.staticMethod, "_Thing.staticMethod"),
        (_Thing(), "_Thing.__call__"),
        (_Thing, "_Thing"),
        (functools.partial(_function), "partial(_function)"),
        (functools.partial(_Thing().method), "partial(_Thing.method)"),
        (lambda: None, "<lambda>"),
        (_nested(), "_nested.inner"),
        (len, "len"),
        ([].append, "list.append"),
        (dict.fromkeys, "dict.fromkeys"),
        (str.upper, "str.upper"),
    ],
)
def test_callableName(f: object, name: str) -> None:
    assert callableName(f) == name


def test_callableNameOfLocalClassesAndLambdas() -> None:
    class Local:
        def method(self) -> None:
            pass

    assert callableName(Local().method) == (
        "test_callableNameOfLocalClassesAndLambdas.Local.method"
    )
    assert callableName(lambda: 0) == (
        "test_callableNameOfLocalClassesAndLambdas.<lambda>"
    )


def test_callableNameOfNonCallable() -> None:
    assert callableName(42) == "42"


def test_alreadyCalledErrorStillRaised() -> None:
    """A tracked Deferred called twice still complains, as untracked ones do."""
    tracker = DeferredTracker()
    d: Deferred[int] = Deferred()
    tracker.put(d)
    d.callback(1)
    with pytest.raises(AlreadyCalledError):
        d.callback(2)
    assert len(tracker) == 0
