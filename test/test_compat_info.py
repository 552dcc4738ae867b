"""AsynQueue 0.9.9's asynqueue.info: Info and its call-describing helpers."""

from __future__ import annotations

import pickle
import threading
from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure

import asynqueue
from asynqueue.info import Info, hashIt, showResult, whichThread
from asynqueue.legacy import info


def double(x: int) -> int:
    return 2 * x


class Adder:
    def add(self, x: int, y: int) -> int:
        return x + y


def test_infoIsTopLevel() -> None:
    assert asynqueue.Info is Info
    assert asynqueue.showResult is showResult


def test_hashItOfUnhashables() -> None:
    assert hashIt([1, {"a": [2]}]) == hashIt([1, {"a": [2]}])
    assert isinstance(hashIt({1, 2}), int)


def test_aboutCall() -> None:
    text = Info().setCall(double, [3], {"z": 1}).aboutCall()
    assert text == "double(3, z=1)"


def test_aboutCallSingleArgAndString() -> None:
    assert Info().setCall("somewhere.f", 7).aboutCall() == "somewhere.f(7)"


def test_setCallAddsArgsAndInstance() -> None:
    adder = Adder()
    i = Info().setCall(Adder.add)
    text = i.setCall(instance=adder, args=(1, 2)).aboutCall()
    assert text == f"{adder!r}.add(1, 2)"


def test_setCallNeedsSomething() -> None:
    with pytest.raises(ValueError, match="supply"):
        Info().setCall(args=[1])


def test_whichThread() -> None:
    text = Info(whichThread=True).setCall(double, 1).aboutCall()
    assert text.endswith(f"<Thread: {threading.current_thread().name}>")


def test_aboutException() -> None:
    i = Info().setCall(double, 0)
    try:
        _ = 1 / 0
    except ZeroDivisionError:
        text = i.aboutException()
    assert "Exception 'division by zero'" in text
    assert "doing call 'double(0)'" in text
    assert "1 / 0" in text


def test_aboutExceptionGiven() -> None:
    text = Info().setCall(double, 0).aboutException(exception=KeyError("k"))
    assert "KeyError" in text


def test_aboutFailure() -> None:
    failure = Failure(ValueError("bad value"))
    text = Info().setCall(double, 1).aboutFailure(failure)
    assert "Failure 'bad value'" in text
    assert "doing call 'double(1)'" in text


def test_rememberedCalls() -> None:
    i = Info(remember=True)
    firstID = i.setCall(double, 1).ID
    assert i.aboutCall(firstID) == "double(1)"
    secondID = i.setCall(double, 2).ID
    assert secondID != firstID
    # The first call's text is still there, by its ID.
    assert i.aboutCall(firstID) == "double(1)"
    i.forgetID(firstID)
    assert i.getInfo(firstID, "aboutCall") is None


def test_context() -> None:
    i = Info(remember=True)
    with i.context(double, 4) as holder:
        assert holder.aboutCall() == "double(4)"
        assert holder.getInfo("callDict")["args"] == [4]
        ID = holder.ID
    assert i.getInfo(ID, "callDict") is None


def test_contextNeedsRemember() -> None:
    with pytest.raises(ValueError, match="remember"):
        with Info().context(double, 1):
            pass


def test_nnFunction() -> None:
    namespace, name = Info().setCall(double).nn()
    assert namespace is None
    assert pickle.loads(name) is double


def test_nnMethod() -> None:
    adder = Adder()
    namespace, name = Info().setCall(adder.add).nn()
    assert name == "add"
    assert isinstance(pickle.loads(namespace), Adder)


def test_nnRaw() -> None:
    adder = Adder()
    assert Info().setCall(adder.add).nn(raw=True) == (adder, "add")


def test_nnString() -> None:
    # A name is given back as the fully qualified name of what it names.
    assert Info().setCall("asynqueue.info.hashIt").nn() == (
        None,
        "asynqueue.legacy.info.hashIt",
    )


def test_nnNothingSet() -> None:
    assert Info().nn() == (None, None)


class Shown:
    @showResult
    def triple(self, x: int) -> int:
        return 3 * x

    @showResult
    def later(self, x: int) -> Deferred[int]:
        return succeed(x)


def test_showResult(capsys: Any) -> None:
    assert Shown().triple(2) == 6
    out = capsys.readouterr().out
    assert "triple(2) -> 6" in out


def test_showResultFollowsDeferred(capsys: Any) -> None:
    results: list[int] = []
    Shown().later(5).addCallback(results.append)
    assert results == [5]
    assert "later(5) -> 5" in capsys.readouterr().out


def test_showResultWhichThread(capsys: Any) -> None:
    class Threaded:
        @showResult
        @whichThread
        def f(self) -> int:
            return 1

    try:
        Threaded().f()
        assert "<Thread: " in capsys.readouterr().out
    finally:
        info._SR_STUFF[2] = False
