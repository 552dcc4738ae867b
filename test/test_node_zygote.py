"""
Tests of asynqueue.node.zygote and asynqueue.workers.spawning: children
forked by a zygote (and spawned, where the behaviour must be the same),
calls made before any child is ready, a zygote that dies, and a zygote
that ends with the last worker that used it.

A module written for each test (in C{tmp_path}) stands for the user's
initializer module: it notes which process imported it, and can hold its
import until the test opens a gate (a FIFO), so that a child cannot be
ready before the test says so.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import pytest_twisted
from processes import failureOf
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from asynqueue import ProcessQueue, ProcessWorker, TaskQueue, WorkerCrashed
from asynqueue.workers.spawning import forkAvailable, startMethod

pytestmark = pytest.mark.skipif(not forkAvailable(), reason="no zygote here")

_USER_MODULE = '''
"""Stands for a user's initializer module."""
import os

importedBy = os.getpid()
_gate = os.environ.get("AQ_TEST_GATE")
if _gate and os.getpid() != int(os.environ["AQ_TEST_PARENT"]):
    with open(_gate, "rb") as f:
        f.read(1)
_parent = int(os.environ.get("AQ_TEST_PARENT", "0"))
if os.environ.get("AQ_TEST_THREAD") and os.getpid() != _parent:
    import threading

    # Not a daemon, and never ends: a helper a user's module might start.
    threading.Thread(target=threading.Event().wait).start()


def setUp():
    return "ready"


def where():
    return importedBy, os.getppid(), os.getpid()
'''


def within(d: Deferred[Any], seconds: float = 20) -> Deferred[Any]:
    """Fail, instead of hanging the run, if C{d} has not fired in time."""
    return d.addTimeout(seconds, reactor)


def gone(pid: int) -> bool:
    """Whether C{pid} has ended (an orphan's zombie, not ours to reap, counts)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state in ("Z", "X")


def openDescriptors() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture(params=["fork", "spawn"])
def start(request: pytest.FixtureRequest) -> str:
    method: str = request.param
    return method


@pytest.fixture
def userModule(tmp_path: Path) -> Iterator[ModuleType]:
    """A fresh initializer module the parent and its children can import."""
    name = f"aq_user_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(_USER_MODULE)
    sys.path.insert(0, str(tmp_path))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop(name, None)


def test_startMustBeForkOrSpawn() -> None:
    with pytest.raises(ValueError, match="start must be 'fork' or 'spawn', not 'x'"):
        ProcessWorker(start="x")
    assert startMethod(None) == "fork"


@pytest_twisted.ensureDeferred
async def test_callsMadeBeforeAChildIsReadyWaitForIt(
    start: str, userModule: ModuleType, tmp_path: Path
) -> None:
    gate = tmp_path / "gate"
    os.mkfifo(gate)
    env = dict(os.environ, AQ_TEST_GATE=str(gate), AQ_TEST_PARENT=str(os.getpid()))
    worker = ProcessWorker(initializer=userModule.setUp, env=env, start=start)
    q = TaskQueue(worker, shutdownWithReactor=False)
    opened = -1
    try:
        calls = [q.call(os.getpid) for _ in range(5)]
        # The reactor runs on while no child can be ready (the import of the
        # initializer's module waits at the gate): the calls wait.
        for _ in range(3):
            await deferLater(reactor, 0, lambda: None)
        assert not any(d.called for d in calls)
        opened = os.open(gate, os.O_RDWR)
        os.write(opened, b"x")
        pids = await within(gatherResults(calls))
        assert set(pids) == {await within(worker.whenStarted())} != {os.getpid()}
    finally:
        await within(q.shutdown(timeout=3))
        if opened >= 0:
            os.close(opened)


@pytest_twisted.ensureDeferred
async def test_zygoteHasTheInitializersModuleImported(userModule: ModuleType) -> None:
    q = ProcessQueue(2, initializer=userModule.setUp, shutdownWithReactor=False)
    try:
        places = await within(gatherResults([q.update(userModule.where)]))
        [(a, b)] = places
        # Imported once, by the zygote, which forked both children.
        assert a[0] == b[0] == a[1] == b[1] not in (os.getpid(), a[2], b[2])
    finally:
        await within(q.shutdown())
    assert gone(a[1])


@pytest_twisted.ensureDeferred
async def test_spawnedChildrenImportForThemselves(userModule: ModuleType) -> None:
    q = ProcessQueue(
        2, initializer=userModule.setUp, start="spawn", shutdownWithReactor=False
    )
    try:
        [places] = await within(gatherResults([q.update(userModule.where)]))
        for importedBy, parent, pid in places:
            assert importedBy == pid and parent == os.getpid()
    finally:
        await within(q.shutdown())


@pytest_twisted.ensureDeferred
async def test_exitStatusReachesTheCaller(start: str) -> None:
    q = ProcessQueue(1, start=start, shutdownWithReactor=False)
    try:
        error = await failureOf(q.call(os._exit, 3))
        assert isinstance(error, WorkerCrashed) and "exit code 3" in str(error)
        error = await failureOf(q.call(lambda: os.kill(os.getpid(), signal.SIGTERM)))
        assert isinstance(error, WorkerCrashed) and "signal 15" in str(error)
        assert await within(q.call(sum, (1, 2))) == 3
    finally:
        await within(q.shutdown())


@pytest_twisted.ensureDeferred
async def test_deadZygoteIsReplacedAndLeavesNothing() -> None:
    warm = ProcessQueue(1, shutdownWithReactor=False)
    await within(warm.call(os.getpid))
    await within(warm.shutdown())
    before = openDescriptors()
    q = ProcessQueue(2, shutdownWithReactor=False)
    try:
        children = await within(gatherResults([w.whenStarted() for w in q.workers()]))
        zygotes = await within(q.update(os.getppid))
        [zygote] = set(zygotes)
        assert zygote != os.getpid()
        os.kill(zygote, signal.SIGKILL)
        # Its children die with it; new ones come from a new zygote. A call
        # given to a dying child may fail: retried.
        for _ in range(100):
            parent = await within(q.call(os.getppid, retries=3))
            if parent != zygote:
                break
        assert parent not in (zygote, os.getpid())
        assert all(gone(pid) for pid in [zygote, *children])
        parents = await within(q.update(os.getppid))
        assert set(parents) == {parent}
    finally:
        await within(q.shutdown())
    assert gone(parent)
    assert openDescriptors() == before


@pytest_twisted.ensureDeferred
async def test_zygoteEndsWithTheLastWorkerThatUsesIt() -> None:
    one = ProcessWorker(capacity=1)
    two = ProcessWorker(capacity=1)
    q = TaskQueue(one, two, shutdownWithReactor=False)
    parents = await within(q.update(os.getppid))
    [zygote] = set(parents)
    await within(q.detachWorker(one))
    assert not gone(zygote)
    # A worker started later, with the same settings, shares it.
    three = ProcessWorker()
    await within(q.attachWorker(three))
    assert set(await within(q.update(os.getppid))) == {zygote}
    await within(q.shutdown())
    assert gone(zygote)


@pytest_twisted.ensureDeferred
async def test_aThreadThePreloadedModuleStartedDoesNotHoldTheZygote(
    userModule: ModuleType,
) -> None:
    # The zygote imports the initializer's module, whose thread would keep
    # an interpreter from ending: the zygote still ends with its queue.
    env = dict(os.environ, AQ_TEST_THREAD="1", AQ_TEST_PARENT=str(os.getpid()))
    worker = ProcessWorker(initializer=userModule.setUp, env=env, start="fork")
    q = TaskQueue(worker, shutdownWithReactor=False)
    [(importedBy, zygote, child)] = await within(q.update(userModule.where))
    assert importedBy == zygote != os.getpid()
    await within(q.shutdown(), 10)
    assert gone(zygote) and gone(child)
