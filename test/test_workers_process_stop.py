"""
A child asked to stop ends as an interpreter does, whether forked or
spawned: the threads its tasks started finish first (unless they are
daemons). One that has not exited L{_Child.stopGrace} seconds later is
killed, so that a thread that never ends cannot hold a shutdown.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from processes import assertGone, startEndlessThread, within
from twisted.logger import globalLogPublisher

from asynqueue import ProcessQueue
from asynqueue.workers.children import _Child

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
