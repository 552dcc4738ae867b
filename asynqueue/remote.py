"""
Remote workers: L{RemoteWorker} sends calls to a worker node over AMP.

The node (C{twist asynqueue-node}, see L{asynqueue.node.NodeService}) runs
them on its own child processes. The connection is mutual TLS: the worker
checks the node's certificate against the CA, and shows its own.
Connections are kept up by Twisted's C{ClientService}, with back-off;
while disconnected the worker's capacity is 0, so it takes no tasks.

When the connection drops, the calls in flight on it fail with
L{NodeLost}; the queue runs each of them again on another worker, once
(or as many times as its C{retries} allow). Such a task may have run on
the lost node too: that is the one case where a task runs twice.
"""

from __future__ import annotations

import itertools
import pickle
from collections.abc import Callable, Iterable
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.errors import NodeLost, QueueRunError, UnpicklableError
from asynqueue.interfaces import IReportingWorker
from asynqueue.tasks import Task
from asynqueue.wire import (
    PROTOCOL,
    BoxReader,
    NodeInfo,
    Stop,
    WireWorkerUniverse,
    bigValue,
    dumps,
    loadsPlain,
    pickledCall,
    reportResult,
    writeBox,
)
from asynqueue.workers import runReporting

__all__ = ["RemoteWorker", "WireWorker", "clientEndpoint"]

_LOOPBACK = ("127.0.0.1", "::1", "localhost")
_LOST = Failure(ConnectionError("connection lost"))


def clientEndpoint(
    reactor: Any,
    description: str,
    certificate: str | None = None,
    ca: str | None = None,
    insecurePlaintext: bool = False,
) -> Any:
    """
    The endpoint to reach a node: C{tls:HOST:PORT} (mutual TLS, the default
    kind), or, with C{insecurePlaintext}, C{tcp:HOST:PORT} on loopback or
    C{unix:PATH}.
    """
    from twisted.internet import endpoints, ssl

    kind, _, rest = description.partition(":")
    if kind not in ("tls", "tcp", "unix"):
        kind, rest = "tls", description
    if kind == "unix":
        if not insecurePlaintext:
            raise ValueError("a unix: node is plaintext: say insecurePlaintext=True")
        return endpoints.UNIXClientEndpoint(reactor, rest)
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit():
        raise ValueError(f"give a node as tls:HOST:PORT, not {description!r}")
    if kind == "tcp":
        if not insecurePlaintext or host not in _LOOPBACK:
            raise ValueError(
                "plaintext reaches only a node on loopback, and only with "
                "insecurePlaintext=True; use tls:HOST:PORT"
            )
        return endpoints.HostnameEndpoint(reactor, host, int(port))
    if certificate is None or ca is None:
        raise ValueError("a TLS node needs certificate= (yours) and ca= (the nodes')")
    with open(certificate, "rb") as f:
        mine = ssl.PrivateCertificate.loadPEM(f.read())
    with open(ca, "rb") as f:
        authority = ssl.Certificate.loadPEM(f.read())
    options = ssl.optionsForClientTLS(host, trustRoot=authority, clientCertificate=mine)
    return endpoints.wrapClientTLS(
        options, endpoints.HostnameEndpoint(reactor, host, int(port))
    )


class _NodeConnection(amp.AMP):
    """
    One connection to a node: calls out, results back.

    Results are read straight off the wire (L{BoxReader}), their framing as
    plain data only; every other box goes through AMP as usual.
    """

    #: A node sending a box larger than this (bytes) is cut off.
    maxBoxBytes = 1 << 30

    def __init__(self, worker: RemoteWorker) -> None:
        super().__init__()
        self.worker = worker
        self.inFlight: dict[int, tuple[Task, int]] = {}
        self._reader = BoxReader(self._boxReceived, self._malformed, self.maxBoxBytes)
        self.outgoing: list[tuple[int, bytes]] = []
        self.flushCall: Any = None
        self.openIterators = 0
        self.dead = False

    @property
    def amp(self) -> amp.AMP:
        return self

    @property
    def where(self) -> str:
        return f"node {self.worker.description}"

    def iteratorClosed(self) -> None:
        self.openIterators -= 1

    def connectionMade(self) -> None:
        super().connectionMade()
        self.callRemote(NodeInfo).addCallbacks(self._ready, self._noInfo)

    def _ready(self, info: dict[str, Any]) -> None:
        self.worker.processes = int(info.get("processes") or 1)
        self.worker.connected(self, int(info["capacity"]))

    def _noInfo(self, failure: Failure) -> None:
        self.worker.log.failure(
            "Node {node} did not say what it is", failure, node=self.where
        )
        self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self._reader.feed(data)

    def _boxReceived(self, box: dict[bytes, Any]) -> None:
        command = box.get(b"_command")
        if command == b"TaskResults" and b"_ask" not in box:
            # Framing from the node is read as plain data only.
            for taskID, status, payload, _ in loadsPlain(
                bigValue(box, b"batch") or b""
            ):
                self._received(taskID, status, payload)
        elif command == b"TaskResult" and b"_ask" not in box:
            try:
                taskID = int(bytes(box[b"taskID"]))
                status = bytes(box[b"status"]).decode()
            except (KeyError, ValueError):
                self._malformed("a malformed TaskResult")
                return
            self._received(taskID, status, bytes(bigValue(box, b"payload") or b""))
        else:
            self.ampBoxReceived(amp.AmpBox((k, bytes(v)) for k, v in box.items()))

    def _malformed(self, why: str) -> None:
        self._reader.stop()
        self.worker.log.warn("Node {node} sent {why}", node=self.where, why=why)
        if self.transport is not None:
            self.transport.loseConnection()

    def send(self, taskID: int, task: Task, attempt: int, call: bytes) -> None:
        self.inFlight[taskID] = (task, attempt)
        self.outgoing.append((taskID, call))
        if self.flushCall is None:
            self.flushCall = self.worker.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self.flushCall = None
        if self.outgoing and not self.dead and self.transport is not None:
            batch, self.outgoing = self.outgoing, []
            writeBox(
                self.transport, [(b"_command", b"RunTasks"), (b"batch", dumps(batch))]
            )
            # The node starts what it is sent at once (up to the capacity it
            # gave), so a task's timeout runs from here.
            for taskID, _ in batch:
                entry = self.inFlight.get(taskID)
                if entry is not None:
                    entry[0].markStarted()

    def cancel(self, taskID: int) -> None:
        if self.inFlight.pop(taskID, None) is not None and not self.dead:
            self.outgoing = [(t, c) for t, c in self.outgoing if t != taskID]
            if self.transport is not None:
                writeBox(
                    self.transport,
                    [(b"_command", b"CancelTask"), (b"taskID", b"%d" % taskID)],
                )

    def _received(self, taskID: int, status: str, payload: Any) -> None:
        entry = self.inFlight.pop(taskID, None)
        if entry is not None:
            reportResult(entry[0], entry[1], status, payload, self)
        self.worker.idleCheck()

    def connectionLost(self, reason: Failure = _LOST) -> None:
        super().connectionLost(reason)
        self.dead = True
        self._reader.stop()
        lost = list(self.inFlight.values())
        self.inFlight.clear()
        self.worker.disconnected(self)
        for task, attempt in lost:
            error = NodeLost(
                f"the connection to node {self.worker.description} was lost "
                f"({reason.getErrorMessage()})"
            )
            task.finished(Failure(error), attempt)


@implementer(IReportingWorker)
class RemoteWorker:
    """
    Runs calls on a remote worker node.

    C{RemoteWorker("tls:node1:8789", certificate="client.pem", ca="ca.crt")}:
    C{certificate} is this client's certificate and key (PEM), C{ca} the
    certificate of the CA that signed the node's. The worker's capacity is
    what the node says it can take (0 while disconnected).
    """

    log = Logger()
    _ids = itertools.count(1)
    #: Calls travel pickled, so a queue of such workers pickles them at once.
    picklesCalls = True

    def __init__(
        self,
        description: str,
        certificate: str | None = None,
        ca: str | None = None,
        name: str | None = None,
        series: Iterable[Any] = (),
        insecurePlaintext: bool = False,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.description = description
        self.name = name or f"RemoteWorker-{next(self._ids)}@{description}"
        self.iQualified: list[Any] = list(series)
        self.capacity = 0
        #: How many processes the node runs calls in (known once connected).
        self.processes = 0
        self._connection: _NodeConnection | None = None
        self._resignator: Callable[[Any], object] | None = None
        self._capacityObserver: Callable[[], object] | None = None
        self._taskIDs = itertools.count(1)
        self._stopped = False
        self._idleWaiters: list[Deferred[None]] = []
        self._connectWaiters: list[Deferred[RemoteWorker]] = []
        endpoint = clientEndpoint(
            reactor, description, certificate, ca, insecurePlaintext
        )
        factory = Factory.forProtocol(lambda: _NodeConnection(self))
        self._service = ClientService(
            endpoint,
            factory,
            retryPolicy=backoffPolicy(initialDelay=0.2, maxDelay=30.0),
            clock=reactor,
        )
        self._service.startService()

    def __repr__(self) -> str:
        return f"<RemoteWorker {self.name}>"

    def setResignator(self, callableObject: Callable[[Any], object]) -> None:
        """Register what to call, with me, if I must resign."""
        self._resignator = callableObject

    def setCapacityObserver(self, callableObject: Callable[[], object]) -> None:
        """Register what to call when my capacity changes (on (dis)connection)."""
        self._capacityObserver = callableObject

    def whenConnected(self) -> Deferred[RemoteWorker]:
        """A Deferred that fires with me once I am connected and know my capacity."""
        if self._connection is not None and self.capacity:
            return succeed(self)
        d: Deferred[RemoteWorker] = Deferred()
        self._connectWaiters.append(d)
        return d

    def connected(self, connection: _NodeConnection, capacity: int) -> None:
        self._connection = connection
        self.capacity = max(1, capacity)
        self.log.info(
            "Connected to node {node}, capacity {n}", node=self.description, n=capacity
        )
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.callback(self)
        self._tellCapacity()

    def disconnected(self, connection: _NodeConnection) -> None:
        if connection is self._connection:
            self._connection = None
            self.capacity = 0
            self._tellCapacity()
        self.idleCheck()

    def _tellCapacity(self) -> None:
        if self._capacityObserver is not None:
            self._capacityObserver()

    def run(self, task: Task) -> Deferred[Any]:
        """Pickle the call now and send it to the node; a Deferred of its result."""
        return runReporting(self, task)

    def start(self, task: Task) -> None:
        """Pickle the call now (unless it was) and send it to the node."""
        attempt = task.runs
        if self._stopped:
            stopped = QueueRunError(f"{self.name} is stopped")
            task.finished(Failure(stopped), attempt)
            return
        try:
            call = self._callFor(task)
        except (TypeError, UnpicklableError):
            task.finished(Failure(), attempt)
            return
        connection = self._connection
        if connection is None:
            lost = NodeLost(f"{self.name} is not connected")
            task.finished(Failure(lost), attempt)
            return
        taskID = next(self._taskIDs)
        task.handle = (connection, taskID)
        connection.send(taskID, task, attempt, call)

    def _callFor(self, task: Task) -> bytes:
        """The call to send for C{task}, pickled."""
        return pickledCall(task)

    def abandon(self, task: Task) -> None:
        """Withdraw the task from the node (a running one is left to run)."""
        handle = task.handle
        if isinstance(handle, tuple) and len(handle) == 2:
            connection, taskID = handle
            connection.cancel(taskID)

    def stop(self) -> Deferred[None]:
        """Finish what the node is running for me, then disconnect for good."""
        self._stopped = True
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        self.idleCheck()

        def disconnect(_: object) -> Deferred[None]:
            connection = self._connection
            if connection is not None and not connection.dead:
                connection.callRemote(Stop).addErrback(lambda _: None)
            return self._service.stopService()

        return d.addCallback(disconnect)

    def idleCheck(self) -> None:
        connection = self._connection
        if (connection is None or not connection.inFlight) and self._idleWaiters:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def crash(self) -> list[Task]:
        """Drop the connection now; calls in flight fail with L{NodeLost}."""
        self._stopped = True
        unsent: list[Task] = []
        connection = self._connection
        if connection is not None:
            for taskID, _ in connection.outgoing:
                task, _attempt = connection.inFlight.pop(taskID)
                unsent.append(task)
            connection.outgoing = []
            if connection.transport is not None:
                connection.transport.loseConnection()
        self._service.stopService()
        return unsent

    def info(self) -> dict[str, Any]:
        """What L{TaskQueue.stats} shows of me."""
        return {"node": self.description, "connected": self._connection is not None}


class WireWorker(RemoteWorker):
    """
    AsynQueue's worker for a node serving a L{WireWorkerUniverse}.

    C{WireWorker("tls:node1:8789", series=["logs"], certificate=..., ca=...)};
    then C{queue.call("methodName", *args, series="logs")} runs the
    universe's method on the node. Only plain data travels: the method's
    name and arguments of numbers, strings, bytes and containers of them.
    (AsynQueue passed the universe instance first; it is accepted and
    ignored, since the node has its own.)
    """

    # A universe's calls are names and plain data, pickled by the worker.
    picklesCalls = False

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args and isinstance(args[0], WireWorkerUniverse):
            args = args[1:]
        super().__init__(*args, **kwargs)

    def _callFor(self, task: Task) -> bytes:
        """The method name and arguments, as plain data."""
        if not isinstance(task.f, str):
            raise TypeError(
                f"{self.name} runs universe methods by name, not {task.f!r}"
            )
        try:
            call = pickle.dumps((task.f, task.args, task.kwargs), PROTOCOL)
            loadsPlain(call)
        except Exception as e:
            raise UnpicklableError(f"only plain data goes to a universe: {e}") from e
        return call
