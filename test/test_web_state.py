"""
Tests of asynqueue.web.state, what the dashboard derives from a queue's
events, and of the event stream's coalescing, with MemoryWorker and Clock.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock
from zope.interface import implementer

from asynqueue import MemoryWorker, TaskQueue
from asynqueue.interfaces import IDescribedWorker
from asynqueue.web import Dashboard, QueueView
from asynqueue.web.server import EventClient, event
from asynqueue.web.state import describeFailure, priorityBand, shortCall, workerKind
from helpers import failureOf, result


def boom(n: int) -> None:
    raise ValueError(f"boom {n}")


def sleepy(*args: Any, **kwargs: Any) -> str:
    return "slept"


def attached(queue: TaskQueue, clock: Clock) -> QueueView:
    view = QueueView(queue, clock, window=10.0)
    view.attach()
    return view


def test_countsPendingByBandSeriesAndLane(makeQueue: Any, clock: Clock) -> None:
    worker = MemoryWorker(capacity=1, series=["s"])
    queue = makeQueue(worker)
    view = attached(queue, clock)
    # Taken by the worker at once: running, as the queue counts it.
    queue.call(sleepy)
    queue.call(sleepy, priority=-2)
    queue.call(sleepy, doNext=True)
    queue.call(sleepy, series="s")
    queue.call(sleepy, lane="L")
    queue.call(sleepy, lane="L")
    headline, _ = view.headline(clock.seconds())
    assert headline["pending"] == 5 and headline["running"] == 1
    assert headline["pendingBy"] == {
        "priority": {"-2": 1, "next": 1, "0": 3},
        "series": {"s": 1},
        "lane": {"L": 2},
    }
    # The most urgent first; one of a lane waits behind its front.
    assert [t["priority"] for t in view.pendingTasks()] == ["next", "-2", "0", "0", "0"]
    worker.runAll()
    headline, _ = view.headline(clock.seconds())
    assert headline["pending"] == 0 and headline["done"] == 6
    assert headline["pendingBy"] == {"priority": {}, "series": {}, "lane": {}}


def test_workerRowsRunningTasksAndUtilisation(makeQueue: Any, clock: Clock) -> None:
    worker = MemoryWorker(capacity=2, name="mem")
    queue = makeQueue(worker)
    view = attached(queue, clock)
    queue.call(sleepy, name="first")
    queue.call(boom, 1, name="second").addErrback(lambda _: None)
    first = worker.startNext()
    clock.advance(4)
    snapshot = view.snapshot()
    (row,) = snapshot["workers"]
    assert row["name"] == "mem" and row["kind"] == "reactor"
    assert row["state"] == "busy" and row["running"] == 2
    # Both were handed to it; one has started.
    assert [(t["name"], t["started"]) for t in row["tasks"]] == [
        ("first", 0.0),
        ("second", None),
    ]
    # One slot of two busy for the 4 s seen so far.
    assert row["utilisation"] == 0.5
    assert first is not None
    worker.finish(first, "ok")
    worker.runNext()
    clock.advance(4)
    (row,) = view.snapshot()["workers"]
    assert row["state"] == "ready" and row["done"] == 1 and row["failed"] == 1
    # 4 s busy of 2 slots × 8 s.
    assert row["tasks"] == [] and row["utilisation"] == 0.25


def test_failuresKeepTypeMessageAndTraceback(makeQueue: Any, clock: Clock) -> None:
    worker = MemoryWorker()
    queue = makeQueue(worker)
    view = attached(queue, clock)
    ds = [queue.call(boom, n) for n in range(25)]
    worker.runAll()
    for d in ds:
        failureOf(d)
    failures = view.snapshot()["failures"]
    # The newest 20, oldest first.
    assert len(failures) == 20
    assert failures[-1]["type"] == "ValueError"
    assert failures[-1]["message"] == "boom 24"
    assert "raise ValueError" in failures[-1]["traceback"]
    assert failures[0]["message"] == "boom 5"


def test_aRemoteTracebackIsShownAsItCame() -> None:
    from twisted.python.failure import Failure

    error = KeyError("k")
    error.remoteTraceback = "Traceback from the child:\n  line 1\n"  # type: ignore[attr-defined]
    assert describeFailure(Failure(error)) == (
        "KeyError",
        "'k'",
        "Traceback from the child:\n  line 1\n",
    )


def test_slowestTasksWithShortenedArguments(makeQueue: Any, clock: Clock) -> None:
    worker = MemoryWorker()
    queue = makeQueue(worker)
    view = attached(queue, clock)
    for n in range(15):
        queue.call(sleepy, n, "x" * 500, key=list(range(100)))
    while worker.accepted:
        task = worker.startNext()
        assert task is not None
        clock.advance(task.args[0] + 1)
        worker.finish(task, None)
    slowest = view.snapshot()["slowest"]
    assert [s["runTime"] for s in slowest] == [float(n + 1) for n in range(14, 4, -1)]
    call = slowest[0]["call"]
    assert call.startswith("sleepy(14, 'xxx") and "key=[0, 1, 2, 3, ...]" in call
    assert len(call) <= 200


def test_taskStreamWindowAndDeltas(makeQueue: Any, clock: Clock) -> None:
    worker = MemoryWorker(name="w")
    queue = makeQueue(worker)
    view = attached(queue, clock)
    queue.call(sleepy)
    worker.runAll()
    clock.advance(20)
    queue.call(boom, 1).addErrback(lambda _: None)
    queue.call(sleepy).addErrback(lambda _: None)
    worker.runNext()
    worker.startNext()
    # The first bar is older than the 10 s window.
    full = view.snapshot(full=True)["stream"]
    assert full["ended"] == [[1, "w", 20.0, 20.0, "failed"]]
    assert full["running"] == [[2, "w", 20.0, None, "running"]]
    # Deltas hold what ended since the last delta, once.
    assert len(view.snapshot(full=False)["stream"]["ended"]) == 1
    assert view.snapshot(full=False)["stream"]["ended"] == []


def test_rateAndETA(makeQueue: Any, clock: Clock) -> None:
    worker = MemoryWorker()
    queue = makeQueue(worker)
    view = attached(queue, clock)
    view.expect(30)
    for _ in range(10):
        for _n in range(2):
            queue.call(sleepy)
        worker.runAll()
        clock.advance(1)
        view.headline(clock.seconds())
    headline, _ = view.headline(clock.seconds())
    assert headline["rateNow"] == 2.0 and headline["rateAverage"] == 2.0
    assert headline["progress"] == 20 and headline["eta"] == 5.0


def test_anETAFromTheItemsAMapAnnounces(makeQueue: Any, clock: Clock) -> None:
    worker = MemoryWorker(capacity=100)
    queue = makeQueue(worker)
    view = attached(queue, clock)
    headline, _ = view.headline(clock.seconds())
    assert headline["expected"] is None and headline["eta"] is None
    deferator = queue.map(str, list(range(40)), chunksize=4)
    for _ in range(5):
        worker.runNext()  # 4 items a second
        clock.advance(1)
        view.headline(clock.seconds())
    headline, _ = view.headline(clock.seconds())
    assert (headline["expected"], headline["progress"]) == (40, 20)
    assert headline["eta"] == 5.0
    worker.runAll()
    assert len(result(deferator.toList())) == 40
    headline, _ = view.headline(clock.seconds())
    assert headline["progress"] == 40 and headline["eta"] == 0.0
    view.detach()
    queue.announceWork(expected=10)
    assert view.workExpected == 40


def test_cancelledPendingTaskLeavesTheCounts(makeQueue: Any, clock: Clock) -> None:
    worker = MemoryWorker()
    queue = makeQueue(worker)
    view = attached(queue, clock)
    queue.call(sleepy).addErrback(lambda _: None)
    d = queue.call(sleepy, lane="L")
    d.cancel()
    assert failureOf(d).check(CancelledError)
    headline, _ = view.headline(clock.seconds())
    assert headline["pendingBy"]["lane"] == {} and headline["cancelled"] == 1
    # A cancelled task stays in its line until it reaches the front: not counted.
    ds = [queue.call(sleepy, priority=5) for _ in range(3)]
    for d in ds:
        d.addErrback(lambda _: None)
    ds[1].cancel()
    headline, _ = view.headline(clock.seconds())
    assert headline["pendingBy"]["priority"] == {"5": 2}
    assert headline["pending"] == 2


def test_detachStopsObserving(makeQueue: Any, clock: Clock) -> None:
    worker = MemoryWorker()
    queue = makeQueue(worker)
    view = attached(queue, clock)
    queue.call(pow, 2, 2)
    worker.runAll()
    assert view.ended == 1
    view.detach()
    queue.call(pow, 2, 3)
    worker.runAll()
    assert view.ended == 1 and queue._endObservers == []


def test_namesAndBands() -> None:
    assert priorityBand(float("-inf")) == "next"
    assert priorityBand(float("inf")) == "last"
    assert priorityBand(1.5) == "1.5"
    assert workerKind(MemoryWorker()) == "reactor"
    assert shortCall("f", (1,), {"a": "b"}) == "f(1, a='b')"


class FakeRequest:
    """What an EventClient uses of a request."""

    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.producer: Any = None
        self.channel = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def write(self, data: bytes) -> None:
        self.written.append(data)


def test_aStalledClientIsSkippedThenSentEverythingOrDropped() -> None:
    request = FakeRequest()
    client = EventClient(request, maxMissed=3)  # type: ignore[arg-type]
    builds = []

    def full() -> bytes:
        builds.append(1)
        return b"full"

    assert client.offer(full, b"delta") and request.written == [b"full"]
    assert client.offer(full, b"delta") and request.written[-1] == b"delta"
    client.pauseProducing()
    for _ in range(3):
        assert client.offer(full, b"delta")
    assert len(request.written) == 2  # nothing piles up for a stalled client
    client.resumeProducing()
    assert client.offer(full, b"delta") and request.written[-1] == b"full"
    client.pauseProducing()
    assert [client.offer(full, b"delta") for _ in range(4)] == [True] * 3 + [False]
    assert len(builds) == 2


def test_pushesAreCoalesced(makeQueue: Any, clock: Clock) -> None:
    worker = MemoryWorker()
    queue = makeQueue(worker)
    dash = Dashboard(queue, clock=clock, interval=0.25, refresh=2.0)
    dash.view.attach()
    request = FakeRequest()
    client = EventClient(request, maxMissed=3)  # type: ignore[arg-type]
    dash.addClient(client)
    for _ in range(100):
        queue.call(sleepy)
    worker.runAll()
    assert len(request.written) == 1  # nothing yet: 100 ends wait for the timer
    clock.advance(0.25)
    assert len(request.written) == 2
    data = json.loads(request.written[-1].split(b"data: ", 1)[1])
    assert data["headline"]["done"] == 100 and len(data["stream"]["ended"]) == 100
    # With nothing new, the next push comes at the refresh, with no bars.
    clock.advance(1.9)
    assert len(request.written) == 2
    clock.advance(0.1)
    assert len(request.written) == 3
    assert (
        json.loads(request.written[-1].split(b"data: ", 1)[1])["stream"]["ended"] == []
    )
    # No page, no work.
    dash.removeClient(client)
    assert dash.view.onChange is None
    clock.advance(2)
    queue.call(sleepy)
    assert not clock.getDelayedCalls()
    dash.view.detach()


def test_eventsAreOneLineOfJSON() -> None:
    data = event({"name": "a\nb<script>"})
    assert data == b'event: snapshot\ndata: {"name":"a\\nb<script>"}\n\n'


@implementer(IDescribedWorker)
class ChildWorker(MemoryWorker):
    """A memory worker that says what a process worker says of its child."""

    replaced = 0

    def info(self) -> dict[str, Any]:
        return {"pid": 4321, "replaced": self.replaced}


def test_aReplacedChildShowsAsRespawned(makeQueue: Any, clock: Clock) -> None:
    worker = ChildWorker(name="child")
    queue = makeQueue(worker)
    view = attached(queue, clock)
    (row,) = view.snapshot()["workers"]
    assert (row["state"], row["restarts"], row["pid"]) == ("ready", 0, 4321)
    worker.replaced = 1
    clock.advance(1)
    (row,) = view.snapshot()["workers"]
    assert (row["state"], row["restarts"]) == ("respawned", 1)
    clock.advance(10)
    (row,) = view.snapshot()["workers"]
    assert (row["state"], row["restarts"]) == ("ready", 1)
