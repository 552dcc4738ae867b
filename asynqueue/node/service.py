"""
The network node as a Twisted service: L{NodeService} (a L{NodePool}
behind a guarded listener), its endpoint parsing (mutual TLS by default,
loopback by default), the C{asynqueue-node} command line and AsynQueue's
L{WireServer}.
"""

from __future__ import annotations

import os
import sys
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from asynqueue.node.guard import ConnectionGuard
from asynqueue.node.pool import NodePool, PoolRunner
from asynqueue.node.protocol import NodeProtocol
from asynqueue.wire.endpoints import LOOPBACK

log = Logger()


class NodeFactory(Factory):
    """Makes a L{NodeProtocol} per connection, each running on the shared pool."""

    def __init__(self, pool: NodePool | None) -> None:
        #: The pool; L{NodeService} sets it once it listens (no connection
        #: can come before).
        self.pool = pool

    def buildProtocol(self, addr: Any) -> NodeProtocol:
        protocol: NodeProtocol
        pool = self.pool
        assert pool is not None, "a node factory without its pool"

        def closeConnection() -> None:
            if protocol.transport is not None:
                protocol.transport.loseConnection()

        protocol = NodeProtocol(lambda send: PoolRunner(pool, send), closeConnection)
        protocol.factory = self
        return protocol


def nodeEndpoint(
    reactor: Any,
    description: str,
    ca: str | None = None,
    insecurePlaintext: bool = False,
) -> Any:
    """
    The endpoint a node listens on, from an endpoint string.

    C{ssl:port=N:privateKey=KEY:certKey=CERT[:interface=ADDR]} listens with
    mutual TLS: only clients whose certificate chains to the CA in C{ca}
    get through the handshake, so no byte of an unknown peer is ever read.
    The interface defaults to loopback. A plaintext C{tcp:} (loopback only)
    or C{unix:} listener needs C{insecurePlaintext=True}.
    """
    from twisted.internet import endpoints, ssl

    kind, _, rest = description.partition(":")
    options = _endpointOptions(rest)
    if kind == "ssl":
        if ca is None:
            raise ValueError("a TLS node needs the CA that signs its clients (--ca)")
        key = options.get("privateKey")
        if key is None:
            raise ValueError("an ssl: listen string needs privateKey= (and certKey=)")
        cert = options.get("certKey", key)
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        tlsOptions = ssl.CertificateOptions(
            # Twisted takes cryptography's objects (its hints say pyOpenSSL's).
            privateKey=cast(Any, serialization.load_pem_private_key(_read(key), None)),
            certificate=cast(Any, x509.load_pem_x509_certificate(_read(cert))),
            verify=True,
            caCerts=[ssl.Certificate.loadPEM(_read(ca)).original],
            requireCertificate=True,
        )
        return endpoints.SSL4ServerEndpoint(
            reactor,
            int(options["port"]),
            tlsOptions,
            interface=options.get("interface", "127.0.0.1"),
        )
    if not insecurePlaintext:
        raise ValueError(
            f"refusing to listen without TLS on {description!r}: pickles are code; "
            "use ssl: with --ca, or say --insecure-plaintext (loopback or unix only)"
        )
    if kind == "tcp":
        interface = options.get("interface", "127.0.0.1")
        if interface not in LOOPBACK:
            raise ValueError(
                f"a plaintext node listens on loopback only, not {interface}"
            )
        return endpoints.TCP4ServerEndpoint(
            reactor, int(options["port"]), interface=interface
        )
    if kind == "unix":
        if "mode" not in options:
            # Only this user may connect: whoever can, can run code as it.
            description += ":mode=600"
        return endpoints.serverFromString(reactor, description)
    raise ValueError(f"a node listens on ssl:, tcp: or unix:, not {kind}:")


def _endpointOptions(rest: str) -> dict[str, str]:
    """Parse C{a=1:b=2} (with C{\\:} escapes); a bare first value is the port."""
    parts, current, escaped = [], "", False
    for char in rest:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    options: dict[str, str] = {}
    for i, part in enumerate(p for p in parts if p):
        name, equals, value = part.partition("=")
        if equals:
            options[name] = value
        elif i == 0:
            options["port"] = name
        else:
            raise ValueError(f"cannot read {part!r} in an endpoint string")
    return options


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class NodeService(Service):
    """
    A worker node as a Twisted service: a pool of processes and a listener.

    What C{twist asynqueue-node} and C{asynqueue-node} run.

    Peers that connect and then do nothing cannot hold the node's
    descriptors (see L{asynqueue.node.guard.ConnectionGuard}). A new connection
    has C{handshakeTimeout} seconds (10) to authenticate, or it is dropped:
    on a TLS node, to complete the handshake, which a client with a
    certificate the node trusts does in milliseconds; on a plaintext node,
    to send its first AMP box, which a L{RemoteWorker} does as soon as it
    connects. An authenticated client may then stay idle as long as it
    likes. At most C{maxUnauthenticated} connections (64) wait to
    authenticate at once, and at most C{maxConnections} are open (256, or
    half the descriptor limit if that is less, so that the cap comes before
    the limit). At a cap, a new connection evicts the one that has waited
    longest to authenticate, so idle peers cannot lock a real client out;
    it is refused only when every open connection has authenticated.
    C{clock} times the deadlines (the reactor if not given).
    """

    def __init__(
        self,
        listen: str = (
            "ssl:port=8789:interface=127.0.0.1:privateKey=node.key:certKey=node.crt"
        ),
        ca: str | None = None,
        processes: int | None = None,
        insecurePlaintext: bool = False,
        reactor: Any = None,
        universe: str | None = None,
        handshakeTimeout: float = 10.0,
        maxUnauthenticated: int = 64,
        maxConnections: int | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.universe = universe
        self.listen = listen
        self.ca = ca
        if processes is not None and processes < 1:
            raise ValueError(
                f"a node needs 1 process or more (None: one per core), not {processes}"
            )
        self.processes = processes or os.cpu_count() or 1
        self.insecurePlaintext = insecurePlaintext
        self.pool: NodePool | None = None
        self.port: Any = None
        self.guard: ConnectionGuard | None = None
        # Checked now, so that a bad option fails before anything starts.
        self.endpoint = nodeEndpoint(reactor, listen, ca, insecurePlaintext)
        self.handshakeTimeout = handshakeTimeout
        self.maxUnauthenticated = maxUnauthenticated
        self.maxConnections = maxConnections
        self.clock = clock if clock is not None else reactor
        self._guarded(Factory())  # checks the numbers

    def _guarded(self, factory: Factory) -> ConnectionGuard:
        return ConnectionGuard(
            factory,
            proof="tls" if self.listen.partition(":")[0] == "ssl" else "box",
            handshakeTimeout=self.handshakeTimeout,
            maxUnauthenticated=self.maxUnauthenticated,
            maxConnections=self.maxConnections,
            clock=self.clock,
        )

    def startService(self) -> Deferred[Any]:
        """
        Listen, then start the pool's processes; fire with the port.

        Listening comes first, so that a node that cannot listen (the port
        is taken) fails with L{CannotListenError} having started no child.
        """
        super().startService()
        factory = NodeFactory(None)
        self.guard = self._guarded(factory)
        d = self.endpoint.listen(self.guard)

        def listening(port: Any) -> Any:
            self.port = port
            try:
                self.pool = factory.pool = NodePool(
                    self.processes, universe=self.universe
                )
            except BaseException:
                port.stopListening()
                self.port = None
                raise
            log.info("asynqueue node listening on {address}", address=port.getHost())
            return port

        result: Deferred[Any] = d.addCallback(listening)
        return result

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d = self.port.stopListening() if self.port is not None else succeed(None)
        if self.pool is not None:
            pool = self.pool
            d.addCallback(lambda _: pool.stop())
        return d


class NodeOptions(usage.Options):
    """The options of C{twist asynqueue-node} and C{asynqueue-node}."""

    optParameters = [
        [
            "listen",
            "l",
            "ssl:port=8789:interface=127.0.0.1:privateKey=node.key:certKey=node.crt",
            "Endpoint string to listen on (ssl: for mutual TLS; loopback by default).",
        ],
        [
            "ca",
            None,
            None,
            "CA certificate (PEM) that signs the clients' certificates.",
        ],
        ["processes", "p", None, "How many worker processes (default: one per core)."],
        [
            "universe",
            None,
            None,
            "module.Class of a WireWorkerUniverse: run only its methods, no code.",
        ],
        [
            "handshake-timeout",
            None,
            "10",
            "Seconds a new connection has to authenticate (complete TLS, or "
            "send its first box in plaintext) before it is dropped.",
        ],
        [
            "max-unauthenticated",
            None,
            "64",
            "How many connections may wait to authenticate at once; at the cap "
            "a new one evicts the oldest waiting.",
        ],
        [
            "max-connections",
            None,
            None,
            "How many connections may be open at once "
            "(default: 256, or half the descriptor limit if less).",
        ],
    ]
    optFlags = [
        [
            "insecure-plaintext",
            None,
            "Listen without TLS (tcp: on loopback or unix: only). "
            "Anyone who can connect can run code as this user.",
        ]
    ]

    def postOptions(self) -> None:
        for name in ("processes", "max-unauthenticated", "max-connections"):
            if self[name] is not None:
                self[name] = _positive(name, self[name], int)
        self["handshake-timeout"] = _positive(
            "handshake-timeout", self["handshake-timeout"], float
        )


def _positive(name: str, text: str, kind: type[int] | type[float]) -> Any:
    """C{text} as a number over 0, or a one-line L{usage.UsageError}."""
    what = "a whole number" if kind is int else "a number of seconds"
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0 or value == float("inf"):
        raise usage.UsageError(f"--{name} must be {what} over 0, not {text!r}")
    return value


def makeNodeService(options: NodeOptions) -> NodeService:
    """A L{NodeService} configured by parsed L{NodeOptions}."""
    return NodeService(
        listen=options["listen"],
        ca=options["ca"],
        processes=options["processes"],
        insecurePlaintext=bool(options["insecure-plaintext"]),
        universe=options["universe"],
        handshakeTimeout=options["handshake-timeout"],
        maxUnauthenticated=options["max-unauthenticated"],
        maxConnections=options["max-connections"],
    )


def main(argv: list[str] | None = None) -> None:
    """The C{asynqueue-node} command: run a worker node until told to stop."""
    from twisted.internet.task import react

    options = NodeOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
        service = makeNodeService(options)
    except (usage.UsageError, ValueError, OSError) as e:
        sys.exit(f"asynqueue-node: {e}")

    def run(reactor: Any) -> Deferred[None]:
        from twisted.internet.error import CannotListenError
        from twisted.logger import globalLogBeginner, textFileLogObserver

        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)

        def listening(_: object) -> Deferred[None]:
            # The log (buffered until now) is shown once the node listens: a
            # node that cannot says why in one line, and nothing else.
            globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
            return Deferred()  # runs until a signal stops the reactor

        def cannotListen(failure: Failure) -> None:
            failure.trap(CannotListenError)
            e = cast(CannotListenError, failure.value)
            reason = getattr(e.socketError, "strerror", None) or e.socketError
            raise SystemExit(
                f"asynqueue-node: cannot listen on {e.interface or '*'}:{e.port}: "
                f"{reason}"
            )

        return service.startService().addCallbacks(listening, cannotListen)

    react(run)


class WireServer(NodeService):
    """
    AsynQueue's name for a node that serves a L{WireWorkerUniverse}.

    C{WireServer("module.MyUniverse", listen=..., ca=...)}: a L{NodeService}
    that runs only the universe's methods (see L{WireWorkerUniverse}).

    AsynQueue's form works too: C{WireServer(description, universe)} with
    C{start()} and C{stop()}, where C{universe} is the class's fully
    qualified name or an instance of it (the node's children make their
    own), and C{description} a C{unix:} socket (plaintext: put it in a
    directory only you can enter) or any listening description that
    C{listen} takes.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if len(args) == 2:
            description, universe = args
            kwargs.setdefault("listen", description)
            if str(description).startswith("unix:"):
                kwargs.setdefault("insecurePlaintext", True)
        elif len(args) == 1:
            (universe,) = args
        else:
            universe = kwargs.pop("universe")
        if not isinstance(universe, str):
            from twisted.python.reflect import fullyQualifiedName

            universe = fullyQualifiedName(type(universe))
        super().__init__(universe=universe, **kwargs)

    def start(self) -> Deferred[Any]:
        """AsynQueue's name for L{startService}."""
        return self.startService()

    def stop(self) -> Deferred[None]:
        """AsynQueue's name for L{stopService}."""
        return self.stopService()
