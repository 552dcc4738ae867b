"""
L{ServerManager}: AsynQueue's way to run universe nodes (its C{WireServer}s)
as processes on this machine, each listening on a socket of its own.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from typing import Any

from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorCore
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

__all__ = ["ServerManager"]

#: The universe a node serves when none is named (AsynQueue's default).
DEFAULT_WWU_FQN = "asynqueue.wire.WireWorkerUniverse"

#: What a node writes to its stderr once it listens.
_LISTENING = b"asynqueue node listening on"


class NodeProcess(ProcessProtocol):
    """
    The protocol of a node process a L{ServerManager} spawned.

    C{d} fires once the node listens (or fails with what it said if it
    ended first); C{ended} fires when the process has ended: once it has
    exited and its output is closed, or L{pipeGrace} seconds after it
    exited, as a process it started may hold its output open for as long
    as that process lives.
    """

    #: Seconds the output of an exited node is waited for.
    pipeGrace: float = 1.0

    def __init__(self, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.d: Deferred[NodeProcess] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.pid: int | None = None
        #: Whether the process has exited (its output may still be open).
        self.exited = False
        self._said = b""
        #: How the process ended, once it has.
        self.reason: Failure | None = None
        self._outputWait: IDelayedCall | None = None

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if self.d.called:
            return
        self._said = (self._said + data)[-4096:]
        if _LISTENING in self._said:
            self.d.callback(self)

    def processExited(self, reason: Failure) -> None:
        # Its end, seen at once: processEnded waits for its output to close
        # too. That output is still read (closing it early would kill a
        # process holding it with SIGPIPE), for a moment only: what it said
        # last, unless something it started holds it open.
        self.exited = True
        self.reason = reason
        self._outputWait = self.reactor.callLater(self.pipeGrace, self._over)

    def processEnded(self, reason: Failure) -> None:
        if self.reason is None:
            self.reason = reason
        self._over()

    def _over(self) -> None:
        """It has exited and its output is closed, or was waited for enough."""
        if self._outputWait is not None and self._outputWait.active():
            self._outputWait.cancel()
        self._outputWait = None
        # Each fires once, whichever of the grace and processEnded comes first.
        if not self.d.called:
            said = self._said.decode("utf-8", "replace").strip()
            why = said or (self.reason.value if self.reason else "")
            self.d.errback(
                RuntimeError(f"the node process ended before it listened: {why}")
            )
        if not self.ended.called:
            self.ended.callback(None)


class ServerManager:
    """
    Spawn universe nodes on this machine and end them:
    C{ServerManager(wwuFQN=None)}, then L{newSocket} for a description and
    L{spawn} to start a node listening there; L{done} ends them, as does
    reactor shutdown.

    Each node runs C{python -m asynqueue.node --universe wwuFQN} in plain
    text (see C{doc/remote.rst}), with one child process.
    """

    #: Seconds a node has to end after SIGTERM before it gets SIGKILL: more
    #: than its own children have (a process worker's C{stopGrace} of 5 s,
    #: then C{pipeGrace} of 1 s), so that it kills a child that will not
    #: exit rather than leave it running.
    killTimeout = 10.0

    def __init__(self, wwuFQN: str | None = None, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.wwuFQN = DEFAULT_WWU_FQN if wwuFQN is None else wwuFQN
        self.processInfo: dict[int, NodeProcess] = {}
        self.tempDir: str | None = None
        self._sockets = 0
        self.triggerID: Any = None
        if IReactorCore.providedBy(reactor):
            self.triggerID = reactor.addSystemEventTrigger(
                "before", "shutdown", self.shutdown
            )

    def newSocket(self) -> str:
        """
        A C{unix:} description of a new socket in a directory only this user
        can enter (removed at L{shutdown}); the node makes the socket.
        """
        if self.tempDir is None:
            self.tempDir = tempfile.mkdtemp(prefix="asynqueue-")
        path = os.path.join(self.tempDir, f"worker-{self._sockets:03d}.sock")
        self._sockets += 1
        return "unix:" + path

    def spawn(
        self, description: str, stdio: bool = False, niceness: int = 0
    ) -> Deferred[Any]:
        """
        Start a node listening at C{description} (a server endpoint string,
        such as L{newSocket} gives); fire once it listens, with its pid
        (with C{stdio}, with its L{NodeProcess}, whose C{pid} it is).

        C{niceness} lowers the priority of the node and its children (as
        C{nice} does).
        """
        if not isinstance(description, str) or ":" not in description:
            raise ValueError(
                f"give an endpoint description such as 'unix:/path', "
                f"not {description!r}"
            )
        if niceness < 0:
            raise ValueError(f"niceness cannot be negative here: {niceness}")
        args = [
            sys.executable,
            "-m",
            "asynqueue.node",
            "--listen",
            description,
            "--universe",
            self.wwuFQN,
            "--insecure-plaintext",
            "--processes",
            "1",
        ]
        env = dict(os.environ)
        # The node imports the universe from where this process would.
        paths = [p for p in sys.path if p]
        if env.get("PYTHONPATH"):
            paths.append(env["PYTHONPATH"])
        env["PYTHONPATH"] = os.pathsep.join(paths)
        node = NodeProcess(self.reactor)

        executable = sys.executable
        nice = shutil.which("nice") if niceness else None
        if nice is not None:
            # The node and the children it starts all run at the lower priority.
            executable = nice
            args = [nice, "-n", str(niceness), *args]
        self.reactor.spawnProcess(node, executable, args, env=env)
        if node.pid is not None:
            self.processInfo[node.pid] = node
            if niceness and nice is None:
                _renice(node.pid, niceness)
        node.ended.addCallback(lambda _: self.processInfo.pop(node.pid or -1, None))

        def listening(_: NodeProcess) -> Any:
            return node if stdio else node.pid

        return node.d.addCallback(listening)

    def done(self, pid: int | None = None) -> Deferred[None]:
        """
        End the node C{pid} (all of them if C{None}); fire once ended (not
        waiting for processes they started, see L{NodeProcess}).
        """
        if pid is None:
            pids = list(self.processInfo)
        elif pid in self.processInfo:
            pids = [pid]
        else:
            return succeed(None)
        return gatherResults([self._end(p) for p in pids]).addCallback(lambda _: None)

    def _end(self, pid: int) -> Deferred[None]:
        node = self.processInfo[pid]
        transport = node.transport
        if node.ended.called or transport is None:
            return succeed(None)
        ended: Deferred[None] = Deferred()

        def gone(result: object) -> object:
            ended.callback(None)
            return result

        node.ended.addBoth(gone)
        try:
            transport.signalProcess("TERM")
        except ProcessExitedAlready:
            # Exited; `ended` fires within a moment (see NodeProcess).
            return ended

        def kill() -> None:
            if not node.exited:
                try:
                    transport.signalProcess("KILL")
                except ProcessExitedAlready:
                    pass

        hard = self.reactor.callLater(self.killTimeout, kill)
        ended.addCallback(lambda _: hard.cancel() if hard.active() else None)
        return ended

    def shutdown(self) -> Deferred[None]:
        """End every node and remove the sockets' directory."""
        if self.triggerID is not None:
            self.reactor.removeSystemEventTrigger(self.triggerID)
            self.triggerID = None

        def cleanUp(result: object) -> None:
            if self.tempDir is not None:
                shutil.rmtree(self.tempDir, ignore_errors=True)
                self.tempDir = None

        return self.done().addBoth(cleanUp)


def _renice(pid: int, niceness: int) -> None:
    try:
        current = os.getpriority(os.PRIO_PROCESS, pid)
        os.setpriority(os.PRIO_PROCESS, pid, current + niceness)
    except OSError:
        pass
