"""
One connection of a L{RemoteWorker} to its node: the client endpoint
(mutual TLS), results read straight off the wire, the heartbeat, and the
plain words for why a node could not be reached.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from twisted.internet import error
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import connectionDone
from twisted.protocols import amp
from twisted.python.failure import Failure

from asynqueue.errors import (
    NodeLost,
    TaskNotStarted,
)
from asynqueue.tasks import Task
from asynqueue.wire.client import NodeClient, Result, SentCall
from asynqueue.wire.commands import NodeInfo
from asynqueue.wire.endpoints import LOOPBACK
from asynqueue.wire.framing import Value
from asynqueue.wire.pickling import loadsPlain

if TYPE_CHECKING:
    from asynqueue.workers.remote import RemoteWorker


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
        if not insecurePlaintext or host not in LOOPBACK:
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


class _NodeConnection(NodeClient):
    """
    One connection to a node: calls out, results back, and a heartbeat.

    Results are read as L{NodeClient} reads them, their framing as plain
    data only (L{loadsPlain}): this node is not ours. Any byte
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

    def loadBatch(self, batch: Value) -> list[Result]:
        result: list[tuple[int, str, bytes | memoryview, float]] = loadsPlain(batch)
        return result

    def resultsReceived(self, batch: list[Result]) -> None:
        inFlight = self.inFlight
        for taskID, status, payload, seconds in batch:
            sent = inFlight.pop(taskID, None)
            if sent is not None:
                sent.answer(status, payload, seconds, self)
        self.worker.idleCheck()

    def malformed(self, why: str) -> None:
        self._reader.stop()
        self.worker.log.warn(
            "Node {node} sent {why}", node=self.worker.description, why=why
        )
        if self.transport is not None:
            self.transport.loseConnection()

    def send(self, taskID: int, task: Task, attempt: int, call: bytes) -> None:
        sent = SentCall(taskID, call, task, None, attempt=attempt)
        self.queueCall(sent, self.worker.reactor)

    def canSend(self) -> bool:
        # Nothing goes to a connection being closed: what is still here when
        # it is lost was never sent, and is handed back.
        return not self.dead and super().canSend()

    def writeCalls(self, batch: list[tuple[int, bytes]]) -> None:
        super().writeCalls(batch)
        # The node starts what it is sent at once (up to the capacity it
        # gave), so a task's timeout runs from here.
        inFlight = self.inFlight
        for taskID, _ in batch:
            sent = inFlight.get(taskID)
            if sent is not None and sent.task is not None:
                sent.started = True
                sent.task.markStarted()

    def cancel(self, taskID: int) -> None:
        sent, written = self.withdraw(taskID)
        if written and not self.dead:
            self.sendCancel(taskID)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Dead first: the AMP calls failed below must not act on this
        # connection, nor report its loss a second time.
        self.dead = True
        if self._heartbeatCall is not None and self._heartbeatCall.active():
            self._heartbeatCall.cancel()
        self._heartbeatCall = None
        self.stopSending()
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
        for sent in unsent:
            if sent.task is not None:
                _handBack(sent.task, sent.attempt, gone)
        for sent in lost:
            sent.fail(NodeLost(gone))
