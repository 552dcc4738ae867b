"""
A guard for a listening port: a deadline to authenticate, caps on connections.

L{ConnectionGuard} wraps a server factory, in the style of Twisted's
L{twisted.protocols.policies.WrappingFactory}, so that peers who connect and
then do nothing cannot hold the server's descriptors. Each new connection
has C{handshakeTimeout} seconds to authenticate, or it is aborted; at most
C{maxUnauthenticated} connections may be waiting to authenticate, and at
most C{maxConnections} may be open at all. Once a peer has authenticated
it may stay idle for as long as it likes.

What counts as authenticated is the guard's C{proof}:

  - C{"tls"}: the TLS handshake completed (the guard is an
    L{IHandshakeListener}). The guard sits inside the TLS layer, which
    connects it as soon as TCP accepts, so its deadline covers the whole
    handshake; with mutual TLS, a completed handshake means the peer showed
    a certificate the server trusts. The wrapped protocol is connected only
    then.
  - C{"box"}: the first complete, non-empty AMP box arrived. This proves
    only that the peer speaks the protocol, not who it is: it is for
    plaintext listeners that the operating system already restricts
    (loopback, a C{unix:} socket only its owner may open).
"""

from __future__ import annotations

import resource
from typing import Any, Literal, cast

from twisted.internet.interfaces import (
    IDelayedCall,
    IHandshakeListener,
    IProtocolFactory,
    IReactorTime,
    ITransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

__all__ = ["ConnectionGuard", "GuardedProtocol", "defaultMaxConnections"]

log = Logger()

#: What makes a connection authenticated (see the module's docstring).
Proof = Literal["tls", "box"]

_KEY_LENGTH, _KEY, _VALUE_LENGTH, _VALUE = range(4)


def defaultMaxConnections(ceiling: int = 256) -> int:
    """
    How many connections a server may hold: C{ceiling}, or half this
    process's soft descriptor limit if that is less.

    The other half is for everything else the server opens (its child
    processes' pipes, logs, the listening socket), so that the cap is
    reached before the descriptor limit is.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return ceiling
    return max(1, min(ceiling, soft // 2))


class _FirstBox:
    """
    Follows AMP's framing until the first box ends, keeping no bytes.

    A box is pairs of a 2-byte key length, the key, a 2-byte value length
    and the value; a key length of 0 ends it.
    """

    __slots__ = ("_state", "_need", "_length", "_pairs")

    def __init__(self) -> None:
        self._state = _KEY_LENGTH
        self._need = 2
        self._length = 0
        self._pairs = 0

    def feed(self, data: bytes) -> bool:
        """Read C{data}; C{True} once a non-empty box has ended in it."""
        pos, n = 0, len(data)
        while pos < n:
            if self._state in (_KEY_LENGTH, _VALUE_LENGTH):
                self._length = self._length << 8 | data[pos]
                pos += 1
                self._need -= 1
                if self._need:
                    continue
                length, self._length = self._length, 0
                if self._state == _VALUE_LENGTH:
                    self._state, self._need = _VALUE, length
                elif length:
                    self._state, self._need = _KEY, length
                elif self._pairs:
                    return True
                else:
                    # An empty box shows nothing; wait for one that does.
                    self._need = 2
                    continue
            else:
                step = min(self._need, n - pos)
                pos += step
                self._need -= step
            if not self._need:
                if self._state == _KEY:
                    self._state, self._need = _VALUE_LENGTH, 2
                elif self._state == _VALUE:
                    self._pairs += 1
                    self._state, self._need = _KEY_LENGTH, 2
        return False


@implementer(IHandshakeListener)
class GuardedProtocol(ProtocolWrapper):
    """
    One connection under a L{ConnectionGuard}.

    The wrapped protocol is connected only if the guard admits the
    connection, and, when the proof is the TLS handshake, only once the
    handshake has completed: a peer that never completes it never reaches
    the protocol (nor costs it a line in the log).
    """

    factory: ConnectionGuard
    #: True once the peer has given the guard's proof.
    authenticated = False
    #: True once the guard has aborted this connection.
    dropped = False
    _deadline: IDelayedCall | None = None
    _firstBox: _FirstBox | None = None
    _wrappedConnected = False

    def makeConnection(self, transport: ITransport) -> None:
        # As ProtocolWrapper does, except that the guard may refuse first.
        directlyProvides(self, providedBy(transport))
        self.connected = 1
        self.transport = transport
        self.factory.registerProtocol(self)
        if not self.factory.admit(self):
            return
        self._deadline = self.factory.clock.callLater(
            self.factory.handshakeTimeout, self._expire
        )
        if self.factory.proof == "box":
            self._firstBox = _FirstBox()
            self._connectWrapped()

    def _connectWrapped(self) -> None:
        if not self._wrappedConnected:
            self._wrappedConnected = True
            # The wrapper is the wrapped protocol's transport (it relays the rest).
            self.wrappedProtocol.makeConnection(cast(ITransport, self))

    def handshakeCompleted(self) -> None:
        if self.factory.proof == "tls":
            self._authenticate()
            if self.authenticated:
                self._connectWrapped()
        if self._wrappedConnected and IHandshakeListener.providedBy(
            self.wrappedProtocol
        ):
            self.wrappedProtocol.handshakeCompleted()

    def dataReceived(self, data: bytes) -> None:
        if self.dropped:
            return
        firstBox = self._firstBox
        if firstBox is not None and firstBox.feed(data):
            self._firstBox = None
            self._authenticate()
        if self._wrappedConnected:
            self.wrappedProtocol.dataReceived(data)

    def _authenticate(self) -> None:
        if self.authenticated or self.dropped:
            return
        self.authenticated = True
        self._cancelDeadline()
        self.factory.authenticated(self)

    def _expire(self) -> None:
        self._deadline = None
        self.factory.expired(self)
        self.drop()

    def drop(self) -> None:
        """Abort the connection now: its descriptor is freed without a goodbye."""
        if self.dropped:
            return
        self.dropped = True
        self._cancelDeadline()
        self._firstBox = None
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()

    def _cancelDeadline(self) -> None:
        if self._deadline is not None:
            if self._deadline.active():
                self._deadline.cancel()
            self._deadline = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._cancelDeadline()
        self._firstBox = None
        self.connected = 0
        self.factory.unregisterProtocol(self)
        if self._wrappedConnected:
            self._wrappedConnected = False
            self.wrappedProtocol.connectionLost(reason)
        # Breaks the cycle between the wrapper and what it wraps.
        self.wrappedProtocol = None  # type: ignore[assignment]


class ConnectionGuard(WrappingFactory):
    """
    Wraps a server factory: each connection must authenticate within
    C{handshakeTimeout} seconds, and only so many may be open.

    When C{maxUnauthenticated} connections are waiting to authenticate, or
    C{maxConnections} are open, a new connection evicts the one that has
    waited longest to authenticate: a peer that holds connections idle
    cannot keep a well-behaved client from getting in, since the newcomer
    needs only its own handshake time, not a free slot. If every open
    connection has authenticated, the new one is refused instead. Either
    way the connection dropped is aborted at once, so its descriptor is
    freed on the next reactor turn. Drops are logged once per burst: over
    a cap, a warning for the first and how many there were once there is
    room again; for lateness, the first, and how many once no connection
    is waiting.

    C{clock} times the deadlines (the global reactor if not given; a
    L{twisted.internet.task.Clock} in tests).
    """

    protocol = GuardedProtocol

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        proof: Proof = "tls",
        handshakeTimeout: float = 10.0,
        maxUnauthenticated: int = 64,
        maxConnections: int | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if proof not in ("tls", "box"):
            raise ValueError(f"proof is 'tls' or 'box', not {proof!r}")
        if not handshakeTimeout > 0:
            raise ValueError(
                f"handshakeTimeout must be a positive number of seconds, "
                f"not {handshakeTimeout!r}"
            )
        if maxConnections is None:
            maxConnections = defaultMaxConnections()
        for name, value in (
            ("maxUnauthenticated", maxUnauthenticated),
            ("maxConnections", maxConnections),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number over 0, not {value!r}")
        if clock is None:
            from twisted.internet import reactor as clock
        super().__init__(wrappedFactory)
        self.proof: Proof = proof
        self.handshakeTimeout = float(handshakeTimeout)
        self.maxUnauthenticated = maxUnauthenticated
        self.maxConnections = maxConnections
        self.clock: IReactorTime = clock  # type: ignore[assignment]
        # Oldest first: the order in which to evict.
        self._waiting: dict[GuardedProtocol, None] = {}
        self._authenticated: set[GuardedProtocol] = set()
        #: How many connections this guard has dropped over a cap, in all.
        self.overCap = 0
        #: How many it has dropped for not authenticating in time.
        self.timedOut = 0
        # Drops in the current burst, over a cap and for lateness: a peer
        # that opens thousands of connections must not write thousands of
        # lines to the log.
        self._burst = 0
        self._late = 0

    @property
    def waiting(self) -> int:
        """How many open connections have yet to authenticate."""
        return len(self._waiting)

    @property
    def open(self) -> int:
        """How many connections are open (and not being dropped)."""
        return len(self._waiting) + len(self._authenticated)

    def admit(self, protocol: GuardedProtocol) -> bool:
        """
        Take a new connection, evicting the oldest waiting one if a cap is
        reached; C{False} (and the connection aborted) if it cannot be taken.
        """
        full = (
            len(self._waiting) >= self.maxUnauthenticated
            or self.open >= self.maxConnections
        )
        if full:
            if not self._waiting:
                self._overCap(protocol)
                return False
            self._overCap(next(iter(self._waiting)))
        self._waiting[protocol] = None
        return True

    def _overCap(self, protocol: GuardedProtocol) -> None:
        if not self._burst:
            log.warn(
                "Connection cap reached ({waiting} waiting to authenticate of "
                "{maxWaiting}, {open} open of {maxOpen}): dropping connections "
                "over it",
                waiting=len(self._waiting),
                maxWaiting=self.maxUnauthenticated,
                open=self.open,
                maxOpen=self.maxConnections,
            )
        self._burst += 1
        self.overCap += 1
        self._forget(protocol)
        protocol.drop()

    def authenticated(self, protocol: GuardedProtocol) -> None:
        """The connection gave its proof: no deadline, and no cap but the total."""
        if protocol in self._waiting:
            del self._waiting[protocol]
            self._authenticated.add(protocol)
            self._endBurst()

    def expired(self, protocol: GuardedProtocol) -> None:
        """The connection did not authenticate in time (it is being dropped)."""
        if not self._late:
            log.info(
                "Dropping {peer}: it did not authenticate within {seconds} s",
                peer=protocol.getPeer(),
                seconds=self.handshakeTimeout,
            )
        self._late += 1
        self.timedOut += 1
        self._forget(protocol)
        self._endBurst()

    def unregisterProtocol(self, p: Any) -> None:
        self.protocols.pop(p, None)
        self._forget(p)
        self._endBurst()

    def _forget(self, protocol: GuardedProtocol) -> None:
        self._waiting.pop(protocol, None)
        self._authenticated.discard(protocol)

    def _endBurst(self) -> None:
        if (
            self._burst
            and len(self._waiting) < self.maxUnauthenticated
            and self.open < self.maxConnections
        ):
            log.info(
                "Dropped {count} connections over the cap; there is room again",
                count=self._burst,
            )
            self._burst = 0
        if self._late and not self._waiting:
            if self._late > 1:
                log.info(
                    "Dropped {count} connections that did not authenticate in time",
                    count=self._late,
                )
            self._late = 0

    def doStop(self) -> None:
        # The port is closed: connections still waiting would only time out.
        for protocol in list(self._waiting):
            self._forget(protocol)
            protocol.drop()
        super().doStop()
