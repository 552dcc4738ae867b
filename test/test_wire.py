"""Tests of asynqueue.wire: chunked values on real AMP boxes, call pickling, errors."""

from __future__ import annotations

import pickle
import random
import threading
from collections.abc import Iterable
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.test import iosim

from asynqueue.errors import RemoteError, UnpicklableError, WorkerError
from asynqueue.wire.boxes import defineFunctionBox, readDefineFunction
from asynqueue.wire.client import NodeClient, SentCall
from asynqueue.wire.commands import (
    CANCEL_TASK,
    COMMAND,
    DEFINE_FUNCTION,
    RUN_TASKS,
    TASK_RESULT,
    TASK_RESULTS,
    BigBytes,
    CancelTask,
    CloseIterator,
    DefineFunction,
    NextItems,
    NodeInfo,
    RunTasks,
    Status,
    Stop,
    TaskResult,
    TaskResults,
    cancelTaskBox,
    readBatch,
    readCancelTask,
    readTaskResult,
    runTasksBox,
    runTasksFrame,
    taskResultBox,
    taskResultsBox,
)
from asynqueue.wire.framing import BoxReader, bigValue, boxPieces, writeBox
from asynqueue.wire.functions import Definition, loadCall
from asynqueue.wire.pickling import decodeError, dumpCall, dumps, encodeError, loads
from helpers import failureOf

CHUNK = amp.MAX_VALUE_LENGTH
SIZES = [0, 1, CHUNK, CHUNK + 1, 3 * CHUNK + 7]


def payload(size: int) -> bytes:
    """Bytes whose every position differs from its neighbours' chunks."""
    return bytes((i * 7 + i // CHUNK) % 251 for i in range(size))


class Echo(amp.Command):
    """A command with a big argument, a big answer and a small one beside them."""

    arguments: ClassVar[list[Any]] = [
        (b"data", BigBytes()),
        (b"tag", amp.Integer()),
    ]
    response: ClassVar[list[Any]] = [
        (b"data", BigBytes()),
        (b"extra", BigBytes(optional=True)),
        (b"tag", amp.Integer()),
    ]


class EchoServer(amp.AMP):
    @Echo.responder
    def echo(self, data: bytes, tag: int) -> dict[str, Any]:
        return {"data": data[::-1], "tag": tag + 1, "extra": None}


def wireTrip(command: type[amp.Command], objects: dict[str, Any]) -> dict[str, Any]:
    """Serialize the arguments into one box's bytes, parse them back, decode them."""
    box = command.makeArguments(objects, None)
    data = box.serialize()
    boxes = amp.parseString(data)
    assert len(boxes) == 1
    return command.parseArguments(boxes[0], None)


@pytest.mark.parametrize("size", SIZES)
def test_bigBytesRoundTripThroughSerializedBox(size: int) -> None:
    value = payload(size)
    box = RunTasks.makeArguments({"batch": value}, None)
    # Every value in the box respects AMP's limit, and all are needed.
    assert all(len(v) <= CHUNK for v in box.values())
    chunks = [k for k in box if k.startswith(b"batch")]
    assert len(chunks) == max(1, -(-size // CHUNK))
    out = wireTrip(RunTasks, {"batch": value})
    assert type(out["batch"]) is bytes
    assert out["batch"] == value


@pytest.mark.parametrize("size", [0, CHUNK + 1, 3 * CHUNK + 7])
def test_bigBytesAcceptsAnyBuffer(size: int) -> None:
    value = payload(size)
    for buffer in (bytearray(value), memoryview(value)):
        assert wireTrip(RunTasks, {"batch": buffer})["batch"] == value


def test_bigBytesOptionalAbsentAndPresentInResponse() -> None:
    items = payload(2 * CHUNK + 3)
    box = NextItems.makeResponse(
        {"items": items, "exhausted": False, "error": None}, None
    )
    parsed = NextItems.parseResponse(amp.parseString(box.serialize())[0], None)
    assert parsed == {"items": items, "exhausted": False, "error": None}
    error = payload(CHUNK + 5)
    box = NextItems.makeResponse(
        {"items": b"", "exhausted": True, "error": error}, None
    )
    parsed = NextItems.parseResponse(amp.parseString(box.serialize())[0], None)
    assert parsed == {"items": b"", "exhausted": True, "error": error}


def test_bigBytesMissingRequiredKeyFails() -> None:
    with pytest.raises(KeyError):
        RunTasks.parseArguments(amp.AmpBox(), None)


@pytest.mark.parametrize("size", [0, CHUNK, 3 * CHUNK + 7])
def test_bigBytesOverRealAMPConnection(size: int) -> None:
    """Both ways over two AMP protocols, the bytes cut into small pieces on the way."""
    client, server, pump = iosim.connectedServerAndClient(
        ServerClass=EchoServer, ClientClass=amp.AMP
    )
    value = payload(size)
    answers: list[Any] = []
    client.callRemote(Echo, data=value, tag=41).addBoth(answers.append)
    pump.flush()
    assert answers == [{"data": value[::-1], "tag": 42, "extra": None}]


def test_multiByteTextTravelsWhole() -> None:
    """Text is pickled (encoded) before being cut, so no character is split."""
    text = "aé€😀" * (CHUNK // 3)
    out = wireTrip(RunTasks, {"batch": dumps(text)})
    assert loads(out["batch"]) == text


# -- dumpCall -----------------------------------------------------------------


def square(x: int) -> int:
    return x * x


def test_dumpCallRoundTrip() -> None:
    f, args, kwargs = loads(dumpCall(square, (3,), {}))
    assert f is square and f(*args, **kwargs) == 9
    offset = 10
    add = lambda x, y=0: x + y + offset  # noqa: E731
    call = dumpCall(add, (1,), {"y": 2})
    # A lambda is pickled by value, once: the call names it by key, which
    # finds its pickle while the lambda lives (a queued task holds it).
    f, args, kwargs = loadCall(call)
    assert f(*args, **kwargs) == 13


def test_dumpCallNamesTheUnpicklableCallable() -> None:
    lock = threading.Lock()

    def holdsLock() -> bool:
        return lock.locked()

    with pytest.raises(UnpicklableError) as info:
        dumpCall(holdsLock, (1,), {"k": 2})
    message = str(info.value)
    assert message.startswith("the callable (")
    assert "holdsLock" in message
    assert "cannot pickle '_thread.lock' object" in message


def test_dumpCallNamesTheUnpicklableArgument() -> None:
    with pytest.raises(UnpicklableError) as info:
        dumpCall(square, (1, threading.Lock()), {})
    message = str(info.value)
    assert message.startswith("argument 1 (<unlocked _thread.lock object")
    assert "TypeError" in message and "_thread.lock" in message


def test_dumpCallNamesTheUnpicklableKeyword() -> None:
    with pytest.raises(UnpicklableError) as info:
        dumpCall(square, (1,), {"fine": 2, "bad": threading.RLock()})
    message = str(info.value)
    assert message.startswith("keyword argument 'bad' (")
    assert "RLock" in message


def test_dumpCallShortensLongReprs() -> None:
    class Unpicklable(list[int]):
        def __reduce__(self) -> Any:
            raise TypeError("not today")

    with pytest.raises(UnpicklableError) as info:
        dumpCall(square, (Unpicklable(range(100)),), {})
    message = str(info.value)
    culprit = message[len("argument 0 (") : message.index(") cannot")]
    assert len(culprit) == 80 and culprit.endswith("...")
    assert message.endswith("TypeError: not today")


# -- encodeError / decodeError ------------------------------------------------


def raiseIn(error: BaseException) -> BaseException:
    def deepInside() -> None:
        raise error

    try:
        deepInside()
    except BaseException as e:
        return e
    raise AssertionError("not raised")


class NeedsTwoArgs(Exception):
    """It pickles, but cannot be rebuilt: its args do not fit its __init__."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}+{b}")

    def __reduce__(self) -> tuple[type[NeedsTwoArgs], tuple[Any, ...]]:
        # Pickle's own way for exceptions, said outright: importing
        # distributed (tblib) would otherwise pickle it by its state.
        return type(self), self.args


class HoldsLock(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def test_errorKeepsTypeMessageAndTraceback() -> None:
    error = raiseIn(KeyError("missing"))
    decoded = decodeError(encodeError(error), "node 7")
    assert type(decoded) is KeyError
    assert decoded.args == ("missing",)
    text = decoded.remoteTraceback  # type: ignore[attr-defined]
    assert "deepInside" in text and "KeyError: 'missing'" in text
    assert decoded.__notes__ == [f"Traceback from node 7:\n{text.rstrip()}"]


@pytest.mark.parametrize(
    "error, typeName, message",
    [
        (NeedsTwoArgs(1, 2), "NeedsTwoArgs", "1+2"),
        (HoldsLock("locked up"), "HoldsLock", "locked up"),
    ],
)
def test_errorThatCannotBeRebuiltArrivesAsRemoteError(
    error: BaseException, typeName: str, message: str
) -> None:
    decoded = decodeError(encodeError(raiseIn(error)), "there")
    assert isinstance(decoded, RemoteError)
    assert decoded.typeName == typeName
    assert decoded.message == message
    assert str(decoded) == f"{typeName}: {message}"
    assert "deepInside" in decoded.remoteTraceback
    assert decoded.__notes__[0].startswith("Traceback from there:\n")


def test_errorWhoseClassIsUnknownHereArrivesAsRemoteError() -> None:
    """What the node pickled by reference to a module this side lacks."""
    pickled = pickle.dumps(ValueError("x")).replace(b"builtins", b"nowhere_")
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(pickled)
    payload = dumps((pickled, "Strange", "odd", "Traceback ...\nStrange: odd\n"))
    decoded = decodeError(payload, "far away")
    assert isinstance(decoded, RemoteError)
    assert (decoded.typeName, decoded.message) == ("Strange", "odd")
    assert decoded.remoteTraceback == "Traceback ...\nStrange: odd\n"


def test_encodeErrorSurvivesBrokenStr() -> None:
    """An exception whose str() fails must still travel (the node relies on it)."""

    class BadStr(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    decoded = decodeError(encodeError(raiseIn(BadStr())), "here")
    assert "BadStr" in decoded.remoteTraceback  # type: ignore[attr-defined]


def test_largeErrorTravels() -> None:
    error = raiseIn(ValueError("é" * 100_000))
    encoded = encodeError(error)
    assert len(encoded) > CHUNK
    out = wireTrip(RunTasks, {"batch": encoded})
    decoded = decodeError(out["batch"], "big")
    assert type(decoded) is ValueError and decoded.args == ("é" * 100_000,)


# -- BoxReader, boxPieces, bigValue, writeBox ----------------------------------

Box = dict[bytes, bytes]


class Reading:
    """A BoxReader and what it delivered: boxes (values as bytes) and complaints."""

    def __init__(self, maxBoxBytes: int | None = None) -> None:
        self.boxes: list[Box] = []
        self.malformed: list[str] = []
        self.reader = BoxReader(self.received, self.malformed.append, maxBoxBytes)

    def received(self, box: dict[bytes, Any]) -> None:
        # A value may be a view of what was read: copy it while it is valid.
        self.boxes.append({bytes(k): bytes(v) for k, v in box.items()})

    def feed(self, pieces: Iterable[bytes]) -> Reading:
        for piece in pieces:
            self.reader.feed(piece)
        return self


def readBoxes(pieces: Iterable[bytes], maxBoxBytes: int | None = None) -> list[Box]:
    """The boxes a BoxReader delivers from C{pieces}, asserting none was malformed."""
    reading = Reading(maxBoxBytes).feed(pieces)
    assert reading.malformed == []
    return reading.boxes


def cutAt(data: bytes, offsets: Iterable[int]) -> list[bytes]:
    """C{data} cut at C{offsets} (empty pieces included where offsets repeat)."""
    bounds = [0, *sorted(offsets), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:], strict=False)]


def inChunks(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def joined(pieces: list[Any]) -> bytes:
    return b"".join(bytes(p) for p in pieces)


def twistedBoxes() -> list[amp.AmpBox]:
    """Boxes of assorted shapes, serialized by Twisted's AMP in the tests."""
    return [
        amp.AmpBox(_command=b"RunTasks", _ask=b"1", batch=b"x" * 300),
        amp.AmpBox(),
        amp.AmpBox(empty=b""),
        # Values that look like lengths and terminators.
        amp.AmpBox({b"z": b"\x00\x00", b"y": b"\x00", b"x": b"\x00\x00\x00\x00"}),
        amp.AmpBox({b"k" * amp.MAX_KEY_LENGTH: payload(1000), b"a": b"1"}),
        amp.AmpBox(full=payload(CHUNK), tag=b"7"),
    ]


def twistedStream() -> tuple[bytes, list[Box]]:
    boxes = twistedBoxes()
    return b"".join(b.serialize() for b in boxes), [dict(b) for b in boxes]


@pytest.mark.parametrize("size", [0, 1, 0xFFFF])
def test_runTasksFrameIsTheBoxWriteBoxWrites(size: int) -> None:
    """The one-step frame of a call's box: the same bytes, read back whole."""
    batch = bytes(random.getrandbits(8) for _ in range(size))
    transport = StringTransport()
    writeBox(transport, runTasksBox(batch))
    frame = runTasksFrame(batch)
    assert frame == transport.value()
    [box] = readBoxes([frame])
    assert box[COMMAND] == RUN_TASKS and readBatch(box) == batch


def test_runTasksFrameLeavesALargeBatchToWriteBox() -> None:
    assert runTasksFrame(bytes(0x10000)) is None


def test_boxReaderParsesTwistedBoxes() -> None:
    for box in twistedBoxes():
        assert readBoxes([box.serialize()]) == [dict(box)]


def test_boxReaderDeliversSeveralBoxesOfOneFeedInOrder() -> None:
    data, expected = twistedStream()
    boxes = readBoxes([data])
    assert len(boxes) == 6
    assert boxes == expected
    assert boxes[1] == {} and boxes[2] == {b"empty": b""}


def test_boxReaderByteByByte() -> None:
    data, expected = twistedStream()
    assert readBoxes(inChunks(data, 1)) == expected


def test_boxReaderCutAtEveryByteBoundary() -> None:
    boxes = [b for b in twistedBoxes() if len(b.serialize()) < 2000]
    data = b"".join(b.serialize() for b in boxes)
    expected = [dict(b) for b in boxes]
    for at in range(len(data) + 1):
        assert readBoxes(cutAt(data, [at])) == expected, f"cut at {at}"


def test_boxReaderRandomSplits() -> None:
    data, expected = twistedStream()
    rng = random.Random(20240611)
    for _ in range(200):
        offsets = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 40))]
        assert readBoxes(cutAt(data, offsets)) == expected, sorted(offsets)


def test_boxReaderRandomSplitsOfBigValues() -> None:
    """Boxes whose values span several chunks, small ones between, cut at random."""
    pairs = [
        [(b"a", payload(3 * CHUNK + 7)), (b"b", b"small")],
        [(b"c", b"")],
        [(b"d", payload(CHUNK + 1)[::-1])],
    ]
    data = b"".join(joined(boxPieces(p)) for p in pairs)
    rng = random.Random(7)
    for _ in range(20):
        offsets = [rng.randrange(len(data) + 1) for _ in range(rng.randrange(1, 60))]
        boxes = readBoxes(cutAt(data, offsets))
        assert [bigValue(b, b"a") for b in boxes] == [
            payload(3 * CHUNK + 7),
            None,
            None,
        ]
        assert boxes[0][b"b"] == b"small" and boxes[1] == {b"c": b""}
        assert bigValue(boxes[2], b"d") == payload(CHUNK + 1)[::-1]


@pytest.mark.parametrize(
    ("size", "pieceSize"),
    [(CHUNK, 1), (CHUNK + 1, 1), (200_000, 997), (200_000, 200_000 + 100)],
)
def test_bigValueComesBackWholeThroughBoxReader(size: int, pieceSize: int) -> None:
    value = payload(size)
    pieces = boxPieces([(b"_command", b"TaskResult"), (b"payload", value)])
    data = joined(pieces) + joined(boxPieces([(b"after", b"ok")]))
    boxes = readBoxes(inChunks(data, pieceSize))
    assert len(boxes) == 2
    whole = bigValue(boxes[0], b"payload")
    assert whole is not None and bytes(whole) == value
    chunkKeys = sorted(k for k in boxes[0] if k.startswith(b"payload"))
    assert len(chunkKeys) == -(-size // CHUNK)
    assert boxes[0][b"_command"] == b"TaskResult"
    assert boxes[1] == {b"after": b"ok"}


def test_boxReaderMaxBoxBytesAtTheLimitAndOver() -> None:
    # One pair costs 2 + len(key) + 2 + len(value) bytes: 15 here.
    box = joined(boxPieces([(b"k", b"v" * 10)]))
    assert readBoxes([box], maxBoxBytes=15) == [{b"k": b"v" * 10}]
    assert readBoxes([box + box], maxBoxBytes=15) == [{b"k": b"v" * 10}] * 2
    reading = Reading(maxBoxBytes=14).feed([box])
    assert reading.boxes == [] and len(reading.malformed) == 1
    assert "14" in reading.malformed[0]
    assert reading.reader.stopped


def test_boxReaderOversizeBoxStopsEverything() -> None:
    small = joined(boxPieces([(b"a", b"1")]))
    big = joined(boxPieces([(b"k%d" % i, b"x" * 50) for i in range(10)]))
    reading = Reading(maxBoxBytes=200).feed([small + big + small])
    assert reading.boxes == [{b"a": b"1"}]
    assert len(reading.malformed) == 1
    reading.feed([small, big, small])
    assert reading.boxes == [{b"a": b"1"}] and len(reading.malformed) == 1


def test_boxReaderOversizeBoxArrivingByteByByte() -> None:
    small = joined(boxPieces([(b"a", b"1")]))
    big = joined(boxPieces([(b"k%d" % i, b"x" * 50) for i in range(10)]))
    reading = Reading(maxBoxBytes=200).feed(inChunks(small + big + small, 1))
    assert reading.boxes == [{b"a": b"1"}]
    assert len(reading.malformed) == 1


def test_boxReaderKeyLongerThan255Bytes() -> None:
    key = b"k" * (amp.MAX_KEY_LENGTH + 1)
    bad = len(key).to_bytes(2, "big") + key + b"\x00\x01v\x00\x00"
    small = joined(boxPieces([(b"a", b"1")]))
    reading = Reading().feed([small + bad + small])
    assert reading.boxes == [{b"a": b"1"}]
    assert len(reading.malformed) == 1 and "256" in reading.malformed[0]
    assert reading.reader.stopped
    reading.feed([small])
    assert reading.boxes == [{b"a": b"1"}] and len(reading.malformed) == 1


def test_boxReaderKeyTooLongSeenFromItsLengthAlone() -> None:
    reading = Reading().feed([b"\x01", b"\x00"])
    assert len(reading.malformed) == 1 and "256" in reading.malformed[0]


def test_boxReaderDeliversNothingAfterStop() -> None:
    data, expected = twistedStream()
    reading = Reading().feed([data[:10]])
    reading.reader.stop()
    assert reading.reader.stopped
    reading.feed([data[10:], data])
    assert reading.boxes == [] and reading.malformed == []


def test_boxReaderStoppedWhileDeliveringDeliversNoMoreOfTheFeed() -> None:
    data, expected = twistedStream()
    boxes: list[dict[bytes, Any]] = []

    def received(box: dict[bytes, Any]) -> None:
        boxes.append(box)
        reader.stop()

    reader = BoxReader(received, lambda why: pytest.fail(why))
    reader.feed(data)
    reader.feed(data)
    assert len(boxes) == 1
    assert {k: bytes(v) for k, v in boxes[0].items()} == expected[0]


def test_boxReaderCopiesWhatItKeepsFromAReusedBuffer() -> None:
    """As a PipeReader feeds it: views of one buffer, overwritten after each feed."""
    big = payload(2 * CHUNK + 5)
    stream, expected = twistedStream()
    data = joined(boxPieces([(b"big", big), (b"b", b"tail end")])) + stream
    for size in (1, 3, 997, 70_000):
        buffer = bytearray(size)
        view = memoryview(buffer)
        reading = Reading()
        for piece in inChunks(data, size):
            buffer[: len(piece)] = piece
            reading.reader.feed(view[: len(piece)])
            buffer[:] = b"\xff" * size
        assert reading.malformed == []
        assert len(reading.boxes) == 1 + len(expected), size
        assert bigValue(reading.boxes[0], b"big") == big, size
        assert reading.boxes[0][b"b"] == b"tail end"
        assert reading.boxes[1:] == expected, size


def test_boxPiecesOfSmallBoxIsTwistedSerialization() -> None:
    for box in twistedBoxes():
        assert joined(boxPieces(sorted(box.items()))) == box.serialize()


@pytest.mark.parametrize("size", SIZES)
def test_boxPiecesParsedByTwisted(size: int) -> None:
    value = payload(size)
    pieces = boxPieces([(b"_command", b"RunTasks"), (b"batch", value), (b"x", b"1")])
    boxes = amp.parseString(joined(pieces))
    assert len(boxes) == 1
    box = boxes[0]
    names = [b"batch"] + [b"batch.%d" % i for i in range(1, -(-size // CHUNK))]
    assert sorted(box) == sorted([b"_command", b"x", *names])
    assert b"".join(box[n] for n in names) == value
    assert all(len(box[n]) == CHUNK for n in names[:-1])
    assert box[b"_command"] == b"RunTasks" and box[b"x"] == b"1"
    assert RunTasks.parseArguments(box, None) == {"batch": value}
    assert bigValue(box, b"batch") == value


def test_boxPiecesSlicesBigValuesWithoutCopying() -> None:
    value = payload(3 * CHUNK + 7)
    pieces = boxPieces([(b"v", value)])
    views = [p for p in pieces if isinstance(p, memoryview)]
    assert [len(v) for v in views] == [CHUNK, CHUNK, CHUNK, 7]
    assert all(v.obj is value for v in views)
    assert pieces[-1] == b"\x00\x00"


def test_bigValueJoinsChunksInOrder() -> None:
    assert bigValue({}, b"v") is None
    assert bigValue({b"v": b"one"}, b"v") == b"one"
    assert bigValue({b"v": b"a", b"v.1": b"b", b"v.2": b"c"}, b"v") == b"abc"
    # A gap ends the value; keys of other names do not join in.
    assert bigValue({b"v": b"a", b"v.1": b"b", b"v.3": b"d"}, b"v") == b"ab"
    assert bigValue({b"v": b"a", b"vv.1": b"b", b"w.1": b"c"}, b"v") == b"a"
    assert bigValue({b"v": b"", b"v.1": b"b"}, b"v") == b"b"
    made = RunTasks.makeArguments({"batch": payload(2 * CHUNK + 1)}, None)
    assert bigValue(made, b"batch") == payload(2 * CHUNK + 1)


class RecordingTransport:
    """A transport that records how it was written to."""

    takesViews = True

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def write(self, data: bytes) -> None:
        self.calls.append(("write", data))

    def writeSequence(self, data: list[Any]) -> None:
        self.calls.append(("writeSequence", list(data)))


class WriteOnlyTransport:
    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.written.append(data)


class FailingTransport:
    """A transport whose every write raises (a bug in a writer, say)."""

    disconnecting = False

    def write(self, data: bytes) -> None:
        raise TypeError("Data must be bytes")

    writeSequence = write


@pytest.mark.parametrize("now", [False, True])
def test_callsThatCannotBeWrittenFailRatherThanWait(now: bool) -> None:
    # Writing a batch of calls raised: each call fails with a WorkerError
    # saying why, and none is left waiting for an answer.
    from twisted.internet.task import Clock

    client = NodeClient()
    client.transport = FailingTransport()  # type: ignore[assignment]
    clock = Clock()
    sent = [SentCall(i, dumpCall(len, ("ab",), {}), None, Deferred()) for i in (1, 2)]
    for call in sent:
        client.queueCall(call, clock, now=now)
    clock.advance(0)
    for call in sent:
        assert call.deferred is not None
        error = failureOf(call.deferred)
        assert error.check(WorkerError)
        assert "could not be sent" in str(error.value) and "Data must be bytes" in str(
            error.value
        )
    assert not client.inFlight and not client.outgoing


def test_pipeWriterTakesPiecesBehindBufferedData() -> None:
    # A large box's pieces (views of its value) written while earlier data
    # still waits for the pipe: buffered behind it, whole and in order.
    import os

    from asynqueue.wire.pipes import PipeWriter

    r, w = os.pipe()
    writer = PipeWriter(w)
    try:
        first = b"a" * (1 << 20)
        writer.write(first)
        assert writer.dataBuffer or writer._tempDataBuffer
        value = payload(200_000)
        writer.writeSequence([b"head", memoryview(value)[:100_000], memoryview(value)])
        waiting = bytes(writer.dataBuffer[writer.offset :]) + b"".join(
            writer._tempDataBuffer
        )
        inPipe = len(first) - (len(waiting) - 4 - 300_000)
        assert waiting.endswith(b"head" + value[:100_000] + value)
        assert waiting[: len(first) - inPipe] == first[inPipe:]
    finally:
        writer.connectionLost(None)
        os.close(r)


@pytest.mark.parametrize(
    "pairs",
    [[(b"_command", b"Stop")], [(b"_command", b"CancelTask"), (b"taskID", b"12")]],
)
def test_writeBoxSmallBoxIsOneJoinedWrite(pairs: list[tuple[bytes, bytes]]) -> None:
    transport = RecordingTransport()
    writeBox(transport, pairs)
    assert len(transport.calls) == 1
    kind, data = transport.calls[0]
    assert kind == "write" and type(data) is bytes
    assert data == amp.AmpBox(pairs).serialize()


def test_writeBoxLargeValueUsesWriteSequence() -> None:
    value = payload(200_000)
    pairs = [(b"_command", b"TaskResult"), (b"payload", value)]
    transport = RecordingTransport()
    writeBox(transport, pairs)
    assert [kind for kind, _ in transport.calls] == ["writeSequence"]
    pieces = transport.calls[0][1]
    assert joined(pieces) == joined(boxPieces(pairs))
    assert sum(isinstance(p, memoryview) and p.obj is value for p in pieces) == 4
    boxes = readBoxes([joined(pieces)])
    assert len(boxes) == 1 and bigValue(boxes[0], b"payload") == value


class BytesOnlyTransport(RecordingTransport):
    """As Twisted's TCP and Unix transports: writeSequence takes bytes only."""

    takesViews = False

    def writeSequence(self, data: list[Any]) -> None:
        if not all(type(piece) is bytes for piece in data):
            raise TypeError("Data must be bytes")
        super().writeSequence(data)


def test_writeBoxLargeValueToATransportOfBytesJoins() -> None:
    value = payload(200_000)
    transport = BytesOnlyTransport()
    writeBox(transport, [(b"payload", value)])
    assert [kind for kind, _ in transport.calls] == ["write"]
    [box] = amp.parseString(transport.calls[0][1])
    assert bigValue(box, b"payload") == value


def test_writeBoxWithoutWriteSequenceJoins() -> None:
    value = payload(200_000)
    transport = WriteOnlyTransport()
    writeBox(transport, [(b"payload", value)])
    assert len(transport.written) == 1
    [box] = amp.parseString(transport.written[0])
    assert bigValue(box, b"payload") == value


# ----------------------------------------------------------------------
# The fast path and AMP agree on every command


class Captured(amp.AMP):
    """AMP, parsing with Twisted's own parser, keeping the boxes it reads."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes: list[amp.AmpBox] = []
        self.makeConnection(StringTransport())

    def ampBoxReceived(self, box: amp.AmpBox) -> None:
        self.boxes.append(box)


def ampParses(data: bytes) -> amp.AmpBox:
    """The one box Twisted's AMP parser reads from C{data}, fed in pieces."""
    parser = Captured()
    for at in range(0, len(data), 7919):
        parser.dataReceived(data[at : at + 7919])
    [box] = parser.boxes
    return box


def boxReaderParses(data: bytes) -> dict[bytes, Any]:
    """The one box L{BoxReader} reads from C{data}, fed in pieces."""
    boxes = readBoxes(inChunks(data, 7919))
    [box] = boxes
    return box


def nodeWrites(box: amp.AmpBox) -> bytes:
    """What L{NodeProtocol} writes for a box AMP hands it (its answers, say)."""
    from asynqueue.node.protocol import NodeProtocol

    node = NodeProtocol(lambda send: None)
    transport = StringTransport()
    node.makeConnection(transport)
    node.sendBox(box)
    return transport.value()


bigOrSmall = st.one_of(
    st.binary(max_size=200),
    st.integers(min_value=CHUNK - 2, max_value=3 * CHUNK + 9).map(payload),
)
taskIDs = st.integers(min_value=-(2**70), max_value=2**70)
statuses = st.sampled_from([s.value for s in Status])
seconds = st.floats(allow_nan=False)

#: Each command's arguments and (if it has one) its answer.
EXAMPLES: dict[type[amp.Command], tuple[Any, Any]] = {
    RunTasks: (st.fixed_dictionaries({"batch": bigOrSmall}), None),
    TaskResult: (
        st.fixed_dictionaries(
            {
                "taskID": taskIDs,
                "status": statuses,
                "payload": bigOrSmall,
                "seconds": seconds,
            }
        ),
        None,
    ),
    TaskResults: (st.fixed_dictionaries({"batch": bigOrSmall}), None),
    NextItems: (
        st.fixed_dictionaries({"iteratorID": taskIDs, "maxItems": taskIDs}),
        st.fixed_dictionaries(
            {
                "items": bigOrSmall,
                "exhausted": st.booleans(),
                "error": st.none() | bigOrSmall,
            }
        ),
    ),
    CloseIterator: (st.fixed_dictionaries({"iteratorID": taskIDs}), None),
    CancelTask: (st.fixed_dictionaries({"taskID": taskIDs}), None),
    Stop: (st.just({}), st.just({})),
    DefineFunction: (
        st.fixed_dictionaries(
            {
                "key": st.binary(min_size=16, max_size=16),
                "function": bigOrSmall,
                "forget": st.lists(st.binary(min_size=16, max_size=16), max_size=3).map(
                    b"".join
                ),
            }
        ),
        None,
    ),
    NodeInfo: (
        st.just({}),
        st.fixed_dictionaries(
            {
                "pid": taskIDs,
                "rss": taskIDs,
                "capacity": taskIDs,
                "done": taskIDs,
                "processes": st.none() | taskIDs,
            }
        ),
    ),
}

#: The boxes the busy path writes by hand, and how it reads them.
HAND_WRITTEN: dict[type[amp.Command], Any] = {
    RunTasks: lambda o: runTasksBox(o["batch"]),
    TaskResults: lambda o: taskResultsBox(o["batch"]),
    CancelTask: lambda o: cancelTaskBox(o["taskID"]),
    DefineFunction: lambda o: defineFunctionBox(
        Definition(o["key"], o["function"]),
        [o["forget"][i : i + 16] for i in range(0, len(o["forget"]), 16)],
    ),
    TaskResult: lambda o: taskResultBox(
        o["taskID"], o["status"], o["payload"], o["seconds"]
    ),
}
HAND_READ: dict[type[amp.Command], Any] = {
    RunTasks: lambda box: {"batch": bytes(readBatch(box))},
    TaskResults: lambda box: {"batch": bytes(readBatch(box))},
    CancelTask: lambda box: {"taskID": readCancelTask(box)},
    DefineFunction: lambda box: dict(
        zip(
            ["key", "function", "forget"],
            (lambda k, f, g: (k, f, b"".join(g)))(*readDefineFunction(box)),
            strict=True,
        )
    ),
    TaskResult: lambda box: dict(
        zip(
            ["taskID", "status", "payload", "seconds"], readTaskResult(box), strict=True
        )
    ),
}


def test_everyCommandHasExamples() -> None:
    from asynqueue.wire.commands import NODE_COMMANDS, PARENT_COMMANDS

    assert set(EXAMPLES) == set(NODE_COMMANDS) | set(PARENT_COMMANDS)
    assert {RUN_TASKS, TASK_RESULT, TASK_RESULTS, CANCEL_TASK, DEFINE_FUNCTION} == {
        c.commandName for c in HAND_WRITTEN
    }


def fastWrites(command: type[amp.Command], objects: dict[str, Any]) -> bytes:
    """The bytes the fast path writes for C{command} with C{objects}."""
    if command in HAND_WRITTEN:
        transport = StringTransport()
        writeBox(transport, HAND_WRITTEN[command](objects))
        return transport.value()
    box = command.makeArguments(objects, None)
    box[amp.COMMAND] = command.commandName
    return nodeWrites(box)


def fastReads(command: type[amp.Command], data: bytes) -> dict[str, Any]:
    """What the fast path reads from C{data}, a box of C{command}."""
    box = boxReaderParses(data)
    assert box.get(COMMAND) == command.commandName
    if command in HAND_READ:
        return HAND_READ[command](box)  # type: ignore[no-any-return]
    return command.parseArguments(
        amp.AmpBox((k, bytes(v)) for k, v in box.items() if k != COMMAND), None
    )


@pytest.mark.parametrize("command", list(EXAMPLES), ids=lambda c: c.__name__)
def test_fastEncoderAndAMPAgree(command: type[amp.Command]) -> None:
    """
    A box the fast path writes, AMP's parser reads to the same values; a box
    AMP writes, the fast path (L{BoxReader} and its readers) reads the same.
    """

    @settings(max_examples=40, deadline=None)
    @given(data=st.data())
    def check(data: Any) -> None:
        agree(command, data)

    check()


def agree(command: type[amp.Command], data: Any) -> None:
    arguments, answer = EXAMPLES[command]
    objects = data.draw(arguments)

    # Fast path out, AMP in.
    box = ampParses(fastWrites(command, objects))
    assert box.pop(amp.COMMAND) == command.commandName
    assert command.parseArguments(box, None) == objects

    # AMP out, fast path in.
    ampBox = command.makeArguments(objects, None)
    ampBox[amp.COMMAND] = command.commandName
    assert fastReads(command, ampBox.serialize()) == objects

    if answer is not None:
        # An answer: the node writes it (its sendBox), AMP reads it.
        values = data.draw(answer)
        response = amp._objectsToStrings(values, command.response, amp.AmpBox(), None)
        response[amp.ANSWER] = b"1"
        parsed = ampParses(nodeWrites(response))
        assert parsed.pop(amp.ANSWER) == b"1"
        assert command.parseResponse(parsed, None) == values


# ----------------------------------------------------------------------
# NodeClient: the parent's side, one reader for both kinds of node


class Client(NodeClient):
    def __init__(self) -> None:
        super().__init__()
        self.results: list[Any] = []
        self.problems: list[str] = []
        self.transport_ = StringTransport()
        self.makeConnection(self.transport_)

    def resultsReceived(self, batch: list[Any]) -> None:
        self.results.extend(batch)

    def malformed(self, why: str) -> None:
        self.problems.append(why)


def test_nodeClientReadsBothResultBoxesInOrder() -> None:
    client = Client()
    big = payload(2 * CHUNK + 3)
    data = joined(
        boxPieces(taskResultsBox(dumps([(1, "r", b"one", 0.5), (2, "e", b"x", 0.0)])))
        + boxPieces(taskResultBox(3, Status.BYTES.value, big, 1.25))
    )
    for piece in inChunks(data, 1000):
        client.dataReceived(piece)
    assert client.results == [
        (1, "r", b"one", 0.5),
        (2, "e", b"x", 0.0),
        (3, "b", big, 1.25),
    ]
    assert client.problems == []


def test_nodeClientCallsAMalformedTaskResultMalformed() -> None:
    client = Client()
    client.dataReceived(joined(boxPieces([(COMMAND, TASK_RESULT), (b"taskID", b"x")])))
    assert client.results == [] and client.problems == ["a malformed TaskResult"]


def test_nodeClientSendsWhatTheNodeReads() -> None:
    client = Client()
    client.sendTasks([(7, b"call")])
    client.sendCancel(7)
    boxes = readBoxes([client.transport_.value()])
    assert [box[COMMAND] for box in boxes] == [RUN_TASKS, CANCEL_TASK]
    assert loads(readBatch(boxes[0])) == [(7, b"call")]
    assert readCancelTask(boxes[1]) == 7


def test_nodeClientAnswersGoThroughAMP() -> None:
    client = Client()
    d = client.callRemote(NodeInfo)
    [asked] = readBoxes([client.transport_.value()])
    answer = amp.AmpBox(
        _answer=bytes(asked[amp.ASK]), pid=b"1", rss=b"2", capacity=b"3", done=b"4"
    )
    client.dataReceived(answer.serialize())
    assert d.result["capacity"] == 3


def test_readBufferGrowsOnceAReadFillsIt() -> None:
    import os

    from asynqueue.wire.framing import ReadBuffer

    r, w = os.pipe()
    try:
        buffer = ReadBuffer(size=8, maxSize=64)
        os.write(w, bytes(range(20)))
        first = buffer.readFrom(r)
        # Full: the next read goes to a larger buffer, and this view holds.
        second = buffer.readFrom(r)
        assert bytes(first) == bytes(range(8))
        assert bytes(second) == bytes(range(8, 20))
        os.close(w)
        w = -1
        assert bytes(buffer.readFrom(r)) == b""
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)
