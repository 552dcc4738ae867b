"""
Tests of asynqueue.guard, and of the node behind it: handshake deadlines and
connection caps, timed by a Clock.

The guard is driven by hand over fake transports first; then a real node
listens on loopback (TLS, and plaintext) while a Clock times its deadlines,
with raw TCP clients that send nothing and real clients that authenticate.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import endpoints, reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IHandshakeListener
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.protocols import amp
from twisted.python import usage
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.node.certs import makeCluster
from asynqueue.node.guard import ConnectionGuard, GuardedProtocol, defaultMaxConnections
from asynqueue.node.service import NodeOptions, NodeService, makeNodeService
from asynqueue.wire.commands import NodeInfo
from asynqueue.workers.connection import clientEndpoint
from helpers import capturedLog

# -- the guard over fake transports -------------------------------------------


@implementer(IHandshakeListener)
class Inner(Protocol):
    """What the guard wraps: records what reaches it."""

    def __init__(self) -> None:
        self.made = False
        self.data = b""
        self.handshakes = 0
        self.lost: Failure | None = None

    def connectionMade(self) -> None:
        self.made = True

    def dataReceived(self, data: bytes) -> None:
        self.data += data

    def handshakeCompleted(self) -> None:
        self.handshakes += 1

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = reason


class Transport(StringTransport):
    """A transport that notes an abort; the test delivers connectionLost."""

    aborted = False

    def abortConnection(self) -> None:
        self.aborted = True
        super().abortConnection()


class Connection:
    """One connection under a guard: the wrapper, what it wraps, its transport."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.inner = Inner()
        self.guard = guard
        self.wrapper: GuardedProtocol = guard.protocol(guard, self.inner)
        self.transport = Transport()
        self.wrapper.makeConnection(self.transport)

    def lose(self) -> None:
        """What the reactor does after an abort, or when the peer goes."""
        self.wrapper.connectionLost(Failure(ConnectionError("gone")))


def guard(clock: Clock, **kwargs: Any) -> ConnectionGuard:
    kwargs.setdefault("maxConnections", 256)
    g = ConnectionGuard(Factory.forProtocol(Inner), clock=clock, **kwargs)
    g.doStart()
    return g


def box(*pairs: tuple[bytes, bytes]) -> bytes:
    """An AMP box, framed."""
    return (
        b"".join(
            len(k).to_bytes(2, "big") + k + len(v).to_bytes(2, "big") + v
            for k, v in pairs
        )
        + b"\x00\x00"
    )


@pytest.fixture
def logged() -> Iterator[list[dict[str, Any]]]:
    """The guard's log events."""
    with capturedLog("asynqueue.node.guard") as events:
        yield events


@pytest.mark.parametrize("proof", ["tls", "box"])
def test_unauthenticatedConnectionIsAbortedAtTheDeadline(
    clock: Clock, proof: str
) -> None:
    g = guard(clock, handshakeTimeout=10, proof=proof)
    c = Connection(g)
    clock.advance(9.9)
    assert not c.transport.aborted
    clock.advance(0.1)
    assert c.transport.aborted
    assert (g.waiting, g.open, g.timedOut) == (0, 0, 1)
    c.lose()
    assert clock.getDelayedCalls() == []
    # Only a plaintext peer's protocol was ever connected: a TLS peer's is
    # connected once it has shaken hands.
    assert (c.inner.made, c.inner.lost is not None) == (proof == "box",) * 2


def test_handshakeEndsTheDeadlineAndIdleIsFineAfter(clock: Clock) -> None:
    g = guard(clock, handshakeTimeout=10)
    c = Connection(g)
    clock.advance(5)
    assert not c.inner.made
    c.wrapper.handshakeCompleted()
    assert c.inner.made
    assert c.inner.handshakes == 1, "the wrapped protocol hears of it too"
    assert clock.getDelayedCalls() == []
    clock.advance(10**6)
    assert not c.transport.aborted
    assert (g.waiting, g.open) == (0, 1)
    c.lose()
    assert g.open == 0


def test_dataAloneDoesNotAuthenticateATLSConnection(clock: Clock) -> None:
    g = guard(clock, handshakeTimeout=10)
    c = Connection(g)
    c.wrapper.dataReceived(box((b"_command", b"NodeInfo")))
    clock.advance(10)
    assert c.transport.aborted


def test_firstCompleteBoxAuthenticatesAPlaintextConnection(clock: Clock) -> None:
    g = guard(clock, proof="box", handshakeTimeout=10)
    c = Connection(g)
    data = box((b"_ask", b"1"), (b"_command", b"NodeInfo"), (b"empty", b""))
    # Byte by byte: every split of a length or a value must be followed.
    for i in range(len(data) - 1):
        c.wrapper.dataReceived(data[i : i + 1])
    assert not c.wrapper.authenticated
    c.wrapper.dataReceived(data[-1:] + b"\x00\x01")
    assert c.wrapper.authenticated
    assert c.inner.data == data + b"\x00\x01", "every byte reaches the protocol"
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize(
    "stall",
    [b"", b"\x00\x00", b"\x00\x01k\x00\x05abc", b"\x00\x01k\x00\x01v"],
    ids=["nothing", "empty box", "half a value", "no end"],
)
def test_incompleteOrEmptyBoxIsNoProof(clock: Clock, stall: bytes) -> None:
    g = guard(clock, proof="box", handshakeTimeout=3)
    c = Connection(g)
    c.wrapper.dataReceived(stall)
    clock.advance(3)
    assert c.transport.aborted and not c.wrapper.authenticated


def test_overTheCapANewConnectionEvictsTheOldestWaiting(
    clock: Clock, logged: list[dict[str, Any]]
) -> None:
    g = guard(clock, maxUnauthenticated=3)
    done = Connection(g)
    done.wrapper.handshakeCompleted()
    waiting = [Connection(g) for _ in range(3)]
    assert not any(c.transport.aborted for c in waiting)
    newcomers = [Connection(g) for _ in range(5)]
    # Each newcomer evicted the one that had waited longest.
    assert [c.transport.aborted for c in waiting + newcomers] == [True] * 5 + [
        False
    ] * 3
    assert not done.transport.aborted, "an authenticated peer is never evicted"
    assert (g.waiting, g.open, g.overCap) == (3, 4, 5)
    # The evicted ones lose no deadline to the clock, and a newcomer can
    # still authenticate.
    for c in waiting + newcomers[:2]:
        c.lose()
    assert len(clock.getDelayedCalls()) == 3
    newcomers[2].wrapper.handshakeCompleted()
    assert len(clock.getDelayedCalls()) == 2
    # One warning for the burst, one line when there is room again.
    assert [e["log_level"].name for e in logged] == ["warn", "info"]
    assert logged[1]["count"] == 5


def test_whenAllHaveAuthenticatedANewConnectionIsRefused(clock: Clock) -> None:
    g = guard(clock, maxConnections=2)
    first, second = Connection(g), Connection(g)
    first.wrapper.handshakeCompleted()
    second.wrapper.handshakeCompleted()
    refused = Connection(g)
    assert refused.transport.aborted
    assert not refused.inner.made, "a refused connection never reaches its protocol"
    refused.wrapper.dataReceived(b"\x00\x01k")
    refused.wrapper.handshakeCompleted()
    refused.lose()
    assert (refused.inner.data, refused.inner.handshakes) == (b"", 0)
    assert refused.inner.lost is None
    assert (g.open, g.overCap) == (2, 1)
    assert clock.getDelayedCalls() == []
    first.lose()
    assert not Connection(g).transport.aborted


def test_totalCapEvictsAWaitingConnectionFirst(clock: Clock) -> None:
    g = guard(clock, maxConnections=2, maxUnauthenticated=10)
    done, waiting = Connection(g), Connection(g)
    done.wrapper.handshakeCompleted()
    newcomer = Connection(g)
    assert waiting.transport.aborted and not newcomer.transport.aborted
    assert (g.waiting, g.open) == (1, 2)


def test_dropsAreLoggedOncePerBurst(clock: Clock, logged: list[dict[str, Any]]) -> None:
    g = guard(clock, maxUnauthenticated=1)
    for _ in range(2):
        [Connection(g) for _ in range(50)]
        clock.advance(10)  # the last one times out: room again
    assert [(e["log_level"].name, e.get("count")) for e in logged] == [
        ("warn", None),  # the cap is reached
        ("info", None),  # the first (and only) to time out
        ("info", 49),  # room again
    ] * 2
    assert g.overCap == 2 * 49


def test_timeoutsAreLoggedOncePerBurst(
    clock: Clock, logged: list[dict[str, Any]]
) -> None:
    g = guard(clock, handshakeTimeout=10)
    for _ in range(2):
        connections = [Connection(g) for _ in range(20)]
        clock.advance(10)
        for c in connections:
            c.lose()
    assert [(e["log_level"].name, e.get("count")) for e in logged] == [
        ("info", None),
        ("info", 20),
    ] * 2
    assert "did not authenticate within 10.0 s" in logged[0]["log_format"].format(
        **logged[0]
    )
    assert g.timedOut == 40


def test_stoppingDropsTheWaitingAndCancelsTheirDeadlines(clock: Clock) -> None:
    g = guard(clock)
    done, waiting = Connection(g), Connection(g)
    done.wrapper.handshakeCompleted()
    g.doStop()
    assert waiting.transport.aborted and not done.transport.aborted
    assert clock.getDelayedCalls() == []


def test_peerThatLeavesTakesItsDeadlineWithIt(clock: Clock) -> None:
    g = guard(clock)
    for _ in range(100):
        Connection(g).lose()
    assert clock.getDelayedCalls() == []
    assert (g.open, g.protocols) == (0, {})


@pytest.mark.parametrize(
    "options",
    [
        {"handshakeTimeout": 0},
        {"handshakeTimeout": -1},
        {"handshakeTimeout": float("nan")},
        {"maxUnauthenticated": 0},
        {"maxConnections": -5},
        {"maxConnections": 2.5},
        {"proof": "password"},
    ],
)
def test_badNumbersAreRefused(clock: Clock, options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        ConnectionGuard(Factory(), clock=clock, **options)


def test_defaultCapLeavesHalfTheDescriptorLimit(monkeypatch: Any) -> None:
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda _: (300, 4096))
    assert defaultMaxConnections() == 150
    monkeypatch.setattr(resource, "getrlimit", lambda _: (65536, 65536))
    assert defaultMaxConnections() == 256


# -- a node on loopback, its deadlines on a Clock ------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return makeCluster(tmp_path_factory.mktemp("certs"), ["localhost"], ["app"])


class Arrivals:
    """Fires when the node's guard has taken (or refused) the nth connection."""

    def __init__(self, guard: ConnectionGuard) -> None:
        self.count = 0
        self._waiters: dict[int, Deferred[None]] = {}
        admit = guard.admit

        def counted(protocol: GuardedProtocol) -> bool:
            admitted = admit(protocol)
            self.count += 1
            waiter = self._waiters.pop(self.count, None)
            if waiter is not None:
                waiter.callback(None)
            return admitted

        guard.admit = counted  # type: ignore[method-assign]

    def reached(self, n: int) -> Deferred[None]:
        if self.count >= n:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._waiters[n] = d
        return d.addTimeout(30, reactor)


class Idle(Protocol):
    """A raw TCP peer that sends nothing."""

    def __init__(self) -> None:
        self.lost: Deferred[None] = Deferred()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class Node:
    """A started node with its clock, and ways to reach it."""

    def __init__(self, service: NodeService, clock: Clock, certs: Path) -> None:
        self.service = service
        self.clock = clock
        self.certs = certs
        assert service.guard is not None
        self.guard = service.guard
        self.arrivals = Arrivals(service.guard)
        self.port = service.port.getHost().port
        self.clients: list[Any] = []

    async def idle(self) -> Idle:
        """Connect and send nothing; back once the node has seen it."""
        expected = self.arrivals.count + 1
        endpoint = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        peer = await endpoint.connect(Factory.forProtocol(Idle))
        self.clients.append(peer)
        if self.arrivals.count < expected:
            await self.arrivals.reached(expected)
        return peer

    async def client(self) -> amp.AMP:
        """A real client, connected, that has had an answer from the node."""
        if self.service.listen.startswith("ssl:"):
            endpoint = clientEndpoint(
                reactor,
                f"tls:localhost:{self.port}",
                certificate=str(self.certs / "app.pem"),
                ca=str(self.certs / "ca.crt"),
            )
        else:
            endpoint = clientEndpoint(
                reactor, f"tcp:127.0.0.1:{self.port}", insecurePlaintext=True
            )
        client = await endpoint.connect(Factory.forProtocol(amp.AMP))
        self.clients.append(client)
        await client.callRemote(NodeInfo)
        return client

    async def close(self) -> None:
        for client in self.clients:
            if client.transport is not None and client.transport.connected:
                await abort(client)
        await self.service.stopService()


def abort(protocol: Protocol) -> Deferred[None]:
    """Abort a client's connection; fires once it is gone."""
    lost: Deferred[None] = Deferred()
    original = protocol.connectionLost

    def connectionLost(reason: Failure = connectionDone) -> None:
        original(reason)
        lost.callback(None)

    protocol.connectionLost = connectionLost  # type: ignore[method-assign]
    protocol.transport.abortConnection()  # type: ignore[union-attr]
    return lost.addTimeout(30, reactor)


def nodeFixture(listen: str, **options: Any) -> Any:
    @pytest_twisted.async_yield_fixture
    async def node(certs: Path) -> AsyncIterator[Node]:
        clock = Clock()
        kwargs: dict[str, Any] = dict(processes=1, clock=clock, **options)
        if listen == "ssl":
            kwargs["ca"] = str(certs / "ca.crt")
            where = (
                f"ssl:port=0:privateKey={certs}/localhost.key"
                f":certKey={certs}/localhost.crt"
            )
        else:
            kwargs["insecurePlaintext"] = True
            where = "tcp:port=0:interface=127.0.0.1"
        service = NodeService(where, **kwargs)
        await service.startService()
        n = Node(service, clock, certs)
        try:
            yield n
        finally:
            await n.close()

    return node


tlsNode = nodeFixture("ssl", handshakeTimeout=10)
smallTLSNode = nodeFixture("ssl", handshakeTimeout=10, maxUnauthenticated=2)
fullTLSNode = nodeFixture("ssl", maxConnections=1)
plaintextNode = nodeFixture("tcp", handshakeTimeout=5)


@pytest_twisted.ensureDeferred
async def test_tlsNodeDropsAPeerThatNeverHandshakes(tlsNode: Node) -> None:
    idle = await tlsNode.idle()
    client = await tlsNode.client()
    assert (tlsNode.guard.waiting, tlsNode.guard.open) == (1, 2)
    tlsNode.clock.advance(9.9)
    assert not idle.lost.called
    tlsNode.clock.advance(0.1)
    await idle.lost.addTimeout(30, reactor)
    # The client that shook hands may stay idle as long as it likes.
    tlsNode.clock.advance(10**6)
    assert tlsNode.clock.getDelayedCalls() == []
    assert (await client.callRemote(NodeInfo))["capacity"] > 0
    assert (tlsNode.guard.waiting, tlsNode.guard.open, tlsNode.guard.timedOut) == (
        0,
        1,
        1,
    )


@pytest_twisted.ensureDeferred
async def test_idlePeersCannotLockAClientOut(smallTLSNode: Node) -> None:
    node = smallTLSNode
    idle = [await node.idle() for _ in range(5)]
    # Over the cap of 2 waiting, each newcomer evicted the oldest.
    for peer in idle[:3]:
        await peer.lost.addTimeout(30, reactor)
    assert node.guard.waiting == 2
    client = await node.client()
    await idle[3].lost.addTimeout(30, reactor)
    assert (node.guard.waiting, node.guard.open, node.guard.overCap) == (1, 2, 4)
    node.clock.advance(10)
    await idle[4].lost.addTimeout(30, reactor)
    assert (await client.callRemote(NodeInfo))["capacity"] > 0
    assert node.clock.getDelayedCalls() == []


@pytest_twisted.ensureDeferred
async def test_connectionOverTheTotalCapIsRefusedAtOnce(fullTLSNode: Node) -> None:
    client = await fullTLSNode.client()
    refused = await fullTLSNode.idle()
    await refused.lost.addTimeout(30, reactor)
    assert (fullTLSNode.guard.open, fullTLSNode.guard.overCap) == (1, 1)
    assert (await client.callRemote(NodeInfo))["capacity"] > 0


@pytest_twisted.ensureDeferred
async def test_plaintextNodeWantsAFirstBoxInTime(plaintextNode: Node) -> None:
    idle = await plaintextNode.idle()
    half = await plaintextNode.idle()
    half.transport.write(b"\x00\x08_command\x00\x08Node")  # type: ignore[union-attr]
    client = await plaintextNode.client()
    plaintextNode.clock.advance(5)
    await idle.lost.addTimeout(30, reactor)
    await half.lost.addTimeout(30, reactor)
    plaintextNode.clock.advance(10**6)
    assert (await client.callRemote(NodeInfo))["capacity"] > 0
    assert plaintextNode.guard.timedOut == 2


# -- the command line ---------------------------------------------------------


def parse(*args: str) -> NodeOptions:
    options = NodeOptions()
    options.parseOptions(["--insecure-plaintext", "--listen", "tcp:port=0", *args])
    return options


@pytest.mark.parametrize(
    "args",
    [
        ("--handshake-timeout", "0"),
        ("--handshake-timeout", "-3"),
        ("--handshake-timeout", "soon"),
        ("--handshake-timeout", "inf"),
        ("--max-connections", "0"),
        ("--max-connections", "-1"),
        ("--max-unauthenticated", "2.5"),
        ("--processes", "0"),
    ],
)
def test_badNumbersOnTheCommandLineAreOneLineErrors(args: tuple[str, str]) -> None:
    with pytest.raises(usage.UsageError) as caught:
        parse(*args)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{args[0]} must be") and repr(args[1]) in message


def test_commandLineNumbersReachTheGuard() -> None:
    options = parse(
        "--handshake-timeout",
        "2.5",
        "--max-unauthenticated",
        "7",
        "--max-connections",
        "9",
    )
    service = makeNodeService(options)
    guard = service._guarded(Factory())
    assert (guard.handshakeTimeout, guard.maxUnauthenticated) == (2.5, 7)
    assert (guard.maxConnections, guard.proof) == (9, "box")
    defaults = parse()
    assert (defaults["handshake-timeout"], defaults["max-unauthenticated"]) == (
        10.0,
        64,
    )
    assert defaults["max-connections"] is None


def test_nodeServiceRefusesBadNumbersBeforeStarting() -> None:
    with pytest.raises(ValueError, match="handshakeTimeout"):
        NodeService("tcp:port=0", insecurePlaintext=True, handshakeTimeout=-1)
