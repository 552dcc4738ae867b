"""
A child whose result pipe closes while its process lives on can report
nothing more: it is killed after a moment, and its calls are handled as
after any crash, instead of waiting for as long as the process lives.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from processes import closeResultPipeAndWait, failureOf, within
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import globalLogPublisher

from asynqueue import NoWorkers, ProcessQueue, ProcessWorker, TaskQueue, WorkerCrashed
from asynqueue.workers.children import _Child


def closeResultPipeAndExit() -> None:
    """In a child: close the result pipe, then end with exit code 3."""
    from asynqueue.node.child import childMain

    os.close(childMain.__defaults__[1])  # type: ignore[index]
    os._exit(3)


@pytest.fixture
def shortGrace(monkeypatch: pytest.MonkeyPatch) -> None:
    """A child living on with its result pipe closed is killed at once."""
    monkeypatch.setattr(_Child, "pipeGrace", 0, raising=False)


@pytest_twisted.ensureDeferred
async def test_aChildLivingOnWithoutItsPipeIsKilled(
    makeProcessQueue: Callable[..., ProcessQueue], shortGrace: None
) -> None:
    q = makeProcessQueue(1, capacity=2)
    first = await within(q.call(os.getpid))
    hung = q.call(closeResultPipeAndWait)
    behind = q.call(os.getpid)
    crash = await failureOf(hung)
    assert isinstance(crash, WorkerCrashed)
    assert "closed its result pipe" in str(crash) and str(first) in str(crash)
    # The call sent behind it never ran there: it runs once, on the new child.
    second = await within(behind)
    assert second != first
    assert not os.path.exists(f"/proc/{first}")
    assert await within(q.call(os.getpid)) == second


@pytest_twisted.ensureDeferred
async def test_aChildEndingWithoutItsPipeSaysHowItEnded(
    makeProcessQueue: Callable[..., ProcessQueue],
) -> None:
    # The default grace: a process that ends on its own is not killed, and
    # the crash says how it ended.
    q = makeProcessQueue(1)
    crash = await failureOf(q.call(closeResultPipeAndExit))
    assert isinstance(crash, WorkerCrashed)
    assert "exit code 3" in str(crash) and "result pipe" not in str(crash)
    assert await within(q.call(int, "7")) == 7


def closeResultPipeIfReplayed(marker: str) -> None:
    """Mark the first run; in every later one (a kept update's replay), hang."""
    if not os.path.exists(marker):
        Path(marker).touch()
    else:
        closeResultPipeAndWait()


def exitAtOnce() -> None:
    os._exit(1)


@pytest_twisted.ensureDeferred
async def test_childrenClosingTheirPipeInSetUpMakeTheWorkerResign(
    tmp_path: Path, shortGrace: None
) -> None:
    # Killed by their worker, not from outside: each such child died young
    # (a start failure), so the worker resigns instead of respawning for ever.
    worker = ProcessWorker(respawnDelay=0, maxStartFailures=2)
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        await within(q.update(closeResultPipeIfReplayed, str(tmp_path / "ran")))
        assert isinstance(await failureOf(q.call(exitAtOnce)), WorkerCrashed)
        later = await failureOf(q.call(os.getpid))
        assert isinstance(later, NoWorkers) and "resigned" in str(later)
        assert "result pipe" in str(later)
    finally:
        await within(q.shutdown(timeout=3, cancelPending=True))


def startSleeperThenDie(pidFile: str) -> None:
    """In a child: start a process that keeps this one's output open, then die."""
    import subprocess

    sleeper = subprocess.Popen(["sleep", "60"])
    Path(pidFile).write_text(str(sleeper.pid))
    os._exit(3)


@pytest_twisted.ensureDeferred
async def test_aChildsEndIsSeenWhileAProcessItStartedHoldsItsOutput(
    makeProcessQueue: Callable[..., ProcessQueue], tmp_path: Path
) -> None:
    # Its output stays open for as long as the process it started lives:
    # its calls must not wait for that.
    q = makeProcessQueue(1)
    pidFile = tmp_path / "sleeper"
    try:
        crash = await failureOf(q.call(startSleeperThenDie, str(pidFile)))
        assert isinstance(crash, WorkerCrashed) and "exit code 3" in str(crash)
        assert await within(q.call(int, "8")) == 8
        # Nor does the queue's end wait for it.
        await within(q.shutdown(timeout=3))
    finally:
        if pidFile.exists():
            os.kill(int(pidFile.read_text()), 9)


def closeResultPipeOnCue(fifo: str) -> None:
    """In a child: once a byte comes down C{fifo}, close the result pipe and hang."""
    with open(fifo, "rb") as cue:
        cue.read(1)
    closeResultPipeAndWait()


@pytest_twisted.ensureDeferred
async def test_aRetiringChildLivingOnWithoutItsPipeIsKilled(
    makeProcessQueue: Callable[..., ProcessQueue], tmp_path: Path, shortGrace: None
) -> None:
    # Its second call replaces the child (maxTasksPerWorker=1): the old one
    # retires with its call still out, and then closes its pipe.
    q = makeProcessQueue(1, maxTasksPerWorker=1)
    fifo = str(tmp_path / "cue")
    os.mkfifo(fifo)
    hung = q.call(closeResultPipeOnCue, fifo)
    await within(q.call(os.getpid))
    # Blocks until the old child has the FIFO open (it soon has).
    cue = os.open(fifo, os.O_WRONLY)
    os.write(cue, b"!")
    os.close(cue)
    crash = await failureOf(hung)
    assert isinstance(crash, WorkerCrashed) and "result pipe" in str(crash)


HELD_OUTPUT_MODULE = """
import os, subprocess

if os.getpid() != int(os.environ["AQ_TEST_PARENT"]):
    # Imported by the zygote: a helper that holds the zygote's output open.
    _helper = subprocess.Popen(["sleep", "60"])
    with open(os.environ["AQ_TEST_HELPERS"], "a") as pids:
        pids.write(f"{_helper.pid}\\n")


def init():
    return None
"""


@pytest_twisted.ensureDeferred
async def test_aZygoteWhoseOutputAProcessHoldsStillEnds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The initializer's module is imported by the zygote that forks the
    # children, and starts a process holding the zygote's output open.
    (tmp_path / "heldoutput.py").write_text(HELD_OUTPUT_MODULE)
    helpers = tmp_path / "helpers"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))
    monkeypatch.setenv("AQ_TEST_PARENT", str(os.getpid()))
    monkeypatch.setenv("AQ_TEST_HELPERS", str(helpers))
    import heldoutput  # type: ignore[import-not-found]

    q = ProcessQueue(
        1, initializer=heldoutput.init, start="fork", shutdownWithReactor=False
    )
    try:
        assert await within(q.call(int, "9")) == 9
        assert helpers.exists()
        await within(q.shutdown(timeout=3), 20)
    finally:
        for pid in helpers.read_text().split() if helpers.exists() else []:
            os.kill(int(pid), 9)


def startTickerThenDie(fifo: str) -> None:
    """In a child: start a process that prints once cued down C{fifo}, then die."""
    import subprocess

    subprocess.Popen(["sh", "-c", f"read cue < {fifo}; echo ticked"])
    os._exit(3)


@pytest_twisted.ensureDeferred
async def test_aProcessAChildStartedKeepsItsOutput(
    makeProcessQueue: Callable[..., ProcessQueue], tmp_path: Path, shortGrace: None
) -> None:
    # Its child is over (and no longer waited for) before the process it
    # started writes: what it writes is still read and logged, and writing
    # does not break it.
    ticked: Deferred[None] = Deferred()

    def observe(event: dict[str, Any]) -> None:
        if event.get("line") == "ticked" and not ticked.called:
            ticked.callback(None)

    fifo = str(tmp_path / "cue")
    os.mkfifo(fifo)
    q = makeProcessQueue(1)
    globalLogPublisher.addObserver(observe)
    try:
        crash = await failureOf(q.call(startTickerThenDie, fifo))
        assert isinstance(crash, WorkerCrashed)
        assert await within(q.call(int, "10")) == 10
        # Blocks until the process has the FIFO open (it soon has).
        cue = os.open(fifo, os.O_WRONLY)
        os.write(cue, b"go\n")
        os.close(cue)
        await within(ticked)
    finally:
        globalLogPublisher.removeObserver(observe)


def countThenCloseResultPipeOnSignal() -> Iterator[int]:
    """In a child: count; on SIGUSR1, close the result pipe and hang."""
    import itertools
    import signal

    signal.signal(signal.SIGUSR1, lambda *_: closeResultPipeAndWait())
    yield from itertools.count()


@pytest_twisted.ensureDeferred
async def test_aRetiringChildWithAnIteratorOpenIsKilledWithoutItsPipe(
    makeProcessQueue: Callable[..., ProcessQueue], shortGrace: None
) -> None:
    # No call out, but an iterator the parent reads: it must be killed too.
    q = makeProcessQueue(1, maxTasksPerWorker=1)
    [worker] = q.workers()
    assert isinstance(worker, ProcessWorker)
    items = await within(q.call(countThenCloseResultPipeOnSignal))
    # The generator has run, so its signal handler is in place.
    assert await within(ensureDeferred(items.__anext__())) == 0
    await within(q.call(os.getpid))
    [old] = worker._retiring  # type: ignore[attr-defined]
    assert old.openIterators == 1 and not old.inFlight
    os.kill(old.pid, signal.SIGUSR1)
    await within(old.ended)
    assert old.closedItsPipe
    items.close()
