"""Tests of remote worker nodes: mutual TLS, the node, RemoteWorker, fail-over."""

from __future__ import annotations

import gc
import os
import pickle
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from processes import within
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, fail, gatherResults, succeed
from twisted.internet.error import (
    ConnectionAborted,
    ConnectionDone,
    ConnectionRefusedError,
)
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import formatEvent, globalLogPublisher
from twisted.protocols import amp
from twisted.python.failure import Failure

from asynqueue import TaskQueue
from asynqueue.errors import NodeLost, UnpicklableError
from asynqueue.node.certs import makeCluster
from asynqueue.node.service import NodeService, WireServer, nodeEndpoint
from asynqueue.wire.commands import NodeInfo, RunTasks, TaskResult
from asynqueue.wire.universe import WireWorkerUniverse
from asynqueue.workers.connection import clientEndpoint
from asynqueue.workers.remote import RemoteWorker, WireWorker
from helpers import failureOf, result


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = makeCluster(tmp_path_factory.mktemp("certs"), ["localhost"], ["app"])
    makeCluster(where / "other", ["localhost"], ["stranger"])
    return where


def tlsListen(certs: Path) -> str:
    return f"ssl:port=0:privateKey={certs}/localhost.key:certKey={certs}/localhost.crt"


@pytest.fixture
def node(certs: Path) -> Iterator[NodeService]:
    service = NodeService(tlsListen(certs), ca=str(certs / "ca.crt"), processes=1)
    pytest_twisted.blockon(service.startService())
    yield service
    pytest_twisted.blockon(service.stopService())


def workerFor(service: NodeService, certs: Path, client: str = "app") -> RemoteWorker:
    port = service.port.getHost().port
    where = certs if client == "app" else certs / "other"
    return RemoteWorker(
        f"tls:localhost:{port}",
        certificate=str(where / f"{client}.pem"),
        ca=str(certs / "ca.crt"),
    )


@pytest.fixture
async def queue(node: NodeService, certs: Path) -> AsyncIterator[TaskQueue]:
    worker = workerFor(node, certs)
    await worker.whenConnected()
    q = TaskQueue(worker, shutdownWithReactor=False)
    yield q
    await q.shutdown()


def square(x: int) -> int:
    return x * x


@pytest_twisted.ensureDeferred
async def test_callsRunOnTheNode(node: NodeService, certs: Path) -> None:
    worker = workerFor(node, certs)
    await worker.whenConnected()
    assert worker.capacity == node.pool.capacity  # type: ignore[union-attr]
    assert worker.processes == 1
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        assert await q.call(square, 9) == 81
        assert await q.call(lambda: os.getpid()) != os.getpid()
        offset = 5
        assert await q.call(lambda x: x + offset, 1) == 6
        with pytest.raises(KeyError) as info:
            await q.call(lambda: {}["missing"])
        assert "Traceback from node" in "".join(info.value.__notes__)
        big = b"\xfe" * 3_000_000
        assert await q.call(lambda b: b[::-1], big) == big
        results = await gatherResults([q.call(square, i) for i in range(300)])
        assert results == [i * i for i in range(300)]
        deferator = await q.call(lambda: (os.getpid() for _ in range(3)))
        pids = await deferator.toList()
        assert len(set(pids)) == 1 and pids[0] != os.getpid()
    finally:
        await q.shutdown()


@pytest_twisted.ensureDeferred
async def test_unknownClientsAreRefusedBeforeAnyByteIsRead(
    node: NodeService, certs: Path, tmp_path: Path
) -> None:
    """A client of another CA, or with no certificate, never reaches the AMP layer."""
    from twisted.internet import endpoints, ssl

    stranger = workerFor(node, certs, client="stranger")
    marker = tmp_path / "unpickled"
    # A pickle that would create the marker if anyone unpickled it.
    payload = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    port = node.port.getHost().port
    noCert = ssl.optionsForClientTLS(
        "localhost", trustRoot=ssl.Certificate.loadPEM((certs / "ca.crt").read_bytes())
    )
    endpoint = endpoints.wrapClientTLS(
        noCert, endpoints.HostnameEndpoint(reactor, "localhost", port)
    )
    lost: Deferred[None] = Deferred()

    class Sender(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(payload)  # type: ignore[union-attr]

        def connectionLost(self, reason: Any = None) -> None:
            lost.callback(None)

    await endpoint.connect(_factory(Sender))
    await lost
    plain = await endpoints.HostnameEndpoint(reactor, "localhost", port).connect(
        _factory(Sender)
    )
    assert plain is not None
    assert not marker.exists()
    assert stranger.capacity == 0 and stranger._connection is None
    await stranger.stop()
    assert node.pool is not None
    assert sum(w.outstanding for w in node.pool.workers) == 0


def _factory(protocol: type[Protocol]) -> Any:
    from twisted.internet.protocol import Factory

    return Factory.forProtocol(protocol)


def test_nodeRefusesPlaintextUnlessToldAndOnlyOnLoopback(certs: Path) -> None:
    with pytest.raises(ValueError, match="refusing"):
        nodeEndpoint(reactor, "tcp:port=0")
    with pytest.raises(ValueError, match="loopback"):
        nodeEndpoint(reactor, "tcp:port=0:interface=0.0.0.0", insecurePlaintext=True)
    with pytest.raises(ValueError, match="CA"):
        nodeEndpoint(reactor, tlsListen(certs))
    assert nodeEndpoint(reactor, "tcp:port=0", insecurePlaintext=True) is not None
    endpoint = nodeEndpoint(reactor, tlsListen(certs), ca=str(certs / "ca.crt"))
    assert endpoint._interface == "127.0.0.1"  # loopback unless told otherwise


def test_clientRefusesPlaintextToOtherHosts() -> None:
    with pytest.raises(ValueError, match="loopback"):
        clientEndpoint(reactor, "tcp:example.org:8789", insecurePlaintext=True)
    with pytest.raises(ValueError, match="certificate"):
        clientEndpoint(reactor, "tls:localhost:8789")


@pytest.fixture
def plaintextNode() -> Iterator[NodeService]:
    service = NodeService(
        "tcp:port=0:interface=127.0.0.1", processes=1, insecurePlaintext=True
    )
    pytest_twisted.blockon(service.startService())
    yield service
    pytest_twisted.blockon(service.stopService())


def garbageSamples() -> list[bytes]:
    """Frames from hypothesis: random bytes, and AMP-ish boxes gone wrong."""
    samples: list[bytes] = []
    key = st.binary(min_size=1, max_size=20)
    box = st.lists(st.tuples(key, st.binary(max_size=50)), max_size=4).map(
        lambda pairs: (
            b"".join(
                len(k).to_bytes(2, "big") + k + len(v).to_bytes(2, "big") + v
                for k, v in pairs
            )
            + b"\x00\x00"
        )
    )

    @settings(max_examples=30, deadline=None, database=None)
    @given(st.one_of(st.binary(min_size=1, max_size=600), box))
    def collect(garbage: bytes) -> None:
        samples.append(garbage)

    collect()
    return samples


@pytest_twisted.ensureDeferred
async def test_garbageClosesOnlyThatConnection(plaintextNode: NodeService) -> None:
    """Fuzzed frames cost their sender the connection; the node serves on."""
    for garbage in garbageSamples():
        await _sendGarbage(plaintextNode, garbage)


async def _sendGarbage(service: NodeService, garbage: bytes) -> None:
    from twisted.internet import endpoints

    port = service.port.getHost().port
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    lost: Deferred[None] = Deferred()

    class Garbage(Protocol):
        def connectionMade(self) -> None:
            self.transport.write(garbage)  # type: ignore[union-attr]
            self.transport.loseWriteConnection()  # type: ignore[union-attr]

        def connectionLost(self, reason: Any = None) -> None:
            lost.callback(None)

    await endpoint.connect(_factory(Garbage))
    await lost
    good = await endpoint.connect(_factory(amp.AMP))
    info = await good.callRemote(NodeInfo)
    assert info["capacity"] == service.pool.capacity  # type: ignore[union-attr]
    good.transport.loseConnection()


@pytest_twisted.ensureDeferred
async def test_oversizedBoxIsCutOff(plaintextNode: NodeService) -> None:
    from asynqueue.node.protocol import NodeProtocol

    old = NodeProtocol.maxBoxBytes
    NodeProtocol.maxBoxBytes = 200_000
    try:
        from twisted.internet import endpoints

        port = plaintextNode.port.getHost().port
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = await endpoint.connect(_factory(amp.AMP))
        from twisted.internet.error import ConnectionDone, ConnectionLost

        from asynqueue.wire.commands import RunTasks

        client.callRemote(RunTasks, batch=b"x" * 1_000_000)
        with pytest.raises((ConnectionDone, ConnectionLost)):
            await client.callRemote(NodeInfo)
        other = await endpoint.connect(_factory(amp.AMP))
        assert (await other.callRemote(NodeInfo))["capacity"] > 0
        other.transport.loseConnection()
    finally:
        NodeProtocol.maxBoxBytes = old


# ----------------------------------------------------------------------
# Nodes as real processes: fail-over when one is killed


class _NodeProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def errReceived(self, data: bytes) -> None:
        self.output += data
        if not self.listening.called and b"listening on" in self.output:
            port = self.output.split(b"port=")[1].split(b")")[0]
            self.listening.callback(int(port))

    def processEnded(self, reason: Any) -> None:
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.output.decode()))
        self.ended.callback(None)


def startNodeProcess(certs: Path) -> tuple[_NodeProcess, Any]:
    protocol = _NodeProcess()
    args = [
        sys.executable,
        "-m",
        "asynqueue.node",
        "--listen",
        tlsListen(certs),
        "--ca",
        str(certs / "ca.crt"),
        "--processes",
        "1",
    ]
    # The node's children must import this module, as a real node would.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    transport = reactor.spawnProcess(protocol, sys.executable, args, env=env)
    return protocol, transport


def slowSquare(x: int) -> int:
    import time

    time.sleep(0.01)  # the workload
    return x * x


def waitForGate(gate: str) -> None:
    """Return once the file C{gate} exists: a barrier the test opens."""
    import time

    while not os.path.exists(gate):
        time.sleep(0.001)


def gatedSquare(x: int, gate: str) -> int:
    """Square C{x} once the test opens C{gate}."""
    waitForGate(gate)
    return x * x


@pytest.mark.parametrize("retries", [0, 1])
@pytest_twisted.ensureDeferred
async def test_killedNodesTasksRunElsewhereOnlyAsRetriesAllow(
    certs: Path, tmp_path: Path, retries: int
) -> None:
    """
    A call lost with its node may have run there: it runs again elsewhere
    only if its retries allow; with none, it fails with NodeLost.
    """
    nodes = [startNodeProcess(certs) for _ in range(2)]
    ports = [await p.listening for p, _ in nodes]
    workers = [
        RemoteWorker(
            f"tls:localhost:{port}",
            certificate=str(certs / "app.pem"),
            ca=str(certs / "ca.crt"),
            name=f"node{i}",
        )
        for i, port in enumerate(ports)
    ]
    for w in workers:
        await w.whenConnected()
    q = TaskQueue(*workers, shutdownWithReactor=False)
    try:
        gate = tmp_path / "gate"
        # More calls started than one node takes: both have some in flight,
        # and none can end before the node dies (the gate is shut).
        started = whenStarted(q, max(w.capacity for w in workers) + 1)
        ds = [q.call(gatedSquare, i, str(gate), retries=retries) for i in range(120)]
        await started
        nodes[0][1].signalProcess(signal.SIGKILL)
        gate.touch()
        outcomes = await DeferredList(ds, consumeErrors=True)
        if retries:
            assert [ok for ok, _ in outcomes] == [True] * 120
            assert [value for _, value in outcomes] == [i * i for i in range(120)]
            rerun = [r for r in q.records() if r.attempts > 1]
            assert rerun, "no task was in flight on the killed node"
            assert all(r.worker == "node1" for r in rerun)
        else:
            lost = [v for ok, v in outcomes if not ok]
            assert lost, "no task was in flight on the killed node"
            assert all(f.check(NodeLost) for f in lost)
            assert all(v == i * i for i, (ok, v) in enumerate(outcomes) if ok), (
                "a call that succeeded gave a wrong result"
            )
            # At most once: no call ran a second time.
            assert all(r.attempts == 1 for r in q.records())
        assert workers[0].capacity == 0
    finally:
        await q.shutdown()
        nodes[1][1].signalProcess(signal.SIGTERM)
        await DeferredList([p.ended for p, _ in nodes])
    for p, _ in nodes:
        assert p.ended.called


def whenStarted(q: TaskQueue, count: int = 1) -> Deferred[None]:
    """A Deferred that fires once C{count} tasks of C{q} have started."""
    d: Deferred[None] = Deferred()
    seen: list[object] = []

    def observe(event: str, record: object) -> None:
        if event == "started" and not d.called:
            seen.append(record)
            if len(seen) >= count:
                d.callback(None)

    q.observe(observe)
    return d


@pytest.mark.parametrize("retries", [0, 1])
@pytest_twisted.ensureDeferred
async def test_sentCallLostWithTheConnectionRunsAgainOnlyAsRetriesAllow(
    node: NodeService, certs: Path, retries: int
) -> None:
    worker = workerFor(node, certs)
    await worker.whenConnected()
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        started = whenStarted(q)
        d = q.call(slowSquare, 3, retries=retries)
        await started
        # Written to the connection: the node may have it, and run it.
        worker._connection.transport.abortConnection()  # type: ignore[union-attr]
        if retries:
            assert await d == 9
            assert q.records()[0].attempts == 2
        else:
            with pytest.raises(NodeLost, match="was lost"):
                await d
            assert q.records()[0].attempts == 1
    finally:
        await q.shutdown()


@pytest_twisted.ensureDeferred
async def test_callNeverSentIsHandedBackUncounted(
    node: NodeService, certs: Path
) -> None:
    """A call still waiting to be written when the connection drops cannot
    have run: it runs later (here, once reconnected) even with retries=0."""
    worker = workerFor(node, certs)
    await worker.whenConnected()
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        d = q.call(slowSquare, 3, retries=0)
        assert worker._connection is not None and worker._connection.outgoing
        worker._connection.transport.abortConnection()  # type: ignore[union-attr]
        assert await d == 9
        assert q.records()[0].attempts == 1
    finally:
        await q.shutdown()


# ----------------------------------------------------------------------
# AsynQueue's WireWorker / WireWorkerUniverse / WireServer


class Words(WireWorkerUniverse):
    """A universe: the only things its node will run."""

    def count(self, text: str) -> int:
        return len(text.split())

    def pid(self) -> int:
        return os.getpid()

    def _hidden(self) -> str:
        return "never"


@pytest_twisted.ensureDeferred
async def test_universeNodeRunsOnlyItsMethods(certs: Path, tmp_path: Path) -> None:
    server = WireServer(
        "test_workers_remote.Words",
        listen=tlsListen(certs),
        ca=str(certs / "ca.crt"),
        processes=1,
    )
    await server.startService()
    port = server.port.getHost().port
    options = {"certificate": str(certs / "app.pem"), "ca": str(certs / "ca.crt")}
    wire = WireWorker(Words(), f"tls:localhost:{port}", series=["words"], **options)
    shipper = RemoteWorker(f"tls:localhost:{port}", **options)
    await wire.whenConnected()
    await shipper.whenConnected()
    q = TaskQueue(wire, shutdownWithReactor=False)
    codeQueue = TaskQueue(shipper, shutdownWithReactor=False)
    marker = tmp_path / "ran"
    try:
        assert await q.call("count", "to be or not", series="words") == 4
        assert await q.call("pid", series="words") != os.getpid()
        with pytest.raises(AttributeError):
            await q.call("_hidden", series="words")
        with pytest.raises(UnpicklableError):
            await q.call("count", Path("not plain"), series="words")
        # Shipped code is refused by a universe node, and never runs.
        with pytest.raises(UnpicklableError):
            await codeQueue.call(marker.touch)
        assert not marker.exists()
    finally:
        await q.shutdown()
        await codeQueue.shutdown()
        await server.stopService()


@pytest_twisted.ensureDeferred
async def test_asynQueuesWireServerForm(tmp_path: Path) -> None:
    # 0.9.9's WireServer(description, universe).start()/stop() on a unix
    # socket, with a universe instance, as its docs show.
    assert WireWorkerUniverse.check(Words())
    with pytest.raises(TypeError):
        WireWorkerUniverse.check(object())
    path = tmp_path / "words.sock"
    server = WireServer(f"unix:{path}", Words(), processes=1)
    await server.start()
    wire = WireWorker(Words(), f"unix:{path}", series=["words"], insecurePlaintext=True)
    await wire.whenConnected()
    q = TaskQueue(wire, shutdownWithReactor=False)
    try:
        assert await q.call("count", "one two three", series="words") == 3
        # As in 0.9.9, a method's name needs no series: WireWorkers run
        # the "wire" series of their class.
        assert await q.call("count", "four words in all") == 4
    finally:
        await q.shutdown()
        await server.stop()


def sleepy(seconds: float, said: str | None = None) -> str:
    """Sleep; first, if given a unix socket's path, say there that it began."""
    import socket
    import time

    if said is not None:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(said)
            s.sendall(b"began")
    time.sleep(seconds)  # the workload: a task that would run far too long
    return "woke"


def whenSaid(path: Path) -> tuple[Deferred[None], Any]:
    """
    Listen on a unix socket at C{path}: a Deferred that fires once a call
    connects there (see L{sleepy}), and the listening endpoint's Deferred.
    """
    from twisted.internet import endpoints

    said: Deferred[None] = Deferred()

    class Listener(Protocol):
        def connectionMade(self) -> None:
            if not said.called:
                said.callback(None)

    listening = endpoints.UNIXServerEndpoint(reactor, str(path)).listen(
        _factory(Listener)
    )
    return said, listening


@pytest_twisted.ensureDeferred
async def test_remoteTimeoutEndsTheNodesChild(
    node: NodeService, certs: Path, tmp_path: Path
) -> None:
    from asynqueue import TimeoutError

    worker = workerFor(node, certs)
    await worker.whenConnected()
    clock = Clock()
    q = TaskQueue(worker, clock=clock, shutdownWithReactor=False)
    said, listening = whenSaid(tmp_path / "began.sock")
    port = await listening
    try:
        before = await q.call(os.getpid)
        d = q.call(sleepy, 60, str(tmp_path / "began.sock"), timeout=5)
        # Running in the node's child, not only sent: a call the child has
        # not begun is withdrawn, and the child is left alone.
        await said
        clock.advance(5)
        with pytest.raises(TimeoutError):
            await d
        # The node killed the child stuck in the call; a new one serves on.
        after = await q.call(os.getpid)
        assert after != before
        assert node.pool is not None and node.pool.workers[0].replaced == 1
    finally:
        await q.shutdown()
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_nodeShutdownLeavesNoProcess(certs: Path) -> None:
    service = NodeService(tlsListen(certs), ca=str(certs / "ca.crt"), processes=2)
    await service.startService()
    assert service.pool is not None
    pids = [await w.whenStarted() for w in service.pool.workers]
    await service.stopService()
    for pid in pids:
        with pytest.raises((ChildProcessError, ProcessLookupError)):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, 0)
            raise ProcessLookupError


@pytest_twisted.ensureDeferred
async def test_largeValuesTravelOverAPlaintextConnection(
    plaintextNode: NodeService,
) -> None:
    # Values over 64 KiB go in chunks; over plain TCP (whose transport takes
    # bytes only) they are joined first, both ways (before: the node's
    # writer raised and the call waited for ever).
    port = plaintextNode.port.getHost().port
    q = TaskQueue(
        RemoteWorker(f"tcp:127.0.0.1:{port}", insecurePlaintext=True),
        shutdownWithReactor=False,
    )
    table = list(range(200)) * 3000

    def lookup(i: int) -> int:
        return table[i]

    try:
        assert await within(q.call(bytes, 300_000)) == bytes(300_000)
        assert await within(q.call(len, b"x" * 300_000)) == 300_000
        assert await within(gatherResults([q.call(lookup, i) for i in range(5)])) == [
            0,
            1,
            2,
            3,
            4,
        ]
    finally:
        await q.shutdown()


@pytest_twisted.ensureDeferred
async def test_batchesAreReadAsPlainDataOnly(
    plaintextNode: NodeService, tmp_path: Path
) -> None:
    """A batch smuggling code is refused before anything in it runs."""
    from twisted.internet import endpoints
    from twisted.internet.error import ConnectionDone, ConnectionLost

    from asynqueue.wire.commands import RunTasks

    marker = tmp_path / "smuggled"
    evil = b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR."
    port = plaintextNode.port.getHost().port
    endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
    client = await endpoint.connect(_factory(amp.AMP))
    client.callRemote(RunTasks, batch=evil)
    with pytest.raises((ConnectionDone, ConnectionLost)):
        await client.callRemote(NodeInfo)
    assert not marker.exists()


@pytest_twisted.ensureDeferred
async def test_updateRunsOnEveryNode(certs: Path) -> None:
    services = [
        NodeService(tlsListen(certs), ca=str(certs / "ca.crt"), processes=1)
        for _ in range(2)
    ]
    for service in services:
        await service.startService()
    workers = [workerFor(service, certs) for service in services]
    for worker in workers:
        await worker.whenConnected()
    q = TaskQueue(*workers, shutdownWithReactor=False)
    try:
        pids = await q.update(os.getpid)
        assert len(pids) == 2 and len(set(pids)) == 2 and os.getpid() not in pids
    finally:
        await q.shutdown()
        for service in services:
            await service.stopService()


@pytest_twisted.ensureDeferred
async def test_clientDropsANodeThatSendsGarbage() -> None:
    """A node whose answers are malformed loses the client's connection."""
    from twisted.internet import endpoints

    from asynqueue.interfaces import IReportingWorker

    lost: Deferred[None] = Deferred()

    class BadNode(amp.AMP):
        @NodeInfo.responder
        def nodeInfo(self) -> dict[str, Any]:
            # Answer, then send a box with a key of 300 bytes: not AMP.
            reactor.callLater(0, self.transport.write, b"\x01\x2c" + b"k" * 300)
            return {"pid": 1, "rss": 0, "capacity": 1, "done": 0, "processes": 1}

        def connectionLost(self, reason: Any = None) -> None:
            super().connectionLost(reason)
            if not lost.called:
                lost.callback(None)

    server = endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
    port = await server.listen(_factory(BadNode))
    worker = RemoteWorker(
        f"tcp:127.0.0.1:{port.getHost().port}", insecurePlaintext=True
    )
    try:
        assert IReportingWorker.providedBy(worker)
        await worker.whenConnected()
        await lost
        assert worker.info()["connected"] is False
    finally:
        await worker.stop()
        await port.stopListening()


# ----------------------------------------------------------------------
# Reconnecting and the heartbeat, on a Clock, with nodes in memory


class FakeNode(amp.AMP):
    """A node in memory: answers NodeInfo (unless told not to), keeps task IDs."""

    def __init__(self, answering: bool = True) -> None:
        super().__init__()
        self.answering = answering
        self.infos = 0
        self.taskIDs: list[int] = []

    @NodeInfo.responder
    def nodeInfo(self) -> Any:
        self.infos += 1
        if not self.answering:
            return Deferred()
        return {"pid": 1, "rss": 0, "capacity": 4, "done": 0, "processes": 1}

    @RunTasks.responder
    def runTasks(self, batch: bytes) -> dict[str, Any]:
        self.taskIDs += [taskID for taskID, _ in pickle.loads(batch)]
        return {}

    def result(self, taskID: int, value: bytes) -> None:
        self.callRemote(
            TaskResult, taskID=taskID, status="b", payload=value, seconds=0.0
        )


class ClientEnd(StringTransport):
    """
    The worker's end of an in-memory connection: its closing is reported.
    With C{frozen}, the node never answers: a gentle close never ends, only
    an abort does.
    """

    def __init__(self, clock: Clock, protocol: Any) -> None:
        super().__init__()
        self.clock = clock
        self.protocol = protocol
        self.frozen = False
        self._reported = False

    def loseConnection(self) -> None:
        # abortConnection sets disconnected, then calls this.
        if self.frozen and not self.disconnected:
            self.disconnecting = True
            return
        if not self._reported:
            self._reported = True
            reason = ConnectionAborted() if self.disconnected else ConnectionDone()
            super().loseConnection()
            self.clock.callLater(0, self.protocol.connectionLost, Failure(reason))


class FakeEndpoint:
    """
    Where a worker on a Clock connects: each attempt gets what C{nodes()}
    gives, a L{FakeNode} to connect to or an exception to fail with. Bytes
    move only when the test calls L{pump}; with C{dropAtOnce} the peer
    closes each connection as soon as it is made.
    """

    def __init__(self, clock: Clock, nodes: Callable[[], Any]) -> None:
        self.clock = clock
        self.nodes = nodes
        self.attempts = 0
        self.dropAtOnce = False
        self.links: list[tuple[Any, ClientEnd, FakeNode, StringTransport]] = []

    def connect(self, factory: Any) -> Deferred[Any]:
        self.attempts += 1
        node = self.nodes()
        if isinstance(node, Exception):
            return fail(node)
        protocol = factory.buildProtocol(None)
        end = ClientEnd(self.clock, protocol)
        nodeEnd = StringTransport()
        node.makeConnection(nodeEnd)
        protocol.makeConnection(end)
        self.links.append((protocol, end, node, nodeEnd))
        if self.dropAtOnce:
            end.loseConnection()
        return succeed(protocol)

    def pump(self) -> None:
        """Move what either end wrote to the other, until nothing moves."""
        moved = True
        while moved:
            self.clock.advance(0)
            moved = False
            for protocol, end, node, nodeEnd in self.links:
                if end.disconnecting:
                    continue
                for source, sink in ((end, node), (nodeEnd, protocol)):
                    data = source.value()
                    if data:
                        source.clear()
                        sink.dataReceived(data)
                        moved = True


def advance(
    clock: Clock,
    seconds: float,
    step: float = 0.1,
    pump: FakeEndpoint | None = None,
) -> None:
    """
    Move C{clock} on in small steps, as time passes: timers set meanwhile
    count from when they were set. With C{pump}, its bytes move each step.
    """
    for _ in range(round(seconds / step)):
        clock.advance(step)
        if pump is not None:
            pump.pump()


@pytest.fixture
def remoteEvents() -> Iterator[list[dict[str, Any]]]:
    """What a remote worker (or a reconnecting service) logs during the test."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        namespace = event.get("log_namespace", "")
        if event.get("log_failure") is not None or namespace.startswith(
            ("asynqueue.workers", "twisted.application", "twisted.internet.protocol")
        ):
            events.append(event)

    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


def texts(events: list[dict[str, Any]]) -> list[str]:
    return [str(formatEvent(e)) for e in events]


def onClock(
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    nodes: Callable[[], Any],
    dropAtOnce: bool = False,
    **kw: Any,
) -> tuple[RemoteWorker, FakeEndpoint]:
    """A RemoteWorker on C{clock} whose attempts to connect C{nodes} answers."""
    from asynqueue.workers import remote

    endpoint = FakeEndpoint(clock, nodes)
    endpoint.dropAtOnce = dropAtOnce
    monkeypatch.setattr(remote, "clientEndpoint", lambda *a, **k: endpoint)
    worker = RemoteWorker(
        "tcp:127.0.0.1:8789", insecurePlaintext=True, reactor=clock, **kw
    )
    return worker, endpoint


def refused() -> Exception:
    return ConnectionRefusedError("111: Connection refused")


def test_unreachableNodeIsLoggedOncePerChangeWithoutTraceback(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, remoteEvents: list[dict[str, Any]]
) -> None:
    answer: list[Callable[[], Any]] = [refused]
    worker, endpoint = onClock(monkeypatch, clock, lambda: answer[0]())
    advance(clock, 600, step=1)
    # Backing off to 30 s between attempts: a few dozen in 10 minutes.
    assert 10 < endpoint.attempts < 40
    assert not [e for e in remoteEvents if e.get("log_failure") is not None]
    said = texts(remoteEvents)
    assert len(said) == 2, said
    assert "nothing listens at 127.0.0.1:8789" in said[0]
    assert "still unreachable" in said[1] and "every 30 s" in said[1]
    # It comes back: one line. It is lost again: one line, and so on.
    answer[0] = FakeNode
    advance(clock, 35, step=1, pump=endpoint)
    assert worker.capacity == 4
    said = texts(remoteEvents)
    assert len(said) == 3 and "Connected to node" in said[2], said
    answer[0] = refused
    endpoint.links[-1][1].loseConnection()
    advance(clock, 600, step=1)
    assert worker.capacity == 0
    answer[0] = FakeNode
    advance(clock, 35, step=1, pump=endpoint)
    said = texts(remoteEvents)
    assert len(said) == 7, said
    assert "Lost the connection" in said[3]
    assert "nothing listens" in said[4] and "still unreachable" in said[5]
    assert "is back" in said[6]
    assert not [e for e in remoteEvents if e.get("log_failure") is not None]
    worker.crash()
    clock.advance(0)
    assert not clock.getDelayedCalls()


def test_backOffStartsAfreshOnlyAfterTheNodeAnswered(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, remoteEvents: list[dict[str, Any]]
) -> None:
    """A peer that takes each connection and drops it is not retried every
    second: only a connection that worked starts the waits afresh."""
    worker, endpoint = onClock(monkeypatch, clock, FakeNode, dropAtOnce=True)
    advance(clock, 600, step=1)
    assert 10 < endpoint.attempts < 40
    said = texts(remoteEvents)
    assert len(said) == 2, said
    assert "closed the connection before saying what it is" in said[0]
    # One that works, then drops: the next attempt comes at once.
    endpoint.dropAtOnce = False
    advance(clock, 35, step=1, pump=endpoint)
    assert worker.capacity == 4
    attempts = endpoint.attempts
    endpoint.links[-1][1].loseConnection()
    advance(clock, 1)
    assert endpoint.attempts == attempts + 1
    worker.crash()
    clock.advance(0)
    assert not clock.getDelayedCalls()


def test_silentNodeIsDroppedAfterMissedHeartbeats(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, remoteEvents: list[dict[str, Any]]
) -> None:
    nodes = [FakeNode()]
    worker, endpoint = onClock(
        monkeypatch,
        clock,
        lambda: nodes.pop(0) if nodes else refused(),
        heartbeat=5.0,
        missedHeartbeats=3,
    )
    endpoint.pump()
    assert worker.capacity == 4
    node = endpoint.links[0][2]
    q = TaskQueue(worker, clock=clock, shutdownWithReactor=False)
    ds = [q.call(square, i, retries=0) for i in range(10)]
    endpoint.pump()
    assert len(node.taskIDs) == 4
    # A quiet node is pinged; while it answers, it stays.
    for _ in range(100):
        advance(clock, 0.5)
        endpoint.pump()
    assert node.infos >= 5 and worker.capacity == 4
    # This process busy for 30 s (timers run late, once, before the bytes
    # waiting meanwhile are read) is not the node's silence.
    clock.advance(30)
    endpoint.pump()
    clock.advance(30)
    endpoint.pump()
    assert worker.capacity == 4
    # Busy sending results but answering no ping, it stays too.
    node.answering = False
    for i in range(8):
        advance(clock, 4)
        node.result(node.taskIDs[i], b"%d" % (i * i))
        endpoint.pump()
    assert worker.capacity == 4
    assert [d.called for d in ds] == [True] * 8 + [False] * 2
    # Frozen: nothing moves. Silent for 3 heartbeats (noticed within 4),
    # it is taken for lost: its calls in flight fail.
    advance(clock, 14.9)
    assert worker.capacity == 4 and not ds[8].called
    advance(clock, 5.1)
    assert worker.capacity == 0
    failures: list[Failure] = []
    for d in ds[8:]:
        d.addErrback(failures.append)
    assert len(failures) == 2
    assert all(f.check(NodeLost) for f in failures)
    assert "sent nothing" in str(failures[0].value)
    said = texts(remoteEvents)
    assert any("Lost the connection" in t and "sent nothing" in t for t in said)
    q.shutdown()
    advance(clock, 1)
    assert not clock.getDelayedCalls()


def test_nodeThatNeverSaysWhatItIsIsDroppedAfterTheHeartbeats(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, remoteEvents: list[dict[str, Any]]
) -> None:
    """A peer that takes the connection and then says nothing (a frozen
    node, a stuck handshake) does not hold the worker's attempt forever."""
    worker, endpoint = onClock(
        monkeypatch, clock, lambda: FakeNode(answering=False), heartbeat=1.0
    )
    endpoint.pump()
    advance(clock, 2.9)
    assert endpoint.attempts == 1
    advance(clock, 1.1)
    assert endpoint.links[0][1].disconnected
    said = texts(remoteEvents)
    assert len(said) == 1 and "sent nothing" in said[0], said
    advance(clock, 1)
    assert endpoint.attempts == 2
    worker.crash()
    advance(clock, 1)
    assert not clock.getDelayedCalls()


@pytest.mark.parametrize("frozen", [False, True])
def test_stopAbortsTheConnectionOfAFrozenNodeAfterTheCloseGrace(
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    remoteEvents: list[dict[str, Any]],
    frozen: bool,
) -> None:
    """
    Stopping closes the connection gently; a node that never answers (frozen,
    no heartbeat to notice) has it aborted after C{closeGrace}, so stop()
    ends. One that answers is not waited for, nor aborted.
    """
    worker, endpoint = onClock(monkeypatch, clock, FakeNode, heartbeat=None)
    worker.closeGrace = 5.0
    endpoint.pump()
    assert worker.capacity == 4
    end = endpoint.links[0][1]
    end.frozen = frozen
    stopped: list[Any] = []
    worker.stop().addBoth(stopped.append)
    endpoint.pump()
    if frozen:
        advance(clock, 4.9)
        assert end.disconnecting and not end.disconnected and not stopped
        advance(clock, 0.2)
        assert end.disconnected
        said = texts(remoteEvents)
        assert any("did not close the connection within 5 s" in t for t in said)
    else:
        assert not end.disconnected
    assert stopped == [None]
    assert worker.capacity == 0 and endpoint.attempts == 1
    assert not clock.getDelayedCalls()


def test_heartbeatIsChecked() -> None:
    with pytest.raises(ValueError, match="heartbeat"):
        RemoteWorker("tcp:127.0.0.1:1", insecurePlaintext=True, heartbeat=-1)
    with pytest.raises(ValueError, match="missedHeartbeats"):
        RemoteWorker("tcp:127.0.0.1:1", insecurePlaintext=True, missedHeartbeats=0)


# ----------------------------------------------------------------------
# Real nodes: refusals said in plain words, a frozen node


@pytest_twisted.ensureDeferred
async def test_refusedCertificateIsSaidOnceInPlainWords(
    node: NodeService,
    certs: Path,
    remoteEvents: list[dict[str, Any]],
    loggedErrors: list[dict[str, Any]],
) -> None:
    port = node.port.getHost().port
    stranger = workerFor(node, certs, client="stranger")
    distrustful = RemoteWorker(
        f"tls:localhost:{port}",
        certificate=str(certs / "app.pem"),
        ca=str(certs / "other" / "ca.crt"),
    )
    try:
        for worker in (stranger, distrustful):
            await attempted(worker, 4)
        said = texts(remoteEvents)
        assert not [e for e in remoteEvents if e.get("log_failure") is not None]
        assert len(said) == 2, said
        assert any(f"node localhost:{port} refused our certificate" in t for t in said)
        assert any(
            f"we refused the certificate of node localhost:{port}" in t for t in said
        )
        assert all("\n" not in t for t in said)
    finally:
        await stranger.stop()
        await distrustful.stop()
    gc.collect()
    assert loggedErrors == []


def attempted(worker: RemoteWorker, count: int) -> Deferred[None]:
    """
    A Deferred that fires once C{count} of C{worker}'s attempts to connect
    have failed (as the next begins); from now on it retries at once.
    """
    worker.retryDelay = 0.01
    real = worker._endpoint
    d: Deferred[None] = Deferred()
    tries = [1]

    class Counting:
        def connect(self, factory: Any) -> Deferred[Any]:
            tries[0] += 1
            if tries[0] == count + 1:
                d.callback(None)
            return real.connect(factory)  # type: ignore[no-any-return]

    worker._endpoint = Counting()
    return d


def stallOn(pid: int, x: int, gate: str) -> int:
    """Square C{x}; on the node whose main process is C{pid}, once C{gate} opens."""
    if os.getppid() == pid:
        waitForGate(gate)  # keeps the call in flight on that node
    return x * x


@pytest_twisted.ensureDeferred
async def test_frozenNodesCallsGoElsewhereWithinTheHeartbeat(
    node: NodeService,
    certs: Path,
    tmp_path: Path,
    loggedErrors: list[dict[str, Any]],
) -> None:
    """
    A node stopped with SIGSTOP keeps its connection open but says nothing:
    after the missed heartbeats its calls in flight fail with NodeLost, and
    run on another node if their retries allow.
    """
    frozen, transport = startNodeProcess(certs)
    port = await frozen.listening
    worker = RemoteWorker(
        f"tls:localhost:{port}",
        certificate=str(certs / "app.pem"),
        ca=str(certs / "ca.crt"),
        name="frozen",
        heartbeat=0.5,
        missedHeartbeats=3,
    )
    other = workerFor(node, certs)
    await worker.whenConnected()
    await other.whenConnected()
    q = TaskQueue(worker, shutdownWithReactor=False)
    stopped = False
    ds: list[Deferred[Any]] = []
    # Fails the test, rather than hang it, if the node is never dropped.
    guard = reactor.callLater(60, lambda: [d.cancel() for d in ds])
    try:
        started = whenStarted(q, 4)
        gate = str(tmp_path / "gate")
        ds += [q.call(stallOn, transport.pid, i, gate, retries=0) for i in range(2)]
        ds += [q.call(stallOn, transport.pid, i, gate, retries=1) for i in range(2, 4)]
        await started
        await q.attachWorker(other)
        transport.signalProcess(signal.SIGSTOP)
        stopped = True
        outcomes = await DeferredList(ds, consumeErrors=True)
        lost = [v for ok, v in outcomes[:2] if not ok]
        assert len(lost) == 2 and all(f.check(NodeLost) for f in lost)
        assert "sent nothing" in str(lost[0].value)
        assert [v for _, v in outcomes[2:]] == [4, 9]
        records = q.records()
        assert [r.worker for r in records[2:]] == [other.name] * 2
        assert [r.attempts for r in records] == [1, 1, 2, 2]
        assert worker.capacity == 0
    finally:
        if guard.active():
            guard.cancel()
        (tmp_path / "gate").touch()
        if stopped:
            transport.signalProcess(signal.SIGCONT)
        await q.shutdown()
        transport.signalProcess(signal.SIGTERM)
        await frozen.ended
    gc.collect()
    assert loggedErrors == []


def openDescriptors() -> set[int]:
    """This process's open descriptors (not the one that listed them)."""
    listed = os.listdir("/proc/self/fd")
    return {int(fd) for fd in listed if os.path.lexists(f"/proc/self/fd/{fd}")}


@pytest_twisted.ensureDeferred
async def test_stopEndsOnAFrozenNodeAndGivesBackItsDescriptor(
    certs: Path, loggedErrors: list[dict[str, Any]]
) -> None:
    """
    Over mutual TLS, a node that answered and then froze (reads nothing, so
    never answers TLS's close alert) without a heartbeat: stop() aborts the
    connection after C{closeGrace}, ends, and closes its socket.
    """
    from twisted.internet import endpoints

    frozen: Deferred[Any] = Deferred()

    class FrozenNode(amp.AMP):
        @NodeInfo.responder
        def nodeInfo(self) -> dict[str, Any]:
            # Answer, then read no more: the TCP connection under the TLS.
            reactor.callLater(0, self.transport.transport.stopReading)
            reactor.callLater(0, frozen.callback, self)
            return {"pid": 1, "rss": 0, "capacity": 1, "done": 0, "processes": 1}

    before = openDescriptors()
    listen = endpoints.serverFromString(reactor, tlsListen(certs))
    port = await listen.listen(_factory(FrozenNode))
    worker = RemoteWorker(
        f"tls:localhost:{port.getHost().port}",
        certificate=str(certs / "app.pem"),
        ca=str(certs / "ca.crt"),
        heartbeat=None,
    )
    worker.closeGrace = 0.05
    node: Any = None
    waits: list[Deferred[Any]] = []
    # Fails the test, rather than hang it, if stop() never ends.
    guard = reactor.callLater(10, lambda: [d.cancel() for d in waits])
    try:
        waits.append(worker.whenConnected())
        await waits[-1]
        waits.append(frozen)
        node = await frozen
        waits.append(worker.stop())
        await waits[-1]
        # Only the frozen node's end of the connection is still open.
        nodeEnd = node.transport.transport.fileno()
        assert openDescriptors() - before == {port.fileno(), nodeEnd}
    finally:
        if guard.active():
            guard.cancel()
        if node is not None:
            lost: Deferred[None] = Deferred()
            node.connectionLost = lambda reason: lost.callback(None)
            node.transport.abortConnection()
            await lost
        await port.stopListening()
    assert openDescriptors() == before
    gc.collect()
    assert loggedErrors == []


def test_certificateWithoutItsKeyIsSaidInOneLine(certs: Path) -> None:
    crt, ca = str(certs / "localhost.crt"), str(certs / "ca.crt")
    with pytest.raises(ValueError) as caught:
        RemoteWorker("tls:localhost:1", certificate=crt, ca=ca)
    assert str(caught.value).startswith(f"certificate= {crt} has no private key: ")
    assert "\n" not in str(caught.value)
    key = str(certs / "localhost.key")
    with pytest.raises(ValueError, match=f"^ca= {key} holds no certificate"):
        RemoteWorker("tls:localhost:1", certificate=str(certs / "app.pem"), ca=key)
    with pytest.raises(FileNotFoundError):
        RemoteWorker("tls:localhost:1", certificate=str(certs / "none.pem"), ca=ca)


def test_connectDeadlineFailsCallsNoWorkerCanRun(
    monkeypatch: pytest.MonkeyPatch,
    clock: Clock,
    makeQueue: Any,
    remoteEvents: list[dict[str, Any]],
) -> None:
    from asynqueue.errors import NodeUnreachable, NoWorkers

    worker, endpoint = onClock(monkeypatch, clock, refused, connectDeadline=30)
    q = makeQueue(worker)
    d = q.call(int, "7")
    connected = worker.whenConnected()
    advance(clock, 29.9, step=0.1)
    # Backing off meanwhile, as without a deadline; the call waits.
    assert endpoint.attempts > 5
    assert not d.called and not connected.called
    advance(clock, 0.2, step=0.1)
    why = "node tcp:127.0.0.1:8789 unreachable for 30 s (nothing listens at "
    lost = failureOf(connected)
    assert lost.check(NodeLost) and str(lost.value).startswith(why)
    failure = failureOf(d)
    # No worker can run it, and a node was lost: both.
    assert failure.check(NodeUnreachable)
    assert isinstance(failure.value, NoWorkers) and isinstance(failure.value, NodeLost)
    assert why in str(failure.value)
    # A call made afterwards fails the same way, at once.
    assert failureOf(q.call(int, "8")).check(NodeUnreachable)
    assert "\n" not in str(failure.value)
    assert not [e for e in remoteEvents if e.get("log_failure") is not None]
    attempts = endpoint.attempts
    advance(clock, 120, step=1)
    assert endpoint.attempts == attempts, "a worker that gave up stops trying"
    assert not clock.getDelayedCalls()


def test_connectDeadlineLeavesTheCallsToOtherWorkers(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, makeQueue: Any
) -> None:
    from asynqueue import MemoryWorker

    worker, endpoint = onClock(monkeypatch, clock, refused, connectDeadline=5)
    other = MemoryWorker()
    q = makeQueue(worker, other)
    advance(clock, 6, step=0.1)
    assert worker not in q.workers()
    d = q.call(int, "7")
    other.runNext()
    assert result(d) == 7


def test_connectDeadlineCountsFromTheLastWorkingConnection(
    monkeypatch: pytest.MonkeyPatch, clock: Clock, makeQueue: Any
) -> None:
    answer: list[Callable[[], Any]] = [refused]
    worker, endpoint = onClock(
        monkeypatch, clock, lambda: answer[0](), connectDeadline=10
    )
    q = makeQueue(worker)
    advance(clock, 5, step=0.1)
    answer[0] = FakeNode
    advance(clock, 4, step=0.1, pump=endpoint)
    assert worker.capacity == 4
    # Connected for longer than the deadline: nothing is given up.
    advance(clock, 30, step=0.1, pump=endpoint)
    assert worker in q.workers() and worker.resignedBecause is None
    # Lost: the deadline counts from then.
    answer[0] = refused
    endpoint.links[-1][1].loseConnection()
    advance(clock, 9.5, step=0.1)
    assert worker in q.workers()
    advance(clock, 1, step=0.1)
    assert worker not in q.workers()
    assert "unreachable for 10 s (nothing listens at" in str(worker.resignedBecause)


def test_connectDeadlineMustBePositive() -> None:
    for bad in (0, -1, float("inf")):
        with pytest.raises(ValueError, match="connectDeadline must be positive"):
            RemoteWorker("tcp:127.0.0.1:1", insecurePlaintext=True, connectDeadline=bad)


@pytest.mark.parametrize("retries", [0, 1])
@pytest.mark.parametrize("broken", ["writing", "pickling"])
@pytest_twisted.ensureDeferred
async def test_aResultTheNodeCannotWriteDropsTheConnection(
    plaintextNode: NodeService,
    monkeypatch: pytest.MonkeyPatch,
    retries: int,
    broken: str,
) -> None:
    """
    A node that fails to make or write a result box cuts its connection,
    so that the call is run again (as its retries allow) or fails with
    NodeLost; before, the result was lost and the call waited for ever on
    a node that still answered its heartbeats.
    """
    import asynqueue.node.core as nodeCore
    import asynqueue.node.protocol as nodeProtocol
    from asynqueue.wire.boxes import COMMAND, TASK_RESULT, TASK_RESULTS

    failures: list[object] = []
    realWriteBox, realDumps = nodeProtocol.writeBox, nodeCore.dumps

    def writeBoxFailingOnce(transport: Any, pairs: Any) -> None:
        command = dict(pairs).get(COMMAND)
        if command in (TASK_RESULT, TASK_RESULTS) and not failures:
            failures.append(command)
            raise MemoryError("no room for the result box")
        realWriteBox(transport, pairs)

    def dumpsFailingOnce(value: Any) -> bytes:
        if not failures:
            failures.append(value)
            raise MemoryError("no room for the pickled results")
        return realDumps(value)

    if broken == "writing":
        monkeypatch.setattr(nodeProtocol, "writeBox", writeBoxFailingOnce)
    else:
        monkeypatch.setattr(nodeCore, "dumps", dumpsFailingOnce)
    port = plaintextNode.port.getHost().port
    worker = RemoteWorker(f"tcp:127.0.0.1:{port}", insecurePlaintext=True)
    await worker.whenConnected()
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        d = q.call(square, 7, retries=retries)
        if retries:
            assert await within(d) == 49
            assert q.records()[0].attempts == 2
        else:
            with pytest.raises(NodeLost, match="was lost"):
                await within(d)
        assert failures, "no result box failed to be written"
        # The worker connects again and serves the next call.
        assert await within(q.call(square, 8)) == 64
    finally:
        await q.shutdown()
