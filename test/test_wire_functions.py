"""
Tests of asynqueue.wire.functions: a function pickled by value is pickled
once, sent to each child or node once, and named by key afterwards; a
redefinition, a different closure or a changed global is a new function; a
replaced child and a remade connection are sent it again.

Functions made with C{exec} in a namespace named C{__main__} stand for
those of a user's script (cloudpickle pickles them by value, as it does
closures and lambdas).
"""

from __future__ import annotations

import gc
import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from asynqueue import ProcessQueue, TaskQueue, WorkerCrashed
from asynqueue.errors import UnpicklableError
from asynqueue.node.certs import makeCluster
from asynqueue.node.service import NodeService
from asynqueue.wire.commands import DEFINE_FUNCTION, Pairs
from asynqueue.wire.functions import (
    KEPT_DEFINITIONS,
    MAGIC,
    Definition,
    FunctionCall,
    FunctionLedger,
    FunctionStore,
    callKey,
    cloudpickler,
    definitionFor,
    definitionOf,
    keyOf,
    loadCall,
    loadFunction,
    pinned,
    referenceCall,
)
from asynqueue.wire.pickling import dumpCall, dumps, loadsPlain
from asynqueue.workers.remote import RemoteWorker


def script(source: str, namespace: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run C{source} as if in a user's script; return its namespace."""
    if namespace is None:
        namespace = {"__name__": "__main__"}
    exec(source, namespace)
    return namespace


def within(d: Deferred[Any], seconds: float = 15) -> Deferred[Any]:
    return d.addTimeout(seconds, reactor)


def module(x: int) -> int:
    """A module's function: pickled by reference, never by key."""
    return x


# -- the parent: pickled once, while nothing it captured changed -------------


def test_moduleFunctionsAndOtherCallablesAreNotKept() -> None:
    assert definitionOf(module) is None
    assert definitionOf(len) is None
    assert callKey(dumpCall(module, (1,), {})) is None


def test_scriptFunctionIsPickledOnce() -> None:
    f = script("def f(x):\n    return x + 1")["f"]
    first = definitionOf(f)
    assert first is not None and first.key == keyOf(first.data)
    assert definitionOf(f) is first
    call = dumpCall(f, (41,), {})
    # Plain bytes, which the cyclic collector never walks, however many a
    # queue holds; the definition is found by the key.
    assert type(call) is bytes and not gc.is_tracked(call)
    assert definitionFor(call) is first
    assert callKey(call) == first.key
    # The call names the function: it is far shorter than the function.
    assert len(call) < len(first.data)
    g, args, kwargs = loadCall(call)
    assert g(*args, **kwargs) == 42


def test_redefinedNameIsANewFunction() -> None:
    namespace = script("def f(x):\n    return x + 1")
    old = definitionOf(namespace["f"])
    script("def f(x):\n    return x + 2", namespace)
    new = definitionOf(namespace["f"])
    assert old is not None and new is not None and old.key != new.key
    g, args, _ = loadCall(dumpCall(namespace["f"], (1,), {}))
    assert g(*args) == 3


def test_closuresDifferByWhatTheyHold() -> None:
    def adder(n: int) -> Callable[[int], int]:
        return lambda x: x + n

    one, two = definitionOf(adder(1)), definitionOf(adder(2))
    assert one is not None and two is not None and one.key != two.key
    results = []
    for f in (adder(1), adder(2)):
        g, args, _ = loadCall(dumpCall(f, (10,), {}))
        results.append(g(*args))
    assert results == [11, 12]


def test_aChangedClosureCellIsANewFunction() -> None:
    n = 1

    def f(x: int) -> int:
        return x + n

    first = definitionOf(f)
    n = 5  # noqa: F841 (the closure sees it)
    second = definitionOf(f)
    assert first is not None and second is not None and first.key != second.key


def test_changedGlobalDefaultsOrCodeMakeANewPickle() -> None:
    namespace = script("SCALE = 2\ndef f(x, k=1):\n    return x * SCALE * k")
    f = namespace["f"]
    keys = {definitionOf(f).key}  # type: ignore[union-attr]
    namespace["SCALE"] = 3
    keys.add(definitionOf(f).key)  # type: ignore[union-attr]
    f.__defaults__ = (10,)
    keys.add(definitionOf(f).key)  # type: ignore[union-attr]
    f.__code__ = script("def g(x, k=1):\n    return -x")["g"].__code__
    keys.add(definitionOf(f).key)  # type: ignore[union-attr]
    assert len(keys) == 4
    g, args, _ = loadCall(dumpCall(f, (1,), {}))
    assert g(*args) == -1


def test_changedKeywordDefaultsOrAttributesMakeANewPickle() -> None:
    namespace = script("def f(x, *, k=1):\n    return x * k")
    f = namespace["f"]
    keys = [definitionOf(f).key]  # type: ignore[union-attr]
    f.__kwdefaults__ = {"k": 2}
    keys.append(definitionOf(f).key)  # type: ignore[union-attr]
    f.tag = "first"
    tagged = definitionOf(f)
    # Unchanged, the very same pickle (not pickled again); each change, a new one.
    assert tagged is not None and definitionOf(f) is tagged
    keys.append(tagged.key)
    f.tag = "second"
    keys.append(definitionOf(f).key)  # type: ignore[union-attr]
    assert len(set(keys)) == 4
    g, args, kwargs = loadCall(dumpCall(f, (3,), {}))
    assert g(*args, **kwargs) == 6 and g.tag == "second"


def test_aHelperFunctionsGlobalIsSeenToo() -> None:
    namespace = script(
        "BASE = 1\ndef helper(x):\n    return x + BASE\ndef f(x):\n    return helper(x)"
    )
    first = definitionOf(namespace["f"])
    namespace["BASE"] = 100
    second = definitionOf(namespace["f"])
    assert first is not None and second is not None and first.key != second.key
    g, args, _ = loadCall(dumpCall(namespace["f"], (1,), {}))
    assert g(*args) == 101


def test_callsQueuedBeforeAChangeStillFindTheirFunction() -> None:
    namespace = script("SCALE = 2\ndef f(x):\n    return x * SCALE")
    f = namespace["f"]
    before = dumpCall(f, (1,), {})
    namespace["SCALE"] = 3
    after = dumpCall(f, (1,), {})
    gc.collect()
    results = []
    for call in (before, after):
        g, args, _ = loadCall(call)
        results.append(g(*args))
    assert results == [2, 3]


def test_aFunctionThatKeepsChangingIsPickledWithEachCall() -> None:
    namespace = script("N = 0\ndef f():\n    return N")
    f = namespace["f"]
    calls = []
    for n in range(KEPT_DEFINITIONS + 3):
        namespace["N"] = n
        calls.append(dumpCall(f, (), {}))
    keyed = [call for call in calls if callKey(call) is not None]
    assert len(keyed) == KEPT_DEFINITIONS
    assert callKey(calls[-1]) is None
    gc.collect()
    results = []
    for call in calls:
        g, args, _ = loadCall(call)
        results.append(g(*args))
    assert results == list(range(KEPT_DEFINITIONS + 3))


def test_keptPicklesNeverKeepTheirFunctionAlive() -> None:
    """A lambda or closure made per call (a recursive one too) is let go."""

    def recursive() -> Callable[[int], int]:
        def f(n: int) -> int:
            return f(n - 1) if n else 0

        return f

    made = [(lambda x, i=i: x + i) for i in range(3)] + [recursive()]
    refs = [weakref.ref(f) for f in made]
    keys = [callKey(dumpCall(f, (1,), {})) for f in made]
    assert None not in keys
    del made
    gc.collect()
    assert [ref() for ref in refs] == [None] * len(refs)
    assert [definitionFor(MAGIC + key) for key in keys] == [None] * len(keys)  # type: ignore[operator]


def test_aPinnedCallOutlivesItsFunction() -> None:
    f = script("def f(x):\n    return -x")["f"]
    kept = pinned(dumpCall(f, (4,), {}))
    assert isinstance(kept, FunctionCall) and callKey(kept) is not None
    assert pinned(dumpCall(module, (1,), {})) == dumpCall(module, (1,), {})
    h = script("def h(x):\n    return x")["h"]
    unpinned = dumpCall(h, (4,), {})
    del f, h
    gc.collect()
    assert definitionFor(unpinned) is None
    with pytest.raises(UnpicklableError, match="never sent"):
        loadCall(unpinned)
    g, args, _ = loadCall(kept)
    assert g(*args) == -4


def test_functionCapturingMutableDataIsPickledWithEachCall() -> None:
    namespace = script("DATA = [1]\ndef f():\n    return sum(DATA)")
    f = namespace["f"]
    assert definitionOf(f) is None
    namespace["DATA"].append(5)
    call = dumpCall(f, (), {})
    assert callKey(call) is None
    g, args, _ = loadCall(call)
    assert g(*args) == 6
    assert definitionOf(script("def h(x=[]):\n    return x")["h"]) is None


def test_argumentsStillPickleByValue() -> None:
    namespace = script("class Point:\n    pass\ndef f(p):\n    return type(p).__name__")
    f, point = namespace["f"], namespace["Point"]()
    g, args, _ = loadCall(dumpCall(f, (point,), {}))
    assert g(*args) == "Point"


def test_unpicklableArgumentIsNamed() -> None:
    import threading

    f = script("def f(x):\n    return x")["f"]
    with pytest.raises(UnpicklableError, match="argument 0"):
        dumpCall(f, (threading.Lock(),), {})


# -- a peer's ledger and store -------------------------------------------------


def definitionBoxes(sent: list[Pairs]) -> list[dict[bytes, Any]]:
    return [dict(p) for p in sent if dict(p).get(b"_command") == DEFINE_FUNCTION]


def test_ledgerSendsEachFunctionOnce() -> None:
    f = script("def f(x):\n    return x")["f"]
    ledger, sent = FunctionLedger(), []
    for i in range(3):
        call = dumpCall(f, (i,), {})
        batch = ledger.prepare([(i, call)], sent.append)
        # The batch pickles as plain data: the call as its bytes alone.
        assert loadsPlain(dumps(batch)) == [(i, bytes(call))]
    [box] = definitionBoxes(sent)
    assert box[b"key"] == definitionOf(f).key  # type: ignore[union-attr]
    # A new child or connection has a new ledger: sent again.
    FunctionLedger().prepare([(9, dumpCall(f, (9,), {}))], sent.append)
    assert len(definitionBoxes(sent)) == 2


def test_ledgerTellsThePeerWhatToForget() -> None:
    functions = [script(f"def f(x):\n    return x + {i}")["f"] for i in range(4)]
    ledger, sent = FunctionLedger(capacity=2), []
    store = FunctionStore()
    for i, f in enumerate(functions):
        batch = ledger.prepare([(i, dumpCall(f, (i,), {}))], sent.append)
        box = definitionBoxes(sent)[-1]
        forget = box[b"forget"]
        store.define(
            box[b"key"],
            box[b"function"],
            [forget[j : j + 16] for j in range(0, len(forget), 16)],
        )
        [(_, linked)] = store.link(loadsPlain(dumps(batch)))
        g, args, _ = loadCall(linked)
        assert g(*args) == 2 * i
    assert len(ledger.held) == len(store.definitions) == 2


def test_ledgerNeverForgetsWhatItsBatchNames() -> None:
    functions = [script(f"def f(x):\n    return x + {i}")["f"] for i in range(3)]
    ledger, sent = FunctionLedger(capacity=1), []
    batch = [(i, dumpCall(f, (i,), {})) for i, f in enumerate(functions)]
    ledger.prepare(batch, sent.append)
    assert all(box[b"forget"] == b"" for box in definitionBoxes(sent))


def test_storeLinksCallsAndOutlivesForgetting() -> None:
    f = script("def f(x):\n    return x * 3")["f"]
    # Pickled here as a sender elsewhere did: not a definition of this process.
    data = cloudpickler().dumps(f, 5)
    definition = Definition(keyOf(data), data)
    plain = referenceCall(definition, dumps(((2,), {})))
    store = FunctionStore()
    with pytest.raises(UnpicklableError, match="never sent here"):
        loadCall(store.link([(1, plain)])[0][1])
    store.define(definition.key, definition.data, [])
    [(_, linked)] = store.link([(1, plain)])
    store.define(keyOf(b"other"), b"other", [definition.key])
    assert definition.key not in store.definitions
    g, args, _ = loadCall(linked)
    assert g(*args) == 6


def test_storeRefusesAKeyThatIsNotTheDigest() -> None:
    with pytest.raises(ValueError, match="digest"):
        FunctionStore().define(keyOf(b"one"), b"two", [])


def test_storeIsBoundedWhateverItsSenderSays() -> None:
    store = FunctionStore(capacity=3)
    for i in range(10):
        data = b"%d" % i
        store.define(keyOf(data), data, [])
    assert len(store.definitions) == 3


def test_loadedFunctionsAreUnpickledOnce() -> None:
    f = script("def f(x):\n    return x")["f"]
    definition = definitionOf(f)
    assert definition is not None
    assert loadFunction(definition) is loadFunction(definition)


# -- children and nodes ------------------------------------------------------


@pytest.fixture
def processQueue() -> Iterator[ProcessQueue]:
    q = ProcessQueue(1, shutdownWithReactor=False)
    yield q
    pytest_twisted.blockon(within(q.shutdown(timeout=3, cancelPending=True)))


def childLedger(q: ProcessQueue) -> FunctionLedger:
    [worker] = q.workers()
    ledger: FunctionLedger = worker._child.amp.functions  # type: ignore[attr-defined]
    return ledger


@pytest_twisted.ensureDeferred
async def test_childRunsRedefinitionsClosuresAndChangedGlobals(
    processQueue: ProcessQueue,
) -> None:
    q = processQueue
    namespace = script("SCALE = 2\ndef f(x):\n    return x * SCALE")
    f = namespace["f"]
    assert await within(gatherResults([q.call(f, i) for i in range(20)])) == [
        2 * i for i in range(20)
    ]
    assert len(childLedger(q).held) == 1
    namespace["SCALE"] = 3
    assert await within(q.call(f, 1)) == 3
    script("def f(x):\n    return -x", namespace)
    assert await within(q.call(namespace["f"], 1)) == -1

    def adder(n: int) -> Callable[[int], int]:
        return lambda x: x + n

    assert await within(gatherResults([q.call(adder(n), 10) for n in range(3)])) == [
        10,
        11,
        12,
    ]
    data = script("DATA = [1]\ndef total():\n    return sum(DATA)")
    assert await within(q.call(data["total"])) == 1
    data["DATA"].append(41)
    assert await within(q.call(data["total"])) == 42


@pytest_twisted.ensureDeferred
async def test_replacedChildIsSentTheFunctionAgain(processQueue: ProcessQueue) -> None:
    q = processQueue
    f = script("import os\ndef f(x):\n    return x, os.getpid()")["f"]
    _, first = await within(q.call(f, 1))
    with pytest.raises(WorkerCrashed):
        await within(q.call(os._exit, 3))
    value, second = await within(q.call(f, 2))
    assert value == 2 and second != first
    assert len(childLedger(q).held) == 1


@pytest_twisted.ensureDeferred
async def test_childRetiredAfterItsTasksIsSentTheFunctionAgain() -> None:
    q = ProcessQueue(1, maxTasksPerWorker=2, shutdownWithReactor=False)
    try:
        f = script("import os\ndef f(x):\n    return os.getpid()")["f"]
        pids = [await within(q.call(f, i)) for i in range(6)]
        assert len(set(pids)) == 3
    finally:
        await within(q.shutdown(timeout=3, cancelPending=True))


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return makeCluster(tmp_path_factory.mktemp("certs"), ["localhost"], ["app"])


@pytest_twisted.async_yield_fixture()
async def remote(certs: Path) -> AsyncIterator[tuple[TaskQueue, RemoteWorker]]:
    service = NodeService(
        f"ssl:port=0:privateKey={certs}/localhost.key:certKey={certs}/localhost.crt",
        ca=str(certs / "ca.crt"),
        processes=1,
    )
    await service.startService()
    port = service.port.getHost().port  # type: ignore[union-attr]
    worker = RemoteWorker(
        f"tls:localhost:{port}",
        certificate=str(certs / "app.pem"),
        ca=str(certs / "ca.crt"),
    )
    await within(worker.whenConnected())
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        yield q, worker
    finally:
        await within(q.shutdown(timeout=3, cancelPending=True))
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_remoteNodeRunsScriptFunctionsAcrossChildAndConnectionLoss(
    remote: tuple[TaskQueue, RemoteWorker],
) -> None:
    q, worker = remote
    namespace = script(
        "import os\nSCALE = 2\ndef f(x):\n    return x * SCALE, os.getpid()"
    )
    f = namespace["f"]
    results = await within(gatherResults([q.call(f, i) for i in range(10)]))
    assert [r[0] for r in results] == [2 * i for i in range(10)]
    first = results[0][1]
    connection = worker._connection
    assert connection is not None and len(connection.functions.held) == 1
    # The node's child dies: the node sends the function to the next one.
    with pytest.raises(WorkerCrashed):
        await within(q.call(os._exit, 3))
    value, second = await within(q.call(f, 5))
    assert value == 10 and second != first
    # The connection is lost and made again: the node is sent it again.
    lost: Deferred[None] = Deferred()
    disconnected = worker.disconnected

    def noted(link: Any, why: str = "") -> None:
        disconnected(link, why)
        if not lost.called:
            lost.callback(None)

    worker.disconnected = noted  # type: ignore[method-assign]
    connection.transport.loseConnection()  # type: ignore[union-attr]
    await within(lost)
    await within(worker.whenConnected())
    assert worker._connection is not connection
    namespace["SCALE"] = 7
    value, _ = await within(q.call(f, 1))
    assert value == 7
    script("def f(x):\n    return -x, 0", namespace)
    assert await within(q.call(namespace["f"], 3)) == (-3, 0)


def test_ledgerAndStoreBoundTheBytesHeld() -> None:
    functions = [
        script(f"def f(x):\n    return x + {i} + len({'y' * 3000!r})")["f"]
        for i in range(5)
    ]
    size = len(definitionOf(functions[0]).data)  # type: ignore[union-attr]
    ledger, sent = FunctionLedger(maxBytes=2 * size + size // 2), []
    store = FunctionStore(maxBytes=3 * size + size // 2)
    for i, f in enumerate(functions):
        ledger.prepare([(i, dumpCall(f, (i,), {}))], sent.append)
        box = definitionBoxes(sent)[-1]
        forget = box[b"forget"]
        store.define(
            box[b"key"],
            box[b"function"],
            [forget[j : j + 16] for j in range(0, len(forget), 16)],
        )
    assert len(ledger.held) == 2 and ledger.heldBytes <= 2 * size + size // 2
    assert set(store.definitions) == set(ledger.held)
    # Whatever a sender says, the store keeps within its own bound.
    for i in range(5):
        data = b"%d" % i * size
        store.define(keyOf(data), data, [])
    assert store.size <= 3 * size + size // 2 and len(store.definitions) == 3


def test_recursiveScriptFunctionsArePickledOnce() -> None:
    namespace = script(
        "def even(n):\n    return True if n == 0 else odd(n - 1)\n"
        "def odd(n):\n    return False if n == 0 else even(n - 1)"
    )
    first = definitionOf(namespace["even"])
    assert first is not None and definitionOf(namespace["even"]) is first
    g, args, _ = loadCall(dumpCall(namespace["even"], (10,), {}))
    assert g(*args) is True
    script("def odd(n):\n    return 'changed'", namespace)
    second = definitionOf(namespace["even"])
    assert second is not None and second.key != first.key
