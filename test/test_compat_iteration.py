"""
AsynQueue 0.9.9's iteration API as its docs and tests describe it:
Deferator(repr, getMore, *args) and Deferator(iterator), its C{d},
C{moreLeft} and C{isIterator}; Prefetcherator(ID).setup()/getNext();
iteratorToProducer firing with the producer; IterationProducer.deferUntilDone;
ListConsumer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.interfaces import IConsumer
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue import iteration
from asynqueue.errors import ImplementationError
from asynqueue.iteration import (
    Deferator,
    IterationProducer,
    ListConsumer,
    Prefetcherator,
    iteratorToProducer,
)


class Boom(Exception):
    """An iterator's error."""


def firedWith(d: Deferred[Any]) -> Any:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results, f"{d!r} has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


def generatorFunction(x: int, N: int = 7) -> Iterator[int]:
    for y in range(N):
        yield x * y


class DeferredIterator:
    """0.9.9's test helper: next() gives a Deferred, and fails at the end."""

    def __init__(self, values: list[Any]) -> None:
        self.values = list(values)

    def next(self) -> Deferred[Any]:
        if not self.values:
            return fail(StopIteration())
        return succeed(self.values.pop(0))


class IterationGetter:
    """0.9.9's test helper: getNext gives (value, isValid, moreLeft)."""

    def __init__(self, N: int) -> None:
        self.N = N
        self.k = 0

    def getNext(self, slowness: float = 0) -> Deferred[tuple[int, bool, bool]]:
        value = self.k
        self.k += 1
        return succeed((value, True, self.k < self.N))


@implementer(IConsumer)
class IterationConsumer:
    def __init__(self) -> None:
        self.data: list[Any] = []
        self.producer: Any = None

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        self.producer = producer

    def unregisterProducer(self) -> None:
        self.producer = None

    def write(self, data: Any) -> None:
        self.data.append(data)


# isIterator ----------------------------------------------------------------


@pytest.mark.parametrize("unsuitable", [None, "xyz", (1, 2), [3, 4], {1: "a"}])
def test_isIteratorClassMethod(unsuitable: object) -> None:
    assert Deferator.isIterator(unsuitable) is False


def test_isIteratorOfGenerator() -> None:
    assert Deferator.isIterator(generatorFunction(1)) is True
    assert iteration.isIterator(generatorFunction(1)) is True
    assert Deferator.builtIns is not None and list in Deferator.builtIns


# Deferator(repr, getMore, *args) ---------------------------------------------


@inlineCallbacks
def _iterate(dr: Deferator[Any], stopAt: int | None = None) -> Any:
    got = []
    moreLeft = []
    for k, d in enumerate(dr):
        value = yield d
        got.append(value)
        moreLeft.append(dr.moreLeft)
        if k == stopAt:
            dr.stop()
            break
    status = yield dr.d
    return got, moreLeft, status


def test_deferatorOverGetMore() -> None:
    ig = IterationGetter(5)
    dr: Deferator[Any] = Deferator(repr(ig), ig.getNext, slowness=0.2)
    got, moreLeft, status = firedWith(_iterate(dr))
    assert got == [0, 1, 2, 3, 4]
    assert moreLeft == [True, True, True, True, False]
    assert status is True


def test_deferatorStopped() -> None:
    ig = IterationGetter(10)
    dr: Deferator[Any] = Deferator(repr(ig), ig.getNext)
    got, moreLeft, status = firedWith(_iterate(dr, stopAt=2))
    assert got == [0, 1, 2]
    assert status is False
    assert not dr.moreLeft
    # No call was made past what the loop asked for, and one to know more.
    assert ig.k <= 4


def test_deferatorRepresentation() -> None:
    dr: Deferator[Any] = Deferator("<thing>", IterationGetter(1).getNext)
    assert dr.representation == "thing"


def test_deferatorStandsForItsDeferred() -> None:
    dr: Deferator[Any] = Deferator(None, IterationGetter(2).getNext)
    results: list[Any] = []
    dr.addCallback(results.append)
    assert firedWith(dr.toList()) == [0, 1]
    assert results == [True]


def test_deferatorOverIterator() -> None:
    dr: Deferator[Any] = Deferator(generatorFunction(2, N=4))
    got, _, status = firedWith(_iterate(dr))
    assert got == [0, 2, 4, 6]
    assert status is True


def test_deferatorOfNoIteratorIsAClearError() -> None:
    with pytest.raises(ImplementationError, match="neither"):
        Deferator(42)  # type: ignore[call-overload]


def test_deferatorGetMoreError() -> None:
    calls = iter([succeed((1, True, True)), Deferred.fromCoroutine(_boom())])
    dr: Deferator[Any] = Deferator("x", lambda: next(calls))
    with pytest.raises(Boom):
        firedWith(dr.toList())
    assert firedWith(dr.d) is False


async def _boom() -> Any:
    raise Boom()


# Prefetcherator(ID) -----------------------------------------------------------


@pytest.mark.parametrize("unsuitable", [None, "xyz", (1, 2), [3, 4], {1: "a"}])
def test_prefetcheratorSetupRefuses(unsuitable: object) -> None:
    assert firedWith(Prefetcherator().setup(unsuitable)) is False


def test_prefetcheratorSetupWithIterator() -> None:
    pf: Prefetcherator[Any] = Prefetcherator("gf")
    assert firedWith(pf.setup(generatorFunction(4))) is True
    assert pf.lastFetch == (0, True)
    assert pf.ID == "gf"
    assert "gf" in repr(pf)
    assert pf.isBusy()
    # Set up already.
    assert firedWith(pf.setup(generatorFunction(4))) is False


def test_prefetcheratorSetupWithDeferredCallable() -> None:
    di = DeferredIterator([7, 8])
    pf: Prefetcherator[Any] = Prefetcherator()
    assert firedWith(pf.setup(di.next)) is True
    assert pf.lastFetch == (7, True)


def _allNext(pf: Prefetcherator[Any]) -> list[tuple[Any, bool, bool]]:
    results = []
    while True:
        result = firedWith(pf.getNext())
        results.append(result)
        if not result[2]:
            return results


def test_prefetcheratorGetNextWithIterator() -> None:
    pf: Prefetcherator[Any] = Prefetcherator()
    firedWith(pf.setup(generatorFunction(3, N=3)))
    assert _allNext(pf) == [(0, True, True), (3, True, True), (6, True, False)]
    assert firedWith(pf.getNext()) == (None, False, False)
    assert not pf.isBusy()


def test_prefetcheratorGetNextWithCallable() -> None:
    pf: Prefetcherator[Any] = Prefetcherator()
    firedWith(pf.setup(iter(["a", "b"]).__next__))
    assert _allNext(pf) == [("a", True, True), ("b", True, False)]


def test_prefetcheratorGetNextWithDeferredCallable() -> None:
    pf: Prefetcherator[Any] = Prefetcherator()
    firedWith(pf.setup(DeferredIterator([1, 2, 3]).next))
    assert [r[0] for r in _allNext(pf)] == [1, 2, 3]


def test_prefetcheratorEmpty() -> None:
    pf: Prefetcherator[Any] = Prefetcherator()
    assert firedWith(pf.setup(iter([]))) is False
    assert firedWith(pf.getNext()) == (None, False, False)


def test_prefetcheratorErrorAfterValue() -> None:
    def gen() -> Iterator[int]:
        yield 1
        raise Boom()

    pf: Prefetcherator[Any] = Prefetcherator()
    firedWith(pf.setup(gen()))
    assert firedWith(pf.getNext()) == (1, True, True)
    with pytest.raises(Boom):
        firedWith(pf.getNext())


def test_prefetcheratorWithDeferator() -> None:
    pf: Prefetcherator[Any] = Prefetcherator()
    assert firedWith(pf.setup(generatorFunction(3, N=5))) is True
    dr: Deferator[Any] = Deferator(None, pf.getNext)
    got, _, status = firedWith(_iterate(dr))
    assert got == [0, 3, 6, 9, 12]
    assert status is True


def test_prefetcheratorAsSource() -> None:
    pf: Prefetcherator[Any] = Prefetcherator()
    firedWith(pf.setup(generatorFunction(1, N=4)))
    assert firedWith(Deferator(pf).toList()) == [0, 1, 2, 3]


# iteratorToProducer and IterationProducer ----------------------------------------


def test_iteratorToProducerFiresWithTheProducer() -> None:
    consumer = IterationConsumer()
    ip = firedWith(iteratorToProducer(("x" * k for k in range(5)), consumer))
    assert isinstance(ip, IterationProducer)
    assert firedWith(ip.deferUntilDone()) is consumer
    assert consumer.data == ["", "x", "xx", "xxx", "xxxx"]


def test_iteratorToProducerWithoutConsumer() -> None:
    ip = firedWith(iteratorToProducer(generatorFunction(1, N=3)))
    assert isinstance(ip, IterationProducer)
    consumer = IterationConsumer()
    ip.registerConsumer(consumer)
    done = ip.deferUntilDone()
    assert not done.called
    assert firedWith(ip.run()) is consumer
    assert firedWith(done) is consumer
    assert consumer.data == [0, 1, 2]
    assert ip.dr is ip.deferator


def test_iteratorToProducerOfNothing() -> None:
    consumer = IterationConsumer()
    assert firedWith(iteratorToProducer(iter([]), consumer)) is None
    assert consumer.producer is None
    assert firedWith(iteratorToProducer(42)) is None  # type: ignore[arg-type]


def test_iteratorToProducerWrapper() -> None:
    calls: list[Any] = []

    def wrapper(f: Any) -> Deferred[Any]:
        calls.append(f)
        try:
            return succeed(f())
        except StopIteration:
            return fail(StopIteration())

    consumer = IterationConsumer()
    ip = firedWith(iteratorToProducer(generatorFunction(2, N=3), consumer, wrapper))
    assert consumer.data == [0, 2, 4]
    assert len(calls) == 4
    assert ip.consumer is consumer


def test_iteratorToProducerBadWrapper() -> None:
    with pytest.raises(TypeError, match="not a callable"):
        iteratorToProducer(iter([1]), None, 42)  # type: ignore[arg-type]


def test_iterationProducerOfDeferatorOfIterator() -> None:
    dr: Deferator[Any] = Deferator(generatorFunction(1, N=4))
    ip = IterationProducer(dr)
    consumer = IterationConsumer()
    ip.registerConsumer(consumer)
    assert firedWith(ip.run()) is consumer
    assert consumer.data == [0, 1, 2, 3]


@pytest_twisted.inlineCallbacks
def test_iteratorToProducerInAThread() -> Any:
    from twisted.internet.threads import deferToThread

    consumer = IterationConsumer()
    ip = yield iteratorToProducer(generatorFunction(5, N=4), consumer, deferToThread)
    assert consumer.data == [0, 5, 10, 15]
    result = yield ip.deferUntilDone()
    assert result is consumer


# ListConsumer -----------------------------------------------------------------


class MyListConsumer(ListConsumer):
    """0.9.9's example: each item takes its own time to process."""

    clock: Clock

    def processItem(self, item: Any) -> Any:
        delay = (5 - len(item)) * 0.1
        return iteration.deferToDelay(delay, reactor=self.clock).addCallback(
            lambda _: ["foo", item]
        )


def test_listConsumer(clock: Clock) -> None:
    consumer = MyListConsumer(clock=clock)
    ip = iteratorToProducer(("x" * k for k in range(5)), consumer)
    z = consumer()
    assert not z.called
    # One item at a time: the producer is paused while one is processed.
    for _ in range(5):
        clock.advance(0.5)
    assert firedWith(ip) is not None
    assert firedWith(z) == [["foo", "x" * k] for k in range(5)]


def test_listConsumerPlain() -> None:
    consumer = ListConsumer(name="plain")
    assert consumer.name == "plain"  # type: ignore[attr-defined]
    firedWith(iteratorToProducer(generatorFunction(1, N=3), consumer))
    assert firedWith(consumer()) == [0, 1, 2]


def test_listConsumerNeedsPushProducer() -> None:
    with pytest.raises(TypeError, match="push"):
        ListConsumer().registerProducer(object(), False)


def test_listConsumerProcessError() -> None:
    class Failing(ListConsumer):
        def processItem(self, item: Any) -> Any:
            if item == 1:
                raise Boom()
            return item

    consumer = Failing()
    firedWith(iteratorToProducer(generatorFunction(1, N=3), consumer))
    with pytest.raises(Boom):
        firedWith(consumer())


# AsynQueue's loop over a Deferator whose items come later --------------------------


class LaterGetter:
    """getMore whose answers the test gives, one call at a time."""

    def __init__(self, values: list[Any]) -> None:
        self.values = list(values)
        self.pending: list[Deferred[tuple[Any, bool, bool]]] = []

    def getNext(self) -> Deferred[tuple[Any, bool, bool]]:
        d: Deferred[tuple[Any, bool, bool]] = Deferred()
        self.pending.append(d)
        return d

    def answer(self) -> None:
        d = self.pending.pop(0)
        if self.values:
            value = self.values.pop(0)
            d.callback((value, True, bool(self.values)))
        else:
            d.callback((None, False, False))


def test_deferatorLoopNeedsNoReady() -> None:
    getter = LaterGetter([1, 2, 3])
    dr: Deferator[Any] = Deferator("later", getter.getNext)
    looped = _iterate(dr)
    # The loop asked for the first item before any was in, as in AsynQueue.
    assert not looped.called
    while getter.pending:
        getter.answer()
    got, moreLeft, status = firedWith(looped)
    assert got == [1, 2, 3]
    assert moreLeft == [True, True, False]
    assert status is True


def test_deferatorOverAnEmptyGetMore() -> None:
    getter = LaterGetter([])
    dr: Deferator[Any] = Deferator("nothing", getter.getNext)
    looped = _iterate(dr)
    getter.answer()
    # AsynQueue's bogus value for an empty iteration: one None.
    got, _, status = firedWith(looped)
    assert got == [None]
    assert status is True


def test_prefetcheratorOverLaterValues() -> None:
    pending: list[Deferred[Any]] = []

    def later() -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        pending.append(d)
        return d

    pf: Prefetcherator[Any] = Prefetcherator("later")
    ok = pf.setup(later)
    pending.pop(0).callback("a")
    assert firedWith(ok) is True
    dr: Deferator[Any] = Deferator(pf)
    looped = _iterate(dr)
    assert not looped.called
    pending.pop(0).callback("b")
    pending.pop(0).errback(StopIteration())
    got, _, status = firedWith(looped)
    assert got == ["a", "b"]
    assert status is True
