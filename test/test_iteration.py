"""Tests of asynqueue.iteration: Deferator, its sources, and IterationProducer."""

from __future__ import annotations

import gc
from collections.abc import Generator, Iterator
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import (
    CancelledError,
    Deferred,
    fail,
    inlineCallbacks,
    succeed,
)
from twisted.internet.interfaces import IConsumer, IPushProducer
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from zope.interface import implementer
from zope.interface.verify import verifyObject

from asynqueue.errors import ImplementationError, NotReadyError
from asynqueue.interfaces import IIterationSource
from asynqueue.iteration import (
    Deferator,
    IterationProducer,
    LocalIterationSource,
    Prefetcherator,
    isIterator,
    iteratorToProducer,
)


class Boom(Exception):
    """The error our test iterators raise."""


def resultOf(d: Deferred[Any]) -> Any:
    """The result a Deferred has already fired with."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def failureOf(d: Deferred[Any]) -> Failure:
    """The Failure a Deferred has already failed with (now handled)."""
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    assert isinstance(results[0], Failure), f"{d!r} fired with {results[0]!r}"
    return results[0]


@implementer(IIterationSource)
class ManualSource:
    """An iteration source whose fetches the test answers by hand."""

    def __init__(self) -> None:
        self.requests: list[int] = []
        self.pending: Deferred[tuple[list[Any], bool]] | None = None
        self.maxOutstanding = 0
        self.fetchesAfterClose = 0
        self.delivered = 0
        self.closes = 0

    def fetch(self, maxItems: int) -> Deferred[tuple[list[Any], bool]]:
        if self.closes:
            self.fetchesAfterClose += 1
        self.requests.append(maxItems)
        if self.pending is not None:
            # Raise rather than answer, so a Deferator that fetches in a loop
            # fails the test instead of hanging it.
            self.maxOutstanding = 2
            raise AssertionError("a second fetch while one is outstanding")
        self.maxOutstanding = 1
        self.pending = Deferred()
        return self.pending

    def respond(self, items: list[Any], exhausted: bool = False) -> None:
        d, self.pending = self.pending, None
        assert d is not None, "no fetch is outstanding"
        self.delivered += len(items)
        d.callback((list(items), exhausted))

    def failWith(self, exception: BaseException) -> None:
        d, self.pending = self.pending, None
        assert d is not None, "no fetch is outstanding"
        d.errback(Failure(exception))

    def close(self) -> None:
        self.closes += 1


class ScriptedSource(ManualSource):
    """A manual source that answers each fetch from a list, failing at C{errorAt}."""

    def __init__(self, items: list[Any], errorAt: int | None = None) -> None:
        super().__init__()
        self.items = items
        self.errorAt = errorAt
        self.position = 0

    def fireNext(self) -> None:
        n = self.requests[-1]
        end = min(self.position + n, len(self.items))
        if self.errorAt is not None:
            if self.position == self.errorAt:
                self.failWith(Boom(self.errorAt))
                return
            end = min(end, self.errorAt)
        batch = self.items[self.position : end]
        self.position = end
        self.respond(batch, self.errorAt is None and end == len(self.items))


@implementer(IConsumer)
class RecordingConsumer:
    """A consumer that records writes and pauses its producer every C{pauseEvery}."""

    def __init__(self, pauseEvery: int | None = None) -> None:
        self.pauseEvery = pauseEvery
        self.writes: list[Any] = []
        self.producer: Any = None
        self.streaming: bool | None = None
        self.registrations = 0
        self.unregistrations = 0

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer
        self.streaming = streaming
        self.registrations += 1

    def unregisterProducer(self) -> None:
        self.producer = None
        self.unregistrations += 1

    def write(self, data: Any) -> None:
        self.writes.append(data)
        if self.pauseEvery and len(self.writes) % self.pauseEvery == 0:
            self.producer.pauseProducing()


def numbers(n: int, errorAt: int | None = None) -> Generator[int, None, None]:
    for i in range(n):
        if i == errorAt:
            raise Boom(i)
        yield i
    if errorAt == n:
        raise Boom(n)


@inlineCallbacks
def consumeWithFor(deferator: Deferator[Any]) -> Generator[Any, Any, list[Any]]:
    """The AsynQueue idiom: a plain for loop yielding each Deferred."""
    got: list[Any] = []
    for d in deferator:
        item = yield d
        got.append(item)
    return got


async def consumeWithAsyncFor(deferator: Deferator[Any], got: list[Any]) -> list[Any]:
    async for item in deferator:
        got.append(item)
    return got


# isIterator ----------------------------------------------------------------


def _generator() -> Iterator[int]:
    yield 1


@pytest.mark.parametrize(
    "obj, expected",
    [
        (_generator(), True),
        (iter([1, 2]), True),
        (iter(range(3)), True),
        (iter({1: 2}), True),
        (map(str, [1]), True),
        (zip([1], [2], strict=True), True),
        ("abc", False),
        (b"abc", False),
        (bytearray(b"abc"), False),
        (memoryview(b"abc"), False),
        ([1, 2], False),
        ((1, 2), False),
        ({1: 2}, False),
        ({1, 2}, False),
        (frozenset([1]), False),
        ({1: 2}.keys(), False),
        ({1: 2}.values(), False),
        ({1: 2}.items(), False),
        (range(3), False),
        (42, False),
        (None, False),
        (Deferator.fromIterator(iter([])), False),
    ],
)
def test_isIterator(obj: object, expected: bool) -> None:
    assert isIterator(obj) is expected


def test_isIteratorIgnoresContainerSubclassWithNext() -> None:
    class OddList(list[int]):
        def __next__(self) -> int:
            return 1

    assert not isIterator(OddList())


# LocalIterationSource -----------------------------------------------------


def test_localSourceProvidesInterface() -> None:
    assert verifyObject(IIterationSource, LocalIterationSource(iter([])))


def test_localSourceFetchesBatchesAtOnce() -> None:
    source = LocalIterationSource(iter(range(5)))
    assert resultOf(source.fetch(2)) == ([0, 1], False)
    assert resultOf(source.fetch(2)) == ([2, 3], False)
    assert resultOf(source.fetch(2)) == ([4], True)
    assert resultOf(source.fetch(2)) == ([], True)


def test_localSourceDeliversItemsBeforeTheError() -> None:
    source = LocalIterationSource(numbers(5, errorAt=3))
    assert resultOf(source.fetch(2)) == ([0, 1], False)
    assert resultOf(source.fetch(2)) == ([2], False)
    assert failureOf(source.fetch(2)).check(Boom)
    assert resultOf(source.fetch(2)) == ([], True)


def test_localSourceErrorAtOnce() -> None:
    source = LocalIterationSource(numbers(5, errorAt=0))
    f = failureOf(source.fetch(3))
    assert isinstance(f.value, Boom)
    assert f.value.args == (0,)


def test_localSourceCloseClosesTheGenerator() -> None:
    closed: list[bool] = []

    def gen() -> Iterator[int]:
        try:
            yield from range(10)
        finally:
            closed.append(True)

    source = LocalIterationSource(gen())
    source.fetch(1)
    source.close()
    assert closed == [True]
    assert resultOf(source.fetch(3)) == ([], True)
    # An iterator without close() is fine too.
    LocalIterationSource(iter([1])).close()


# Deferator: construction ---------------------------------------------------


def test_deferatorRejectsNonSource() -> None:
    with pytest.raises(ImplementationError):
        Deferator(object())  # type: ignore[arg-type]


@pytest.mark.parametrize("batchSize, maxBuffered", [(0, None), (1, 0), (-1, 5)])
def test_deferatorRejectsBadBounds(batchSize: int, maxBuffered: int | None) -> None:
    with pytest.raises(ValueError):
        Deferator(ManualSource(), batchSize, maxBuffered)


def test_deferatorNameAndRepr() -> None:
    dr: Deferator[Any] = Deferator(ManualSource(), name="squares")
    assert dr.name == "squares"
    assert "squares" in repr(dr)


# Deferator: batching and back-pressure -------------------------------------


def test_prefetchesUpToTheBoundInBatches() -> None:
    source = ManualSource()
    Deferator(source, batchSize=3)
    assert source.requests == [3]
    source.respond([0, 1, 2])
    assert source.requests == [3, 3]
    source.respond([3, 4, 5])
    # Six buffered = 2 * batchSize: no more fetches.
    assert source.requests == [3, 3]
    assert source.pending is None


def test_fetchesAgainOnlyWhenABatchFits() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=2, maxBuffered=4)
    source.respond([0, 1])
    source.respond([2, 3])
    assert resultOf(next(dr)) == 0
    # Three buffered, one free slot: too few for a batch of 2.
    assert source.pending is None
    assert resultOf(next(dr)) == 1
    assert source.requests == [2, 2, 2]
    assert source.pending is not None


def test_batchSizeLargerThanBoundFetchesTheBound() -> None:
    source = ManualSource()
    Deferator(source, batchSize=10, maxBuffered=3)
    assert source.requests == [3]


def test_atMostOneFetchOutstanding() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=1, maxBuffered=10)
    source.respond([0])
    assert source.pending is not None
    d0 = next(dr)
    assert not d0.called
    source.respond([1])
    assert resultOf(d0) == 0
    source.respond([2])
    assert source.maxOutstanding == 1
    assert len(source.requests) == 4


def test_shortBatchesAreRefetched() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=4, maxBuffered=4)
    source.respond([])
    assert source.requests == [4, 4]
    source.respond([0])
    # One buffered, three free: not enough for a batch.
    assert source.requests == [4, 4]
    d0 = next(dr)
    assert source.requests == [4, 4, 4]
    # Whether an item follows 0 is not known yet.
    assert not d0.called
    source.respond([], exhausted=True)
    assert resultOf(d0) == 0


# Deferator: the plain for loop ----------------------------------------------


def test_forLoopGetsItemsInOrderWithoutBogusEnd() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=2, maxBuffered=2)
    source.respond([0, 1])
    d = consumeWithFor(dr)
    assert not d.called
    source.respond([2])
    source.respond([], exhausted=True)
    assert resultOf(d) == [0, 1, 2]
    assert source.closes == 1


def test_deferredForAnItemWaitsUntilTheNextIsKnown() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=2, maxBuffered=2)
    source.respond([0, 1])
    assert resultOf(next(dr)) == 0
    d1 = next(dr)
    assert not d1.called
    with pytest.raises(NotReadyError, match="previous item"):
        next(dr)
    source.respond([], exhausted=True)
    assert resultOf(d1) == 1
    with pytest.raises(StopIteration):
        next(dr)
    assert not dr.isRunning()


def test_nextBeforeFirstBatchIsNotReady() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source)
    ready = dr.ready()
    assert not ready.called
    with pytest.raises(NotReadyError, match="ready"):
        next(dr)
    source.respond([7], exhausted=True)
    assert resultOf(ready) is dr
    assert resultOf(next(dr)) == 7
    with pytest.raises(StopIteration):
        next(dr)


def test_readyOnAnEmptySourceGivesAnEmptyLoop() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source)
    ready = dr.ready()
    source.respond([], exhausted=True)
    assert resultOf(ready) is dr
    assert resultOf(consumeWithFor(dr)) == []
    assert source.closes == 1


def test_fromIteratorIsReadyAtOnce() -> None:
    dr = Deferator.fromIterator(numbers(200), batchSize=7)
    assert dr.ready().called
    assert resultOf(consumeWithFor(dr)) == list(range(200))
    assert not dr.isRunning()


def test_fromIteratorAcceptsAnIterable() -> None:
    assert resultOf(Deferator.fromIterator([1, 2, 3]).toList()) == [1, 2, 3]


@pytest_twisted.inlineCallbacks
def test_forLoopUnderTheReactor() -> Generator[Deferred[Any], Any, None]:
    got: list[int] = []
    dr: Deferator[int] = yield slowDeferator(numbers(10), batchSize=3).ready()
    for d in dr:
        item = yield d
        got.append(item)
    assert got == list(range(10))


# Deferator: errors -----------------------------------------------------------


@pytest.mark.parametrize("errorAt", [0, 1, 2, 3, 5])
def test_errorArrivesAfterTheItemsBeforeIt(errorAt: int) -> None:
    source = ScriptedSource(list(range(5)), errorAt=errorAt)
    dr: Deferator[Any] = Deferator(source, batchSize=2)
    got: list[Any] = []

    @inlineCallbacks
    def consume() -> Generator[Any, Any, None]:
        yield dr.ready()
        for d in dr:
            got.append((yield d))

    d = consume()
    while source.pending is not None:
        source.fireNext()
    f = failureOf(d)
    assert isinstance(f.value, Boom)
    assert f.value.args == (errorAt,)
    assert got == list(range(errorAt))
    assert source.closes == 1
    with pytest.raises(StopIteration):
        next(dr)


def test_errorEndsIterationEvenIfCaught() -> None:
    dr = Deferator.fromIterator(numbers(5, errorAt=2))
    outcomes: list[Any] = []
    for d in dr:
        d.addCallbacks(outcomes.append, lambda f: outcomes.append(f.type))
    assert outcomes == [0, 1, Boom]


def test_errorFromLocalIteratorKeepsItsType() -> None:
    f = failureOf(Deferator.fromIterator(numbers(5, errorAt=4)).toList())
    assert f.check(Boom)


def test_fetchRaisingSynchronouslyFailsInOrder() -> None:
    @implementer(IIterationSource)
    class Raising:
        calls = 0
        closes = 0

        def fetch(self, maxItems: int) -> Deferred[tuple[list[int], bool]]:
            self.calls += 1
            if self.calls > 1:
                raise Boom("fetch")
            return succeed(([1], False))

        def close(self) -> None:
            self.closes += 1

    source = Raising()
    d: Deferred[list[Any]] = Deferator(source).toList()
    assert failureOf(d).check(Boom)
    assert source.closes == 1


def test_malformedBatchFailsInsteadOfStalling() -> None:
    source = ManualSource()
    d: Deferred[list[Any]] = Deferator(source).toList()
    pending = source.pending
    assert pending is not None
    pending.callback("not a pair")  # type: ignore[arg-type]
    assert failureOf(d).check(ValueError)
    assert source.closes == 1


# Deferator: async for and toList --------------------------------------------


def test_asyncForWaitsForBatches() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=2, maxBuffered=2)
    got: list[Any] = []
    d = Deferred.fromCoroutine(consumeWithAsyncFor(dr, got))
    assert not d.called
    source.respond([0, 1])
    assert got == [0, 1]
    source.respond([2], exhausted=True)
    assert resultOf(d) == [0, 1, 2]
    assert source.closes == 1


def test_asyncForDeliversErrorInOrder() -> None:
    source = ScriptedSource(list(range(6)), errorAt=4)
    got: list[Any] = []
    d = Deferred.fromCoroutine(consumeWithAsyncFor(Deferator(source, 3), got))
    while source.pending is not None:
        source.fireNext()
    assert failureOf(d).check(Boom)
    assert got == [0, 1, 2, 3]


@pytest_twisted.ensureDeferred
async def test_asyncForUnderTheReactor() -> None:
    got: list[int] = []
    async for item in slowDeferator(numbers(25), batchSize=4):
        got.append(item)
    assert got == list(range(25))


def test_toList() -> None:
    source = ManualSource()
    d: Deferred[list[Any]] = Deferator(source, batchSize=2).toList()
    source.respond(["a", "b"])
    source.respond(["c"], exhausted=True)
    assert resultOf(d) == ["a", "b", "c"]


def test_toListAfterPartialConsumptionGetsTheRest() -> None:
    dr = Deferator.fromIterator(numbers(5))
    assert resultOf(next(dr)) == 0
    assert resultOf(dr.toList()) == [1, 2, 3, 4]


def test_cancellingAWaitLeavesTheDeferatorUsable() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=1, maxBuffered=1)
    source.respond([0])
    d0 = next(dr)
    assert not d0.called
    d0.cancel()
    assert failureOf(d0).check(CancelledError)
    # The cancelled wait is forgotten: answering the fetch fires nothing twice.
    source.respond([1], exhausted=True)
    assert resultOf(next(dr)) == 1


def test_twoAsyncWaitersGetSuccessiveItems() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=1, maxBuffered=1)
    a = Deferred.fromCoroutine(dr.__anext__())
    b = Deferred.fromCoroutine(dr.__anext__())
    source.respond(["x"])
    source.respond(["y"], exhausted=True)
    assert (resultOf(a), resultOf(b)) == ("x", "y")


# Deferator: closing ----------------------------------------------------------


def test_closeStopsIterationAndClosesOnce() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=2)
    source.respond([0, 1])
    source.respond([2, 3])
    assert resultOf(next(dr)) == 0
    dr.close()
    dr.close()
    dr.stop()
    assert source.closes == 1
    assert not dr.isRunning()
    with pytest.raises(StopIteration):
        next(dr)
    assert resultOf(dr.toList()) == []
    assert source.fetchesAfterClose == 0


def test_closeWhileFetchingIgnoresTheLateAnswer() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=2)
    dr.close()
    source.respond([0, 1])
    assert source.closes == 1
    assert source.fetchesAfterClose == 0
    assert resultOf(dr.toList()) == []


def test_closeIgnoresALateFailure(loggedErrors: list[Any]) -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source)
    dr.close()
    source.failWith(Boom())
    del dr
    gc.collect()
    assert loggedErrors == []


def test_closeFiresTheHandedOutDeferredWithItsItem() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=1, maxBuffered=1)
    source.respond(["first"])
    d = next(dr)
    assert not d.called
    dr.close()
    assert resultOf(d) == "first"
    with pytest.raises(StopIteration):
        next(dr)


def test_exhaustionClosesTheSourceOnceAtOnce() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source)
    source.respond([1, 2], exhausted=True)
    # Closed as soon as the source said so, before the items are consumed.
    assert source.closes == 1
    assert dr.isRunning()
    assert resultOf(dr.toList()) == [1, 2]
    dr.close()
    assert source.closes == 1
    assert not dr.isRunning()


def test_sourceErrorClosesTheSourceOnce() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source)
    source.failWith(Boom())
    assert source.closes == 1
    assert failureOf(dr.toList()).check(Boom)
    dr.close()
    assert source.closes == 1


def test_garbageCollectionClosesTheSource() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=2)
    source.respond([0, 1])
    source.respond([2, 3])
    assert resultOf(next(dr)) == 0
    del dr
    gc.collect()
    assert source.closes == 1


def test_abandonedForLoopClosesTheSource() -> None:
    source = ManualSource()
    dr: Deferator[Any] = Deferator(source, batchSize=2, maxBuffered=2)

    @inlineCallbacks
    def firstOnly(dr: Deferator[Any]) -> Generator[Any, Any, Any]:
        for d in dr:
            return (yield d)

    source.respond([0, 1])
    d = firstOnly(dr)
    assert resultOf(d) == 0
    del dr
    gc.collect()
    assert source.closes == 1


def test_noReferenceCycleKeepsAnUnusedDeferatorAlive() -> None:
    source = ManualSource()
    gc.disable()
    try:
        dr: Deferator[Any] = Deferator(source, batchSize=2, maxBuffered=2)
        source.respond([0, 1])
        assert resultOf(next(dr)) == 0
        del dr
        # Freed by reference counting alone.
        assert source.closes == 1
    finally:
        gc.enable()


def test_abandonedLocalGeneratorIsClosed() -> None:
    closed: list[bool] = []

    def gen() -> Iterator[int]:
        try:
            yield from range(1000)
        finally:
            closed.append(True)

    dr = Deferator.fromIterator(gen(), batchSize=4)
    assert resultOf(next(dr)) == 0
    del dr
    gc.collect()
    assert closed == [True]


def test_sourceCloseErrorsAreLoggedNotRaised(loggedErrors: list[Any]) -> None:
    @implementer(IIterationSource)
    class BadClose:
        def fetch(self, maxItems: int) -> Deferred[tuple[list[int], bool]]:
            return succeed(([1], False))

        def close(self) -> Deferred[None]:
            return fail(Boom("close"))

    dr: Deferator[Any] = Deferator(BadClose())
    dr.close()
    assert len(loggedErrors) == 1
    assert loggedErrors[0]["log_failure"].check(Boom)
    loggedErrors.clear()


# Hypothesis: any schedule, any bounds ---------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    length=st.integers(0, 30),
    batchSize=st.integers(1, 6),
    maxBuffered=st.none() | st.integers(1, 12),
    errorAt=st.none() | st.integers(0, 30),
    data=st.data(),
)
def test_anyScheduleDeliversTheItemsWithinTheBound(
    length: int,
    batchSize: int,
    maxBuffered: int | None,
    errorAt: int | None,
    data: st.DataObject,
) -> None:
    if errorAt is not None and errorAt > length:
        errorAt = None
    source = ScriptedSource(list(range(length)), errorAt)
    bound = 2 * batchSize if maxBuffered is None else maxBuffered
    dr: Deferator[Any] = Deferator(source, batchSize, maxBuffered)
    ready = dr.ready()
    got: list[int] = []
    errors: list[BaseException] = []
    asked = 0
    current: Deferred[int] | None = None
    while True:
        canConsume = ready.called and (current is None or current.called)
        canFire = source.pending is not None
        assert canConsume or canFire, "stalled: nothing to consume and no fetch"
        if canFire and (not canConsume or data.draw(st.booleans())):
            source.fireNext()
        else:
            try:
                current = next(dr)
            except StopIteration:
                break
            asked += 1
            current.addCallbacks(got.append, lambda f: errors.append(f.value))
        assert source.delivered - asked <= bound
        assert source.maxOutstanding <= 1
    assert all(n <= batchSize for n in source.requests)
    assert got == list(range(length if errorAt is None else errorAt))
    if errorAt is None:
        assert errors == []
    else:
        assert len(errors) == 1
        assert isinstance(errors[0], Boom)
        assert errors[0].args == (errorAt,)
    assert source.closes == 1
    assert source.fetchesAfterClose == 0


@settings(max_examples=100, deadline=None)
@given(
    length=st.integers(0, 50),
    batchSize=st.integers(1, 10),
    errorAt=st.none() | st.integers(0, 50),
)
def test_toListOfAnyLocalIterator(
    length: int, batchSize: int, errorAt: int | None
) -> None:
    got: list[int] = []
    d = Deferred.fromCoroutine(
        consumeWithAsyncFor(
            Deferator.fromIterator(numbers(length, errorAt), batchSize), got
        )
    )
    if errorAt is not None and errorAt <= length:
        assert failureOf(d).check(Boom)
        assert got == list(range(errorAt))
    else:
        assert resultOf(d) == list(range(length))


# Prefetcherator --------------------------------------------------------------


def nextCallableOver(iterator: Iterator[Any]) -> Any:
    def getNext() -> tuple[Any, bool]:
        try:
            return next(iterator), True
        except StopIteration:
            return None, False

    return getNext


def test_prefetcheratorProvidesInterface() -> None:
    assert verifyObject(IIterationSource, Prefetcherator(lambda: (None, False)))


def test_prefetcheratorWithPlainValues() -> None:
    source = Prefetcherator(nextCallableOver(iter(range(7))))
    assert resultOf(source.fetch(3)) == ([0, 1, 2], False)
    dr: Deferator[Any] = Deferator(source, batchSize=3)
    assert resultOf(dr.toList()) == [3, 4, 5, 6]


def test_prefetcheratorWithDeferredsAndArguments() -> None:
    pending: list[Deferred[tuple[int | None, bool]]] = []

    def getNext(scale: int, offset: int = 0) -> Deferred[tuple[int | None, bool]]:
        d: Deferred[tuple[int | None, bool]] = Deferred()
        pending.append(d)
        return d

    source = Prefetcherator(getNext, 10, offset=1)
    d = source.fetch(3)
    pending.pop().callback((1, True))
    pending.pop().callback((2, True))
    assert not d.called
    pending.pop().callback((None, False))
    assert resultOf(d) == ([1, 2], True)
    assert resultOf(source.fetch(3)) == ([], True)
    assert pending == []


def test_prefetcheratorDeliversItemsBeforeTheError() -> None:
    values = iter([(1, True), (2, True)])

    def getNext() -> tuple[int, bool]:
        try:
            return next(values)
        except StopIteration:
            raise Boom("end") from None

    source = Prefetcherator(getNext)
    assert resultOf(source.fetch(5)) == ([1, 2], False)
    assert failureOf(source.fetch(5)).check(Boom)
    assert resultOf(source.fetch(5)) == ([], True)


def test_prefetcheratorCloseStopsCalls() -> None:
    calls: list[int] = []

    def getNext() -> tuple[int, bool]:
        calls.append(1)
        return 1, True

    source = Prefetcherator(getNext)
    source.close()
    assert resultOf(source.fetch(5)) == ([], True)
    assert calls == []


# IterationProducer ------------------------------------------------------------


def test_producerProvidesInterface() -> None:
    assert verifyObject(IPushProducer, IterationProducer(Deferator.fromIterator([])))


def test_producerRejectsNonConsumerAndNonDeferator() -> None:
    with pytest.raises(ImplementationError):
        IterationProducer(Deferator.fromIterator([]), object())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        IterationProducer(iter([]))  # type: ignore[arg-type]


def test_producerWithoutConsumerFails() -> None:
    d = IterationProducer(Deferator.fromIterator([1])).run()
    assert failureOf(d).check(NotReadyError)


def test_producerWritesEverythingAndUnregisters() -> None:
    consumer = RecordingConsumer()
    producer: IterationProducer[Any] = IterationProducer(
        Deferator.fromIterator(numbers(100), 8)
    )
    producer.registerConsumer(consumer)
    d = producer.run()
    assert resultOf(d) is consumer
    assert consumer.writes == list(range(100))
    assert consumer.registrations == consumer.unregistrations == 1
    assert consumer.streaming is True
    assert resultOf(producer.run()) is consumer


def test_producerPausesAndResumesWithinTheBound() -> None:
    source = ManualSource()
    consumer = RecordingConsumer(pauseEvery=3)
    producer: IterationProducer[Any] = IterationProducer(
        Deferator(source, 2, 4), consumer
    )
    d = producer.run()
    assert consumer.producer is producer
    source.respond([0, 1])
    source.respond([2, 3])
    assert consumer.writes == [0, 1, 2]
    source.respond([4, 5])
    # Paused: the buffer is full, so nothing is fetched.
    assert source.pending is None
    assert source.delivered - len(consumer.writes) <= 4
    producer.resumeProducing()
    assert consumer.writes == [0, 1, 2, 3, 4, 5]
    assert source.pending is not None
    source.respond([6], exhausted=True)
    assert not d.called
    producer.resumeProducing()
    assert consumer.writes == list(range(7))
    assert resultOf(d) is consumer
    assert consumer.unregistrations == 1
    assert source.closes == 1


def test_producerResumeWhileWaitingDoesNotWriteTwice() -> None:
    source = ManualSource()
    consumer = RecordingConsumer()
    producer: IterationProducer[Any] = IterationProducer(
        Deferator(source, 1, 1), consumer
    )
    d = producer.run()
    producer.pauseProducing()
    producer.resumeProducing()
    producer.resumeProducing()
    source.respond(["a"])
    source.respond(["b"], exhausted=True)
    assert consumer.writes == ["a", "b"]
    assert resultOf(d) is consumer


def test_stopProducingClosesAndFires() -> None:
    source = ManualSource()
    consumer = RecordingConsumer(pauseEvery=2)
    producer: IterationProducer[Any] = IterationProducer(Deferator(source, 2), consumer)
    d = producer.run()
    source.respond([0, 1])
    assert consumer.writes == [0, 1]
    producer.stopProducing()
    assert resultOf(d) is consumer
    assert source.closes == 1
    assert consumer.unregistrations == 1
    producer.resumeProducing()
    source.respond([2, 3])
    assert consumer.writes == [0, 1]


def test_stopProducingWhileWaitingForAFetch() -> None:
    source = ManualSource()
    consumer = RecordingConsumer()
    producer: IterationProducer[Any] = IterationProducer(Deferator(source), consumer)
    d = producer.run()
    producer.stopProducing()
    assert resultOf(d) is consumer
    source.respond([1, 2])
    assert consumer.writes == []


def test_stopProducingBeforeRunWritesNothing() -> None:
    consumer = RecordingConsumer()
    producer: IterationProducer[Any] = IterationProducer(
        Deferator.fromIterator([1, 2]), consumer
    )
    producer.stopProducing()
    assert resultOf(producer.run()) is consumer
    assert consumer.writes == []
    assert consumer.registrations == 0


def test_producerFailsWithTheIteratorsError() -> None:
    consumer = RecordingConsumer()
    d = IterationProducer(Deferator.fromIterator(numbers(5, errorAt=3)), consumer).run()
    assert failureOf(d).check(Boom)
    assert consumer.writes == [0, 1, 2]
    assert consumer.unregistrations == 1


def test_producerFailsWhenWriteRaises() -> None:
    source = ManualSource()

    @implementer(IConsumer)
    class Broken(RecordingConsumer):
        def write(self, data: Any) -> None:
            raise Boom("write")

    d = IterationProducer(Deferator(source), Broken()).run()
    source.respond([1])
    assert failureOf(d).check(Boom)
    assert source.closes == 1


def test_producerFailsWhenRegistrationFails() -> None:
    @implementer(IConsumer)
    class Taken(RecordingConsumer):
        def registerProducer(self, producer: Any, streaming: bool) -> None:
            raise RuntimeError("already has a producer")

    consumer = Taken()
    d = IterationProducer(Deferator.fromIterator([1]), consumer).run()
    assert failureOf(d).check(RuntimeError)
    assert consumer.writes == []
    assert consumer.unregistrations == 0


@pytest_twisted.inlineCallbacks
def test_producerWithConsumerResumingFromTheReactor() -> Generator[
    Deferred[Any], Any, None
]:
    @implementer(IConsumer)
    class Slow(RecordingConsumer):
        def write(self, data: Any) -> None:
            super().write(data)
            self.producer.pauseProducing()
            reactor.callLater(0, self.producer.resumeProducing)

    consumer = Slow()
    producer: IterationProducer[Any] = IterationProducer(
        slowDeferator(numbers(20), batchSize=3), consumer
    )
    result = yield producer.run()
    assert result is consumer
    assert consumer.writes == list(range(20))


def test_iteratorToProducer() -> None:
    consumer = RecordingConsumer()
    d = iteratorToProducer(numbers(10), consumer)
    # AsynQueue's result: the producer, done, with the consumer it wrote to.
    producer = resultOf(d)
    assert isinstance(producer, IterationProducer)
    assert producer.consumer is consumer
    assert consumer.writes == list(range(10))
    assert consumer.unregistrations == 1


def test_iteratorToProducerWithPausingConsumer() -> None:
    consumer = RecordingConsumer(pauseEvery=4)
    d = iteratorToProducer(numbers(10), consumer, batchSize=2)
    assert consumer.writes == [0, 1, 2, 3]
    consumer.producer.resumeProducing()
    consumer.producer.resumeProducing()
    assert consumer.writes == list(range(10))
    assert resultOf(d).consumer is consumer


# A source that answers on a later reactor turn -------------------------------


@implementer(IIterationSource)
class ReactorSource:
    """Answer each fetch on a later reactor turn, as a remote source would."""

    def __init__(self, iterator: Iterator[Any]) -> None:
        self._local = LocalIterationSource(iterator)

    def fetch(self, maxItems: int) -> Deferred[tuple[list[Any], bool]]:
        d: Deferred[None] = deferLater(reactor, 0, lambda: None)
        return d.addCallback(lambda _: self._local.fetch(maxItems))

    def close(self) -> None:
        self._local.close()


def slowDeferator(iterator: Iterator[Any], batchSize: int) -> Deferator[Any]:
    return Deferator(ReactorSource(iterator), batchSize)
