"""Tests of asynqueue.feed: Feeder and feed(), QuasiQueue's writer semantics."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.task import Clock

from asynqueue import AsyncWorker, MemoryWorker, TaskQueue, ThreadQueue
from asynqueue.feed import Feeder, FeederStats, feed
from asynqueue.settings import Settings
from helpers import failureOf, result

EXAMPLES = Path(__file__).resolve().parent.parent / "doc" / "examples"


class Writer:
    """A sync writer that gives the next C{desired} numbers and notes each call."""

    def __init__(self, queue: TaskQueue, limit: int | None = None) -> None:
        self.queue = queue
        self.numbers = itertools.count()
        self.limit = limit
        self.calls: list[tuple[int, int]] = []

    def __call__(self, desired: int) -> list[int]:
        self.calls.append((desired, self.queue.size(waiting=True)))
        items = [next(self.numbers) for _ in range(desired)]
        if self.limit is not None:
            items = [i for i in items if i < self.limit]
        return items


def ran(w: MemoryWorker, clock: Clock, n: int = 1) -> None:
    """Run C{n} tasks, then let the feeder look at the queue (its next turn)."""
    for _ in range(n):
        assert w.runNext()
    clock.advance(0)


def oneTurn(clock: Clock) -> int:
    """
    Run the calls due now, but not those they schedule for now.

    C{Clock.advance(0)} runs those too, which never ends when a feeder keeps
    a queue that drains at once fed.
    """
    due = [c for c in clock.calls if c.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)
    return len(due)


# ----------------------------------------------------------------------
# When the writer is asked, and for how much


def test_writerAskedOnlyWhilePendingBelowLowWater(makeQueue: Any, clock: Clock) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    writer = Writer(q)
    feeder = Feeder(q, writer, str, lowWater=3, blockSize=2)
    feeder.start()
    # The first item goes straight to the (idle) worker, so two asks are
    # needed before three tasks are waiting.
    assert writer.calls == [(2, 0), (2, 1)]
    assert q.size(waiting=True) == 3
    clock.advance(100)
    task = w.startNext()  # an event, but no task left the waiting state
    assert task is not None
    clock.advance(0)
    assert writer.calls == [(2, 0), (2, 1)]
    w.finish(task)  # now one did: 2 are waiting
    assert writer.calls == [(2, 0), (2, 1)]  # looked at on the next turn
    clock.advance(0)
    assert writer.calls == [(2, 0), (2, 1), (2, 2)]


def test_writerAskedAgainWhenTasksLeave(makeQueue: Any, clock: Clock) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    writer = Writer(q)
    Feeder(q, writer, str, lowWater=3, blockSize=2).start()
    ran(w, clock, 2)  # four events, one look
    assert writer.calls[2:] == [(2, 1)]
    ran(w, clock)
    assert writer.calls[2:] == [(2, 1), (2, 2)]
    assert q.size(waiting=True) == 4
    assert all(pending < 3 for _, pending in writer.calls)


def test_noTimersWhileWaitingForRoom(makeQueue: Any, clock: Clock) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    Feeder(q, Writer(q), str, lowWater=3, blockSize=2).start()
    # Event driven: nothing is scheduled while the queue is full enough.
    assert clock.getDelayedCalls() == []
    w.runNext()
    assert len(clock.getDelayedCalls()) == 1


def test_desiredIsBlockSize(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue()  # no worker: every task waits
    writer = Writer(q)
    Feeder(q, writer, str, lowWater=20, blockSize=7).start()
    assert [desired for desired, _ in writer.calls] == [7, 7, 7]
    assert q.size(waiting=True) == 21


def test_budgetPerTurnKeepsReactorFree(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue(AsyncWorker())  # drains the queue as fast as it is fed
    writer = Writer(q, limit=1000)  # so that a feeder without a budget ends
    feeder = Feeder(q, writer, str, lowWater=4, blockSize=2)
    feeder.start()
    assert len(writer.calls) == 2  # lowWater items in this turn, no more
    assert oneTurn(clock) == 1
    assert len(writer.calls) == 4
    assert oneTurn(clock) == 1
    assert len(writer.calls) == 6
    feeder.stop()
    assert clock.getDelayedCalls() == []


# ----------------------------------------------------------------------
# "Nothing now" and exhaustion


def test_noneWaitsEmptySleepOnTheClock(makeQueue: Any, clock: Clock) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    answers: list[Any] = [None, ["a"], []]
    asked: list[float] = []

    def writer(desired: int) -> Any:
        asked.append(clock.seconds())
        return answers.pop(0)

    feeder = Feeder(q, writer, str, emptySleep=5)
    d = feeder.start()
    assert asked == [0]
    assert feeder.stats().empty == 1
    clock.advance(4.9)
    assert asked == [0]
    clock.advance(0.1)
    assert asked == [0, 5.0, 5.0]
    assert feeder.stats().fed == 1
    assert result(d) is None and feeder.reason == "exhausted"


def test_noneAmongItemsEndsTheAnswer(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue()
    answers: list[Any] = [["a", None, "b"], []]
    fed: list[str] = []
    feeder = Feeder(q, lambda n: answers.pop(0), fed.append, emptySleep=2)
    feeder.start()
    assert feeder.stats() == FeederStats(asks=1, fed=1, empty=1)
    clock.advance(2)
    assert feeder.reason == "exhausted"


@pytest.mark.parametrize(
    "exhausted",
    [
        lambda n: [],
        lambda n: iter(()),
        lambda n: (x for x in range(0)),
        lambda n: succeed(()),
        pytest.param(lambda n: next(iter(())), id="StopIteration"),
    ],
    ids=["list", "iterator", "generator", "Deferred", "StopIteration"],
)
def test_emptyAnswerEndsTheFeeder(
    makeQueue: Any, exhausted: Callable[[int], Any]
) -> None:
    feeder = Feeder(makeQueue(), exhausted, str)
    d = feeder.start()
    assert result(d) is None
    assert feeder.reason == "exhausted" and not feeder.isRunning()


def test_stopAsyncIterationFromAsyncWriterEndsTheFeeder(makeQueue: Any) -> None:
    async def writer(desired: int) -> list[int]:
        raise StopAsyncIteration

    feeder = Feeder(makeQueue(), writer, str)
    assert result(feeder.start()) is None
    assert feeder.reason == "exhausted"


def test_allDuplicatesCountAsNothingNow(makeQueue: Any, clock: Clock) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    asked: list[float] = []

    def writer(desired: int) -> list[str]:
        asked.append(clock.seconds())
        return ["same"]

    feeder = Feeder(q, writer, str, lowWater=1, emptySleep=3, preventRequeueTime=60)
    feeder.start()
    assert asked == [0, 0]  # the second answer was all duplicates: sleep
    clock.advance(2.9)
    assert asked == [0, 0]
    clock.advance(0.1)
    assert asked == [0, 0, 3]
    assert feeder.stats().duplicates == 2 and feeder.stats().empty == 0


# ----------------------------------------------------------------------
# Duplicates


def test_duplicatesDroppedWithinPreventRequeueTime(
    makeQueue: Any, clock: Clock
) -> None:
    w = MemoryWorker(capacity=10)
    q = makeQueue(w)
    fedAt: dict[str, list[float]] = {}

    def f(item: str) -> None:
        fedAt.setdefault(item, []).append(clock.seconds())

    feeder = Feeder(
        q, lambda n: ["a", "b"], f, lowWater=1, emptySleep=5, preventRequeueTime=10
    )
    feeder.start()
    for _ in range(5):
        w.runAll()
        clock.advance(0)
        clock.advance(5)
    w.runAll()
    # Queued at 0; dropped at 0 and 5; at 10 (exactly the window) queued again.
    assert fedAt == {"a": [0, 10, 20], "b": [0, 10, 20]}
    # Each time an answer is queued, the next (at once) is all duplicates.
    assert feeder.stats().asks == 9
    assert feeder.stats().duplicates == 2 * (9 - 3)


def test_duplicatesWithinOneAnswerDropped(makeQueue: Any) -> None:
    fed: list[str] = []
    answers = [["x", "x", "y"], []]
    feeder = Feeder(makeQueue(AsyncWorker()), lambda n: answers.pop(0), fed.append)
    feeder.start()
    assert fed == ["x", "y"]
    assert feeder.stats().duplicates == 1


def test_memoryOfItemsExpires(makeQueue: Any, clock: Clock) -> None:
    w = MemoryWorker(capacity=10)
    q = makeQueue(w)
    numbers = itertools.count()
    given: list[tuple[float, int]] = []

    def writer(desired: int) -> list[int]:
        given.append((clock.seconds(), desired))
        return [next(numbers) for _ in range(desired)]

    feeder = Feeder(q, writer, str, lowWater=1, blockSize=10, preventRequeueTime=5)
    feeder.start()
    for _ in range(20):
        w.runAll()
        clock.advance(1)
    # Forgotten when the feeder next queues items: those queued 5 s before
    # that or more are gone.
    last = given[-1][0]
    recent = sum(n for t, n in given if last - t < 5)
    assert 0 < recent < sum(n for _, n in given)
    assert len(feeder._seen) == recent
    assert len(feeder._seenOrder) == recent


def test_noMemoryWithoutPreventRequeueTime(makeQueue: Any) -> None:
    fed: list[Any] = []
    answers = [[[1], [1]], [[1]], []]  # unhashable, and repeated
    feeder = Feeder(
        makeQueue(AsyncWorker()),
        lambda n: answers.pop(0),
        fed.append,
        preventRequeueTime=0,
    )
    assert result(feeder.start()) is None
    assert fed == [[1], [1], [1]]
    assert feeder.stats().duplicates == 0


def test_unhashableItemStopsTheFeeder(makeQueue: Any, loggedErrors: Any) -> None:
    feeder = Feeder(makeQueue(), lambda n: [[1, 2]], str)
    f = failureOf(feeder.start())
    assert f.check(TypeError) and "unhashable" in str(f.value)
    assert feeder.reason == "failed"
    assert len(loggedErrors) == 1


# ----------------------------------------------------------------------
# Kinds of writer


def test_syncGeneratorIsDrawnLazilyAndResumed(makeQueue: Any, clock: Clock) -> None:
    w = MemoryWorker(capacity=100)
    q = makeQueue(w)
    produced: list[int] = []
    calls: list[int] = []

    def writer(desired: int) -> Iterator[int]:
        calls.append(desired)
        if len(calls) > 1:
            return iter(())
        return (produced.append(i) or i for i in range(25))  # type: ignore[func-returns-value]

    feeder = Feeder(q, writer, str, lowWater=1, blockSize=10)
    feeder.start()
    assert len(produced) == 10 and calls == [10]
    oneTurn(clock)
    assert len(produced) == 20 and calls == [10]
    oneTurn(clock)
    # 5 left in the generator; then the writer is asked and is exhausted.
    assert len(produced) == 25 and calls == [10, 10]
    assert feeder.reason == "exhausted"
    assert feeder.stats().fed == 25 and feeder.stats().asks == 2


def test_listLongerThanDesiredIsQueuedWhole(makeQueue: Any) -> None:
    q = makeQueue()
    answers = [list(range(50)), []]
    feeder = Feeder(q, lambda n: answers.pop(0), str, lowWater=5, blockSize=2)
    feeder.start()
    assert q.size(waiting=True) == 50
    assert feeder.stats().asks == 1


def test_deferredWriterAnsweringLater(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue()
    pending: list[Deferred[Any]] = []

    def writer(desired: int) -> Deferred[Any]:
        pending.append(Deferred())
        return pending[-1]

    feeder = Feeder(q, writer, str, lowWater=3, blockSize=2)
    d = feeder.start()
    assert len(pending) == 1
    pending[0].callback(["a", "b"])
    assert len(pending) == 2  # still low: asked again at once
    pending[1].callback(["c", "d"])
    assert len(pending) == 2 and q.size(waiting=True) == 4
    assert not d.called


def test_asyncFunctionWriter(makeQueue: Any) -> None:
    q = makeQueue()
    gate: Deferred[None] = Deferred()
    fed: list[str] = []

    async def writer(desired: int) -> list[str] | None:
        await gate
        return [f"item{desired}"]

    feeder = Feeder(q, writer, fed.append, lowWater=1, blockSize=3)
    feeder.start()
    assert q.size(waiting=True) == 0 and feeder.stats().asks == 1
    gate.callback(None)
    assert q.size(waiting=True) == 1
    assert feeder.stats().fed == 1


def test_asyncGeneratorWriterDrawnDesiredPerAsk(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue()
    yielded: list[int] = []
    gates: list[Deferred[None]] = []

    async def writer(desired: int) -> AsyncIterator[int]:
        for i in itertools.count():
            if i == 5:
                gates.append(Deferred())
                await gates[-1]
            yielded.append(i)
            yield i

    feeder = Feeder(q, writer, str, lowWater=6, blockSize=4)
    feeder.start()
    # Four taken; still low, so the same generator is resumed, and it now
    # waits on a Deferred.
    assert yielded == [0, 1, 2, 3, 4] and len(gates) == 1
    assert feeder.stats().asks == 1
    gates[0].callback(None)
    assert yielded == list(range(8))
    assert feeder.stats().fed == 8 and feeder.stats().asks == 1


def test_asyncGeneratorEndingAtOnceExhausts(makeQueue: Any) -> None:
    async def writer(desired: int) -> AsyncIterator[int]:
        for i in range(0):
            yield i

    feeder = Feeder(makeQueue(), writer, str)
    assert result(feeder.start()) is None and feeder.reason == "exhausted"


def test_writerExceptionStopsTheFeederAfterItsItems(
    makeQueue: Any, loggedErrors: Any
) -> None:
    q = makeQueue()

    def writer(desired: int) -> Iterator[int]:
        yield 1
        yield 2
        raise ValueError("no more database")

    feeder = Feeder(q, writer, str)
    f = failureOf(feeder.start())
    assert f.check(ValueError)
    assert feeder.stats().fed == 2 and feeder.reason == "failed"
    assert len(loggedErrors) == 1


def test_writerReturningNonsenseFails(makeQueue: Any, loggedErrors: Any) -> None:
    for answer in (42, "abc"):

        def writer(desired: int, answer: Any = answer) -> Any:
            return answer

        feeder = Feeder(makeQueue(), writer, str)
        assert failureOf(feeder.start()).check(TypeError)
    assert len(loggedErrors) == 2


# ----------------------------------------------------------------------
# Stopping


def test_stopWaitsForTheWriterAndQueuesItsItems(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue()
    answer: Deferred[Any] = Deferred()
    feeder = Feeder(q, lambda n: answer, str)
    started = feeder.start()
    stopped = feeder.stop()
    assert not stopped.called and not started.called
    answer.callback(["a", "b"])
    assert result(stopped) is None and result(started) is None
    assert q.size(waiting=True) == 2
    assert feeder.reason == "stopped" and feeder.stats().asks == 1


def test_stopWithTimeoutAbandonsTheWriter(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue()
    cancelled: list[bool] = []
    gate: Deferred[None] = Deferred(lambda d: cancelled.append(True))

    async def writer(desired: int) -> list[str]:
        try:
            await gate
        except CancelledError:
            cancelled.append(False)
            raise
        return ["late"]

    feeder = Feeder(q, writer, str)
    started = feeder.start()
    stopped = feeder.stop(timeout=5)
    clock.advance(4.9)
    assert not stopped.called
    clock.advance(0.1)
    assert result(stopped) is None and result(started) is None
    assert cancelled == [True, False]  # the coroutine saw CancelledError
    assert q.size() == 0 and feeder.stats().fed == 0
    assert clock.getDelayedCalls() == []


def test_stopWithTimeoutIgnoresALateAnswer(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue()
    answer: Deferred[Any] = Deferred(lambda d: None)  # cannot really be cancelled
    feeder = Feeder(q, lambda n: answer, str)
    feeder.start()
    assert result(feeder.stop(timeout=0)) is None
    assert answer.called  # cancelled: CancelledError, which is dropped
    assert q.size() == 0


def test_stopWhileSleepingStopsAtOnce(makeQueue: Any, clock: Clock) -> None:
    feeder = Feeder(makeQueue(), lambda n: None, str, emptySleep=100)
    d = feeder.start()
    assert len(clock.getDelayedCalls()) == 1
    assert result(feeder.stop()) is None and result(d) is None
    assert clock.getDelayedCalls() == []


def test_stopWhileWaitingForRoom(makeQueue: Any, clock: Clock) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    writer = Writer(q)
    feeder = Feeder(q, writer, str, lowWater=3, blockSize=2)
    feeder.start()
    assert result(feeder.stop()) is None
    w.runAll()
    clock.advance(0)
    assert len(writer.calls) == 2  # no ask after stop()
    assert result(feeder.stop()) is None  # again: fine


def test_stopBeforeStart(makeQueue: Any) -> None:
    q = makeQueue()
    feeder = Feeder(q, Writer(q), str)
    assert result(feeder.stop()) is None
    assert result(feeder.start()) is None
    assert feeder.stats().asks == 0 and q._observers == []


def test_queueShutdownEndsTheFeeder(makeQueue: Any, clock: Clock) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    writer = Writer(q)
    feeder = Feeder(q, writer, str, lowWater=3, blockSize=2)
    d = feeder.start()
    shutdown = q.shutdown(cancelPending=True)
    clock.advance(0)
    assert result(d) is None and feeder.reason == "queueStopped"
    assert q._observers == []
    assert len(writer.calls) == 2
    w.runAll()
    assert result(shutdown) is None


def test_queueShutdownWhileSleepingEndsTheFeederOnWaking(
    makeQueue: Any, clock: Clock
) -> None:
    q = makeQueue()
    feeder = Feeder(q, lambda n: None, str, emptySleep=10)
    d = feeder.start()
    q.shutdown()
    assert not d.called  # no event: the feeder notices when it wakes
    clock.advance(10)
    assert result(d) is None and feeder.reason == "queueStopped"
    assert feeder.stats().asks == 1


def test_queueShutdownWhileSleepingWithTasksEndsTheFeederAtOnce(
    makeQueue: Any, clock: Clock
) -> None:
    q = makeQueue()
    answers: list[Any] = [["a", "b"], None]
    feeder = Feeder(q, lambda n: answers.pop(0), str, lowWater=5, emptySleep=10)
    d = feeder.start()
    assert q.size(waiting=True) == 2 and feeder.stats().empty == 1
    q.shutdown(cancelPending=True)  # the cancelled tasks end: events
    clock.advance(0)
    assert result(d) is None and feeder.reason == "queueStopped"
    assert clock.seconds() == 0 and clock.getDelayedCalls() == []


def test_queueShutdownWhileAskingDropsTheAnswer(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue()
    answer: Deferred[Any] = Deferred()
    feeder = Feeder(q, lambda n: answer, str)
    d = feeder.start()
    q.shutdown()
    answer.callback(["a", "b"])
    assert result(d) is None and feeder.reason == "queueStopped"
    assert feeder.stats().fed == 0


# ----------------------------------------------------------------------
# Tasks, options, settings


def test_taskFailuresLoggedAndCounted(
    makeQueue: Any, clock: Clock, loggedErrors: Any
) -> None:
    w = MemoryWorker(capacity=10)
    q = makeQueue(w)
    answers = [[1, 0, 2], []]
    feeder = Feeder(q, lambda n: answers.pop(0), lambda x: 1 / x)
    feeder.start()
    joined = feeder.join()
    assert feeder.reason == "exhausted" and not joined.called
    assert feeder.outstanding == 3
    w.runAll()
    assert result(joined) is None
    assert feeder.stats().done == 2 and feeder.stats().failed == 1
    assert len(loggedErrors) == 1


def test_callOptionsGoToEachCall(makeQueue: Any) -> None:
    q = makeQueue()
    answers = [["x"], []]
    Feeder(q, lambda n: answers.pop(0), str, callOptions={"priority": 7}).start()
    assert q.records()[0].priority == 7
    with pytest.raises(TypeError):
        Feeder(q, lambda n: [], str, callOptions={"bogus": 1})
    with pytest.raises(ValueError):
        Feeder(q, lambda n: [], str, callOptions={"timeout": -1})


def test_badArguments(makeQueue: Any) -> None:
    q = makeQueue()
    with pytest.raises(TypeError):
        Feeder(q, "writer", str)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Feeder(q, lambda n: [], 42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="lowWater"):
        Feeder(q, lambda n: [], str, lowWater=0)
    with pytest.raises(ValueError, match="emptySleep"):
        Feeder(q, lambda n: [], str, emptySleep=-1)


def test_defaultsFromTheEnvironment(
    makeQueue: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ASYNQUEUE_LOW_WATER", "7")
    monkeypatch.setenv("IMAGES_BLOCK_SIZE", "3")
    monkeypatch.setenv("IMAGES_EMPTY_QUEUE_SLEEP_TIME", "0.5")
    q = makeQueue(name="images")
    feeder = Feeder(q, lambda n: [], str, blockSize=None, preventRequeueTime=9)
    assert (feeder.lowWater, feeder.blockSize, feeder.emptySleep) == (7, 3, 0.5)
    assert feeder.preventRequeueTime == 9


def test_defaultsFromTheQueuesSettings(makeQueue: Any) -> None:
    q = makeQueue()
    q.settings = Settings(lowWater=2, blockSize=5)
    feeder = Feeder(q, lambda n: [], str, blockSize=4)
    assert (feeder.lowWater, feeder.blockSize) == (2, 4)
    assert feeder.emptySleep == 1.0 and feeder.preventRequeueTime == 300.0


def test_feedStartsAFeeder(makeQueue: Any, loggedErrors: Any) -> None:
    q = makeQueue()
    feeder = feed(q, Writer(q, limit=5), str, lowWater=10, blockSize=2)
    assert feeder.isRunning() is False and feeder.reason == "exhausted"
    assert feeder.stats().fed == 5
    assert q.size(waiting=True) == 5

    def broken(desired: int) -> list[int]:
        raise KeyError(desired)

    failed = feed(q, broken, str)
    assert failed.reason == "failed"
    assert failureOf(failed.whenStopped()).check(KeyError)
    assert len(loggedErrors) == 1  # logged once, by the feeder


def test_usesTheQueuesClock(makeQueue: Any, clock: Clock) -> None:
    feeder = Feeder(makeQueue(), lambda n: None, str, emptySleep=3)
    feeder.start()
    assert [c.getTime() for c in clock.getDelayedCalls()] == [3]
    feeder.stop()


# ----------------------------------------------------------------------
# QuasiQueue's examples, replayed


def test_quasiQueueHelloWorld(
    makeQueue: Any, clock: Clock, capsys: pytest.CaptureFixture[str]
) -> None:
    """QuasiQueue's README example, as it is: the writer gives 0..desired-1."""

    async def writer(desired: int) -> AsyncIterator[int]:
        """Feeds data to the Queue when it is low."""
        for x in range(0, desired):
            yield x

    async def reader(identifier: int | str) -> None:
        """Receives individual items from the queue."""
        print(f"{identifier}")

    q = makeQueue(AsyncWorker(), name="hello_world")
    feeder = feed(q, writer, reader)
    numbers = [str(i) for i in range(10)]
    assert capsys.readouterr().out.split() == numbers
    # Every later answer repeats them: dropped until preventRequeueTime has
    # passed, with a back-off of emptySleep between asks.
    clock.pump([1] * 299)
    assert capsys.readouterr().out == ""
    assert feeder.stats().asks == 1 + 1 + 299
    clock.advance(1)
    assert capsys.readouterr().out.split() == numbers
    feeder.stop()


def makeImages(folder: Path, count: int) -> list[Path]:
    """Small grey-scale PGM images (header plus raw bytes), no PIL needed."""
    folder.mkdir()
    paths = []
    for n in range(count):
        width, height = 8 + n % 4, 6
        pixels = bytes(
            (x * 16 + y * 8 + n) % 256 for y in range(height) for x in range(width)
        )
        path = folder / f"image{n:03d}.pgm"
        path.write_bytes(f"P5 {width} {height} 255\n".encode() + pixels)
        paths.append(path)
    return paths


def imageContext(outdir: str) -> dict[str, Any]:
    """QuasiQueue's context function: once per worker, a dict for the reader."""
    return {"outdir": Path(outdir), "pid": os.getpid()}


def processImage(path: str) -> str:
    """The reader: read a PGM, invert it, halve its width, write it out."""
    from asynqueue import context

    ctx = context()
    data = Path(path).read_bytes()
    header, pixels = data.split(b"\n", 1)
    _, width, height, _ = header.split()
    w, h = int(width), int(height)
    rows = [pixels[y * w : (y + 1) * w] for y in range(h)]
    out = bytes(
        255 - (row[x] + row[x + 1]) // 2 for row in rows for x in range(0, w - 1, 2)
    )
    target = ctx["outdir"] / Path(path).name
    target.write_bytes(f"P5 {w // 2} {h} 255\n".encode() + out)
    return str(target)


@pytest_twisted.ensureDeferred
async def test_quasiQueueImageProcessor(tmp_path: Path) -> None:
    """QuasiQueue's image processor: a file list fed to reader processes."""
    from asynqueue import ProcessQueue

    paths = makeImages(tmp_path / "in", 30)
    outdir = tmp_path / "out"
    outdir.mkdir()
    files = iter([str(p) for p in paths])

    def writer(desired: int) -> list[str]:
        return list(itertools.islice(files, desired))

    q = ProcessQueue(
        2,
        name="images",
        initializer=imageContext,
        initargs=(str(outdir),),
        shutdownWithReactor=False,
    )
    try:
        feeder = feed(q, writer, processImage, lowWater=4, blockSize=5)
        await feeder.join().addTimeout(30, reactor)
    finally:
        await q.shutdown(timeout=5)
    assert feeder.reason == "exhausted"
    assert feeder.stats().fed == 30 and feeder.stats().done == 30
    done = sorted(p.name for p in outdir.iterdir())
    assert done == [p.name for p in paths]
    first = (outdir / "image000.pgm").read_bytes()
    assert first.startswith(b"P5 4 6 255\n") and len(first) == 11 + 24
    assert first[11] == 255 - (0 + 16) // 2


@pytest_twisted.ensureDeferred
async def test_feedingAThreadQueueOnTheReactor() -> None:
    q = ThreadQueue(2, name="threads", shutdownWithReactor=False)
    seen: set[int] = set()
    numbers = iter(range(500))

    async def writer(desired: int) -> AsyncIterator[int]:
        for n in itertools.islice(numbers, desired):
            yield n

    try:
        feeder = feed(q, writer, seen.add, lowWater=8, blockSize=4)
        await feeder.join().addTimeout(30, reactor)
    finally:
        await q.shutdown()
    assert seen == set(range(500))
    assert feeder.stats().asks == 126  # 125 full answers, then an empty one


@pytest.mark.parametrize("script", ["quasiqueue_hello.py", "quasiqueue_images.py"])
def test_exampleRuns(script: str) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "fed" in done.stdout


# ----------------------------------------------------------------------
# TaskQueue.feed (once the queue has it)

needsQueueFeed = pytest.mark.skipif(
    not hasattr(TaskQueue, "feed"), reason="TaskQueue.feed is not wired in yet"
)


@needsQueueFeed
def test_queueFeedStartsAFeederOnTheQueuesClock(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue()
    answers: list[Any] = [None, ["a"], []]
    feeder = q.feed(lambda n: answers.pop(0), str, emptySleep=4)
    assert isinstance(feeder, Feeder) and feeder.isRunning()
    clock.advance(4)
    assert feeder.reason == "exhausted" and q.size(waiting=True) == 1


@needsQueueFeed
def test_queueShutdownStopsItsFeedersAtOnce(makeQueue: Any, clock: Clock) -> None:
    q = makeQueue()
    sleeping = q.feed(lambda n: None, str, emptySleep=100)
    cancelled: list[bool] = []
    answer: Deferred[Any] = Deferred(lambda d: cancelled.append(True))
    asking = q.feed(lambda n: answer, str)
    d = q.shutdown()
    assert sleeping.reason == "stopped" and asking.reason == "stopped"
    assert cancelled == [True]  # the writer was abandoned
    assert result(d) is None
    assert clock.getDelayedCalls() == []


# ----------------------------------------------------------------------
# A feeder's total, announced to the queue's watchers


def test_aTotalIsAnnouncedAndCountedDown(makeQueue: Any, clock: Clock) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    heard: list[tuple[int, int]] = []
    q.observeWork(lambda expected, done: heard.append((expected, done)))
    feeder = Feeder(q, Writer(q, limit=4), str, lowWater=3, blockSize=2, total=4)
    feeder.start()
    assert heard == [(4, 0)]
    ran(w, clock, 4)
    assert feeder.reason == "exhausted"
    assert heard == [(4, 0)] + [(0, 1)] * 4


def test_aFeederStoppedEarlyWithdrawsWhatItNeverFed(
    makeQueue: Any, clock: Clock
) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    totals = [0, 0]

    def observe(expected: int, done: int) -> None:
        totals[0] += expected
        totals[1] += done

    q.observeWork(observe)
    feeder = Feeder(q, Writer(q), str, lowWater=3, blockSize=2, total=100)
    feeder.start()
    assert result(feeder.stop()) is None
    fed = feeder.stats().fed
    assert fed == 4 and totals == [fed, 0]
    w.runAll()
    assert totals == [fed, fed]


@pytest.mark.parametrize("total", [-1, 2.5, "10", True])
def test_aBadTotalFailsAtOnce(makeQueue: Any, total: Any) -> None:
    q = makeQueue()
    with pytest.raises(ValueError, match="total must be a whole number"):
        Feeder(q, Writer(q), str, total=total)
