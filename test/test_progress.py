"""Tests of asynqueue.progress: bars moved by the queue's events."""

from __future__ import annotations

import io
import sys
from typing import IO, Any

import pytest
from twisted.python.failure import Failure

from asynqueue import MemoryWorker, Task
from asynqueue.progress import (
    ProgressBar,
    defaultBackend,
    plainBackend,
    progressFor,
    richBackend,
    tqdmBackend,
)
from helpers import failureOf


class FakeBackend:
    """A backend that remembers what it was told."""

    def __init__(self, total: int | None, description: str, file: IO[str] | None):
        self.calls: list[tuple[Any, ...]] = [("init", total, description)]

    def advance(self, n: int) -> None:
        self.calls.append(("advance", n))

    def setTotal(self, total: int | None) -> None:
        self.calls.append(("total", total))

    def close(self) -> None:
        self.calls.append(("close",))

    @property
    def done(self) -> int:
        return sum(c[1] for c in self.calls if c[0] == "advance")

    @property
    def total(self) -> int | None:
        totals = [c[1] for c in self.calls if c[0] in ("init", "total")]
        return totals[-1]


def fakeFactory() -> tuple[list[FakeBackend], Any]:
    made: list[FakeBackend] = []

    def factory(total: int | None, description: str, file: IO[str] | None) -> Any:
        made.append(FakeBackend(total, description, file))
        return made[-1]

    return made, factory


def hide(monkeypatch: pytest.MonkeyPatch, *packages: str) -> None:
    """Make C{packages} unimportable for the test."""
    for name in list(sys.modules):
        if name.split(".")[0] in packages:
            monkeypatch.setitem(sys.modules, name, None)
    for name in packages:
        monkeypatch.setitem(sys.modules, name, None)


def begin(w: MemoryWorker) -> Task:
    """Start the worker's next task, which must be there."""
    task = w.startNext()
    assert task is not None, "no task to start"
    return task


def nothing(x: object = None) -> None:
    return None


def test_advancesExactlyOnEnded(makeQueue: Any) -> None:
    made, factory = fakeFactory()
    w = MemoryWorker()
    q = makeQueue(w)
    bar = ProgressBar(description="jobs", backend=factory)
    (backend,) = made
    bar.attachTo(q)
    ds = [q.call(nothing, x) for x in range(4)]
    assert (backend.total, backend.done) == (4, 0)
    t = begin(w)
    assert backend.done == 0, "advanced on a start"
    w.finish(t)
    assert backend.done == 1
    t = begin(w)
    w.finish(t, Failure(ValueError()))
    failureOf(ds[1])
    assert backend.done == 2
    ds[3].cancel()
    failureOf(ds[3])
    assert backend.done == 3
    w.runNext()
    assert (backend.total, backend.done) == (4, 4)
    assert (bar.total, bar.done) == (4, 4)
    assert backend.calls[0] == ("init", None, "jobs")
    assert [c for c in backend.calls if c[0] == "advance"] == [("advance", 1)] * 4
    bar.close()
    bar.close()
    assert backend.calls[-1] == ("close",)
    assert backend.calls.count(("close",)) == 1


def test_fixedTotalDoesNotGrow(makeQueue: Any) -> None:
    made, factory = fakeFactory()
    w = MemoryWorker()
    q = makeQueue(w)
    bar = ProgressBar(total=10, backend=factory)
    bar.attachTo(q)
    q.call(nothing)
    q.call(nothing)
    w.runNext()
    (backend,) = made
    assert backend.calls == [("init", 10, ""), ("advance", 1)]


def test_totalCountsWhatIsOutstanding(makeQueue: Any) -> None:
    made, factory = fakeFactory()
    w = MemoryWorker()
    q = makeQueue(w)
    q.call(nothing)
    q.call(nothing, lane="L")
    q.call(nothing, lane="L")
    w.runNext()
    w.startNext()
    # One done, one running, one waiting behind its lane.
    bar = ProgressBar(backend=factory)
    bar.attachTo(q)
    assert bar.total == 2
    q.call(nothing)
    assert bar.total == 3
    assert made[0].total == 3


def test_stopDetaches(makeQueue: Any) -> None:
    made, factory = fakeFactory()
    w = MemoryWorker()
    q = makeQueue(w)
    bar = ProgressBar(backend=factory)
    stop = bar.attachTo(q)
    q.call(nothing)
    w.runNext()
    stop()
    q.call(nothing)
    w.runNext()
    assert (bar.total, bar.done) == (1, 1)
    assert ("close",) not in made[0].calls


def test_progressForClosesOnStop(makeQueue: Any) -> None:
    made, factory = fakeFactory()
    w = MemoryWorker()
    q = makeQueue(w)
    q.call(nothing)
    stop = progressFor(q, description="wait", backend=factory)
    (backend,) = made
    assert backend.total == 1
    w.runNext()
    stop()
    q.call(nothing)
    w.runNext()
    assert backend.calls == [
        ("init", None, "wait"),
        ("total", 1),
        ("advance", 1),
        ("close",),
    ]


def test_handMoved() -> None:
    made, factory = fakeFactory()
    with ProgressBar(backend=factory) as bar:
        bar.expect(3)
        bar.advance()
        bar.advance(2)
    bar.advance()
    assert made[0].calls == [
        ("init", None, ""),
        ("total", 3),
        ("advance", 1),
        ("advance", 2),
        ("close",),
    ]


def test_tqdmIsTheDefault() -> None:
    pytest.importorskip("tqdm")
    assert defaultBackend() is tqdmBackend


def test_tqdmWritesToItsFile(makeQueue: Any) -> None:
    pytest.importorskip("tqdm")
    out = io.StringIO()
    w = MemoryWorker()
    q = makeQueue(w)
    bar = ProgressBar(description="jobs", file=out, backend=tqdmBackend)
    bar.attachTo(q)
    for x in range(3):
        q.call(nothing, x)
    tqdmBar = bar.backend.bar  # type: ignore[union-attr]
    assert (tqdmBar.n, tqdmBar.total) == (0, 3)
    t = begin(w)
    assert tqdmBar.n == 0
    w.finish(t)
    assert tqdmBar.n == 1
    w.runNext()
    w.runNext()
    assert tqdmBar.n == 3
    bar.close()
    text = out.getvalue()
    assert "jobs" in text
    assert "3/3" in text


def test_richWithoutTqdm(monkeypatch: pytest.MonkeyPatch, makeQueue: Any) -> None:
    pytest.importorskip("rich.progress")
    hide(monkeypatch, "tqdm")
    assert defaultBackend() is richBackend
    out = io.StringIO()
    w = MemoryWorker()
    q = makeQueue(w)
    stop = progressFor(q, description="jobs", file=out, backend=richBackend)
    for x in range(3):
        q.call(nothing, x)
    for _ in range(3):
        w.runNext()
    stop()
    text = out.getvalue()
    assert "jobs" in text
    assert "3/3" in text


def test_progressForWritesToStderr(
    capsys: pytest.CaptureFixture[str], makeQueue: Any
) -> None:
    if defaultBackend() is None:
        pytest.skip("neither tqdm nor rich is installed")
    w = MemoryWorker()
    q = makeQueue(w)
    q.call(nothing)
    q.call(nothing)
    stop = progressFor(q, description="jobs")
    w.runNext()
    w.runNext()
    stop()
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "2/2" in captured.err


def test_silentWithoutBackends(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    makeQueue: Any,
) -> None:
    hide(monkeypatch, "tqdm", "rich")
    assert defaultBackend() is None
    w = MemoryWorker()
    q = makeQueue(w)
    observed: list[object] = []
    realObserve = q.observe

    def spy(observer: Any) -> Any:
        observed.append(observer)
        return realObserve(observer)

    monkeypatch.setattr(q, "observe", spy)
    bar = ProgressBar(description="jobs")
    assert bar.backend is None
    bar.attachTo(q)
    stop = progressFor(q, total=2, description="jobs")
    d = q.call(nothing)
    q.call(nothing)
    w.runNext()
    w.runNext()
    assert d.called
    bar.advance()
    bar.expect()
    bar.close()
    stop()
    assert observed == [], "a no-op bar observed the queue"
    assert capsys.readouterr() == ("", "")


class Terminal(io.StringIO):
    """A file that says it is a terminal."""

    def isatty(self) -> bool:
        return True


def test_plainLinesWhenTheFileIsNotATerminal(makeQueue: Any) -> None:
    if defaultBackend() is None:
        pytest.skip("neither tqdm nor rich is installed")
    out = io.StringIO()
    w = MemoryWorker()
    q = makeQueue(w)
    stop = progressFor(q, description="jobs", file=out)
    for x in range(3):
        q.call(nothing, x)
    for _ in range(3):
        w.runNext()
    stop()
    text = out.getvalue()
    assert "\r" not in text and "\x1b" not in text, repr(text)
    lines = text.splitlines()
    assert lines[0].startswith("jobs: 1/"), lines
    assert lines[-1].startswith("jobs: 3/3 (100%) tasks in "), lines


def test_aTerminalGetsTheBar() -> None:
    if defaultBackend() is None:
        pytest.skip("neither tqdm nor rich is installed")
    bar = ProgressBar(description="jobs", file=Terminal())
    assert type(bar.backend).__name__ != "_PlainBar"
    bar.close()


def test_plainLinesAreAtMostOneAnInterval() -> None:
    from asynqueue.progress import _PlainBar

    out = io.StringIO()
    t = [0.0]
    bar = _PlainBar(100, "", out, now=lambda: t[0])
    for _ in range(50):
        bar.advance(1)
        t[0] += 1.0
    bar.close()
    assert out.getvalue().splitlines() == [
        "1/100 (1%) tasks in 0 s",
        "11/100 (11%) tasks in 10 s",
        "21/100 (21%) tasks in 20 s",
        "31/100 (31%) tasks in 30 s",
        "41/100 (41%) tasks in 40 s",
        "50/100 (50%) tasks in 50 s",
    ]
    assert plainBackend(None, "x", out) is not None
