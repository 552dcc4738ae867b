"""
The wire between a queue and a worker node: AMP commands and how values
travel on them. Child processes and remote nodes speak the same protocol.

AMP limits one value to 65,535 bytes. L{BigBytes} spreads a larger value
over as many keys of the same box as it needs, sliced from the original
buffer without a copy per chunk.

Calls travel pickled with protocol 5: plain pickle where it can, and
cloudpickle for what it cannot do or would refer to by a name in
C{__main__} (closures, lambdas, functions typed at a prompt). Pickles are
code: only a peer that has authenticated may send them (the remote-node
transport makes sure of that before any box is read), and framing (lists
of IDs and payloads) is read as plain data only (L{loadsPlain}).

AsynQueue's C{asynqueue.wire.WireWorker} and C{WireServer} are still
importable from here; they live in L{asynqueue.remote} and
L{asynqueue.node}.
"""

from __future__ import annotations

import pickle
import traceback
from collections.abc import Callable
from typing import Any, ClassVar, Protocol

import cloudpickle
from twisted.internet.defer import Deferred, fail
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.errors import RemoteError, UnpicklableError, WorkerCrashed
from asynqueue.interfaces import IIterationSource
from asynqueue.iteration import Deferator

__all__ = [
    "BigBytes",
    "RunTasks",
    "TaskResult",
    "TaskResults",
    "RESULT_WINDOW",
    "RESULT_DELAY",
    "NextItems",
    "CloseIterator",
    "CancelTask",
    "Stop",
    "NodeInfo",
    "dumpCall",
    "pickledCall",
    "dumps",
    "loads",
    "encodeError",
    "decodeError",
    "decodeResult",
    "deliverResult",
    "reportResult",
    "WireIterationSource",
    "WireWorkerUniverse",
    "loadsPlain",
    "BoxReader",
    "boxPieces",
    "bigValue",
    "writeBox",
]

PROTOCOL = 5

#: A node runs at most this many tasks between two sends of results, so if
#: it dies, only that many of the oldest unanswered tasks can have run.
RESULT_WINDOW = 16

#: No result waits longer than this (seconds) to be sent.
RESULT_DELAY = 0.001
_CHUNK = amp.MAX_VALUE_LENGTH
#: The most bytes one key-value pair of a box takes on the wire.
_MAX_PAIR = 2 + amp.MAX_KEY_LENGTH + 2 + amp.MAX_VALUE_LENGTH

Value = bytes | memoryview


class BoxReader:
    """
    Reads AMP boxes from a stream of bytes, as Twisted's AMP does, only
    with less work per box: each key and value is a slice of the data read
    (no copy), and whole boxes go to C{boxReceived} as dicts of C{bytes}
    keys to C{bytes} or C{memoryview} values.

    Only one unfinished key-value pair (at most 64 KiB) is ever kept
    between reads, so a large box arriving in many reads costs no repeated
    joining. The data fed may be a view of a buffer its reader reuses:
    whatever is kept beyond a L{feed} (the tail, the values of a box not
    complete yet) is copied first. A box larger than C{maxBoxBytes}, or a
    malformed key, calls C{malformed(why)}, after which nothing more is
    read.
    """

    __slots__ = (
        "_boxReceived",
        "_malformed",
        "_maxBoxBytes",
        "_box",
        "_tail",
        "_size",
        "_fresh",
        "stopped",
    )

    def __init__(
        self,
        boxReceived: Callable[[dict[bytes, Value]], object],
        malformed: Callable[[str], object],
        maxBoxBytes: int | None = None,
    ) -> None:
        self._boxReceived = boxReceived
        self._malformed = malformed
        self._maxBoxBytes = maxBoxBytes
        self._box: dict[bytes, Value] = {}
        self._tail = b""
        self._size = 0
        self._fresh: list[bytes] = []
        #: True once a malformed box was seen, or L{stop} was called.
        self.stopped = False

    def feed(self, data: Value) -> None:
        """Take the bytes read; deliver every box they complete."""
        if self.stopped:
            return
        start = 0
        tail = self._tail
        if tail:
            # Finish the pair left unfinished with just what it can need of
            # the new data; then go on in the new data, where that ended.
            joined = tail + data[:_MAX_PAIR]
            used = self._parse(joined, 0)
            if used < 0:
                return
            if used < len(tail) or len(joined) - len(tail) == len(data):
                self._tail = joined[used:]
                return
            start = used - len(tail)
            self._tail = b""
        end = self._parse(data, start)
        if end >= 0:
            self._tail = bytes(data[end:])
            # The unfinished box keeps copies of what this read gave it.
            box, fresh = self._box, self._fresh
            for key in fresh:
                value = box[key]
                if type(value) is memoryview:
                    box[key] = bytes(value)
            fresh.clear()

    def _parse(self, data: Value, pos: int) -> int:
        """Take pairs from C{pos} on; return where the unfinished rest begins."""
        n = len(data)
        view = memoryview(data)
        box = self._box
        while pos + 2 <= n:
            keyLength = data[pos] << 8 | data[pos + 1]
            if keyLength == 0:
                pos += 2
                self._box, self._size = {}, 0
                self._fresh.clear()
                self._boxReceived(box)
                if self.stopped:
                    return -1
                box = self._box
                continue
            if keyLength > amp.MAX_KEY_LENGTH:
                self._stop(f"a key of {keyLength} bytes")
                return -1
            valueAt = pos + 2 + keyLength
            if valueAt + 2 > n:
                break
            end = valueAt + 2 + (data[valueAt] << 8 | data[valueAt + 1])
            if end > n:
                break
            key = bytes(view[pos + 2 : valueAt])
            box[key] = view[valueAt + 2 : end]
            self._fresh.append(key)
            self._size += end - pos
            pos = end
            if self._maxBoxBytes is not None and self._size > self._maxBoxBytes:
                self._stop(f"a box of over {self._maxBoxBytes} bytes")
                return -1
        return pos

    def _stop(self, why: str) -> None:
        self.stop()
        self._malformed(why)

    def stop(self) -> None:
        """Read nothing more (the connection is being dropped)."""
        self.stopped = True
        self._box, self._tail, self._fresh = {}, b"", []


def bigValue(box: dict[bytes, Value], name: bytes) -> Value | None:
    """A value that L{BigBytes} (or L{boxPieces}) spread over keys, whole again."""
    first = box.get(name)
    if first is None:
        return None
    second = box.get(name + b".1")
    if second is None:
        return first
    chunks = [first, second]
    i = 2
    while (chunk := box.get(b"%s.%d" % (name, i))) is not None:
        chunks.append(chunk)
        i += 1
    return b"".join(chunks)


def boxPieces(pairs: list[tuple[bytes, Value]]) -> list[Value]:
    """
    One AMP box, as the pieces to write in order (joining none of them):
    values over 64 KiB are spread over keys as L{BigBytes} does.
    """
    pieces: list[Value] = []
    add = pieces.append
    for key, value in pairs:
        size = len(value)
        if size <= _CHUNK:
            add(len(key).to_bytes(2, "big") + key + size.to_bytes(2, "big"))
            add(value)
            continue
        view = memoryview(value).cast("B")
        for i, at in enumerate(range(0, size, _CHUNK)):
            chunk = view[at : at + _CHUNK]
            name = key if i == 0 else b"%s.%d" % (key, i)
            add(len(name).to_bytes(2, "big") + name + len(chunk).to_bytes(2, "big"))
            add(chunk)
    add(b"\x00\x00")
    return pieces


def writeBox(transport: Any, pairs: list[tuple[bytes, Value]]) -> None:
    """Write one AMP box of C{pairs}; a large one without joining its pieces."""
    pieces = boxPieces(pairs)
    # More pieces than two a pair: a value was cut in chunks, so it is large.
    if len(pieces) > 2 * len(pairs) + 1 and hasattr(transport, "writeSequence"):
        transport.writeSequence(pieces)
    else:
        transport.write(b"".join(pieces))


class BigBytes(amp.Argument):
    """
    A bytes value of any size: chunks of at most 65,535 bytes under the keys
    C{name}, C{name.1}, C{name.2}, ... of one box.
    """

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, Any],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        value = objects[amp._wireNameToPythonIdentifier(name)]
        if self.optional and value is None:
            return
        view = memoryview(value).cast("B")
        strings[name] = view[:_CHUNK]
        for i, start in enumerate(range(_CHUNK, len(view), _CHUNK), 1):
            strings[b"%s.%d" % (name, i)] = view[start : start + _CHUNK]

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, Any],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        key = amp._wireNameToPythonIdentifier(name)
        first = strings.get(name)
        if first is None:
            if not self.optional:
                raise KeyError(name)
            objects[key] = None
            return
        chunks = [first]
        i = 1
        while (chunk := strings.get(b"%s.%d" % (name, i))) is not None:
            chunks.append(chunk)
            i += 1
        objects[key] = chunks[0] if i == 1 else b"".join(chunks)


class RunTasks(amp.Command):
    """
    Queue calls on the node, to run in the order sent.

    C{batch} is a pickled list of C{(taskID, call)}, C{call} being a
    pickled C{(f, args, kwargs)} (see L{dumpCall}). The results come back as
    L{TaskResult}s or L{TaskResults}, in the order the tasks ran.
    """

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class TaskResult(amp.Command):
    """
    One task's outcome, sent by the node as soon as the task ends.

    C{status} is C{"r"} (payload: the pickled result), C{"b"} (payload: a
    large C{bytes} result as it is), C{"m"} (payload: where a large C{bytes}
    result waits in the L{asynqueue.ring.ResultRing} a child shares with its
    parent; never sent further), C{"e"} (payload: an encoded error, see
    L{encodeError}) or C{"i"} (payload: the pickled ID of an iterator kept
    on the node). C{seconds} is how long the call ran.
    A node sends results in the order the tasks ran, and runs at most
    L{RESULT_WINDOW} tasks between two sends (see L{TaskResults}).
    """

    arguments = [
        (b"taskID", amp.Integer()),
        (b"status", amp.Unicode()),
        (b"payload", BigBytes()),
        (b"seconds", amp.Float()),
    ]
    requiresAnswer = False


class TaskResults(amp.Command):
    """
    Several tasks' outcomes at once: a pickled list of C{(taskID, status,
    payload, seconds)}, each as in L{TaskResult}.
    """

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class NextItems(amp.Command):
    """Take up to C{maxItems} next items of an iterator kept on the node."""

    arguments = [(b"iteratorID", amp.Integer()), (b"maxItems", amp.Integer())]
    response = [
        (b"items", BigBytes()),
        (b"exhausted", amp.Boolean()),
        (b"error", BigBytes(optional=True)),
    ]


class CloseIterator(amp.Command):
    """Close and forget an iterator kept on the node."""

    arguments = [(b"iteratorID", amp.Integer())]
    requiresAnswer = False


class CancelTask(amp.Command):
    """Drop a queued task that has not started; a running one is not touched."""

    arguments = [(b"taskID", amp.Integer())]
    requiresAnswer = False


class Stop(amp.Command):
    """Finish the queued tasks, answer, and end."""

    arguments: ClassVar[list[Any]] = []
    response: ClassVar[list[Any]] = []


class NodeInfo(amp.Command):
    """What the node is: its process ID, memory, capacity and tasks done."""

    arguments: ClassVar[list[Any]] = []
    response = [
        (b"pid", amp.Integer()),
        (b"rss", amp.Integer()),
        (b"capacity", amp.Integer()),
        (b"done", amp.Integer()),
        (b"processes", amp.Integer(optional=True)),
    ]


class WireWorkerUniverse:
    """
    AsynQueue's way to expose a fixed set of methods on a node.

    Subclass me with the methods clients may call. A node started with my
    subclass (C{--universe module.Class}, or L{asynqueue.node.WireServer})
    runs only calls of those methods, by name, with arguments of plain data
    (numbers, strings, bytes, lists, tuples, dicts, sets, None): no code
    travels, so a client can run nothing else there. Methods whose names
    start with C{_} are not exposed. Clients use
    L{asynqueue.remote.WireWorker} and call C{queue.call("method", ...,
    series=...)}.
    """


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        raise UnpicklableError(f"only plain data may travel here, not {module}.{name}")


def loadsPlain(data: bytes | memoryview) -> Any:
    """Unpickle data that may hold no class or function at all (so no code)."""
    import io

    return _PlainUnpickler(io.BytesIO(data)).load()


def callUniverse(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a universe method in a node's child (the universe is its context)."""
    from asynqueue.node import context

    return getattr(context(), name)(*args, **kwargs)


def makeUniverse(path: str) -> WireWorkerUniverse:
    """Import C{module.Class} and make the universe (in a node's child)."""
    import importlib

    module, _, name = path.rpartition(".")
    universe = getattr(importlib.import_module(module), name)()
    if not isinstance(universe, WireWorkerUniverse):
        raise TypeError(f"{path} is not a WireWorkerUniverse subclass")
    return universe


def dumps(value: object) -> bytes:
    """Pickle a value (an argument, result or item) with protocol 5."""
    try:
        return pickle.dumps(value, PROTOCOL)
    except Exception:
        # Values made at a prompt or in a closure need cloudpickle.
        return cloudpickle.dumps(value, PROTOCOL)


loads: Callable[[bytes | memoryview], Any] = pickle.loads


def dumpCall(
    f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """
    Pickle a call; raise L{UnpicklableError} naming what cannot be pickled.
    """
    call = (f, args, kwargs)
    try:
        data = pickle.dumps(call, PROTOCOL)
        # What plain pickle refers to by name in __main__ (a function typed
        # at a prompt, a script's class) does not exist in the worker:
        # cloudpickle sends such things by value.
        if b"__main__" not in data:
            return data
    except Exception:
        pass
    try:
        return cloudpickle.dumps(call, PROTOCOL)
    except Exception as e:
        try:
            why = _culprit(f, args, kwargs, e)
        except Exception:
            # Naming the culprit must never be what fails the call.
            why = f"the call cannot be pickled: {describeError(e)}"
        raise UnpicklableError(why) from e


def pickledCall(task: Any) -> bytes:
    """
    A task's call, pickled: as the queue pickled it when it was queued, or
    now; raise L{UnpicklableError} naming what cannot be pickled.
    """
    if task.pickled is not None:
        return task.pickled
    return dumpCall(task.f, task.args, task.kwargs)


def _culprit(
    f: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: Exception,
) -> str:
    parts: list[tuple[str, object]] = [("the callable", f)]
    parts += [(f"argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for what, obj in parts:
        try:
            cloudpickle.dumps(obj, PROTOCOL)
        except Exception as e:
            return f"{what} ({_short(obj)}) cannot be pickled: {describeError(e)}"
    return f"the call cannot be pickled: {describeError(error)}"


def _short(obj: object) -> str:
    """A short repr of C{obj}, or its type's name if its repr fails (or recurses)."""
    try:
        text = repr(obj)
    except Exception:
        return f"a {type(obj).__qualname__} whose repr() failed"
    return text if len(text) <= 80 else text[:77] + "..."


def describeError(error: BaseException) -> str:
    """C{Type: message} on one line, even for an exception whose C{str()} fails."""
    try:
        message = str(error)
    except Exception:
        message = "(its str() failed)"
    name = type(error).__name__
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"{name}: {first}" if first else name


def encodeError(error: BaseException) -> bytes:
    """
    Encode an exception for the trip back: the exception itself if it
    pickles (and unpickles), and always its type name, message and
    traceback text.
    """
    try:
        text = "".join(traceback.format_exception(error))
    except Exception:
        text = f"{type(error).__qualname__} (its traceback could not be formatted)\n"
    try:
        message = str(error)
    except Exception:
        message = f"<{type(error).__qualname__} whose str() failed>"
    try:
        pickled: bytes | None = dumps(error)
        loads(pickled)  # type: ignore[arg-type]
    except Exception:
        pickled = None
    return dumps((pickled, type(error).__qualname__, message, text))


def decodeError(payload: Value, where: str) -> BaseException:
    """
    The exception an encoded error stands for, with the remote traceback as a note.

    If the original exception cannot be rebuilt here, a L{RemoteError}
    carrying its type name, message and traceback stands in for it.
    """
    pickled, typeName, message, text = loadsPlain(payload)
    error: BaseException | None = None
    if pickled is not None:
        try:
            error = loads(pickled)
        except Exception:
            error = None
    if not isinstance(error, BaseException):
        error = RemoteError(typeName, message, text)
    error.add_note(f"Traceback from {where}:\n{text.rstrip()}")
    error.remoteTraceback = text  # type: ignore[attr-defined]
    return error


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
    if status == "b":
        return bytes(payload)
    if status == "r":
        try:
            return loads(payload)
        except Exception as e:
            return Failure(UnpicklableError(f"the result cannot be unpickled: {e!r}"))
    if status == "e":
        return Failure(decodeError(payload, peer.where))
    peer.openIterators += 1
    source = WireIterationSource(peer, loadsPlain(payload))
    return Deferator(source).ready()


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
    if status == "i":
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
        return d.addCallbacks(self._received, self._lost)

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


def __getattr__(name: str) -> Any:
    # AsynQueue's import paths: asynqueue.wire.WireWorker and WireServer.
    if name == "WireWorker":
        from asynqueue.remote import WireWorker

        return WireWorker
    if name == "WireServer":
        from asynqueue.node import WireServer

        return WireServer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
