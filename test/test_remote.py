"""Tests of remote worker nodes: mutual TLS, the node, RemoteWorker, fail-over."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.protocol import ProcessProtocol, Protocol
from twisted.protocols import amp

from asynqueue import TaskQueue
from asynqueue.certs import makeCluster
from asynqueue.errors import NodeLost, UnpicklableError
from asynqueue.node import NodeService, WireServer, nodeEndpoint
from asynqueue.remote import RemoteWorker, WireWorker, clientEndpoint
from asynqueue.wire import NodeInfo, WireWorkerUniverse


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
    stranger._service.stopService()
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
    from asynqueue.node import NodeProtocol

    old = NodeProtocol.maxBoxBytes
    NodeProtocol.maxBoxBytes = 200_000
    try:
        from twisted.internet import endpoints

        port = plaintextNode.port.getHost().port
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)
        client = await endpoint.connect(_factory(amp.AMP))
        from twisted.internet.error import ConnectionDone, ConnectionLost

        from asynqueue.wire import RunTasks

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

    time.sleep(0.01)  # the workload: keeps tasks in flight when the node dies
    return x * x


@pytest_twisted.ensureDeferred
async def test_killedNodesTasksRunElsewhere(certs: Path) -> None:
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
        ds = [q.call(slowSquare, i) for i in range(120)]
        firstDone: Deferred[None] = Deferred()
        ds[5].addCallback(lambda r: (firstDone.callback(None), r)[1])
        await firstDone
        nodes[0][1].signalProcess(signal.SIGKILL)
        outcomes = await DeferredList(ds, consumeErrors=True)
        assert [ok for ok, _ in outcomes] == [True] * 120
        assert [value for _, value in outcomes] == [i * i for i in range(120)]
        rerun = [r for r in q.records() if r.attempts > 1]
        assert rerun, "no task was in flight on the killed node"
        assert all(r.worker == "node1" for r in rerun)
        assert workers[0].capacity == 0
    finally:
        await q.shutdown()
        nodes[1][1].signalProcess(signal.SIGTERM)
        await DeferredList([p.ended for p, _ in nodes])
    for p, _ in nodes:
        assert p.ended.called


@pytest_twisted.ensureDeferred
async def test_nodeLostFailsWhenNoRetryLeft(node: NodeService, certs: Path) -> None:
    worker = workerFor(node, certs)
    await worker.whenConnected()
    q = TaskQueue(worker, shutdownWithReactor=False)
    try:
        blocker = q.call(slowSquare, 3, retries=0)
        # Drop the connection under the running task: it goes back to the queue
        # once (the node may never have run it), then fails with NodeLost.
        worker._connection.transport.abortConnection()  # type: ignore[union-attr]
        await worker.whenConnected()
        assert await blocker == 9
        assert q.records()[0].attempts == 2
    finally:
        await q.shutdown()
    assert issubclass(NodeLost, Exception)


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
        "test_remote.Words",
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


def sleepy(seconds: float) -> str:
    import time

    time.sleep(seconds)  # the workload: a task that would run far too long
    return "woke"


@pytest_twisted.ensureDeferred
async def test_remoteTimeoutEndsTheNodesChild(node: NodeService, certs: Path) -> None:
    from twisted.internet.task import Clock

    from asynqueue import TimeoutError

    worker = workerFor(node, certs)
    await worker.whenConnected()
    clock = Clock()
    q = TaskQueue(worker, clock=clock, shutdownWithReactor=False)
    try:
        before = await q.call(os.getpid)
        started: Deferred[None] = Deferred()
        q.observe(
            lambda event, record: (
                event == "started" and not started.called and started.callback(None)
            )
        )
        d = q.call(sleepy, 60, timeout=5)
        await started
        clock.advance(5)
        with pytest.raises(TimeoutError):
            await d
        # The node killed the child stuck in the call; a new one serves on.
        after = await q.call(os.getpid)
        assert after != before
        assert node.pool is not None and node.pool.workers[0].replaced == 1
    finally:
        await q.shutdown()


@pytest_twisted.ensureDeferred
async def test_nodeShutdownLeavesNoProcess(certs: Path) -> None:
    service = NodeService(tlsListen(certs), ca=str(certs / "ca.crt"), processes=2)
    await service.startService()
    assert service.pool is not None
    pids = [w.info()["pid"] for w in service.pool.workers]
    await service.stopService()
    for pid in pids:
        with pytest.raises((ChildProcessError, ProcessLookupError)):
            if os.waitpid(pid, os.WNOHANG) == (0, 0):
                os.kill(pid, 0)
            raise ProcessLookupError


@pytest_twisted.ensureDeferred
async def test_batchesAreReadAsPlainDataOnly(
    plaintextNode: NodeService, tmp_path: Path
) -> None:
    """A batch smuggling code is refused before anything in it runs."""
    from twisted.internet import endpoints
    from twisted.internet.error import ConnectionDone, ConnectionLost

    from asynqueue.wire import RunTasks

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
