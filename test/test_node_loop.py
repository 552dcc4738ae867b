"""
Tests of a child's loop without Twisted (asynqueue.node.loop.ChildLoop),
of what the child runtime imports, and of a child handing over to
Twisted's reactor when a call returns a Deferred.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from processes import within
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from asynqueue import ProcessQueue
from asynqueue.node.loop import ChildLoop

# A child imports this module to run its functions: nothing here installs
# a reactor as it is imported (its tests use the one pytest-twisted runs).


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


def test_childRuntimeImportsNoTwisted() -> None:
    """A child (and the zygote) imports only the standard library and its own."""
    code = (
        "import sys, asynqueue.node.child, asynqueue.node.zygote\n"
        "print(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'twisted', 'zope', 'cloudpickle', 'attr', 'inspect'}))\n"
        "print(sorted(m for m in sys.modules if m.startswith('asynqueue.')"
        " and m.split('.')[1] in ('queue', 'workers', 'tasks', 'util')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert out.stdout.split("\n")[:2] == ["[]", "[]"]


def test_callsRunInOrderOfTimeAndAskingUnlessCancelled(pipe: Any) -> None:
    loop = ChildLoop(pipe[0])
    ran: list[str] = []
    loop.callLater(0, ran.append, "a")
    cancelled = loop.callLater(0, ran.append, "never")
    loop.callLater(0, ran.append, "b")
    loop.callLater(0.001, loop.stop)
    cancelled.cancel()
    assert loop.run() is False
    assert ran == ["a", "b"]


def test_readsAreFedUntilTheEndOfInput(pipe: Any) -> None:
    r, w = pipe
    loop = ChildLoop(r)
    fed: list[bytes] = []
    lost: list[bool] = []
    loop.feed = lambda data: fed.append(bytes(data))
    loop.lost = lambda: lost.append(True)
    os.write(w, b"some bytes")
    os.close(w)
    assert loop.run() is False
    assert b"".join(fed) == b"some bytes" and lost == [True]
    # Nothing more to read now; at the end, a read says so.
    assert loop.readNow() is False


def test_readNowTakesOnlyWhatHasCome(pipe: Any) -> None:
    r, w = pipe
    loop = ChildLoop(r)
    fed: list[bytes] = []
    loop.feed = lambda data: fed.append(bytes(data))
    assert loop.readNow() is True and fed == []
    os.write(w, b"x")
    assert loop.readNow() is True and fed == [b"x"]


@pytest_twisted.ensureDeferred
async def test_aCallThatNeedsAReactorHandsOverPipeAndCalls(pipe: Any) -> None:
    r, w = pipe
    loop = ChildLoop(r)
    ran: list[str] = []
    fed: list[bytes] = []
    lost: Deferred[None] = Deferred()
    loop.feed = lambda data: fed.append(bytes(data))
    loop.lost = lambda: lost.callback(None)
    loop.callLater(0, loop.needReactor)
    loop.callLater(0, ran.append, "after")
    later = loop.callLater(0, ran.append, "cancelled after the hand-over")
    assert loop.run() is True
    assert ran == []
    reader = loop.handToReactor()
    later.cancel()
    # From now on, the reactor runs what is asked.
    loop.callLater(0, ran.append, "asked after")
    os.write(w, b"read by the reactor")
    os.close(w)
    await within(lost)
    assert ran == ["after", "asked after"]
    assert b"".join(fed) == b"read by the reactor"
    assert reader.fd == -1


def reactorRuns() -> bool:
    """Whether this process has installed a reactor (a child: only on demand)."""
    return "twisted.internet.reactor" in sys.modules


def later(value: int) -> Deferred[int]:
    from twisted.internet import reactor

    return deferLater(reactor, 0.01, lambda: value)


def count(n: int) -> Iterator[int]:
    yield from range(n)


@pytest.mark.parametrize("start", ["fork", "spawn"])
@pytest_twisted.ensureDeferred
async def test_childServesOnInTheReactorAfterADeferred(start: str) -> None:
    q = ProcessQueue(1, start=start, shutdownWithReactor=False)
    try:
        assert await within(q.call(reactorRuns)) is False
        assert await within(q.call(later, 7)) == 7
        assert await within(q.call(reactorRuns)) is True
        assert await within(q.call(later, 8)) == 8
        deferator = await within(q.call(count, 300))
        assert await within(deferator.toList()) == list(range(300))
        assert await within(q.call(len, b"x" * 200_000)) == 200_000
    finally:
        await within(q.shutdown())


def test_stopOfAHandedOverLoopIsSafeFromAnotherThread(pipe: Any) -> None:
    """
    Once handed to a reactor, a stop from another thread (a child's
    held-results thread dropping its parent) goes through callFromThread;
    from the loop's own thread it stops the reactor at once.
    """
    import threading

    class FakeReactor:
        running = True

        def __init__(self) -> None:
            self.stops: list[str] = []
            self.fromThread: list[Any] = []

        def stop(self) -> None:
            self.stops.append(threading.current_thread().name)

        def callFromThread(self, f: Any, *args: Any) -> None:
            self.fromThread.append((f, args))

    loop = ChildLoop(pipe[0])
    reactor = FakeReactor()
    loop._reactor = reactor
    other = threading.Thread(target=loop.stop, name="held-results")
    other.start()
    other.join()
    assert reactor.stops == [] and len(reactor.fromThread) == 1
    f, args = reactor.fromThread[0]
    f(*args)
    assert reactor.stops == [threading.current_thread().name]
