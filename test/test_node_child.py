"""
Tests of asynqueue.node: the LocalRunner driven by hand (a Clock for its
reactor, a fake send), and NodeProtocol over an in-memory AMP connection.

Functions given to the runner are module-level, so that they travel by
reference and their side effects land in this module's lists.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.protocols import amp
from twisted.test import iosim

from asynqueue.errors import UnpicklableError
from asynqueue.node.child import LocalRunner
from asynqueue.node.protocol import NodeProtocol
from asynqueue.wire.commands import (
    RESULT_DELAY,
    RESULT_WINDOW,
    NodeInfo,
    RunTasks,
    Stop,
    TaskResult,
    TaskResults,
)
from asynqueue.wire.pickling import decodeError, dumpCall, dumps, loads

RAN: list[Any] = []
PENDING: dict[str, Deferred[Any]] = {}
FINALLY: list[str] = []
VIOLATIONS: list[str] = []


@pytest.fixture(autouse=True)
def _resetState() -> Iterator[None]:
    RAN.clear()
    PENDING.clear()
    FINALLY.clear()
    VIOLATIONS.clear()
    yield
    for d in PENDING.values():
        if not d.called:
            d.callback(None)


def record(x: Any) -> Any:
    RAN.append(x)
    return x * 10


def fail(message: str) -> None:
    RAN.append(message)
    raise ValueError(message)


def waitFor(key: str) -> Deferred[Any]:
    RAN.append(f"{key}-start")
    d: Deferred[Any] = Deferred()
    PENDING[key] = d
    return d


async def awaitFor(key: str) -> Any:
    RAN.append(f"{key}-start")
    d: Deferred[Any] = Deferred()
    PENDING[key] = d
    value = await d
    RAN.append(f"{key}-end")
    return value


def count(n: int, broken: bool = False) -> Iterator[int]:
    try:
        for i in range(n):
            RAN.append(i)
            yield i
        if broken:
            raise ValueError("iterator broke")
    finally:
        FINALLY.append("closed")


def lockedItems() -> Iterator[Any]:
    yield 1
    yield threading.Lock()


def makeLock() -> Any:
    return threading.Lock()


class Runner:
    """A LocalRunner on a Clock, and what it sent."""

    def __init__(self) -> None:
        self.clock = Clock()
        self.batches: list[list[tuple[int, str, bytes, float]]] = []
        self.runner = LocalRunner(self.clock, self.send)

    def send(self, batch: list[tuple[int, str, bytes, float]]) -> None:
        self.batches.append(list(batch))

    def add(self, *calls: tuple[int, Any, tuple[Any, ...]]) -> None:
        self.runner.add([(i, dumpCall(f, args, {})) for i, f, args in calls])

    def drain(self) -> None:
        """Run the reactor turns the runner asked for, until it asks for none."""
        for _ in range(10_000):
            if not self.clock.getDelayedCalls():
                return
            self.clock.advance(0)
        raise AssertionError("the runner never stops scheduling")

    def results(self) -> list[tuple[int, str, Any]]:
        out: list[tuple[int, str, Any]] = []
        for batch in self.batches:
            for taskID, status, payload, seconds in batch:
                assert seconds >= 0
                value = (
                    decodeError(payload, "test") if status == "e" else loads(payload)
                )
                out.append((taskID, status, value))
        return out


@pytest.fixture
def r() -> Runner:
    return Runner()


def test_tasksRunInOrder(r: Runner) -> None:
    r.add(*[(i, record, (i,)) for i in range(1, 6)])
    r.drain()
    assert RAN == [1, 2, 3, 4, 5]
    assert r.results() == [(i, "r", i * 10) for i in range(1, 6)]
    assert r.runner.done == 5


def test_laterBatchesRunAfterEarlierOnes(r: Runner) -> None:
    r.add((1, record, (1,)), (2, record, (2,)))
    r.add((3, record, (3,)))
    r.drain()
    r.add((4, record, (4,)))
    r.drain()
    assert [t for t, _, _ in r.results()] == [1, 2, 3, 4]


REPORTED: list[int] = []


def checkWindow(i: int) -> int:
    RAN.append(i)
    if len(RAN) - sum(REPORTED) > RESULT_WINDOW:
        VIOLATIONS.append(f"task {i}: {len(RAN) - sum(REPORTED)} ran unreported")
    return i


def test_atMostAWindowOfTasksRunUnreported() -> None:
    """A node that dies can only have run the RESULT_WINDOW oldest unanswered tasks."""
    REPORTED.clear()
    clock = Clock()

    def send(batch: list[Any]) -> None:
        REPORTED.append(len(batch))

    runner = LocalRunner(clock, send)
    runner.add([(i, dumpCall(checkWindow, (i,), {})) for i in range(200)])
    while clock.getDelayedCalls():
        clock.advance(0)
    assert RAN == list(range(200))
    assert sum(REPORTED) == 200
    assert VIOLATIONS == []


def test_aFullBatchOfShortCallsComesBackInOneBox(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    As many short calls as a process worker hands out at most come back in
    one box, not in two: the window counts the task still running too.
    """
    import inspect

    from asynqueue.node import child
    from asynqueue.workers.process import ProcessWorker

    # Time stands still: no result is old enough to go early on its own.
    monkeypatch.setattr(child, "perf_counter", lambda: 1000.0)
    batchSize = inspect.signature(ProcessWorker).parameters["maxCapacity"].default
    boxes: list[int] = []
    clock = Clock()
    runner = LocalRunner(clock, lambda batch: boxes.append(len(batch)))
    # The first calls of a runner's life go one by one, until their
    # average run time shows that they are short.
    for first in (0, batchSize):
        del boxes[:]
        runner.add([(first + i, dumpCall(str, (i,), {})) for i in range(batchSize)])
        while clock.getDelayedCalls():
            clock.advance(0)
    assert boxes == [batchSize]


#: Set once the result of the task before L{waitForTheResultBefore} is sent.
RESULT_BEFORE_SENT = threading.Event()


def waitForTheResultBefore() -> bool:
    """A task that ends only once the result before it is sent (or 30 s passed)."""
    return RESULT_BEFORE_SENT.wait(30)


@pytest.mark.parametrize("fastTasksBefore", [0, 2 * RESULT_WINDOW])
def test_resultIsNotHeldBackByTheNextTask(fastTasksBefore: int) -> None:
    """
    No result waits for the end of the task after it, however long that runs:
    the task after it here ends only once that result is sent. After many
    fast tasks, when results are batched, the runner's own thread sends it.
    """
    RESULT_BEFORE_SENT.clear()
    clock = Clock()
    last = fastTasksBefore + 1

    sent: dict[int, Any] = {}

    def send(batch: list[Any]) -> None:
        for taskID, _, payload, _ in batch:
            sent[taskID] = loads(payload)
        if last in sent:
            RESULT_BEFORE_SENT.set()

    runner = LocalRunner(clock, send)
    runner.holdResultsAtMost(RESULT_DELAY)
    runner.add([(i, dumpCall(record, (i,), {})) for i in range(1, last + 1)])
    runner.add([(last + 1, dumpCall(waitForTheResultBefore, (), {}))])
    while clock.getDelayedCalls():
        clock.advance(0)
    runner.flush()
    assert sent[last + 1] is True, "the result before the task waited for it"
    assert RAN == list(range(1, last + 1))


def test_errorIsReportedAndNextTaskRuns(r: Runner) -> None:
    r.add((1, fail, ("bad",)), (2, record, (2,)))
    r.drain()
    (t1, s1, e1), second = r.results()
    assert (t1, s1, type(e1)) == (1, "e", ValueError)
    assert "in fail" in e1.remoteTraceback  # type: ignore[attr-defined]
    assert second == (2, "r", 20)


def test_unpicklableResultIsReportedAsError(r: Runner) -> None:
    r.add((1, makeLock, ()), (2, record, (2,)))
    r.drain()
    (t1, s1, e1), second = r.results()
    assert (t1, s1) == (1, "e")
    assert isinstance(e1, UnpicklableError)
    assert "lock" in str(e1)
    assert second == (2, "r", 20)


def test_cancelQueuedTaskNeverRuns(r: Runner) -> None:
    """A cancel read between two slices of tasks withdraws a task not yet run."""
    r.add((1, str, ("first",)), (2, record, (2,)), (3, record, (3,)))
    # Added, the tasks wait for a reactor turn, in which the node reads its
    # incoming cancels.
    r.runner.cancel(2)
    r.runner.cancel(99)  # unknown: ignored
    r.drain()
    assert RAN == [3]
    assert [t for t, _, _ in r.results()] == [1, 3]


@pytest.mark.parametrize("hold", [waitFor, awaitFor])
def test_deferredOrCoroutineTaskHoldsTheLine(r: Runner, hold: Any) -> None:
    r.add((1, hold, ("a",)), (2, record, (2,)), (3, record, (3,)))
    r.drain()
    assert RAN == ["a-start"]
    assert r.results() == []
    # A cancel that arrives while the line is held withdraws a queued task.
    r.runner.cancel(3)
    PENDING["a"].callback("A")
    r.drain()
    assert r.results() == [(1, "r", "A"), (2, "r", 20)]
    assert 3 not in RAN


@pytest.mark.parametrize("hold", [waitFor, awaitFor])
def test_failingDeferredOrCoroutineIsReported(r: Runner, hold: Any) -> None:
    r.add((1, hold, ("a",)), (2, record, (2,)))
    r.drain()
    PENDING["a"].errback(KeyError("gone"))
    r.drain()
    (t1, s1, e1), second = r.results()
    assert (t1, s1, type(e1), e1.args) == (1, "e", KeyError, ("gone",))
    assert second == (2, "r", 20)


def test_whenIdleWaitsForBacklogAndHeldTask(r: Runner) -> None:
    r.add((1, waitFor, ("a",)), (2, record, (2,)))
    idle = r.runner.whenIdle()
    r.drain()
    assert not idle.called
    PENDING["a"].callback(None)
    r.drain()
    assert idle.called
    assert RAN == ["a-start", 2]


def iteratorOf(r: Runner, taskID: int) -> int:
    [(t, status, iteratorID)] = r.results()
    assert (t, status) == (taskID, "i")
    return int(iteratorID)


def items(answer: dict[str, Any]) -> tuple[list[Any], bool, Any]:
    error = answer["error"]
    return (
        loads(answer["items"]),
        answer["exhausted"],
        None if error is None else decodeError(error, "test"),
    )


def test_iteratorServedInBatchesWithoutReadingAhead(r: Runner) -> None:
    r.add((1, count, (5,)))
    r.drain()
    iteratorID = iteratorOf(r, 1)
    assert RAN == [], "the iterator is only made, not run"
    assert items(r.runner.nextItems(iteratorID, 2)) == ([0, 1], False, None)
    assert RAN == [0, 1]
    assert items(r.runner.nextItems(iteratorID, 2)) == ([2, 3], False, None)
    assert items(r.runner.nextItems(iteratorID, 2)) == ([4], True, None)
    assert FINALLY == ["closed"]
    assert items(r.runner.nextItems(iteratorID, 2)) == ([], True, None)


def test_closeIteratorClosesGenerator(r: Runner) -> None:
    r.add((1, count, (100,)))
    r.drain()
    iteratorID = iteratorOf(r, 1)
    assert items(r.runner.nextItems(iteratorID, 3)) == ([0, 1, 2], False, None)
    assert FINALLY == []
    r.runner.closeIterator(iteratorID)
    assert FINALLY == ["closed"]
    assert items(r.runner.nextItems(iteratorID, 3)) == ([], True, None)
    r.runner.closeIterator(iteratorID)  # again, and unknown IDs: ignored
    r.runner.closeIterator(12345)
    assert RAN == [0, 1, 2]


def test_iteratorErrorAfterItems(r: Runner) -> None:
    r.add((1, count, (2, True)))
    r.drain()
    iteratorID = iteratorOf(r, 1)
    got, exhausted, error = items(r.runner.nextItems(iteratorID, 10))
    assert (got, exhausted) == ([0, 1], True)
    assert isinstance(error, ValueError) and error.args == ("iterator broke",)
    assert "in count" in error.remoteTraceback
    assert items(r.runner.nextItems(iteratorID, 10)) == ([], True, None)


def test_unpicklableIteratorItemIsReportedAsError(r: Runner) -> None:
    """An item that cannot travel fails the iteration; it does not break the node."""
    r.add((1, lockedItems, ()))
    r.drain()
    iteratorID = iteratorOf(r, 1)
    got, exhausted, error = items(r.runner.nextItems(iteratorID, 10))
    assert exhausted
    assert isinstance(error, UnpicklableError)
    assert "lock" in str(error)


def test_iteratorsAreIndependent(r: Runner) -> None:
    r.add((1, count, (3,)), (2, count, (3,)))
    r.drain()
    [(_, _, first), (_, _, second)] = r.results()
    assert first != second
    assert loads(r.runner.nextItems(second, 2)["items"]) == [0, 1]
    assert loads(r.runner.nextItems(first, 5)["items"]) == [0, 1, 2]
    assert loads(r.runner.nextItems(second, 5)["items"]) == [2]


# -- NodeProtocol over AMP ----------------------------------------------------


class Parent(amp.AMP):
    """What a parent needs to hear a node's results."""

    def __init__(self) -> None:
        super().__init__()
        self.results: list[tuple[int, str, bytes]] = []

    @TaskResult.responder
    def taskResult(
        self, taskID: int, status: str, payload: bytes, seconds: float
    ) -> dict[str, Any]:
        self.results.append((taskID, status, payload))
        return {}

    @TaskResults.responder
    def taskResults(self, batch: bytes) -> dict[str, Any]:
        for taskID, status, payload, _ in loads(batch):
            self.results.append((taskID, status, payload))
        return {}


@pytest_twisted.ensureDeferred
async def test_nodeProtocolRunsTasksAnswersInfoAndStops() -> None:
    clock = Clock()
    stopped: Deferred[None] = Deferred()
    node = NodeProtocol(
        lambda send: LocalRunner(clock, send), onStop=lambda: stopped.callback(None)
    )
    parent = Parent()
    pump = iosim.connect(
        node, iosim.makeFakeServer(node), parent, iosim.makeFakeClient(parent)
    )
    big = os.urandom(200_000)
    batch = [(1, dumpCall(record, (4,), {})), (2, dumpCall(len, (big,), {}))]
    parent.callRemote(RunTasks, batch=dumps(batch))
    parent.callRemote(RunTasks, batch=dumps([(3, dumpCall(bytes, (big,), {}))]))
    pump.flush()
    while clock.getDelayedCalls():
        clock.advance(0)
        pump.flush()
    # Large bytes results travel raw ("b"), everything else pickled ("r").
    got = [(t, s, bytes(p) if s == "b" else loads(p)) for t, s, p in parent.results]
    assert got == [(1, "r", 40), (2, "r", 200_000), (3, "b", big)]

    info: list[Any] = []
    parent.callRemote(NodeInfo).addBoth(info.append)
    pump.flush()
    assert info[0]["pid"] == os.getpid()
    assert info[0]["rss"] > 0
    assert info[0]["done"] == 3

    answers: list[Any] = []
    parent.callRemote(Stop).addBoth(answers.append)
    pump.flush()
    assert answers == [{}]
    await stopped.addTimeout(10, reactor)


# -- functions pickled by value, loaded without cloudpickle -------------------


def _closures() -> list[Any]:
    """Functions cloudpickle pickles by value, of each shape the stand-ins rebuild."""
    import os.path

    base = 3

    def withEverything(x: int, y: int = 2, *, z: int = 4) -> str:
        "A docstring."
        return os.path.join("a", str(x + y + z + base))

    withEverything.attribute = "kept"  # type: ignore[attr-defined]

    def emptyCell() -> Any:
        return late  # noqa: F821 (assigned after, so its cell is empty)

    def recursive(n: int) -> int:
        return 1 if n <= 1 else n * recursive(n - 1)

    def callsAnother(n: int) -> int:
        return recursive(n) + base

    late = None
    del late
    return [
        withEverything,
        emptyCell,
        recursive,
        callsAnother,
        lambda *args, **kwargs: (args, kwargs),
    ]


def _described(f: Any) -> tuple[Any, ...]:
    """What a function is, bar its identity: what both ways of loading it must give."""
    try:
        outcome: Any = f(5)
    except BaseException as e:
        outcome = type(e)
    cells = []
    for cell in f.__closure__ or ():
        try:
            cells.append(("full", type(cell.cell_contents).__name__))
        except ValueError:
            cells.append(("empty",))
    globalNames = sorted(k for k in f.__globals__ if k != "__builtins__")
    return (
        f.__name__,
        f.__qualname__,
        f.__module__,
        f.__doc__,
        f.__defaults__,
        f.__kwdefaults__,
        f.__annotations__,
        dict(f.__dict__),
        cells,
        globalNames,
        f.__globals__["__builtins__"] is __import__("builtins").__dict__,
        outcome,
    )


@pytest.mark.parametrize("index", range(5))
def test_functionsPickledByValueLoadAsCloudpickleLoadsThem(index: int) -> None:
    """cloudpickle's reconstructors' stand-ins make the very same functions."""
    import io
    import pickle

    import cloudpickle

    from asynqueue.plain import ByValueUnpickler

    data = cloudpickle.dumps(_closures()[index], protocol=5)
    assert b"cloudpickle" in data
    ours = ByValueUnpickler(io.BytesIO(data)).load()
    theirs = pickle.loads(data)
    assert _described(ours) == _described(theirs)


def test_functionPickledByValueLoadsWithoutImportingCloudpickle() -> None:
    """A fresh interpreter runs a script's function without importing cloudpickle."""
    import subprocess
    import sys

    import cloudpickle

    data = cloudpickle.dumps(_closures()[0], protocol=5)
    code = (
        "import sys\n"
        "from asynqueue.plain import loadsByValue\n"
        "f = loadsByValue(sys.stdin.buffer.read())\n"
        "print(f(1), f.attribute, 'cloudpickle' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input=data, capture_output=True, check=True
    )
    assert out.stdout.decode().split() == ["a/10", "kept", "False"]


class _Local:
    """Stands for a class of the user's script (see the test below)."""

    def __init__(self, value: int) -> None:
        self.value = value


def test_whatHasNoStandInImportsCloudpickle() -> None:
    """A class pickled by value needs cloudpickle's own reconstructors: imported."""
    import io

    import cloudpickle

    from asynqueue.plain import ByValueUnpickler

    # Pickled by value, as a class of __main__ would be.
    cloudpickle.register_pickle_by_value(__import__(__name__))
    try:
        data = cloudpickle.dumps(lambda: _Local(7), protocol=5)
    finally:
        cloudpickle.unregister_pickle_by_value(__import__(__name__))
    assert b"_make_skeleton_class" in data
    made = ByValueUnpickler(io.BytesIO(data)).load()()
    assert made.value == 7
