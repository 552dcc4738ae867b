"""Tests of a queue's shutdown: what the calls it cancels say."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock

from asynqueue import MemoryWorker
from helpers import failureOf, result


def nothing() -> None:
    return None


def test_aShutdownTimeoutSaysSoInTheCancelledError(
    clock: Clock, makeQueue: Any
) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    running = q.call(nothing)
    pending = q.call(nothing)
    assert w.startNext() is not None
    done = q.shutdown(timeout=2)
    clock.advance(1.9)
    assert not running.called and not pending.called
    clock.advance(0.1)
    for d in (running, pending):
        error = failureOf(d).value
        assert isinstance(error, CancelledError)
        assert str(error) == "cancelled by shutdown after 2 s"
    assert done.called
    assert [r.state for r in q.records()] == ["cancelled", "cancelled"]


def test_cancelPendingSaysSo(clock: Clock, makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    running = q.call(nothing)
    pending = q.call(nothing)
    task = w.startNext()
    assert task is not None
    q.shutdown(timeout=0.5, cancelPending=True)
    assert str(failureOf(pending).value) == "cancelled by shutdown (cancelPending)"
    clock.advance(0.5)
    assert str(failureOf(running).value) == "cancelled by shutdown after 0.5 s"


def test_aCallerCancellingBeforeShutdownIsUnchanged(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    d: Deferred[Any] = q.call(nothing)
    d.cancel()
    assert failureOf(d).value.args == ()
    other = q.call(nothing)
    w.runNext()
    assert result(other) is None
