"""
How a process worker starts its children: by C{spawn} (a fresh
interpreter for each) or by C{fork} from a zygote (see
L{asynqueue.node.zygote}), which has the child runtime imported already
and so gives a child in milliseconds.

This is the parent's side of the zygote: L{ChildStarter} starts a
worker's children either way; L{Zygote} asks the zygote for a child over
a Unix socket, sending the descriptors the child is to have, and learns
its pid and, from the zygote that reaps it, its exit status; L{Forked} is
the child's transport, as Twisted's process transport is for a spawned
child, and reads its output.
"""

from __future__ import annotations

import errno
import itertools
import os
import signal
import socket
import sys
from collections.abc import Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ProcessDone, ProcessExitedAlready, ProcessTerminated
from twisted.internet.interfaces import IReadDescriptor
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.node.zygote import ZYGOTE_MAIN
from asynqueue.wire.pipes import _Pipe

#: The ways to start a child.
START_METHODS = ("fork", "spawn")

_CHILD_MAIN = "from asynqueue.node.child import childMain; childMain()"

log = Logger()


def forkAvailable() -> bool:
    """
    Whether children can come from a zygote here: Linux (the zygote and
    its children die with their parents there), with C{fork} and
    descriptors passed over Unix sockets.
    """
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "fork")
        and hasattr(socket, "send_fds")
        and hasattr(socket, "SOCK_SEQPACKET")
    )


def startMethod(start: str | None) -> str:
    """The start method to use for C{start} (C{None}: the best one here)."""
    if start is None:
        return "fork" if forkAvailable() else "spawn"
    if start not in START_METHODS:
        raise ValueError(f"start must be 'fork' or 'spawn', not {start!r}")
    if start == "fork" and not forkAvailable():
        raise ValueError(f"start='fork' is not available on {sys.platform}")
    return start


def exitReason(status: int) -> BaseException:
    """What Twisted says of a process that ended with C{status} (from waitpid)."""
    if os.WIFEXITED(status):
        code = os.WEXITSTATUS(status)
        if code:
            return ProcessTerminated(code, None, status)
        return ProcessDone(status)
    return ProcessTerminated(None, os.WTERMSIG(status), status)


class ChildStarter:
    """
    Starts the children of one worker, by C{spawn} or C{fork}.

    @param preload: Modules the zygote imports for the children (the
        initializer's, say).
    """

    def __init__(self, start: str = "spawn", preload: Iterable[str] = ()) -> None:
        self.start = start
        self.preload = tuple(preload)
        self._zygote: Zygote | None = None

    def startChild(
        self,
        protocol: Any,
        reactor: Any,
        executable: str,
        env: dict[str, str],
        childFDs: dict[int, int],
    ) -> Any:
        """
        Start a child of C{executable} with C{childFDs} (3 to 6) as its
        descriptors; its transport, whose C{pid} may be C{None} until the
        zygote has forked (the protocol's C{pid} is set then). Raises if it
        cannot even ask.
        """
        if self.start == "spawn":
            return reactor.spawnProcess(
                protocol,
                executable,
                [executable, "-c", _CHILD_MAIN],
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", **childFDs},
            )
        key = _zygoteKey(reactor, executable, env, self.preload)
        zygote = self._zygote
        if zygote is None or zygote.dead or zygote.closing or zygote.key != key:
            self._zygote = None
            if zygote is not None:
                zygote.release()
            zygote = self._zygote = _zygoteFor(
                key, reactor, executable, env, self.preload
            )
        return zygote.fork(protocol, childFDs)

    def release(self) -> Deferred[None]:
        """
        I start no more children: fire once the zygote I used has ended, if
        no other worker uses it (at once otherwise).
        """
        zygote, self._zygote = self._zygote, None
        if zygote is None:
            return succeed(None)
        return zygote.release()


_zygotes: dict[tuple[Any, ...], Zygote] = {}


def _zygoteKey(
    reactor: Any, executable: str, env: dict[str, str], preload: tuple[str, ...]
) -> tuple[Any, ...]:
    """Children with the same key can come from the same zygote."""
    return (id(reactor), executable, tuple(sorted(env.items())), preload)


def _zygoteFor(
    key: tuple[Any, ...],
    reactor: Any,
    executable: str,
    env: dict[str, str],
    preload: tuple[str, ...],
) -> Zygote:
    """The live zygote for C{key} (a new one if there is none); one more user."""
    zygote = _zygotes.get(key)
    if zygote is None or zygote.dead or zygote.closing:
        zygote = Zygote(reactor, executable, env, preload)
        zygote.key = key
        _zygotes[key] = zygote
        zygote.ended.addBoth(_forget, key, zygote)
    zygote.users += 1
    return zygote


def _forget(result: object, key: tuple[Any, ...], zygote: Zygote) -> None:
    if _zygotes.get(key) is zygote:
        del _zygotes[key]


class Zygote:
    """
    The parent's side of one zygote process: ask it for children, hear of
    their pids and ends.

    It lives while a worker uses it or one of its children lives; then its
    socket is closed, and the zygote ends. If it dies, its children die
    with it (see L{asynqueue.node.zygote}): each ends as if killed, and the
    next child comes from a new zygote.
    """

    def __init__(
        self,
        reactor: Any,
        executable: str,
        env: dict[str, str],
        preload: tuple[str, ...] = (),
    ) -> None:
        self.reactor = reactor
        self.key: tuple[Any, ...] = ()
        self.users = 0
        self.dead = False
        self.closing = False
        #: Fires once the zygote process has ended (its output is read on to
        #: the end, but not waited for).
        self.ended: Deferred[None] = Deferred()
        self._requestIDs = itertools.count(1)
        #: Children asked for, whose pid has not come yet.
        self._asked: dict[int, Forked] = {}
        #: Children forked, by pid, whose end has not been reported yet.
        self._children: dict[int, Forked] = {}
        #: Why it ended, once it has.
        self.endReason: Failure | None = None
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # Before the spawn: a process that exits at once is seen ending in it.
        self.socket = ours
        self._reader = _ZygoteSocket(self)
        try:
            ours.setblocking(False)
            self.process = reactor.spawnProcess(
                _ZygoteProtocol(self),
                executable,
                [executable, "-c", ZYGOTE_MAIN, *preload],
                env=env,
                childFDs={0: "w", 1: "r", 2: "r", 3: theirs.fileno()},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self.pid: int = self.process.pid
        if not self.dead:
            self.process.closeStdin()
        if not self.closing:
            reactor.addReader(self._reader)

    def __repr__(self) -> str:
        return f"<Zygote pid {self.pid}>"

    # -- asking for children ---------------------------------------------------

    def fork(self, protocol: Any, childFDs: dict[int, int]) -> Forked:
        """Ask for a child with C{childFDs} (3 to 6); its transport."""
        if self.closing and not self.dead:
            raise OSError(errno.EPIPE, "the zygote is closing")
        outRead, outWrite = os.pipe()
        errRead, errWrite = os.pipe()
        requestID = next(self._requestIDs)
        fds = [outWrite, errWrite, *(childFDs[fd] for fd in (3, 4, 5, 6))]
        try:
            if not self.dead:
                socket.send_fds(self.socket, [b"fork %d" % requestID], fds)
        except (BrokenPipeError, ConnectionResetError):
            # The zygote has just died: this child ends with it, and says
            # why once its end is known (see processEnded).
            pass
        except BaseException:
            for fd in (outRead, errRead):
                os.close(fd)
            raise
        finally:
            os.close(outWrite)
            os.close(errWrite)
        forked = Forked(self, protocol, outRead, errRead)
        if self.dead:
            # It had ended already: so does this child, as it would have
            # with it, once whoever asked for it has it.
            self.reactor.callLater(0, forked.exited, self.endReason)
        else:
            self._asked[requestID] = forked
        protocol.makeConnection(forked)
        return forked

    def release(self) -> Deferred[None]:
        """One user fewer: fire once I have ended, if that was the last."""
        self.users -= 1
        self._closeIfUnused()
        if self.users > 0 or self.dead:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self.ended.addBoth(lambda _: d.callback(None))
        return d

    def _closeIfUnused(self) -> None:
        if self.users <= 0 and not self._asked and not self._children:
            self._closeSocket()

    def _closeSocket(self) -> None:
        """Close my end: the zygote ends once its children have."""
        if not self.closing:
            self.closing = True
            self.reactor.removeReader(self._reader)
            self.socket.close()

    # -- hearing from the zygote -----------------------------------------------

    def messageReceived(self, message: bytes) -> None:
        words = message.decode("utf-8", "replace").split(None, 2)
        if words[:1] == ["forked"] and len(words) == 3:
            forked = self._asked.pop(int(words[1]), None)
            if forked is not None:
                pid = int(words[2])
                self._children[pid] = forked
                forked.started(pid)
        elif words[:1] == ["failed"] and len(words) >= 2:
            forked = self._asked.pop(int(words[1]), None)
            if forked is not None:
                why = words[2] if len(words) > 2 else "no reason given"
                forked.exited(Failure(OSError(f"the zygote could not fork: {why}")))
        elif words[:1] == ["ended"] and len(words) == 3:
            forked = self._children.pop(int(words[1]), None)
            if forked is not None:
                forked.exited(Failure(exitReason(int(words[2]))))
        else:
            log.error("A zygote sent {message!r}", message=message)
        self._closeIfUnused()

    def readReports(self) -> None:
        """Read what the zygote has reported and the reactor has not read yet."""
        if not self.closing:
            self._reader.doRead()

    def socketLost(self) -> None:
        """The zygote closed its end: it is gone, or going."""
        self._closeSocket()

    def processEnded(self, reason: Failure) -> None:
        """
        The zygote has ended. Children it had not forked yet never will;
        those it had die with it.
        """
        self.dead = True
        self.endReason = reason
        self._closeSocket()
        asked, self._asked = self._asked, {}
        children, self._children = self._children, {}
        for forked in asked.values():
            forked.exited(reason)
        killed = ProcessTerminated(None, signal.SIGKILL, None)
        for forked in children.values():
            forked.exited(Failure(killed))
        self.ended.callback(None)


@implementer(IReadDescriptor)
class _ZygoteSocket:
    """Reads the zygote's messages, one a packet, as they come."""

    def __init__(self, zygote: Zygote) -> None:
        self.zygote = zygote

    def fileno(self) -> int:
        return self.zygote.socket.fileno()

    def logPrefix(self) -> str:
        return "Zygote"

    def doRead(self) -> None:
        while not self.zygote.closing:
            try:
                message = self.zygote.socket.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                message = b""
            if not message:
                self.zygote.socketLost()
                return
            self.zygote.messageReceived(message)

    def connectionLost(self, reason: object) -> None:
        self.zygote.socketLost()


class _ZygoteProtocol(ProcessProtocol):
    """The zygote process itself: its output goes to the log, its end to it."""

    def __init__(self, zygote: Zygote) -> None:
        self.zygote = zygote

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            log.info("[zygote pid {pid}] {line}", pid=self.zygote.pid, line=line)

    def processExited(self, reason: Failure) -> None:
        # Its end, seen at once: a process it started (a preloaded module's
        # helper, say) may hold its output open for as long as it lives.
        self.zygote.processEnded(reason)


class Forked:
    """
    A forked child's transport: its pid once known, signals, its output.

    Its protocol hears C{childDataReceived} for each piece of output,
    C{processExited} once the zygote has reported its end, and
    C{processEnded} once its output is all read too, as with a spawned
    child.
    """

    def __init__(self, zygote: Zygote, protocol: Any, outFD: int, errFD: int) -> None:
        self.zygote = zygote
        self.protocol = protocol
        self.pid: int | None = None
        self._startWaiters: list[Deferred[int]] = []
        self._signalWanted: int | None = None
        self._reason: Failure | None = None
        self._ended = False
        self._open = {1, 2}
        self._readers = [
            _OutputReader(outFD, 1, self, zygote.reactor),
            _OutputReader(errFD, 2, self, zygote.reactor),
        ]

    def started(self, pid: int) -> None:
        """The zygote has forked me as C{pid}; send a signal I was given before."""
        self.pid = pid
        if hasattr(self.protocol, "pid"):
            self.protocol.pid = pid
        if self._signalWanted is not None:
            self._kill(self._signalWanted)
        waiters, self._startWaiters = self._startWaiters, []
        for d in waiters:
            d.callback(pid)

    def whenStarted(self) -> Deferred[int]:
        """Fire with my pid once the zygote has forked me (fail if it never does)."""
        if self.pid is not None:
            return succeed(self.pid)
        if self._reason is not None:
            return fail(self._reason)
        d: Deferred[int] = Deferred()
        self._startWaiters.append(d)
        return d

    def closeStdin(self) -> None:
        """A forked child reads nothing on its stdin (it is C{/dev/null})."""

    def signalProcess(self, signalID: str | int) -> None:
        """Send a signal (a number, or C{"KILL"}, C{"TERM"}, ...)."""
        number = (
            int(getattr(signal, f"SIG{signalID}"))
            if isinstance(signalID, str)
            else signalID
        )
        if self._reason is not None:
            raise ProcessExitedAlready()
        if self.pid is None:
            self._signalWanted = number
            return
        self._kill(number)

    def reapProcess(self) -> None:
        """
        Hear now of my end if the zygote has reported it (as a spawned
        process's C{reapProcess} does of its exit): the reactor may not have
        read that report yet.
        """
        if self._reason is None:
            self.zygote.readReports()

    def _kill(self, signalID: int) -> None:
        # Until its end is reported, this pid is this child's, or a zombie
        # the zygote has just reaped: a pid is not used again that soon.
        if self.pid is not None and self._reason is None:
            try:
                os.kill(self.pid, signalID)
            except ProcessLookupError:
                pass

    def exited(self, reason: Failure) -> None:
        """The zygote says I ended (or never began) with C{reason}."""
        if self._reason is None:
            self._reason = reason
            self.protocol.processExited(reason)
            if self.pid is None:
                # Never forked: nothing will write to my output.
                for reader in self._readers:
                    reader.close()
                waiters, self._startWaiters = self._startWaiters, []
                for d in waiters:
                    d.errback(reason)
            self._maybeEnded()

    def outputClosed(self, childFD: int) -> None:
        self._open.discard(childFD)
        self.protocol.childConnectionLost(childFD)
        self._maybeEnded()

    def _maybeEnded(self) -> None:
        if self._reason is not None and not self._open and not self._ended:
            self._ended = True
            self.protocol.processEnded(self._reason)


class _OutputReader(_Pipe):
    """Reads a forked child's stdout or stderr for its protocol."""

    def __init__(self, fd: int, childFD: int, forked: Forked, reactor: Any) -> None:
        super().__init__(fd, reactor)
        self.childFD = childFD
        self.forked = forked
        self.startReading()

    def doRead(self) -> object:
        try:
            data = os.read(self.fd, 1 << 16)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            return CONNECTION_LOST
        if not data:
            return CONNECTION_DONE
        self.forked.protocol.childDataReceived(self.childFD, data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self.fd >= 0:
            super().connectionLost(reason)
            self.forked.outputClosed(self.childFD)
