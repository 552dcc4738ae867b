"""
Remote workers: L{RemoteWorker} sends calls to a worker node over AMP
(mutual TLS), reconnecting with back-off; L{WireWorker} is AsynQueue's
worker for a node that serves a universe.

A call lost with its node fails with L{NodeLost}, or runs again as its
C{retries} allow; a call never sent goes to another worker.
"""

from __future__ import annotations

import itertools
import pickle
import random
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer, implementer_only

from asynqueue.errors import (
    NodeLost,
    NodeUnreachable,
    NoWorkers,
    QueueRunError,
    UnpicklableError,
)
from asynqueue.interfaces import (
    ICallPickling,
    ICapacityReporting,
    IDescribedWorker,
    IReportingWorker,
    IResignationExplaining,
)
from asynqueue.tasks import Task
from asynqueue.wire.commands import Stop
from asynqueue.wire.functions import plainKeywords
from asynqueue.wire.pickling import (
    PROTOCOL,
    CallPickler,
    loadsPlain,
    pickledCall,
)
from asynqueue.wire.universe import WireWorkerUniverse
from asynqueue.workers.base import runReporting
from asynqueue.workers.connection import (
    _explain,
    _handBack,
    _NodeConnection,
    clientEndpoint,
)


@implementer(
    IReportingWorker,
    ICallPickling,
    ICapacityReporting,
    IDescribedWorker,
    IResignationExplaining,
)
class RemoteWorker(CallPickler):
    """
    Runs calls on a remote worker node.

    C{RemoteWorker("tls:node1:8789", certificate="client.pem", ca="ca.crt")}:
    C{certificate} is this client's certificate and key (PEM), C{ca} the
    certificate of the CA that signed the node's (a file that is not what
    it should be raises C{ValueError} saying so). The worker's capacity is
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

    C{connectDeadline}: a worker without a working connection for so many
    seconds (since it was made, or since it lost its node) gives up: it
    resigns from its queue, which runs its calls on its other workers, or,
    if it was the last, fails them with L{NoWorkers} saying why (C{"node
    tls:HOST:PORT unreachable for 30 s (nothing listens at HOST:PORT)"});
    L{whenConnected} fails with L{NodeLost}. C{None} (the default): it
    keeps trying for ever, and calls wait.

    C{reactor}, to connect with and for the timers, is the global reactor
    if not given.
    """

    log = Logger()
    _ids = itertools.count(1)
    #: Seconds to wait before reconnecting, at first.
    retryDelay = 0.2
    #: The longest wait between two attempts to connect, in seconds.
    maxRetryDelay = 30.0
    #: Seconds that stopping waits for the connection to close gently (the
    #: node reading what was sent, TLS's close alert answered) before it
    #: aborts it: a frozen node never answers, and nothing of ours needs it.
    closeGrace = 2.0

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
        connectDeadline: float | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if heartbeat is not None and heartbeat < 0:
            raise ValueError(f"heartbeat must be positive seconds, not {heartbeat}")
        if missedHeartbeats < 1:
            raise ValueError(f"missedHeartbeats must be 1 or more: {missedHeartbeats}")
        if connectDeadline is not None and not 0 < connectDeadline < float("inf"):
            raise ValueError(
                f"connectDeadline must be positive seconds, not {connectDeadline}"
            )
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
        self._graceCall: IDelayedCall | None = None
        # Failed attempts since the last connection that worked, and what
        # was last said about why there is none.
        self._failures = 0
        self._down: str | None = None
        self._downSince = 0.0
        self._saidLongest = False
        self._wasConnected = False
        self.connectDeadline = connectDeadline
        self._deadlineCall: IDelayedCall | None = None
        #: The error calls fail with if I was the last worker (NodeUnreachable).
        self.resignationError: type[NoWorkers] | None = None
        #: Why I gave up (L{IResignationExplaining}); None while I try.
        self.resignedBecause: str | None = None
        if certificate is not None or ca is not None:
            from asynqueue.node.certs import checkPEM

            # A PEM file of the wrong kind is said here, in plain words, not
            # as OpenSSL's decoder errors.
            if certificate is not None:
                checkPEM(certificate, "certificate=", withKey=True)
            if ca is not None:
                checkPEM(ca, "ca=")
        self._endpoint = clientEndpoint(
            reactor, description, certificate, ca, insecurePlaintext
        )
        self._factory = Factory.forProtocol(lambda: _NodeConnection(self))
        # Otherwise every attempt logs "Starting factory" and "Stopping factory".
        self._factory.noisy = False
        self._startDeadline()
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

    @property
    def unreachableBecause(self) -> str | None:
        """
        Why the last attempt to connect failed, in plain words (C{"nothing
        listens at HOST:PORT"}); C{None} while connected or before an
        attempt failed.
        """
        return self._down

    def _startDeadline(self) -> None:
        """Without a working connection: give up in C{connectDeadline} s."""
        if self.connectDeadline is not None and self._deadlineCall is None:
            self._deadlineCall = self.reactor.callLater(
                self.connectDeadline, self._giveUp
            )

    def _stopDeadline(self) -> None:
        if self._deadlineCall is not None and self._deadlineCall.active():
            self._deadlineCall.cancel()
        self._deadlineCall = None

    def _giveUp(self) -> None:
        """No working connection for C{connectDeadline} s: resign."""
        self._deadlineCall = None
        self.resignedBecause = (
            f"node {self.description} unreachable for {self.connectDeadline:g} s "
            f"({self._down or 'no answer'})"
        )
        self.resignationError = NodeUnreachable
        self.log.warn("Giving up: {why}", why=self.resignedBecause)
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.errback(NodeLost(self.resignedBecause))
        if self._resignator is not None:
            self._resignator(self)

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
            # Nobody waits for this one to close: a gentle close could hold
            # its descriptor for as long as a frozen peer stays frozen.
            connection.transport.abortConnection()  # type: ignore[union-attr]

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
        self._stopDeadline()
        self.resignedBecause = None
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
            self._startDeadline()
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
        Stop reconnecting and close the connection (at once, if C{abort};
        else gently, but aborted after C{closeGrace} s); fire once it is
        closed.
        """
        self._closing = True
        self._stopDeadline()
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
            if self._graceCall is None:
                self._graceCall = self.reactor.callLater(
                    self.closeGrace, self._outstayed, link
                )
        return d

    def _outstayed(self, link: _NodeConnection) -> None:
        """The node did not close within C{closeGrace}: abort the connection."""
        self._graceCall = None
        if link.dead:
            return
        self.log.warn(
            "Node {node} did not close the connection within {grace:g} s "
            "(frozen, or cut off); aborting it",
            node=self.description,
            grace=self.closeGrace,
        )
        link.transport.abortConnection()  # type: ignore[union-attr]

    def _closed(self) -> None:
        if self._graceCall is not None and self._graceCall.active():
            self._graceCall.cancel()
        self._graceCall = None
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
        unsent = [
            sent.task
            for sent in (link.takeUnsent() if link is not None else [])
            if sent.task is not None
        ]
        self._close(abort=True)
        return unsent

    def info(self) -> dict[str, Any]:
        """What L{TaskQueue.stats} shows of me."""
        return {"node": self.description, "connected": self._connection is not None}


# A universe's calls are names and plain data, pickled by the worker as it
# sends them: not ICallPickling.
@implementer_only(IReportingWorker, ICapacityReporting, IDescribedWorker)
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

    #: AsynQueue's class qualifications: series every wire worker runs.
    cQualified: ClassVar[list[Any]] = ["wire", "remote"]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args and isinstance(args[0], WireWorkerUniverse):
            args = args[1:]
        # AsynQueue's keywords, accepted: the node says how many calls it
        # takes at once (N_concurrent), and its own processes run them
        # (thread); a universe's results are plain data (raw).
        for keyword in ("raw", "thread", "N_concurrent"):
            kwargs.pop(keyword, None)
        super().__init__(*args, **kwargs)

    def _callFor(self, task: Task) -> bytes:
        """The method name and arguments, as plain data."""
        if not isinstance(task.f, str):
            raise TypeError(
                f"{self.name} runs universe methods by name, not {task.f!r}"
            )
        try:
            kwargs = plainKeywords(task.kwargs)
            call = pickle.dumps((task.f, task.args, kwargs), PROTOCOL)
            loadsPlain(call)
        except Exception as e:
            raise UnpicklableError(f"only plain data goes to a universe: {e}") from e
        return call
