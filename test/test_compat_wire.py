"""
AsynQueue 0.9.9's wire.ServerManager, as its tests used it: newSocket(),
spawn() a node serving a universe, a WireWorker calling it, done().
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from asynqueue import TaskQueue, wire
from asynqueue.wire import ServerManager, WireWorkerUniverse
from asynqueue.wire.manager import NodeProcess

#: Set (to a file's path) for a node that is to start a helper as it imports
#: this module for its universe; the helper's pid goes to that file.
HELPER = "ASYNQUEUE_TEST_NODE_HELPER"

if os.environ.get(HELPER):
    # A node importing its universe: start a helper that outlives the node
    # and keeps its output open. Popped first, so the node's own child
    # processes (which import this module too) start none.
    _pidFile = os.environ.pop(HELPER)
    _helper = subprocess.Popen(["sleep", "600"])
    with open(_pidFile, "w") as _f:
        _f.write(str(_helper.pid))


class TestUniverse(WireWorkerUniverse):
    """What the spawned node runs."""

    # A universe, not a pytest test class.
    __test__ = False

    def add(self, x: int, y: int) -> int:
        return x + y

    def startEndlessThread(self) -> int:
        """In the node's child: start a thread (not a daemon) that never ends."""
        import threading

        threading.Thread(target=threading.Event().wait, name="endless").start()
        return os.getpid()


FQN = f"{TestUniverse.__module__}.TestUniverse"


def within(d: Deferred[Any], seconds: float = 30) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def running(pid: int) -> bool:
    """Whether C{pid} runs (exists, and is not a zombie waiting to be reaped)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def killHelper(pidFile: Path) -> None:
    """Kill the helper whose pid is in C{pidFile}, if it was started."""
    if pidFile.exists():
        try:
            os.kill(int(pidFile.read_text()), signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def manager() -> Iterator[ServerManager]:
    wm = ServerManager(FQN)
    yield wm
    pytest_twisted.blockon(within(wm.shutdown()))
    assert wm.tempDir is None
    assert wm.processInfo == {}


def test_newSocket(manager: ServerManager) -> None:
    first, second = manager.newSocket(), manager.newSocket()
    assert first.startswith("unix:") and second.startswith("unix:")
    assert first != second
    assert manager.tempDir is not None
    assert os.stat(manager.tempDir).st_mode & 0o077 == 0


def test_spawnRefusesANonDescription(manager: ServerManager) -> None:
    with pytest.raises(ValueError, match="endpoint description"):
        manager.spawn("nowhere")


@pytest_twisted.inlineCallbacks
def test_spawnAndCall(manager: ServerManager) -> Any:
    description = manager.newSocket()
    pid = yield within(manager.spawn(description))
    assert isinstance(pid, int) and alive(pid)
    assert pid in manager.processInfo
    queue = TaskQueue(shutdownWithReactor=False)
    try:
        worker = wire.WireWorker(
            TestUniverse(), description, insecurePlaintext=True, series=["wire"]
        )
        yield within(queue.attachWorker(worker))
        result = yield within(queue.call("add", 1, 2, series="wire"))
        assert result == 3
    finally:
        yield queue.shutdown()
    yield within(manager.done(pid))
    assert pid not in manager.processInfo
    assert not alive(pid)


@pytest_twisted.inlineCallbacks
def test_spawnStdio(manager: ServerManager) -> Any:
    node = yield within(manager.spawn(manager.newSocket(), stdio=True))
    assert isinstance(node.pid, int)
    yield within(manager.done())
    assert manager.processInfo == {}


@pytest_twisted.inlineCallbacks
def test_spawnOfABadUniverseFails() -> Any:
    wm = ServerManager("no.such.Universe")
    try:
        with pytest.raises(RuntimeError, match="ended before it listened"):
            yield within(wm.spawn(wm.newSocket()))
    finally:
        yield wm.shutdown()


@pytest_twisted.inlineCallbacks
def test_spawnNiceness(manager: ServerManager) -> Any:
    pid = yield within(manager.spawn(manager.newSocket(), niceness=3))
    assert (
        os.getpriority(os.PRIO_PROCESS, pid) == os.getpriority(os.PRIO_PROCESS, 0) + 3
    )


def test_spawnRefusesNegativeNiceness(manager: ServerManager) -> None:
    with pytest.raises(ValueError, match="niceness"):
        manager.spawn(manager.newSocket(), niceness=-1)


@pytest_twisted.inlineCallbacks
def test_doneWhileAHelperOfTheNodeLivesOn(
    manager: ServerManager, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Any:
    """
    A node whose universe started a helper process (which keeps the node's
    output open) has ended once it exits: done() does not wait for the helper.
    """
    pidFile = tmp_path / "helper.pid"
    monkeypatch.setenv(HELPER, str(pidFile))
    try:
        pid = yield within(manager.spawn(manager.newSocket()))
        helper = int(pidFile.read_text())
        yield within(manager.done(pid), 10)
        assert not alive(pid)
        assert alive(helper)
        assert manager.processInfo == {}
    finally:
        killHelper(pidFile)


@pytest_twisted.inlineCallbacks
def test_doneGivesANodeTimeToEndAChildAThreadHolds(manager: ServerManager) -> Any:
    """
    A node whose child a task's thread (not a daemon) keeps from exiting
    kills that child after its stop grace; done() waits for that rather
    than kill the node first, which would leave the child running.
    """
    description = manager.newSocket()
    pid = yield within(manager.spawn(description))
    node = manager.processInfo[pid]
    queue = TaskQueue(shutdownWithReactor=False)
    child = None
    try:
        worker = wire.WireWorker(
            TestUniverse(), description, insecurePlaintext=True, series=["wire"]
        )
        yield within(queue.attachWorker(worker))
        child = yield within(queue.call("startEndlessThread", series="wire"))
        yield queue.shutdown()
        yield within(manager.done(pid), 30)
        assert not running(child)
        assert node.reason is not None
        assert getattr(node.reason.value, "signal", None) != signal.SIGKILL
    finally:
        if child is not None and running(child):
            os.kill(child, signal.SIGKILL)


@pytest_twisted.inlineCallbacks
def test_nodeEndsBeforeListeningWhileAHelperLivesOn(tmp_path: Path) -> Any:
    """
    A node process that exits before it listens, leaving a helper that keeps
    its output open: C{d} fails and C{ended} fires all the same.
    """
    pidFile = tmp_path / "helper.pid"
    program = (
        "import subprocess, sys\n"
        "helper = subprocess.Popen(['sleep', '600'])\n"
        f"open({str(pidFile)!r}, 'w').write(str(helper.pid))\n"
        "sys.exit('no universe here')\n"
    )
    node = NodeProcess()
    reactor.spawnProcess(node, sys.executable, [sys.executable, "-c", program])
    try:
        with pytest.raises(RuntimeError, match="ended before it listened"):
            yield within(node.d, 10)
        yield within(node.ended, 10)
        assert alive(int(pidFile.read_text()))
    finally:
        killHelper(pidFile)
