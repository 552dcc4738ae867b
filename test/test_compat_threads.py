"""
AsynQueue 0.9.9's asynqueue.threads extras, as its docs describe them:
ThreadLooper, Consumerator, Filerator and OrderedItemProducer, with real
threads. Threads wait on events the test sets, never on the clock.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer, IPullProducer, IPushProducer
from twisted.internet.threads import deferToThread
from zope.interface import implementer

import asynqueue
from asynqueue import Deferator, ThreadQueue, threads
from asynqueue.errors import QueueRunError
from asynqueue.iteration import iteratorToProducer
from asynqueue.threads import (
    Consumerator,
    Filerator,
    OrderedItemProducer,
    ThreadLooper,
)


class Boom(Exception):
    """A task's error."""


def within(d: Deferred[Any], seconds: float = 10) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


@pytest.fixture
def looper() -> Iterator[ThreadLooper]:
    tl = ThreadLooper()
    yield tl
    pytest_twisted.blockon(within(tl.stop()))


@implementer(IConsumer)
class ListWriter:
    def __init__(self) -> None:
        self.data: list[Any] = []

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        pass

    def unregisterProducer(self) -> None:
        pass

    def write(self, data: Any) -> None:
        self.data.append(data)


def threadNames(n: int) -> Iterator[str]:
    for _ in range(n):
        yield threading.current_thread().name


# ThreadLooper ---------------------------------------------------------------


def test_namesAreInThreads() -> None:
    for name in ("ThreadLooper", "Consumerator", "Filerator", "OrderedItemProducer"):
        assert name in threads.__all__


@pytest_twisted.inlineCallbacks
def test_looperCall(looper: ThreadLooper) -> Any:
    status, result = yield within(looper.call(threading.current_thread))
    assert status == b"r"
    assert result is looper.thread
    assert looper.threadRunning


@pytest_twisted.inlineCallbacks
def test_looperOrderAndDoNext(looper: ThreadLooper) -> Any:
    gate = threading.Event()
    order: list[str] = []
    first = looper.call(gate.wait)
    ds = [looper.call(order.append, name) for name in ("a", "b")]
    ds.append(looper.call(order.append, "urgent", doNext=True))
    gate.set()
    yield within(first)
    for d in ds:
        yield within(d)
    assert order == ["urgent", "a", "b"]


@pytest_twisted.inlineCallbacks
def test_looperErrorFailsTheDeferred(looper: ThreadLooper) -> Any:
    def boom() -> None:
        raise Boom("in the thread")

    with pytest.raises(Boom):
        yield within(looper.call(boom))
    # The thread lives on.
    status, result = yield within(looper.call(pow, 2, 3))
    assert (status, result) == (b"r", 8)


@pytest_twisted.inlineCallbacks
def test_looperIterator(looper: ThreadLooper) -> Any:
    status, dr = yield within(looper.call(threadNames, 3))
    assert status == b"i"
    assert isinstance(dr, Deferator)
    names = []
    for d in dr:
        names.append((yield d))
    # The iterator ran in the looper's thread.
    assert names == [looper.thread.name] * 3
    assert (yield dr.d) is True


@pytest_twisted.inlineCallbacks
def test_looperRaw(looper: ThreadLooper) -> Any:
    status, result = yield within(looper.call(threadNames, 2, raw=True))
    assert status == b"r"
    assert not isinstance(result, Deferator)
    assert list(result) == [threading.current_thread().name] * 2


@pytest_twisted.inlineCallbacks
def test_looperDeferToThread(looper: ThreadLooper) -> Any:
    result = yield within(looper.deferToThread(pow, 3, 2))
    assert result == 9
    dr = yield within(looper.deferToThread(threadNames, 2))
    assert (yield dr.toList()) == [looper.thread.name] * 2
    consumer = ListWriter()
    result = yield within(looper.deferToThread(range, 4).addCallback(list))
    assert result == [0, 1, 2, 3]
    result = yield within(looper.deferToThread(iter, [5, 6], consumer=consumer))
    assert result is consumer
    assert consumer.data == [5, 6]


@pytest_twisted.inlineCallbacks
def test_looperStopWaitsForCallsAndIterations() -> Any:
    tl = ThreadLooper()
    stoppers: list[str] = []
    tl.dLock.addStopper(stoppers.append, "stopped")
    status, dr = yield within(tl.call(threadNames, 2))
    call = tl.call(pow, 2, 2)
    stopped = tl.stop()
    assert not stopped.called
    assert (yield within(call)) == (b"r", 4)
    with pytest.raises(QueueRunError):
        yield tl.call(pow, 1, 1)
    # The Deferator made before still iterates, and the stop waits for it.
    assert (yield within(dr.toList())) == [tl.thread.name] * 2
    yield within(stopped)
    assert stoppers == ["stopped"]
    assert not tl.threadRunning
    tl.thread.join(5)
    assert not tl.thread.is_alive()
    assert (yield tl.stop()) is None


# Consumerator -------------------------------------------------------------------


@implementer(IPushProducer)
class RecordingProducer:
    def __init__(self) -> None:
        self.events: list[str] = []

    def pauseProducing(self) -> None:
        self.events.append("pause")

    def resumeProducing(self) -> None:
        self.events.append("resume")

    def stopProducing(self) -> None:
        self.events.append("stop")


@pytest_twisted.inlineCallbacks
def test_consumeratorFeedsBlockingCode() -> Any:
    c = Consumerator()
    done = c.deferUntilDone()
    got = deferToThread(list, c)
    producer = yield iteratorToProducer(("x" * k for k in range(20)), c)
    assert producer is not None
    assert (yield within(got)) == ["x" * k for k in range(20)]
    yield within(done)
    assert c.runState == "stopped"


@pytest_twisted.inlineCallbacks
def test_consumeratorPausesAPushProducer() -> Any:
    producer = RecordingProducer()
    c = Consumerator(producer)
    assert c.producer is producer
    # The first item is at the head at once: paused and resumed.
    first = c.write("a")
    assert first.called
    assert producer.events == ["pause", "resume"]
    # The second waits until the first is taken.
    second = c.write("b")
    assert not second.called
    assert producer.events[-1] == "pause"
    gate = threading.Event()

    def takeOne() -> Any:
        return next(c)

    assert (yield within(deferToThread(takeOne))) == "a"
    yield within(second)
    assert producer.events[-1] == "resume"
    gate.set()
    ended = c.stop()
    assert "stop" in producer.events
    rest = yield within(deferToThread(list, c))
    assert rest == ["b"]
    yield within(ended)


@pytest_twisted.inlineCallbacks
def test_consumeratorPullProducer() -> Any:
    @implementer(IPullProducer)
    class Pull:
        resumed = 0

        def resumeProducing(self) -> None:
            self.resumed += 1

        def stopProducing(self) -> None:
            pass

    pull = Pull()
    c = Consumerator()
    c.registerProducer(pull, False)
    assert pull.resumed == 1
    c.write(1)
    assert pull.resumed == 2
    with pytest.raises(RuntimeError):
        c.registerProducer(pull, False)
    c.unregisterProducer()
    assert (yield within(deferToThread(list, c))) == [1]
    with pytest.raises(ValueError):
        c.write(2)


# Filerator ----------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_filerator() -> Any:
    f = Filerator()
    done = f.deferUntilDone()
    got = deferToThread(list, f)
    f.write("a")
    f.writelines(["b", "c"])
    f.flush()
    assert not f.closed
    f.close()
    assert f.closed
    assert (yield within(got)) == ["a", "b", "c"]
    yield within(done)
    with pytest.raises(ValueError, match="Closed"):
        f.write("d")


@pytest_twisted.inlineCallbacks
def test_fileratorWrittenFromAnotherThread() -> Any:
    f = Filerator()

    def writer() -> None:
        for k in range(50):
            f.write(k)
        f.close()

    got = deferToThread(list, f)
    yield within(deferToThread(writer))
    assert (yield within(got)) == list(range(50))


@pytest_twisted.inlineCallbacks
def test_fileratorAsATaskResult() -> Any:
    f = Filerator()
    f.writelines(["x", "y"])
    f.close()
    q = ThreadQueue(shutdownWithReactor=False)
    try:
        dr = yield within(q.call(lambda: f))
        assert isinstance(dr, Deferator)
        assert (yield within(dr.toList())) == ["x", "y"]
    finally:
        yield q.shutdown()


# OrderedItemProducer ------------------------------------------------------------


def consumeAll(i: Consumerator, prefix: str) -> list[str]:
    return [f"{prefix}{item}" for item in i]


@pytest_twisted.inlineCallbacks
def test_orderedItemProducer() -> Any:
    oip = OrderedItemProducer()
    yield within(oip.start(consumeAll, "item-"))
    pending: list[Deferred[int]] = [Deferred() for _ in range(5)]
    ds = [oip.produceItem(lambda d=d: d) for d in pending]
    # The items come in the reverse order of the calls.
    for k in reversed(range(5)):
        pending[k].callback(k)
    items = []
    for d in ds:
        items.append((yield within(d)))
    assert items == list(range(5))
    result = yield within(oip.stop())
    assert result == [f"item-{k}" for k in range(5)]


@pytest_twisted.inlineCallbacks
def test_orderedItemProducerError() -> Any:
    oip = OrderedItemProducer()
    yield within(oip.start(consumeAll, ""))
    oip.produceItem(succeed, 1)

    def boom() -> None:
        raise Boom()

    assert (yield oip.produceItem(boom)) is None
    # Stopped: no more calls of fp.
    assert (yield oip.produceItem(pow, 2, 2)) is None
    with pytest.raises(Boom):
        yield within(oip.stop())


@pytest_twisted.inlineCallbacks
def test_orderedItemProducerBlockingFunctionFails() -> Any:
    def fails(i: Consumerator) -> None:
        raise Boom()

    oip = OrderedItemProducer()
    yield within(oip.start(fails))
    with pytest.raises(Boom):
        yield within(oip.stop())


# PoolUser: AsynQueue's shared-pool class methods ------------------------------------


@pytest_twisted.inlineCallbacks
def test_poolUserClassMethods() -> Any:
    for cls in (Consumerator, Filerator, OrderedItemProducer):
        cls.setup(maxThreads=3)
        assert (yield cls.shutdown()) is None
    name = yield within(
        Filerator.deferToThreadInPool(lambda: threading.current_thread())
    )
    assert name is not threading.current_thread()
    assert Filerator().pool is reactor.getThreadPool()  # type: ignore[attr-defined]
    assert threads.TaskQueue is asynqueue.TaskQueue
