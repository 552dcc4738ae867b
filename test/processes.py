"""Helpers shared by the tests of process workers: timeouts, pids, cleanup."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from asynqueue import ProcessQueue


def within(d: Deferred[Any], seconds: float = 10) -> Deferred[Any]:
    """Fail, instead of hanging the run, if C{d} has not fired in time."""
    # Imported here: conftest loads this module before pytest-twisted has
    # installed the reactor the run asked for.
    from twisted.internet import reactor

    return d.addTimeout(seconds, reactor)


async def failureOf(d: Deferred[Any], seconds: float = 20) -> BaseException:
    """The exception C{d} fails with (an AssertionError if it succeeds)."""
    try:
        result = await within(d, seconds)
    except BaseException as e:
        return e
    raise AssertionError(f"expected a failure, got {result!r}")


def workerPids(q: ProcessQueue) -> dict[str, int]:
    """The pid of each worker's child, by worker name (None until forked)."""
    return {name: w["pid"] for name, w in q.stats()["workers"].items()}


def assertGone(pid: int) -> None:
    """No child process and no zombie of that pid is left."""
    try:
        got = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return
    if got == (0, 0):
        raise AssertionError(f"child process {pid} is still running")
    raise AssertionError(f"child process {pid} was left a zombie")


def processQueues(
    clock: Clock, startMethod: str | None
) -> Iterator[Callable[..., ProcessQueue]]:
    """
    Make ProcessQueues (children started by C{startMethod}, or the
    default); each is shut down after the test and leaves no child.
    """
    made: list[tuple[ProcessQueue, bool]] = []

    def make(n: int = 1, useClock: bool = False, **kwargs: Any) -> ProcessQueue:
        kwargs.setdefault("shutdownWithReactor", False)
        if startMethod is not None:
            kwargs.setdefault("start", startMethod)
        if useClock:
            kwargs["clock"] = clock
        q = ProcessQueue(n, **kwargs)
        made.append((q, useClock))
        return q

    yield make
    for q, useClock in made:
        pids = [pid for pid in workerPids(q).values() if pid is not None]
        d = q.shutdown(timeout=3, cancelPending=True)
        if useClock:
            clock.advance(3)
        try:
            pytest_twisted.blockon(within(d, 15))
        except BaseException:
            for w in q.workers():
                w.crash()
            raise
        for pid in pids:
            assertGone(pid)


def closeResultPipeAndWait() -> None:
    """In a child: close the pipe its results go out on, then block for ever."""
    import threading

    from asynqueue.node.child import childMain

    # The result pipe is childMain's writeFD.
    os.close(childMain.__defaults__[1])  # type: ignore[index]
    threading.Event().wait()


def startEndlessThread() -> int:
    """In a child: start a thread (not a daemon) that waits for ever."""
    import threading

    threading.Thread(target=threading.Event().wait, name="endless").start()
    return os.getpid()
