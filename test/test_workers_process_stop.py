"""
A child asked to stop ends as an interpreter does, whether forked or
spawned: the threads its tasks started finish first (unless they are
daemons). One that has not exited L{_Child.stopGrace} seconds later is
killed, so that a thread that never ends cannot hold a shutdown.
"""

from __future__ import annotations

import os
import select
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from processes import assertGone, startEndlessThread, within
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone
from twisted.logger import globalLogPublisher

from asynqueue import ProcessQueue
from asynqueue.wire.commands import Stop
from asynqueue.workers.children import _Child
from asynqueue.workers.spawning import Forked

startMethods = pytest.mark.parametrize("startMethod", ["fork", "spawn"])


def startThreadThatWritesAtExit(marker: str) -> int:
    """
    In a child: start a thread (not a daemon) that writes C{marker} once
    the process is ending (its main thread has stopped), as an interpreter's
    end lets it.
    """
    import threading

    def writeWhenEnding() -> None:
        threading.main_thread().join()
        Path(marker).write_text("finished")

    threading.Thread(target=writeWhenEnding, name="atExit").start()
    return os.getpid()


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    """The text of every warning logged meanwhile."""
    from twisted.logger import LogLevel, formatEvent

    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") == LogLevel.warn:
            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


@startMethods
@pytest_twisted.ensureDeferred
async def test_aThreadThatNeverEndsDoesNotHoldAShutdown(
    makeProcessQueue: Callable[..., ProcessQueue],
    monkeypatch: pytest.MonkeyPatch,
    warnings: list[str],
) -> None:
    monkeypatch.setattr(_Child, "stopGrace", 0.2)
    q = makeProcessQueue(1)
    pid = await within(q.call(startEndlessThread))
    await within(q.shutdown())
    assertGone(pid)
    assert any(f"pid {pid}" in w and "asked to stop" in w for w in warnings)


@startMethods
@pytest_twisted.ensureDeferred
async def test_aChildLetsTheThreadsOfItsTasksFinish(
    makeProcessQueue: Callable[..., ProcessQueue], tmp_path: Path, warnings: list[str]
) -> None:
    marker = tmp_path / "marker"
    q = makeProcessQueue(1)
    pid = await within(q.call(startThreadThatWritesAtExit, str(marker)))
    await within(q.shutdown())
    assertGone(pid)
    assert marker.read_text() == "finished"
    assert not any("asked to stop" in w for w in warnings)


@startMethods
@pytest_twisted.ensureDeferred
async def test_aReplacedChildWithAnEndlessThreadIsKilled(
    makeProcessQueue: Callable[..., ProcessQueue],
    monkeypatch: pytest.MonkeyPatch,
    warnings: list[str],
) -> None:
    # Replaced after its one task (maxTasksPerWorker): the retired child's
    # thread holds it, and it is killed; its successor serves on.
    monkeypatch.setattr(_Child, "stopGrace", 0.2)
    q = makeProcessQueue(1, maxTasksPerWorker=1)
    (worker,) = q.workers()
    first = await within(q.call(startEndlessThread))
    retired = worker._child
    assert retired.pid == first
    second = await within(q.call(os.getpid))
    assert second != first
    await within(retired.ended)
    assertGone(first)
    assert any(f"pid {first}" in w and "asked to stop" in w for w in warnings)
    assert await within(q.call(os.getpid)) not in (first, second)


def waitUntilExited(child: _Child) -> None:
    """
    Block (the reactor too) until C{child}'s process has exited and the
    parent could know, without the reactor hearing of it: a spawned one is
    a zombie not yet reaped; a forked one's end is reported on the zygote's
    socket, not yet read.
    """
    transport: Any = child.transport
    if isinstance(transport, Forked):
        readable, _, _ = select.select([transport.zygote.socket], [], [], 30)
        assert readable, "the zygote did not report the child's end"
    else:
        os.waitid(os.P_PID, transport.pid, os.WEXITED | os.WNOWAIT)


@startMethods
@pytest_twisted.ensureDeferred
async def test_aChildThatExitedUnseenIsNotKilledForOutstaying(
    makeProcessQueue: Callable[..., ProcessQueue],
    monkeypatch: pytest.MonkeyPatch,
    warnings: list[str],
) -> None:
    # The grace may run out once the child has exited but before the
    # reactor has heard (it was busy): that child exited as asked.
    q = makeProcessQueue(1)
    (worker,) = q.workers()
    pid = await within(q.call(os.getpid))
    child = worker._child
    stops: list[Deferred[Any]] = []
    callRemote = child.amp.callRemote

    def noteStop(command: Any, **kwargs: Any) -> Deferred[Any]:
        d = callRemote(command, **kwargs)
        if command is Stop:
            stops.append(d)
        return d

    monkeypatch.setattr(child.amp, "callRemote", noteStop)
    shutdown = q.shutdown()
    assert len(stops) == 1
    await within(stops[0])
    waitUntilExited(child)
    assert child._stopKill is not None and "process" in child._waitingFor
    child._stopKill.cancel()
    child._killForStop()
    await within(shutdown)
    assertGone(pid)
    assert child.exitReason is not None and child.exitReason.check(ProcessDone)
    assert not child.outstayedStop
    assert not any("asked to stop" in w for w in warnings)


def failWhileWaitingForThreads(marker: str) -> int:
    """
    In a child: at its end, an exception comes while it waits for its
    threads (a signal handler a task installed raises); register an exit
    handler that writes C{marker}.
    """
    import atexit
    import signal
    import threading

    def raiseIt(*_: object) -> None:
        raise RuntimeError("a task's signal handler")

    def interruptTheEnd() -> None:
        main = threading.main_thread()
        main.join()
        assert main.ident is not None
        signal.pthread_kill(main.ident, signal.SIGUSR1)

    signal.signal(signal.SIGUSR1, raiseIt)
    atexit.register(lambda: Path(marker).write_text("ran"))
    threading.Thread(target=threading.Event().wait, name="endless").start()
    threading.Thread(target=interruptTheEnd, name="interrupter").start()
    return os.getpid()


@pytest.mark.parametrize("startMethod", ["fork"])
@pytest_twisted.ensureDeferred
async def test_aForkedChildRunsItsExitHandlersThoughWaitingForThreadsFailed(
    makeProcessQueue: Callable[..., ProcessQueue], tmp_path: Path, warnings: list[str]
) -> None:
    marker = tmp_path / "marker"
    q = makeProcessQueue(1)
    pid = await within(q.call(failWhileWaitingForThreads, str(marker)))
    await within(q.shutdown())
    assertGone(pid)
    assert marker.read_text() == "ran"
    assert not any("asked to stop" in w for w in warnings)
