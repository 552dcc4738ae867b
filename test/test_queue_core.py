"""Tests of asynqueue.base.TaskQueue: scheduling, options, workers, shutdown."""

from __future__ import annotations

import gc
import math
import weakref
from functools import partial
from typing import Any

import pytest
from twisted.internet.defer import CancelledError, Deferred, gatherResults, succeed
from twisted.python.failure import Failure

from asynqueue import (
    AsyncWorker,
    MemoryWorker,
    NoQualifiedWorker,
    QueueRunError,
    TaskOptions,
    TaskQueue,
    TimeoutError,
    WorkerCrashed,
)
from asynqueue.errors import ImplementationError, LaneError
from helpers import failureOf, result


def recorder() -> tuple[list[Any], Any]:
    ran: list[Any] = []

    def f(x: Any) -> Any:
        ran.append(x)
        return x

    return ran, f


def test_callFiresWithResult(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    d = q.call(pow, 2, 10)
    assert not d.called
    assert w.runNext()
    assert result(d) == 1024


def test_taskExceptionReachesCallerWithItsType(
    makeQueue: Any, loggedErrors: Any
) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    d = q.call(lambda: 1 / 0)
    w.runNext()
    assert failureOf(d).check(ZeroDivisionError)
    del d
    gc.collect()
    assert loggedErrors == []


def test_notCallableFailsAtOnce(makeQueue: Any) -> None:
    q = makeQueue(MemoryWorker())
    f = failureOf(q.call(42))
    assert f.check(TypeError)
    assert "42 is not callable" in str(f.value)


def test_badOptionsFailAtOnce(makeQueue: Any) -> None:
    q = makeQueue(MemoryWorker())
    assert failureOf(q.call(min, 1, 2, niceness=50)).check(ValueError)
    assert failureOf(q.call(min, 1, 2, doNext=True, doLast=True)).check(ValueError)
    assert failureOf(q.call(min, 1, 2, timeout=-1)).check(ValueError)
    assert q.stats()["pending"] == 0


def test_numbersOfOtherTypesAreOptions(makeQueue: Any) -> None:
    # Decimal and Fraction priorities order as their values do.
    from decimal import Decimal
    from fractions import Fraction

    w = MemoryWorker()
    q = makeQueue(w)
    ran, f = recorder()
    q.call(f, "blocker")
    q.call(f, "later", priority=Decimal("1.5"), timeout=Decimal(2))
    q.call(f, "sooner", priority=Fraction(1, 2), timeout=Fraction(3, 2))
    w.runAll()
    assert ran == ["blocker", "sooner", "later"]


@pytest.mark.parametrize(
    "option, value, says",
    [
        ("priority", "high", "priority must be a number, not 'high'"),
        ("niceness", 1.5, "niceness must be a whole number, not 1.5"),
        ("timeout", "5", "timeout must be a number of seconds, not '5'"),
        ("retries", None, "retries must be a whole number, not None"),
        ("retries", "2", "retries must be a whole number, not '2'"),
        ("timeout", True, "timeout must be a number of seconds, not True"),
    ],
)
def test_optionsOfTheWrongTypeSaySo(
    makeQueue: Any, option: str, value: Any, says: str
) -> None:
    q = makeQueue(MemoryWorker())
    failure = failureOf(q.call(min, 1, 2, **{option: value}))
    assert failure.check(TypeError) and str(failure.value) == says
    assert q.stats()["pending"] == 0


def test_priorityOrderAndFifoAmongEquals(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    ran, f = recorder()
    q.call(f, "blocker")
    for name, priority in [("a", 5), ("b", 1), ("c", 5), ("d", -3), ("e", 1)]:
        q.call(f, name, priority=priority)
    q.call(f, "next", doNext=True)
    q.call(f, "last", doLast=True)
    q.call(f, "nice", niceness=2)
    w.runAll()
    assert ran == ["blocker", "next", "d", "b", "e", "nice", "a", "c", "last"]


def test_optionsMapping() -> None:
    assert TaskOptions(niceness=-20).effectivePriority == -20
    assert TaskOptions(doNext=True).effectivePriority == -math.inf
    assert TaskOptions(doLast=True).effectivePriority == math.inf
    assert TaskOptions().effectivePriority == 0
    kw = {"priority": 3, "x": 1}
    assert TaskOptions.fromKeywords(kw).priority == 3
    assert kw == {"x": 1}


def test_callWithPassesOptionNamedKeywordsToFunction(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)

    def f(priority: int, timeout: str) -> tuple[int, str]:
        return priority, timeout

    d = q.callWith(TaskOptions(priority=-1), f, priority=7, timeout="mine")
    w.runNext()
    assert result(d) == (7, "mine")


def test_tasksSpreadOverWorkersUpToCapacity(makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(capacity=2), MemoryWorker(capacity=1)
    q = makeQueue(w1, w2)
    ds = [q.call(lambda i=i: i) for i in range(5)]
    assert len(w1.accepted) == 2 and len(w2.accepted) == 1
    assert q.stats()["pending"] == 2
    w1.runAll()
    w2.runAll()
    w1.runAll()
    assert [result(d) for d in ds] == [0, 1, 2, 3, 4]


def test_seriesUnqualifiedFailsAtOnce(makeQueue: Any) -> None:
    q = makeQueue(MemoryWorker())
    f = failureOf(q.call(min, 1, 2, series="gpu"))
    assert f.check(NoQualifiedWorker)
    assert "gpu" in str(f.value)


def test_seriesRunsOnlyOnQualifiedWorkers(makeQueue: Any) -> None:
    plain, special = MemoryWorker(name="plain"), MemoryWorker(name="special")
    q = makeQueue(plain, special)
    q.qualifyWorker(special, "gpu")
    # Fill the qualified worker, then a series task must wait for it.
    q.call(lambda: "x", priority=5)
    q.call(lambda: "y", priority=5)
    d = q.call(lambda: "gpu work", series="gpu")
    assert not any(t.series == "gpu" for t, _ in plain.accepted)
    while special.runNext() or plain.runNext():
        pass
    assert result(d) == "gpu work"
    assert [r.worker for r in q.records() if r.series == "gpu"] == ["special"]


def test_lastQualifiedWorkerLeavingFailsItsPendingSeries(makeQueue: Any) -> None:
    special = MemoryWorker(series=["gpu"])
    q = makeQueue(special)
    q.call(lambda: 1, series="gpu")
    d = q.call(lambda: 2, series="gpu")
    q.detachWorker(special, crash=True, reassign=False)
    assert failureOf(d).check(NoQualifiedWorker)


def test_laneRunsOneAtATimeInOrder(makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(capacity=3), MemoryWorker(capacity=3)
    q = makeQueue(w1, w2)
    ran, f = recorder()
    ds = [q.call(f, i, lane="L", priority=-i) for i in range(4)]
    other = q.call(f, "free")
    accepted = [t for t, _ in list(w1.accepted) + list(w2.accepted)]
    assert sum(1 for t in accepted if t.lane == "L") == 1
    while w1.runNext() or w2.runNext():
        pass
    assert [r for r in ran if r != "free"] == [0, 1, 2, 3]
    assert [result(d) for d in ds] == [0, 1, 2, 3]
    assert result(other) == "free"


def test_stopOnLaneError(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)

    def boom() -> None:
        raise KeyError("bad")

    d1 = q.call(boom, lane="L", stopOnLaneError=True)
    d2 = q.call(lambda: 2, lane="L", stopOnLaneError=True)
    d3 = q.call(lambda: 3, lane="M", stopOnLaneError=True)
    w.runAll()
    assert failureOf(d1).check(KeyError)
    f2 = failureOf(d2)
    assert f2.check(LaneError) and isinstance(f2.value.cause, KeyError)
    assert result(d3) == 3
    assert failureOf(q.call(lambda: 4, lane="L", stopOnLaneError=True)).check(LaneError)
    q.clearLaneError("L")
    d5 = q.call(lambda: 5, lane="L", stopOnLaneError=True)
    w.runAll()
    assert result(d5) == 5


def test_laneErrorWithoutStopGoesOn(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    d1 = q.call(lambda: 1 / 0, lane="L")
    d2 = q.call(lambda: 2, lane="L")
    w.runAll()
    assert failureOf(d1).check(ZeroDivisionError)
    assert result(d2) == 2


def test_timeoutFailsRunningTask(makeQueue: Any, clock: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    d = q.call(lambda: 1, timeout=5)
    clock.advance(100)  # waiting time does not count
    assert not d.called
    task = w.startNext()
    assert task is not None
    clock.advance(4.9)
    assert not d.called
    clock.advance(0.2)
    f = failureOf(d)
    assert f.check(TimeoutError)
    assert "timeout of 5" in str(f.value)
    assert q.records()[0].state == "timedOut"
    assert w.started == {}


def test_timeoutCancelledWhenTaskFinishes(makeQueue: Any, clock: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    d = q.call(lambda: 1, timeout=5)
    w.runNext()
    assert result(d) == 1
    assert clock.getDelayedCalls() == []


def test_cancelPendingTaskNeverRuns(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    ran, f = recorder()
    q.call(f, "first")
    d = q.call(f, "second")
    d.cancel()
    assert failureOf(d).check(CancelledError)
    assert q.stats()["pending"] == 0
    w.runAll()
    assert ran == ["first"]
    assert q.stats()["cancelled"] == 1


def test_cancelRunningTaskCancelsWorkerDeferred(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    d = q.call(lambda: 1)
    w.startNext()
    d.cancel()
    assert failureOf(d).check(CancelledError)
    assert w.started == {}
    d2 = q.call(lambda: 2)
    w.runNext()
    assert result(d2) == 2


def test_firedDeferredIsItsTaskAndLeavesNoCycle(makeQueue: Any) -> None:
    # The caller's Deferred is the task itself: once fired, nothing of the
    # queue refers to it, so it dies by reference count, not by the cyclic
    # collector, and the call's arguments go as it ends, even while the
    # caller keeps the Deferred; a late cancel of it changes nothing.
    class Argument:
        pass

    w = MemoryWorker(capacity=2)
    q = makeQueue(w)
    argument = Argument()
    argumentGone = weakref.ref(argument)
    ok = q.call(lambda a: 1, argument)
    bad = q.call(lambda: 1 / 0)
    del argument
    assert ok.deferred is ok and bad.deferred is bad  # type: ignore[attr-defined]
    wasEnabled = gc.isenabled()
    gc.disable()
    try:
        w.runAll()
        assert result(ok) == 1
        assert failureOf(bad).check(ZeroDivisionError)
        assert argumentGone() is None
        ok.cancel()
        assert q.stats()["done"] == 1 and q.stats()["cancelled"] == 0
        okGone, badGone = weakref.ref(ok), weakref.ref(bad)
        del ok, bad
        assert okGone() is None and badGone() is None
    finally:
        if wasEnabled:
            gc.enable()


def test_cancelLaneMemberLetsLaneGoOn(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    ran, f = recorder()
    q.call(f, 1, lane="L")
    d2 = q.call(f, 2, lane="L")
    q.call(f, 3, lane="L")
    d2.cancel()
    w.runAll()
    assert ran == [1, 3]


def test_updateRunsOnEveryWorkerIncludingLaterOnes(makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(), MemoryWorker()
    q = makeQueue(w1, w2)
    seen: list[str] = []
    d = q.update(lambda tag: seen.append(tag) or tag, "u")
    w1.runAll()
    w2.runAll()
    assert result(d) == ["u", "u"]
    w3 = MemoryWorker(name="late")
    ready = q.attachWorker(w3)
    q.call(lambda: seen.append("task"))
    # The late worker runs the kept update before any task.
    assert [t.f for t, _ in w3.accepted][0].__name__ == "<lambda>"
    assert not ready.called
    w3.runNext()
    assert ready.called
    assert seen == ["u", "u", "u"]
    while w1.runNext() or w2.runNext() or w3.runNext():
        pass
    assert seen[-1] == "task"


def test_ephemeralUpdateNotKept(makeQueue: Any) -> None:
    w1 = MemoryWorker()
    q = makeQueue(w1)
    q.update(lambda: None, ephemeral=True)
    w1.runAll()
    w2 = MemoryWorker()
    assert q.attachWorker(w2).called
    assert not w2.accepted


def test_attachRejectsNonWorkers(makeQueue: Any) -> None:
    q = makeQueue()
    with pytest.raises(ImplementationError):
        q.attachWorker(object())


def test_workersLenAndStats(makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(name="a"), MemoryWorker(name="b")
    q = makeQueue(w1)
    q.attachWorker(w2)
    assert q.workers() == [w1, w2] and len(q) == 2
    ds = [q.call(lambda: 1), q.call(lambda: 1 / 0), q.call(lambda: 3)]
    w1.runAll()
    w2.runAll()
    w1.runAll()
    for d in ds:
        d.addErrback(lambda f: None)
    stats = q.stats()
    assert (stats["done"], stats["failed"], stats["pending"], stats["running"]) == (
        2,
        1,
        0,
        0,
    )
    assert stats["workers"]["a"]["done"] + stats["workers"]["b"]["done"] == 2
    assert stats["workers"]["b"]["failed"] == 1


def test_detachGentlyFinishesThenStops(makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(), MemoryWorker()
    q = makeQueue(w1, w2)
    d1 = q.call(lambda: 1)
    gone = q.detachWorker(w1)
    d2 = q.call(lambda: 2)
    assert not gone.called
    w1.runAll()
    assert gone.called and w1.stopped
    w2.runAll()
    assert result(d1) == 1 and result(d2) == 2
    assert q.workers() == [w2]


def test_crashReassignsUnstartedAndFailsRunning(makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(capacity=2, name="w1"), MemoryWorker(name="w2")
    q = makeQueue(w1)
    running = q.call(lambda: "r")
    waiting = q.call(lambda: "w")
    w1.startNext()
    q.attachWorker(w2)
    q.detachWorker(w1, crash=True)
    assert failureOf(running).check(WorkerCrashed)
    w2.runAll()
    assert result(waiting) == "w"
    assert [r.attempts for r in q.records()] == [1, 1]


def test_retriesAfterCrash(makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(name="w1"), MemoryWorker(name="w2")
    q = makeQueue(w1)
    ran, f = recorder()
    d = q.call(f, "x", retries=1)
    w1.startNext()
    q.attachWorker(w2)
    q.detachWorker(w1, crash=True)
    assert not d.called
    w2.runAll()
    assert result(d) == "x"
    assert q.records()[0].attempts == 2


def test_resignedWorkerTasksGoElsewhere(makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(capacity=2), MemoryWorker(capacity=2)
    q = makeQueue(w1, w2)
    ds = [q.call(lambda i=i: i) for i in range(4)]
    w1.resign()
    assert q.workers() == [w2]
    while w2.runNext():
        pass
    assert [result(d) for d in ds] == [0, 1, 2, 3]


def test_shutdownFinishesPendingThenStopsWorkers(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    ds = [q.call(lambda i=i: i) for i in range(3)]
    done = q.shutdown()
    assert not q.isRunning()
    assert failureOf(q.call(lambda: 1)).check(QueueRunError)
    assert not done.called
    w.runAll()
    assert done.called and w.stopped
    assert [result(d) for d in ds] == [0, 1, 2]
    assert q.shutdown().called  # again: the same, already fired


def test_shutdownCancelPending(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    first = q.call(lambda: 1)
    rest = [q.call(lambda: 2), q.call(lambda: 3, lane="L")]
    done = q.shutdown(cancelPending=True)
    for d in rest:
        assert failureOf(d).check(CancelledError)
    w.runAll()
    assert result(first) == 1 and done.called


def test_shutdownTimeoutCancelsRunning(makeQueue: Any, clock: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    running = q.call(lambda: 1)
    pending = q.call(lambda: 2)
    w.startNext()
    done = q.shutdown(timeout=10)
    clock.advance(9)
    assert not done.called
    clock.advance(1)
    assert failureOf(running).check(CancelledError)
    assert failureOf(pending).check(CancelledError)
    assert done.called


def test_waitFiresWhenIdle(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    assert q.wait().called
    q.call(lambda: 1)
    d = q.wait()
    assert not d.called
    w.runAll()
    assert d.called


def test_recordsTellWhatHappened(makeQueue: Any, clock: Any) -> None:
    w = MemoryWorker(name="mem")
    q = makeQueue(w)
    q.call(pow, 2, 3, name="power", priority=2, lane="p")
    clock.advance(3)
    task = w.startNext()
    clock.advance(2)
    assert task is not None
    w.finish(task, 8)
    (r,) = q.records()
    assert (r.name, r.function, r.priority, r.lane, r.worker) == (
        "power",
        "pow",
        2,
        "p",
        "mem",
    )
    assert (r.waitTime, r.runTime, r.state, r.outcome) == (3, 2, "done", "result")


def test_recordsInSubmissionOrderBoundedAndNotWalkedByTheCollector(
    makeQueue: Any,
) -> None:
    w = MemoryWorker(capacity=3)
    q = makeQueue(w, maxRecords=3)
    for name in "abcd":
        q.call(len, name, name=name).addErrback(lambda f: f.trap(CancelledError))
    first, second, third = (w.startNext() for _ in range(3))
    assert first is not None and second is not None and third is not None
    w.finish(third, 1)
    w.finish(first, 1)
    # Ended out of order, told in order: the newest three of four.
    assert [(r.name, r.state) for r in q.records()] == [
        ("b", "running"),
        ("c", "done"),
        ("d", "running"),
    ]
    # What is kept of an ended task is a row the collector stops walking.
    gc.collect()
    assert q._records.rows() and not any(
        gc.is_tracked(row) for row in q._records.rows()
    )
    assert q.records()[1] is not third.record
    assert q.records()[1].runTime == third.record.runTime


def test_deferredAndCoroutineFunctionsOnMemoryWorker(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)

    async def coro(x: int) -> int:
        return await succeed(x * 2)

    d1 = q.call(coro, 4)
    d2 = q.call(lambda: succeed("deferred"))
    w.runAll()
    assert result(d1) == 8 and result(d2) == "deferred"


@pytest.mark.parametrize("priority", [None, 1])
def test_asyncContextManagerShutsDown(priority: Any) -> None:
    from twisted.internet.task import Clock

    async def use() -> TaskQueue:
        async with TaskQueue(clock=Clock(), shutdownWithReactor=False) as q:
            assert q.isRunning()
        return q

    d = Deferred.fromCoroutine(use())
    assert not result(d).isRunning()


# ----------------------------------------------------------------------
# A property test of the scheduler


class CheckingWorker(MemoryWorker):
    """A memory worker checking that each task it gets is the most urgent it may run."""

    queue: TaskQueue

    def run(self, task: Any) -> Deferred[Any]:
        key = (task.priority, task.record.id)
        for series in [None, *self.iQualified]:
            for other in self.queue._pending.lines.get(series, []):
                if not other.cancelled:
                    otherKey = (other.priority, other.record.id)
                    assert key <= otherKey, f"{task} went ahead of more urgent {other}"
        return super().run(task)


def _scheduleScenario(data: Any) -> None:
    from hypothesis import strategies as st
    from twisted.internet.task import Clock

    nWorkers = data.draw(st.integers(1, 3), label="workers")
    workers = [
        CheckingWorker(capacity=data.draw(st.integers(1, 2)), name=f"w{i}")
        for i in range(nWorkers)
    ]
    q = TaskQueue(*workers, clock=Clock(), shutdownWithReactor=False)
    for w in workers:
        w.queue = q
    if data.draw(st.booleans(), label="series worker"):
        q.qualifyWorker(workers[0], "s")
    ran: list[int] = []
    tasks: list[tuple[int, Any, Deferred[Any]]] = []
    outcomes: dict[int, list[Any]] = {}
    for _ in range(data.draw(st.integers(0, 40), label="steps")):
        op = data.draw(st.sampled_from(["submit", "submit", "run", "cancel"]))
        if op == "submit":
            k = len(tasks)
            lane = data.draw(st.sampled_from([None, None, "A", "B"]))
            series = data.draw(st.sampled_from([None, None, "s"]))
            d = q.call(
                ran.append,
                k,
                priority=data.draw(st.integers(-2, 2)),
                lane=lane,
                series=series,
            )
            outcomes[k] = []
            d.addBoth(outcomes[k].append)
            tasks.append((k, lane, d))
        elif op == "run":
            data.draw(st.sampled_from(workers)).runNext()
        elif op == "cancel" and tasks:
            data.draw(st.sampled_from(tasks))[2].cancel()
    while any(w.runNext() for w in workers):
        pass
    for k in outcomes:
        assert len(outcomes[k]) == 1, f"task {k} fired {len(outcomes[k])} times"
        out = outcomes[k][0]
        if isinstance(out, Failure):
            assert out.check(CancelledError, NoQualifiedWorker), out
            assert k not in ran
        else:
            assert ran.count(k) == 1
    assert len(ran) == len(set(ran))
    for laneName in ("A", "B"):
        members = [k for k, lane, _ in tasks if lane == laneName and k in ran]
        assert [k for k in ran if k in members] == sorted(members)
    assert q.stats()["pending"] == 0 and q.stats()["running"] == 0


def test_schedulerProperties() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.data())
    def check(data: Any) -> None:
        _scheduleScenario(data)

    check()


def test_observeSeesEveryStep(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    events: list[tuple[str, int]] = []
    stop = q.observe(lambda event, record: events.append((event, record.id)))
    q.call(lambda: 1)
    q.call(lambda: 1 / 0).addErrback(lambda f: None)
    w.runAll()
    assert events == [
        ("submitted", 0),
        ("submitted", 1),
        ("started", 0),
        ("ended", 0),
        ("started", 1),
        ("ended", 1),
    ]
    stop()
    q.call(lambda: 2)
    assert len(events) == 6


def test_sizeCountsLikeEzpq(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    for _ in range(3):
        q.call(lambda: 1)
    task = w.startNext()
    assert (q.size(waiting=True), q.size(working=True), q.size(completed=True)) == (
        2,
        1,
        0,
    )
    w.finish(task, 1)
    w.runAll()
    assert q.size() == 3 and q.size(completed=True) == 3


def test_logFileGetsARowPerEndedTask(makeQueue: Any, tmp_path: Any) -> None:
    import csv

    path = tmp_path / "tasks.csv"
    w = MemoryWorker()
    q = makeQueue(w, logFile=str(path))
    q.call(pow, 2, 3, name="power")
    q.call(lambda: 1 / 0).addErrback(lambda f: None)
    w.runAll()
    rows = list(csv.DictReader(path.open()))
    assert [(r["name"], r["state"]) for r in rows] == [
        ("power", "done"),
        (rows[1]["name"], "failed"),
    ]


def test_waitWithProgressShowsABar(makeQueue: Any, capsys: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    for _ in range(3):
        q.call(lambda: None)
    d = q.wait(progress=True)
    w.runAll()
    assert d.called
    assert "3/3" in capsys.readouterr().err


# ----------------------------------------------------------------------
# AsynQueue's class qualifications


def test_classQualificationsAreQualifications(makeQueue: Any) -> None:
    from asynqueue.workers.threads import ThreadWorker

    class Local(MemoryWorker):
        cQualified = ["local"]

    local, other = Local(), MemoryWorker()
    q = makeQueue(other, local)
    # No qualifyWorker(): the class says it runs the "local" series.
    d = q.call(lambda: "here", series="local")
    local.runAll()
    assert other.runAll() == 0
    assert result(d) == "here"
    assert ThreadWorker.cQualified == ["thread", "local"]
    assert AsyncWorker.cQualified == ["async", "local"]


def test_callsMadeOneAtATimeAreSpreadOverWorkers(makeQueue: Any) -> None:
    # Each call is dispatched as it comes: without a turn for each worker,
    # the first with room would take them all, up to its capacity.
    first, second = MemoryWorker(capacity=4), MemoryWorker(capacity=4)
    q = makeQueue(first, second)
    ds = [q.call(pow, 2, i) for i in range(6)]
    assert len(first.accepted) == len(second.accepted) == 3
    first.runAll()
    second.runAll()
    assert [result(d) for d in ds] == [2**i for i in range(6)]


def test_callsOneAtATimeGoToTheWorkerIdleLast(makeQueue: Any) -> None:
    # A call that finds every worker idle goes to the one that ran out of
    # work last (its child or thread is the one awake), not to each in
    # turn; a burst still spreads over the idle workers.
    a, b = MemoryWorker(name="a"), MemoryWorker(name="b")
    q = makeQueue(a, b)
    ran = []
    for i in range(4):
        d = q.call(lambda x: x, i)
        worker = a if a.accepted else b
        ran.append(worker.name)
        worker.runAll()
        assert result(d) == i
    assert len(set(ran)) == 1
    burst = [q.call(lambda: 0) for _ in range(2)]
    assert len(a.accepted) == len(b.accepted) == 1
    a.runAll()
    b.runAll()
    assert [result(d) for d in burst] == [0, 0]


@pytest.mark.parametrize("how", ["call", "callWith"])
def test_aWaitingCallHoldsNoKeywordsDictOfItsOwn(makeQueue: Any, how: str) -> None:
    """
    A waiting call without keywords is three objects for the collector to
    count (the task, its callbacks and the arguments), not four: the empty
    dict made for its keywords is let go. A burst of calls gathered at once
    keeps them all alive, and every full pass of the collector walks them.
    """
    # All but the first wait: the worker takes one at a time.
    q = makeQueue(MemoryWorker())
    submit = q.call if how == "call" else partial(q.callWith, TaskOptions())
    calls = 1000
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        waiting = [submit(abs, i) for i in range(calls)]
        alive = gc.get_count()[0] - before
    finally:
        gc.enable()
    for d in waiting:
        d.addErrback(lambda f: f.trap(CancelledError))
    assert len(waiting) == calls
    assert alive / calls < 3.5
    kept = q.call(dict, a=1)
    kept.addErrback(lambda f: f.trap(CancelledError))
    assert kept.kwargs == {"a": 1}


def test_aTaskThatFiresGetsNoDictOfItsOwn(makeQueue: Any) -> None:
    """
    Tasks made in a burst and fired after it keep their attributes without
    a dict each (the Deferred's C{result} among them): a dict per call would
    be one more object for every pass of the collector to walk.
    """
    w = MemoryWorker()
    q = makeQueue(w)
    # Enough objects made before the first fires to use up the room CPython
    # keeps for new attribute names of a class.
    tasks = [q.call(abs, -i) for i in range(200)]
    gathered = gatherResults(tasks)
    while w.accepted:
        w.runNext()
    assert result(gathered) == list(range(200))
    # A dict of its own, not the (shared, empty) keywords.
    withDict = [
        t
        for t in tasks
        if any(type(o) is dict and o is not t.kwargs for o in gc.get_referents(t))
    ]
    assert withDict == []
