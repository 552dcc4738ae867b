"""
Remote workers: L{RemoteWorker} sends calls to a worker node over AMP.

The node (C{twist asynqueue-node}, see L{asynqueue.node.NodeService}) runs
them on its own child processes. The connection is mutual TLS: the worker
checks the node's certificate against the CA, and shows its own.
The worker keeps the connection up by itself, with back-off, and pings
a quiet node (a heartbeat) so that one that stops answering is dropped;
while disconnected the worker's capacity is 0, so it takes no tasks.

When the connection drops, the calls in flight on it fail with
L{NodeLost}; the queue runs each of them again on another worker only as
often as its C{retries} allow, since it may have run on the lost node.
Calls this worker had not yet sent go back to the queue, uncounted.
"""

from __future__ import annotations

import itertools
import pickle
import random
import re
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet import error
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.errors import (
    NodeLost,
    QueueRunError,
    TaskNotStarted,
    UnpicklableError,
)
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


#: TLS alerts a node sends when it will not take our certificate, in plain words.
_REFUSALS = {
    "unknown ca": "unknown CA",
    "decrypt error": "not signed by the node's CA",
    "bad certificate": "bad certificate",
    "certificate required": "we showed none",
    "certificate unknown": "certificate unknown",
    "certificate expired": "it has expired",
    "certificate revoked": "it was revoked",
    "unsupported certificate": "unsupported certificate",
    "access denied": "access denied",
}
_ALERT = re.compile(r"(?:sslv3|tlsv1\d?) alert (.*)")


def _explain(reason: Failure, where: str) -> str:
    """
    Why a connection to the node at C{where} (C{HOST:PORT}) failed or
    ended, in a few plain words: one line, no traceback.
    """
    e = reason.value
    if isinstance(e, error.ConnectionRefusedError):
        return f"nothing listens at {where}"
    if isinstance(e, error.DNSLookupError):
        return f"cannot look up the host of {where}"
    if isinstance(e, error.TimeoutError | error.TCPTimedOutError):
        return f"no answer from {where} (timed out)"
    if isinstance(e, error.NoRouteError):
        return f"no route to {where}"
    if isinstance(e, error.ConnectionDone):
        return "the node closed the connection"
    if isinstance(e, error.ConnectionLost):
        return "the connection was lost"
    if type(e).__name__ == "VerificationError":
        # service_identity's: the node's certificate is for another name.
        return f"the certificate of node {where} is not for that host name"
    if type(e).__module__.startswith("OpenSSL"):
        # pyOpenSSL's Error: a list of (library, function, reason).
        args = getattr(e, "args", ())
        reasons = [str(r[-1]) for r in (args[0] if args else []) if r]
        for text in reasons:
            alert = _ALERT.fullmatch(text)
            if alert is None:
                continue
            what = alert.group(1)
            if what in _REFUSALS:
                return f"node {where} refused our certificate ({_REFUSALS[what]})"
            return f"node {where} broke off the TLS handshake ({what})"
        if "certificate verify failed" in reasons:
            return (
                f"we refused the certificate of node {where} (not signed by "
                "our CA, or expired)"
            )
        return f"TLS with node {where} failed ({'; '.join(reasons) or e})"
    return f"{type(e).__name__}: {e}"


def _handBack(task: Task, attempt: int, why: str) -> None:
    """
    Give back a task that never left this client (L{TaskNotStarted}).

    It cannot have run, so it uses up none of its C{retries}: the queue
    runs it on a worker again.
    """
    task.finished(Failure(TaskNotStarted(f"{why} (the call was never sent)")), attempt)


class _NodeConnection(amp.AMP):
    """
    One connection to a node: calls out, results back, and a heartbeat.

    Results are read straight off the wire (L{BoxReader}), their framing as
    plain data only; every other box goes through AMP as usual. Any byte
    from the node is a sign of life; a node that has sent nothing for
    C{worker.heartbeat} seconds is pinged (L{NodeInfo}), and one silent for
    C{missedHeartbeats} of them is taken for lost: the connection is
    aborted.
    """

    #: A node sending a box larger than this (bytes) is cut off.
    maxBoxBytes = 1 << 30

    def __init__(self, worker: RemoteWorker) -> None:
        super().__init__()
        self.worker = worker
        self.inFlight: dict[int, tuple[Task, int]] = {}
        self._reader = BoxReader(self._boxReceived, self._malformed, self.maxBoxBytes)
        self.outgoing: list[tuple[int, bytes]] = []
        self.flushCall: IDelayedCall | None = None
        self.openIterators = 0
        self.dead = False
        #: The node said what it is (answered L{NodeInfo}): the connection works.
        self.ready = False
        #: Why I aborted the connection myself, if I did.
        self.abortedBecause: str | None = None
        self._heard = False
        self._missed = 0
        self._pinging = False
        self._heartbeatCall: IDelayedCall | None = None

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
        # Until the node answers, the handshake and NodeInfo count as silence.
        self._beatLater()
        self.callRemote(NodeInfo).addCallbacks(self._ready, self._noInfo)

    def _ready(self, info: dict[str, Any]) -> None:
        if self.dead:
            return
        self.ready = True
        self.worker.processes = int(info.get("processes") or 1)
        self.worker.connected(self, int(info["capacity"]))

    def _noInfo(self, failure: Failure) -> None:
        # A lost connection says why itself (connectionLost), once.
        if not self.dead:
            self.worker.log.warn(
                "Node {node} did not say what it is ({why}); disconnecting",
                node=self.worker.description,
                why=failure.getErrorMessage(),
            )
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        # A flag, not a clock reading: this runs for every chunk of results.
        self._heard = True
        self._reader.feed(data)

    def _beatLater(self) -> None:
        interval = self.worker.heartbeat
        if interval and not self.dead:
            self._heartbeatCall = self.worker.reactor.callLater(interval, self._beat)

    def _beat(self) -> None:
        # Silence is counted in heartbeats, not read off the clock: after
        # this process was busy for a while, its timers run before it reads
        # what the node sent meanwhile, and that must not look like silence.
        self._heartbeatCall = None
        worker = self.worker
        if self._heard:
            self._heard = False
            self._missed = 0
        else:
            self._missed += 1
            if self._missed >= worker.missedHeartbeats:
                # Stopped, frozen or cut off without a word: the kernel may
                # keep such a connection open for minutes. Its calls fail
                # over now. (The same words each time, so that a node frozen
                # for good is logged once, not once an attempt.)
                self.abortedBecause = (
                    f"the node sent nothing for {worker.missedHeartbeats} "
                    f"heartbeats of {worker.heartbeat:g} s"
                )
                self.transport.abortConnection()  # type: ignore[union-attr]
                return
            if self.ready and not self._pinging:
                self._pinging = True
                self.callRemote(NodeInfo).addBoth(self._pong)
        self._beatLater()

    def _pong(self, _: object) -> None:
        # The answer itself came through dataReceived; a failure is the
        # connection's loss, which connectionLost handles.
        self._pinging = False

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
        self.worker.log.warn(
            "Node {node} sent {why}", node=self.worker.description, why=why
        )
        if self.transport is not None:
            self.transport.loseConnection()

    def send(self, taskID: int, task: Task, attempt: int, call: bytes) -> None:
        self.inFlight[taskID] = (task, attempt)
        self.outgoing.append((taskID, call))
        if self.flushCall is None:
            self.flushCall = self.worker.reactor.callLater(0, self.flush)

    def flush(self) -> None:
        self.flushCall = None
        transport = self.transport
        # Nothing goes to a connection being closed: what is still here when
        # it is lost was never sent, and is handed back.
        if (
            self.outgoing
            and not self.dead
            and transport is not None
            and not getattr(transport, "disconnecting", False)
        ):
            batch, self.outgoing = self.outgoing, []
            writeBox(transport, [(b"_command", b"RunTasks"), (b"batch", dumps(batch))])
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

    def takeUnsent(self) -> list[tuple[Task, int]]:
        """Withdraw the calls not yet written to the node; they are mine again."""
        unsent = [self.inFlight.pop(taskID) for taskID, _ in self.outgoing]
        self.outgoing = []
        return unsent

    def _received(self, taskID: int, status: str, payload: Any) -> None:
        entry = self.inFlight.pop(taskID, None)
        if entry is not None:
            reportResult(entry[0], entry[1], status, payload, self)
        self.worker.idleCheck()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Dead first: the AMP calls failed below must not act on this
        # connection, nor report its loss a second time.
        self.dead = True
        for call in (self._heartbeatCall, self.flushCall):
            if call is not None and call.active():
                call.cancel()
        self._heartbeatCall = self.flushCall = None
        self._reader.stop()
        worker = self.worker
        why = self.abortedBecause or _explain(reason, worker.address)
        if (
            not self.ready
            and not self.abortedBecause
            and isinstance(reason.value, error.ConnectionDone | error.ConnectionLost)
        ):
            why = (
                f"node {worker.address} closed the connection before saying what it is"
            )
        unsent = self.takeUnsent()
        lost = list(self.inFlight.values())
        self.inFlight.clear()
        # The worker's capacity goes to 0 before anything else can run: what
        # the failed AMP calls below set off must not send it more tasks.
        worker.disconnected(self, why)
        super().connectionLost(reason)
        gone = f"the connection to node {worker.description} was lost ({why})"
        for task, attempt in unsent:
            _handBack(task, attempt, gone)
        for task, attempt in lost:
            task.finished(Failure(NodeLost(gone)), attempt)


@implementer(IReportingWorker)
class RemoteWorker:
    """
    Runs calls on a remote worker node.

    C{RemoteWorker("tls:node1:8789", certificate="client.pem", ca="ca.crt")}:
    C{certificate} is this client's certificate and key (PEM), C{ca} the
    certificate of the CA that signed the node's. The worker's capacity is
    what the node says it can take (0 while disconnected).

    It connects in the background and reconnects whenever the connection
    drops or an attempt fails, waiting C{retryDelay} seconds, then 1.5
    times longer after each failed attempt, up to C{maxRetryDelay}; the wait
    starts afresh only after a connection that worked (the node said what
    it is). It logs a line when the node is lost, when the reason it cannot
    connect changes, when the wait reaches its longest, and when the node
    is back.

    C{heartbeat}: every so many seconds the worker looks whether anything
    came from the node since its last look (any message counts, so a busy
    node is not pinged), and pings it (L{NodeInfo}) if not. A node from
    which nothing came for C{missedHeartbeats} heartbeats in a row (6 to
    8 s by default) is taken for lost, as is one that does not complete the
    handshake and say what it is in that time: the connection is aborted,
    its calls in flight fail with L{NodeLost}, and the worker reconnects.
    C{None} or 0 turns the heartbeat off.

    C{reactor}, to connect with and for the timers, is the global reactor
    if not given.
    """

    log = Logger()
    _ids = itertools.count(1)
    #: Calls travel pickled, so a queue of such workers pickles them at once.
    picklesCalls = True
    #: Seconds to wait before reconnecting, at first.
    retryDelay = 0.2
    #: The longest wait between two attempts to connect, in seconds.
    maxRetryDelay = 30.0

    def __init__(
        self,
        description: str,
        certificate: str | None = None,
        ca: str | None = None,
        name: str | None = None,
        series: Iterable[Any] = (),
        insecurePlaintext: bool = False,
        reactor: Any = None,
        heartbeat: float | None = 2.0,
        missedHeartbeats: int = 3,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if heartbeat is not None and heartbeat < 0:
            raise ValueError(f"heartbeat must be positive seconds, not {heartbeat}")
        if missedHeartbeats < 1:
            raise ValueError(f"missedHeartbeats must be 1 or more: {missedHeartbeats}")
        self.reactor = reactor
        self.description = description
        kind, _, rest = description.partition(":")
        #: C{HOST:PORT} (or a unix socket's path), for messages.
        self.address = rest if kind in ("tls", "tcp", "unix") else description
        self.name = name or f"RemoteWorker-{next(self._ids)}@{description}"
        self.iQualified: list[Any] = list(series)
        self.capacity = 0
        #: How many processes the node runs calls in (known once connected).
        self.processes = 0
        self.heartbeat = heartbeat or 0.0
        self.missedHeartbeats = missedHeartbeats
        self._connection: _NodeConnection | None = None
        self._resignator: Callable[[Any], object] | None = None
        self._capacityObserver: Callable[[], object] | None = None
        self._taskIDs = itertools.count(1)
        self._stopped = False
        self._idleWaiters: list[Deferred[None]] = []
        self._connectWaiters: list[Deferred[RemoteWorker]] = []
        # The reconnecting machine: at most one of these is not None.
        self._attempt: Deferred[Any] | None = None
        self._link: _NodeConnection | None = None
        self._retryCall: IDelayedCall | None = None
        self._closing = False
        self._closedWaiters: list[Deferred[None]] = []
        # Failed attempts since the last connection that worked, and what
        # was last said about why there is none.
        self._failures = 0
        self._down: str | None = None
        self._downSince = 0.0
        self._saidLongest = False
        self._wasConnected = False
        self._endpoint = clientEndpoint(
            reactor, description, certificate, ca, insecurePlaintext
        )
        self._factory = Factory.forProtocol(lambda: _NodeConnection(self))
        # Otherwise every attempt logs "Starting factory" and "Stopping factory".
        self._factory.noisy = False
        self._connect()

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

    # -- the reconnecting machine: connect, wait, connect again ------------

    def _connect(self) -> None:
        self._retryCall = None
        # maybeDeferred: an endpoint that raises is a failed attempt too, not
        # the end of reconnecting.
        d = self._attempt = maybeDeferred(self._endpoint.connect, self._factory)
        d.addCallbacks(self._linked, self._attemptFailed)

    def _linked(self, connection: _NodeConnection) -> None:
        self._attempt = None
        if connection.dead:
            return
        self._link = connection
        if self._closing:
            connection.transport.loseConnection()  # type: ignore[union-attr]

    def _attemptFailed(self, reason: Failure) -> None:
        self._attempt = None
        if not self._closing:
            self._failed(_explain(reason, self.address))

    def _failed(self, why: str) -> None:
        """An attempt to connect failed: say so if that is news, and retry."""
        if self._closing:
            self._closed()
            return
        self._failures += 1
        if why != self._down:
            if self._down is None:
                self._downSince = self.reactor.seconds()
            self._down = why
            self.log.warn(
                "Cannot connect to node {node}: {why}; trying again",
                node=self.description,
                why=why,
            )
        delay = self._retryLater()
        if delay >= self.maxRetryDelay and not self._saidLongest:
            self._saidLongest = True
            self.log.warn(
                "Node {node} still unreachable after {n} attempts in {s:.0f} s "
                "({why}); trying every {delay:.0f} s",
                node=self.description,
                n=self._failures,
                s=self.reactor.seconds() - self._downSince,
                why=why,
                delay=self.maxRetryDelay,
            )

    def _retryLater(self) -> float:
        """Schedule the next attempt; return the wait without its jitter."""
        delay = min(self.maxRetryDelay, self.retryDelay * 1.5**self._failures)
        # Jitter, so that the clients of a restarted node do not all come at once.
        self._retryCall = self.reactor.callLater(
            delay * (1 + 0.1 * random.random()), self._connect
        )
        return delay

    def connected(self, connection: _NodeConnection, capacity: int) -> None:
        """The node said what it is: the connection works."""
        self._connection = connection
        self.capacity = max(1, capacity)
        if self._down is None:
            self.log.info(
                "Connected to node {node}, capacity {n}",
                node=self.description,
                n=capacity,
            )
        else:
            self.log.info(
                "{what} after {s:.1f} s, capacity {n}",
                what=f"Node {self.description} is back"
                if self._wasConnected
                else f"Connected to node {self.description}",
                s=self.reactor.seconds() - self._downSince,
                n=capacity,
            )
        self._wasConnected = True
        self._failures = 0
        self._down = None
        self._saidLongest = False
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.callback(self)
        self._tellCapacity()

    def disconnected(self, connection: _NodeConnection, why: str = "") -> None:
        """A connection ended (C{why}, in plain words); reconnect unless closing."""
        if connection is self._link:
            self._link = None
        if connection is self._connection:
            self._connection = None
            self.capacity = 0
            self._tellCapacity()
            self.idleCheck()
            if self._closing:
                self._closed()
                return
            self._down = why
            self._downSince = self.reactor.seconds()
            self.log.warn(
                "Lost the connection to node {node} ({why}); reconnecting",
                node=self.description,
                why=why,
            )
            self._retryLater()
        else:
            # It never worked: a failed attempt.
            self._failed(why)

    def _close(self, abort: bool = False) -> Deferred[None]:
        """
        Stop reconnecting and close the connection (at once, if C{abort});
        fire once it is closed.
        """
        self._closing = True
        if self._retryCall is not None and self._retryCall.active():
            self._retryCall.cancel()
        self._retryCall = None
        if self._attempt is not None:
            self._attempt.cancel()
        link = self._link
        if link is None or link.dead:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._closedWaiters.append(d)
        if abort:
            link.transport.abortConnection()  # type: ignore[union-attr]
        else:
            link.transport.loseConnection()  # type: ignore[union-attr]
        return d

    def _closed(self) -> None:
        waiters, self._closedWaiters = self._closedWaiters, []
        for d in waiters:
            d.callback(None)

    def _tellCapacity(self) -> None:
        if self._capacityObserver is not None:
            self._capacityObserver()

    # -- running calls ------------------------------------------------------

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
        if connection is None or connection.dead:
            _handBack(task, attempt, f"{self.name} is not connected")
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
            return self._close()

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
        link = self._link
        unsent = [task for task, _ in link.takeUnsent()] if link is not None else []
        self._close(abort=True)
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
