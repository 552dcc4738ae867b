"""Tests of TaskQueue.map (asynqueue.mapper) and TaskQueue.wrap."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted

from asynqueue import AsyncWorker, MemoryWorker, ThreadQueue
from asynqueue.mapper import runChunk
from helpers import result


def counting(n: int, pulled: list[int]) -> Iterator[int]:
    for i in range(n):
        pulled.append(i)
        yield i


def test_runChunkKeepsEachOutcome() -> None:
    results, errors, seconds = runChunk(lambda x: 10 // x, [5, 0, 2], False)
    assert results == [2, None, 5]
    assert list(errors) == [1] and isinstance(errors[1], ZeroDivisionError)
    assert seconds >= 0
    assert runChunk(pow, [(2, 3)], True)[:2] == ([8], {})


def test_mapInOrderWithFixedChunks(makeQueue: Any) -> None:
    q = makeQueue(AsyncWorker())
    d = q.map(lambda x: x * x, range(50), chunksize=7).toList()
    assert result(d) == [x * x for x in range(50)]
    assert q.stats()["done"] == 8  # ceil(50 / 7) tasks


def test_mapConsumesLazilyWithinBound(makeQueue: Any) -> None:
    w = MemoryWorker(capacity=100)
    q = makeQueue(w)
    pulled: list[int] = []
    deferator = q.map(str, counting(10_000, pulled), chunksize=10, maxInFlight=3)
    assert len(pulled) <= 31 and len(w.accepted) == 3
    w.runAll()
    # Nobody consumes: once the Deferator's buffer (512 items) and the chunks
    # in flight are full, the map stops pulling items.
    assert len(pulled) <= deferator.maxBuffered + 4 * 10
    deferator.close()


def test_mapUnorderedGivesEverything(makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(capacity=4), MemoryWorker(capacity=4)
    q = makeQueue(w1, w2)
    d = q.map(lambda x: x + 1, range(40), ordered=False, chunksize=5).toList()
    # Finish the second worker's chunks first: they come out first.
    while w2.runNext() or w1.runNext():
        pass
    out = result(d)
    assert sorted(out) == list(range(1, 41))


def test_mapOrderedDespiteCompletionOrder(makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(capacity=4), MemoryWorker(capacity=4)
    q = makeQueue(w1, w2)
    d = q.map(lambda x: -x, range(40), chunksize=5).toList()
    while w2.runNext() or w1.runNext():
        pass
    assert result(d) == [-x for x in range(40)]


def test_mapErrorEndsIterationAtItsPlace(makeQueue: Any) -> None:
    q = makeQueue(AsyncWorker())
    got: list[Any] = []

    async def consume() -> None:
        async for item in q.map(lambda x: 10 // (x - 3), range(6), chunksize=2):
            got.append(item)

    from twisted.internet.defer import Deferred

    d = Deferred.fromCoroutine(consume())
    with pytest.raises(ZeroDivisionError):
        result(d)
    assert got == [10 // -3, 10 // -2, 10 // -1]


def test_mapStarAndOptions(makeQueue: Any) -> None:
    q = makeQueue(AsyncWorker())
    assert result(q.map(pow, [(2, 3), (3, 2)], star=True).toList()) == [8, 9]
    before = len(q.records())
    assert result(q.map(str, range(3), priority=-1).toList()) == ["0", "1", "2"]
    assert {r.priority for r in q.records()[before:]} == {-1}


def test_mapChunksGrowForSmallTasks(makeQueue: Any) -> None:
    q = makeQueue(AsyncWorker())
    assert result(q.map(abs, range(5000)).toList()) == list(range(5000))
    # Chunks start at one item and grow: far fewer tasks than items.
    assert q.stats()["done"] < 100


def test_closingTheMapCancelsItsChunks(makeQueue: Any) -> None:
    w = MemoryWorker(capacity=10)
    q = makeQueue(w)
    deferator = q.map(str, range(100), chunksize=10, maxInFlight=4)
    assert len(w.accepted) == 4
    deferator.close()
    assert q.stats()["cancelled"] == 4 and not w.accepted


def test_wrapQueuesCalls(makeQueue: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)

    @q.wrap(priority=3)
    def double(x: int) -> int:
        return 2 * x

    @q.wrap
    def triple(x: int) -> int:
        return 3 * x

    d1, d2 = double(4), triple(4)
    assert not d1.called
    w.runAll()
    assert (result(d1), result(d2)) == (8, 12)
    assert double.__wrapped__(5) == 10
    assert [r.priority for r in q.records()] == [3, 0]


@pytest_twisted.ensureDeferred
async def test_mapOnThreads() -> None:
    q = ThreadQueue(2, shutdownWithReactor=False)
    try:
        assert await q.map(len, ["a", "bb", "ccc"] * 100).toList() == [1, 2, 3] * 100
    finally:
        await q.shutdown()


def test_mapProgressCountsItems(makeQueue: Any, capsys: Any) -> None:
    q = makeQueue(AsyncWorker())
    assert result(q.map(abs, range(50), chunksize=10, progress=True).toList()) == list(
        range(50)
    )
    assert "50/50" in capsys.readouterr().err


def watchWork(q: Any) -> list[int]:
    """Sum what is announced to C{q}'s work observers: [expected, done]."""
    totals = [0, 0]

    def observe(expected: int, done: int) -> None:
        totals[0] += expected
        totals[1] += done

    q.observeWork(observe)
    return totals


def test_mapOfASizedIterableAnnouncesItsItems(makeQueue: Any) -> None:
    w = MemoryWorker(capacity=100)
    q = makeQueue(w)
    totals = watchWork(q)
    deferator = q.map(str, list(range(25)), chunksize=10)
    assert totals == [25, 0]
    w.runNext()
    assert totals == [25, 10]
    w.runAll()
    assert result(deferator.toList()) == [str(i) for i in range(25)]
    assert totals == [25, 25]


def test_aMapClosedEarlyWithdrawsWhatWillNotRun(makeQueue: Any) -> None:
    w = MemoryWorker(capacity=100)
    q = makeQueue(w)
    totals = watchWork(q)
    deferator = q.map(str, range(100), chunksize=10, maxInFlight=2)
    w.runNext()
    deferator.close()
    assert totals == [10, 10]


def test_aMapOfAnIteratorAnnouncesNothing(makeQueue: Any) -> None:
    w = MemoryWorker(capacity=100)
    q = makeQueue(w)
    totals = watchWork(q)
    deferator = q.map(str, iter(range(20)), chunksize=10)
    w.runAll()
    assert len(result(deferator.toList())) == 20
    assert totals == [0, 0]
