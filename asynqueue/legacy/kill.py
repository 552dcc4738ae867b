"""
Ending a process by its pid: L{killProcess} (AsynQueue's C{util.killProcess}).

It learns of the process's end from the kernel (a Linux pidfd the reactor
watches), not by polling; where there is no pidfd it falls back to
checking C{waitpid} on a back-off.
"""

from __future__ import annotations

import os
import select
import signal
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorFDSet, IReactorTime, IReadDescriptor
from zope.interface import implementer

from asynqueue.legacy.delay import Delay

__all__ = ["killProcess"]


def _reap(pid: int) -> None:
    """Collect a child's exit status, unless Twisted's reaper owns it."""
    from twisted.internet import process

    if pid in process.reapProcessHandlers:
        # Twisted collects it and tells its ProcessProtocol; taking the
        # status here would leave that protocol waiting for ever.
        return
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@implementer(IReadDescriptor)
class _PidWatcher:
    """A reader on a pidfd: readable once the process has ended."""

    def __init__(self, fd: int, reactor: Any, d: Deferred[None]) -> None:
        self.fd = fd
        self.reactor = reactor
        self.d = d

    def fileno(self) -> int:
        return self.fd

    def doRead(self) -> None:
        self._done()

    def connectionLost(self, reason: object) -> None:
        self._done()

    def logPrefix(self) -> str:
        return "killProcess"

    def _done(self) -> None:
        self.reactor.removeReader(self)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if not self.d.called:
            self.d.callback(None)


def _whenGone(pid: int, reactor: Any) -> Deferred[None] | None:
    """A Deferred that fires when C{pid} has ended; C{None} if it has already."""
    pidfdOpen = getattr(os, "pidfd_open", None)
    if pidfdOpen is not None and IReactorFDSet.providedBy(reactor):
        try:
            fd = pidfdOpen(pid)
        except ProcessLookupError:
            return None
        except OSError:
            fd = -1
        if fd >= 0:
            if select.select([fd], [], [], 0)[0]:
                os.close(fd)
                return None
            d: Deferred[None] = Deferred()
            reactor.addReader(_PidWatcher(fd, reactor, d))
            return d
    if not _alive(pid):
        return None

    def gone() -> bool:
        _reap(pid)
        return not _alive(pid)

    # No pidfd here (not Linux): nothing tells of a process's end, so check.
    return Delay(reactor=reactor).untilEvent(gone).addCallback(lambda _: None)


def killProcess(pid: int, timeout: float = 5.0, reactor: Any = None) -> Deferred[bool]:
    """
    End the process C{pid}: fire with C{True} once it is gone, C{False} if
    it was gone already.

    It gets C{SIGTERM}, and C{SIGKILL} if it is still there after
    C{timeout} seconds. A child of this process is reaped (unless Twisted
    spawned it and reaps it itself).
    """
    if reactor is None:
        from twisted.internet import reactor
    if not isinstance(pid, int) or pid <= 0:
        raise ValueError(f"killProcess needs a process id above 0, not {pid}")
    clock: IReactorTime = reactor
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return succeed(False)
    except PermissionError:
        raise PermissionError(f"not allowed to signal process {pid}") from None
    d = _whenGone(pid, reactor)
    if d is None:
        _reap(pid)
        return succeed(False)
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    hard = clock.callLater(timeout, _hardKill, pid)

    def gone(_: None) -> bool:
        if hard.active():
            hard.cancel()
        _reap(pid)
        return True

    return d.addCallback(gone)


def _hardKill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
