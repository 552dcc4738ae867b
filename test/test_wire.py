"""Tests of asynqueue.wire: chunked values on real AMP boxes, call pickling, errors."""

from __future__ import annotations

import pickle
import threading
from typing import Any, ClassVar

import pytest
from twisted.protocols import amp
from twisted.test import iosim

from asynqueue.errors import RemoteError, UnpicklableError
from asynqueue.wire import (
    BigBytes,
    NextItems,
    RunTasks,
    decodeError,
    dumpCall,
    dumps,
    encodeError,
    loads,
)

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
    f, args, kwargs = loads(dumpCall(lambda x, y=0: x + y + offset, (1,), {"y": 2}))
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
