"""
L{NodeProtocol}: the node's side of the wire on a Twisted connection (a
network node's), L{asynqueue.node.core.NodeCore} on a transport. A
queue's child hosts the same core on its pipes without Twisted.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from asynqueue.node.core import MAX_BOX_BYTES, NodeCore
from asynqueue.wire.boxes import Pairs
from asynqueue.wire.framing import MAX_KEY_LENGTH, MAX_VALUE_LENGTH, writeBox
from asynqueue.wire.pipes import _CONNECTION_DONE

log = Logger()


class NodeProtocol(amp.AMP):
    """
    The node's side of the wire: takes tasks, sends results, serves iterators.

    C{onStop} is called once the node has answered C{Stop} or lost its
    connection.
    """

    #: A peer sending a box larger than this (bytes) is cut off.
    maxBoxBytes = MAX_BOX_BYTES

    def __init__(
        self,
        makeRunner: Callable[[Callable[..., object]], Any],
        onStop: Callable[[], object] | None = None,
    ) -> None:
        super().__init__()
        self._onStop = onStop
        self.core = NodeCore(
            makeRunner,
            self._write,
            self._abort,
            self._stopSoon,
            self._logError,
            self.maxBoxBytes,
        )
        self.runner = self.core.runner
        #: The functions this peer sent, which its calls name by key.
        self.functions = self.core.functions

    def dataReceived(self, data: bytes) -> None:
        self.core.feed(data)

    def _write(self, pairs: Pairs) -> None:
        transport = self.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return
        writeBox(transport, pairs)

    def _abort(self, why: str) -> None:
        """Drop this connection, and only it: a peer sent garbage, or a box
        for it could not be written."""
        log.warn("Dropping {peer}: {why}", peer=self.transport, why=why)
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()

    def _logError(self, why: str) -> None:
        log.error("A node command failed: {why}", why=why)

    def _stopSoon(self) -> None:
        if self._onStop is not None:
            from twisted.internet import reactor

            reactor.callLater(0, self._onStop)

    def sendBox(self, box: Any) -> None:
        # A big value's chunks go out as they are, without a joined copy.
        transport = self.transport
        if transport is None:
            super().sendBox(box)
            return
        for key, value in box.items():
            if len(key) > MAX_KEY_LENGTH or len(value) > MAX_VALUE_LENGTH:
                raise amp.TooLong(False, True, value, key)
        writeBox(transport, sorted(box.items()))

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        super().connectionLost(reason)
        self.core.lost()
        if self._onStop is not None:
            self._onStop()
            self._onStop = None
