"""
Pipes in the reactor: L{PipeReader} (every read into one reused buffer)
and L{PipeWriter} (writes at once when nothing waits), the parent's ends
of a child's pipes (the child's own are in L{asynqueue.wire.framing}).
"""

from __future__ import annotations

import errno
import os
from typing import Any

from twisted.internet import abstract
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.python.failure import Failure

from asynqueue.wire.framing import (
    _IOV_MAX,
    ReadBuffer,
    advanceViews,
    pieceViews,
)

_CONNECTION_DONE = Failure(CONNECTION_DONE)


class _Pipe(abstract.FileDescriptor):
    """One end of a pipe, non-blocking, in the reactor; closed when lost."""

    def __init__(self, fd: int, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.fd = fd
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def getPeer(self) -> str:
        return f"pipe {self.fd}"

    def getHost(self) -> str:
        return f"pid {os.getpid()}"

    def close(self) -> None:
        """Let go of the pipe now, whatever is still waiting to be written."""
        self.connectionLost(_CONNECTION_DONE)

    def connectionLost(self, reason: Failure) -> None:
        # Once only: a second close could hit a descriptor reused since.
        if self.fd < 0:
            return
        super().connectionLost(reason)
        fd, self.fd = self.fd, -1
        try:
            os.close(fd)
        except OSError:
            pass


class PipeReader(_Pipe):
    """
    Reads a pipe in large pieces and feeds a protocol.

    Every read lands in the same buffer (a L{ReadBuffer}); the protocol
    gets a C{memoryview} of what was read, valid only until it returns
    (L{BoxReader} keeps copies of what it needs beyond that).
    """

    def __init__(self, fd: int, protocol: Any, reactor: Any = None) -> None:
        super().__init__(fd, reactor)
        self.protocol = protocol
        self._buffer = ReadBuffer()
        self.startReading()

    def readNow(self) -> None:
        """Read what has come, if anything, without waiting for the reactor."""
        # At the end of input, the reactor's own next read sees it too.
        self.doRead()

    def doRead(self) -> object:
        try:
            data = self._buffer.readFrom(self.fd)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        self.protocol.dataReceived(data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self.fd >= 0:
            super().connectionLost(reason)
            self.protocol.connectionLost(reason)


class PipeWriter(_Pipe):
    """Writes to a pipe without blocking, buffering what does not fit yet."""

    #: L{asynqueue.wire.framing.writeBox} may hand L{writeSequence} views.
    takesViews = True

    def __init__(self, fd: int, reactor: Any = None) -> None:
        super().__init__(fd, reactor)
        self.connected = 1

    def write(self, data: bytes) -> None:
        # With nothing waiting, write now: a reactor turn later is latency.
        if not self.dataBuffer and not self._tempDataBuffer and not self.disconnecting:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                written = 0
            if written == len(data):
                return
            data = data[written:]
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        # As write: at once if nothing waits, and without joining the pieces.
        if self.dataBuffer or self._tempDataBuffer or self.disconnecting:
            # Behind what waits already: buffered whole (Twisted's own
            # writeSequence takes nothing but bytes, and the pieces of a
            # large value are views of it).
            super().write(b"".join(data))
            return
        views = pieceViews(data)
        try:
            written = os.writev(self.fd, views[:_IOV_MAX])
        except OSError:
            written = 0
        advanceViews(views, written)
        if views:
            super().write(b"".join(views))

    def writeSomeData(self, data: bytes) -> int | BaseException:
        try:
            return os.write(self.fd, data)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return 0
            return CONNECTION_LOST
