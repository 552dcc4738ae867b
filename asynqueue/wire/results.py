"""
Results as they come back over the wire: decoded by their status, handed
to a Deferred or reported to a task, and iterators left in a child or on
a node read through L{WireIterationSource}.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.errors import UnpicklableError, WorkerCrashed, WorkerError
from asynqueue.interfaces import IIterationSource
from asynqueue.iteration import Deferator
from asynqueue.wire.commands import CloseIterator, NextItems, Status
from asynqueue.wire.framing import Value
from asynqueue.wire.pickling import decodeError, loads, loadsPlain

_RESULT, _BYTES, _ERROR = Status.RESULT, Status.BYTES, Status.ERROR
_ITERATOR = Status.ITERATOR


class Peer(Protocol):
    """What a worker's end of the wire offers to results and iterators."""

    dead: bool
    openIterators: int

    @property
    def amp(self) -> amp.AMP: ...

    @property
    def where(self) -> str: ...

    def iteratorClosed(self) -> None: ...


def decodeResult(status: str, payload: Value, peer: Peer) -> Any:
    """
    What a task's result that came over the wire stands for: the value, a
    L{Failure}, or, for an iterator kept on the node, a Deferred that fires
    with a L{Deferator} once the first items are in (so that a plain
    C{for d in deferator} loop, AsynQueue's way, can start at once).
    """
    if status == _BYTES:
        return bytes(payload)
    if status == _RESULT:
        try:
            return loads(payload)
        except Exception as e:
            return unloadable(e)
    if status == _ERROR:
        return Failure(decodeError(payload, peer.where))
    if status != _ITERATOR:
        return Failure(
            WorkerError(f"{peer.where} sent a result of unknown status {status!r}")
        )
    peer.openIterators += 1
    source = WireIterationSource(peer, loadsPlain(payload))
    return Deferator(source).ready()


def unloadable(error: Exception) -> Failure:
    """The outcome of a call whose result could not be unpickled here."""
    return Failure(UnpicklableError(f"the result cannot be unpickled: {error!r}"))


def deliverResult(d: Deferred[Any], status: str, payload: Value, peer: Peer) -> None:
    """Fire a task's Deferred with a result that came over the wire."""
    outcome = decodeResult(status, payload, peer)
    if isinstance(outcome, Deferred):
        outcome.chainDeferred(d)
    elif isinstance(outcome, Failure):
        d.errback(outcome)
    else:
        d.callback(outcome)


def reportResult(
    task: Any, attempt: int, status: str, payload: Value, peer: Peer
) -> None:
    """Report a result that came over the wire to its task (run C{attempt})."""
    outcome = decodeResult(status, payload, peer)
    if status == _ITERATOR:
        # A Deferred of the Deferator (never a plain result: those unpickle).
        outcome.addBoth(task.finished, attempt)
    else:
        task.finished(outcome, attempt)


@implementer(IIterationSource)
class WireIterationSource:
    """The items of an iterator kept by a worker node, fetched over the wire."""

    def __init__(self, peer: Peer, iteratorID: int) -> None:
        self._peer = peer
        self._iteratorID = iteratorID
        self._error: BaseException | None = None
        self._closed = False

    def fetch(self, maxItems: int) -> Deferred[tuple[list[Any], bool]]:
        if self._error is not None:
            return fail(self._error)
        if self._peer.dead:
            return fail(
                WorkerCrashed(f"{self._peer.where}, holding the iterator, ended")
            )
        d = self._peer.amp.callRemote(
            NextItems, iteratorID=self._iteratorID, maxItems=maxItems
        )
        result: Deferred[tuple[list[Any], bool]] = d.addCallbacks(
            self._received, self._lost
        )
        return result

    def _lost(self, failure: Failure) -> Failure:
        from twisted.internet.error import ConnectionDone, ConnectionLost

        if failure.check(ConnectionDone, ConnectionLost):
            self._done()
            return Failure(WorkerCrashed(f"{self._peer.where} went away mid-iteration"))
        return failure

    def _received(self, answer: dict[str, Any]) -> tuple[list[Any], bool]:
        items = loads(answer["items"])
        exhausted = answer["exhausted"]
        if answer.get("error") is not None:
            error = decodeError(answer["error"], self._peer.where)
            if not items:
                self._done()
                raise error
            # The items before the error go first; the error comes next.
            self._error = error
            return items, False
        if exhausted:
            self._done()
        return items, exhausted

    def _done(self) -> None:
        if not self._closed:
            self._closed = True
            self._peer.iteratorClosed()

    def close(self) -> None:
        if not self._closed:
            if not self._peer.dead:
                self._peer.amp.callRemote(CloseIterator, iteratorID=self._iteratorID)
            self._done()
