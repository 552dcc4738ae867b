"""
Tests of calls a queue holds pickled: on a queue whose workers all pickle
calls, a waiting call keeps its arguments only in its pickle (the originals
go), and whatever needs them later gets copies read from it.
"""

from __future__ import annotations

import gc
import pickle
import weakref
from typing import Any

import pytest
from twisted.internet.defer import CancelledError
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue import MemoryWorker
from asynqueue.interfaces import ICallPickling
from asynqueue.tasks import IN_THE_PICKLE
from asynqueue.wire.pickling import callArguments, dumpCall
from helpers import failureOf, result


class Payload:
    """An argument a test can watch go (it pickles by reference)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Payload) and other.n == self.n

    __hash__ = None  # type: ignore[assignment]


def size(payload: Payload, extra: int = 0) -> int:
    return payload.n + extra


@implementer(ICallPickling)
class PicklingWorker(MemoryWorker):
    """A memory worker that runs each call from its pickle, as a child would."""

    def prepareCall(self, f: Any, args: Any, kwargs: Any) -> bytes:
        return dumpCall(f, args, kwargs)

    def argumentsOf(self, call: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return callArguments(call)

    def runNext(self) -> bool:
        task = self.startNext()
        if task is None:
            return False
        assert task.pickled is not None
        f, args, kwargs = pickle.loads(task.pickled)
        try:
            outcome: object = f(*args, **kwargs)
        except Exception:
            outcome = Failure()
        self.finish(task, outcome)
        return True


def waitingCall(q: Any, *args: Any, **kwargs: Any) -> tuple[Any, weakref.ref[Any]]:
    """A call of L{size} on a Payload nobody else keeps, and a weak reference to it."""
    payload = Payload(5)
    watched = weakref.ref(payload)
    d = q.call(size, payload, *args, **kwargs)
    del payload
    gc.collect()
    return d, watched


def test_aWaitingPickledCallLetsItsArgumentsGo(makeQueue: Any) -> None:
    w = PicklingWorker()
    q = makeQueue(w)
    busy = q.call(size, Payload(1))
    d, watched = waitingCall(q, extra=2)
    assert d.args is IN_THE_PICKLE and d.kwargs == {}
    assert watched() is None, "the queue kept the original argument"
    assert w.runAll() == 2
    assert result(busy) == 1 and result(d) == 7


def test_aWorkerThatDoesNotPickleGetsCopies(makeQueue: Any) -> None:
    """
    The pickling workers leave while a call waits pickled; the worker that
    takes it runs the call as it is, with copies read from the pickle.
    """
    pickling = PicklingWorker()
    q = makeQueue(pickling)
    busy = q.call(size, Payload(1))
    d, _ = waitingCall(q, extra=1)
    plain = MemoryWorker()
    q.attachWorker(plain)
    q.detachWorker(pickling, crash=True)
    busy.addErrback(lambda f: None)
    plain.runAll()
    assert result(d) == 6
    # Pickled afresh no more: the queue has a worker that does not pickle.
    assert q.call(size, Payload(2)).args == (Payload(2),)


def test_anEndObserverAddedWhileACallWaitsGetsCopies(makeQueue: Any) -> None:
    w = PicklingWorker()
    q = makeQueue(w)
    d, _ = waitingCall(q, extra=3)
    seen: list[tuple[Any, Any]] = []
    q.observeEnds(lambda record, args, kwargs, outcome: seen.append((args, kwargs)))
    w.runAll()
    assert result(d) == 8
    assert seen == [((Payload(5),), {"extra": 3})]


def test_callsKeepTheirArgumentsForAnEndObserverOrTalk(makeQueue: Any) -> None:
    """What an end observer or the log is given is the caller's own object."""
    payload = Payload(4)
    w = PicklingWorker()
    q = makeQueue(w)
    seen: list[Any] = []
    q.observeEnds(lambda record, args, kwargs, outcome: seen.append(args[0]))
    d = q.call(size, payload)
    assert d.args == (payload,) and d.args[0] is payload
    w.runAll()
    assert seen[0] is payload
    talking = makeQueue(PicklingWorker(), verbose=True)
    assert talking.call(size, payload).args[0] is payload
    quiet = makeQueue(PicklingWorker())
    assert quiet.call(size, payload, verbose=True).args[0] is payload


def test_unreadableArgumentsFailTheCallNotTheQueue(makeQueue: Any) -> None:
    """A pickle that cannot be read back fails its call alone, with why."""
    pickling = PicklingWorker()
    q = makeQueue(pickling)
    busy = q.call(size, Payload(1))
    d, _ = waitingCall(q)
    d.pickled = b"not a pickle"
    plain = MemoryWorker()
    q.attachWorker(plain)
    q.detachWorker(pickling, crash=True)
    busy.addErrback(lambda f: None)
    assert failureOf(d).check(pickle.UnpicklingError)
    assert q.call(abs, -3).args == (-3,)
    plain.runAll()


@implementer(ICallPickling)
class OlderWorker(MemoryWorker):
    """An ICallPickling worker written before argumentsOf: it reads task.args."""

    def prepareCall(self, f: Any, args: Any, kwargs: Any) -> bytes:
        return pickle.dumps((f, args, kwargs))


@pytest.mark.parametrize("olderFirst", [None, True, False])
def test_aWorkerWithoutArgumentsOfKeepsThemAsBefore(
    makeQueue: Any, olderFirst: bool | None
) -> None:
    """
    A worker that may read the arguments, alone or beside one that cannot
    (in either order): nothing is let go, and each worker gets them.
    """
    older = OlderWorker()
    workers = [older] if olderFirst is None else [older, PicklingWorker()]
    q = makeQueue(*(workers if olderFirst in (None, True) else workers[::-1]))
    payload = Payload(3)
    calls = [q.call(size, payload, extra=i) for i in range(4)]
    assert all(d.args[0] is payload for d in calls)
    for w in workers:
        w.runAll()
    assert [result(d) for d in calls] == [3, 4, 5, 6]
    assert older.started == {} and not older.accepted


def test_theSharedEmptyKeywordsCannotBeChanged(makeQueue: Any) -> None:
    """
    Calls made without keywords share one empty dict: an end observer that
    tries to change it fails (and is logged), and no other call sees a
    keyword it did not pass.
    """
    w = PicklingWorker()
    q = makeQueue(w)
    tried: list[str] = []

    def meddle(record: Any, args: Any, kwargs: Any, outcome: Any) -> None:
        try:
            kwargs.setdefault("extra", 1000)
        except TypeError as e:
            tried.append(str(e))

    q.observeEnds(meddle)
    first = q.call(size, Payload(1))
    w.runAll()
    # Made after the observer's attempt: as it would be on any queue.
    second = q.call(size, Payload(2))
    w.runAll()
    assert [result(first), result(second)] == [1, 2]
    assert len(tried) == 2 and "cannot change" in tried[0]
    assert pickle.loads(pickle.dumps(first.kwargs)) == {}
    assert type(pickle.loads(pickle.dumps(first.kwargs))) is dict


@pytest.mark.parametrize("byValue", [False, True])
def test_callArgumentsReadsEitherKindOfPickledCall(byValue: bool) -> None:
    """A call naming its function by key, and one with the function in it."""
    if byValue:
        # A closure: pickled by value, sent once and named by key after.
        offset = 2

        def f(x: int, y: int = 0) -> int:
            return x + y + offset

    else:
        f = size  # type: ignore[assignment]
    call = dumpCall(f, (Payload(1),), {"y": 2})
    assert call.startswith(b"AQf1") is byValue
    assert callArguments(call) == ((Payload(1),), {"y": 2})


def test_theMarkerIsATupleThatSaysWhereTheArgumentsAre() -> None:
    assert isinstance(IN_THE_PICKLE, tuple) and IN_THE_PICKLE == ()
    assert repr(IN_THE_PICKLE) == "<arguments in task.pickled>"


def test_cancellingAWaitingPickledCall(makeQueue: Any) -> None:
    w = PicklingWorker()
    q = makeQueue(w)
    q.call(size, Payload(1))
    d, _ = waitingCall(q)
    d.cancel()
    assert failureOf(d).check(CancelledError)
    assert w.runAll() == 1
