"""
The parent's side of one child process of a L{ProcessWorker}: the
conversation over its pipes, what is in flight there, its output, and the
shared note of which call it started, which says after a crash exactly
which calls may have run.
"""

from __future__ import annotations

import os
import signal
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from asynqueue.wire.client import NodeClient, Result, SentCall
from asynqueue.wire.commands import Status, Stop
from asynqueue.wire.pipes import PipeReader, PipeWriter
from asynqueue.wire.ring import ResultRing
from asynqueue.wire.startnote import StartNote
from asynqueue.workers.spawning import ChildStarter

if TYPE_CHECKING:
    from asynqueue.workers.process import ProcessWorker

_RING, _BYTES = Status.RING, Status.BYTES.value


def _pipe() -> tuple[int, int]:
    """A pipe, as large as the system allows up to 1 MiB (big values move faster)."""
    read, write = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(write, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass
    return read, write


#: A child's output line longer than this (bytes) is logged in parts.
_LINE_BYTES = 1 << 16


def _cancel(call: IDelayedCall | None) -> None:
    """Cancel C{call}, if there is one still to come."""
    if call is not None and call.active():
        call.cancel()


#: What the process worker calls a call in flight at its child.
_Sent = SentCall


class _ParentAMP(NodeClient):
    """The parent's side of the wire to one child (see L{NodeClient})."""

    def __init__(self, child: _Child) -> None:
        super().__init__()
        self.child = child
        # Results go straight to the child's bookkeeping: a call fewer a batch.
        self.resultsReceived = child.resultsReceived  # type: ignore[method-assign]

    def canSend(self) -> bool:
        return not self.child.dead

    def malformed(self, why: str) -> None:
        # The child is ours: garbage from it means it is broken. Replace it.
        self.child.log.error(
            "{worker}'s child sent {why}; killing it", worker=self.child.where, why=why
        )
        self.child.kill()


class _Child(ProcessProtocol):
    """One child process of a L{ProcessWorker} and the conversation with it."""

    log = Logger()

    #: Seconds a process may live on after closing its result pipe before
    #: it is killed: time to exit on its own, and to have that seen.
    pipeGrace: float = 1.0

    #: Seconds a child asked to stop may take to exit before it is killed.
    #: An interpreter waits at exit for the threads a task started (unless
    #: they are daemons) and runs its exit handlers: either may never end,
    #: and a shutdown must.
    stopGrace: float = 5.0

    def __init__(self, worker: ProcessWorker) -> None:
        self.worker = worker
        self.amp = _ParentAMP(self)
        #: The calls out at the child, by task ID, oldest first.
        self.inFlight = self.amp.inFlight
        self.pid: int | None = None
        self.sent = 0
        self.done = 0
        self.openIterators = 0
        self.stopping = False
        self.dead = False
        self.ended: Deferred[None] = Deferred()
        self._waitingFor = {"process", "pipe"}
        self._pipeKill: IDelayedCall | None = None
        self._stopKill: IDelayedCall | None = None
        self._outputOpen = True
        self._outputWait: IDelayedCall | None = None
        #: Whether it was killed for living on with its result pipe closed.
        self.closedItsPipe = False
        #: Whether it was killed for not exiting once asked to stop.
        self.outstayedStop = False
        self._lines: dict[int, list[bytes]] = {}
        self._lineBytes: dict[int, int] = {}
        self._idleWaiters: list[Deferred[None]] = []
        self.keepForIterators = True
        #: The ID of its last set-up call (initializer, kept updates), or 0.
        self.setupThrough = 0
        #: Whether it ever answered a call other than its set-up calls.
        self.answered = False

    @property
    def cameUp(self) -> bool:
        """
        Whether it ever got as far as running a call or answering one, its
        set-up calls aside: a child that dies in those, or idle after them,
        died young.
        """
        return self.answered or self.lastStarted() > self.setupThrough

    @property
    def where(self) -> str:
        """Where this child's results come from, for tracebacks."""
        return f"{self.worker.name} (pid {self.pid})"

    def iteratorClosed(self) -> None:
        """One of the iterators this child holds for the parent is done."""
        self.openIterators -= 1
        self._checkIdle()

    def start(
        self,
        reactor: Any,
        executable: str,
        env: dict[str, str],
        starter: ChildStarter | None = None,
    ) -> None:
        toChildRead, toChildWrite = _pipe()
        fromChildRead, fromChildWrite = _pipe()
        parentEnds = (toChildWrite, fromChildRead)
        try:
            self.note, startedFD = StartNote.create()
        except BaseException:
            for fd in (*parentEnds, toChildRead, fromChildWrite):
                os.close(fd)
            raise
        try:
            self.ring = ResultRing.create()
        except BaseException:
            for fd in (*parentEnds, toChildRead, fromChildWrite, startedFD):
                os.close(fd)
            self.note.close()
            raise
        try:
            # Spawned, or forked by a zygote (whose pid comes later).
            transport = (starter or ChildStarter()).startChild(
                self,
                reactor,
                executable,
                env,
                {3: toChildRead, 4: fromChildWrite, 5: startedFD, 6: self.ring.fd},
            )
        except BaseException:
            for fd in parentEnds:
                os.close(fd)
            self.ring.close()
            self.note.close()
            raise
        finally:
            os.close(toChildRead)
            os.close(fromChildWrite)
            os.close(startedFD)
            self.ring.closeDescriptor()
        self.pid = transport.pid
        transport.closeStdin()
        self.writer = PipeWriter(toChildWrite, reactor)
        self.amp.makeConnection(self.writer)
        PipeReader(fromChildRead, _PipeEnd(self), reactor)

    # -- sending -----------------------------------------------------------

    def send(self, sent: _Sent) -> None:
        self.sent += 1
        idle = not self.inFlight
        # An idle child gets its call at once, and runs it; a busy one's
        # calls collect a reactor turn's worth into one box, behind the one
        # it runs (marked as the calls before it were answered or withdrawn).
        self.amp.queueCall(sent, self.worker.reactor, idle)
        if idle:
            self._markRunning()

    def flush(self) -> None:
        self.amp.flush()

    def _markRunning(self) -> None:
        """The oldest unanswered call is the one the child is running."""
        for sent in self.inFlight.values():
            if not sent.started:
                sent.started = True
                task = sent.task
                if task is not None and sent.attempt == task.runs:
                    task.markStarted()
            return

    def lastStarted(self) -> int:
        """The ID of the last call the child started, from the memory we share."""
        return self.note.lastStarted()

    def unanswered(self, margin: int = 0) -> tuple[list[_Sent], list[_Sent]]:
        """
        The unanswered calls the child may have run, and those it never started.

        The child notes in shared memory the ID of each call as it starts it
        (IDs grow in the order sent): the calls up to that one ran (their
        results may have been lost with the child) or were running; the
        others never started. C{margin} counts that many more as possibly
        started, for a child that may still be running.
        """
        last = self.lastStarted() + margin
        maybeRan = [s for s in self.inFlight.values() if s.taskID <= last]
        neverRan = [s for s in self.inFlight.values() if s.taskID > last]
        return maybeRan, neverRan

    def cancel(self, taskID: int) -> bool:
        """
        Withdraw a call; return True if it was running (the child must die).
        """
        sent, written = self.amp.withdraw(taskID)
        if sent is None:
            return False
        if written:
            # The note says exactly what the child started, whatever has
            # come back of its results so far.
            last = self.lastStarted()
            if last == taskID:
                return True
            if last < taskID:
                self.amp.sendCancel(taskID)
                if self.note.noteCancelSent() >= taskID:
                    # It started before it could see the cancel.
                    return True
            # Otherwise it has run already; its result is ignored.
        # The call behind it may be the oldest now: the one the child runs.
        self._markRunning()
        self._checkIdle()
        return False

    # -- receiving ---------------------------------------------------------

    def resultsReceived(self, batch: list[Result]) -> None:
        """Results from the child, in the order its tasks ran."""
        inFlight, worker = self.inFlight, self.worker
        callStats = worker.callStats
        self.done += len(batch)
        if not self.answered:
            # Answers to its set-up calls alone do not say it came up.
            setup = self.setupThrough
            self.answered = any(result[0] > setup for result in batch)
        # The worker adapts its capacity once a batch (one call, not one a task).
        times: list[float] = []
        for taskID, status, payload, seconds in batch:
            sent = inFlight.pop(taskID, None)
            if sent is not None:
                # Answered: the call will not be sent again.
                sent.call = b""
            if status == _RING:
                # A large result, waiting in the memory we share.
                if sent is None or not sent.open:
                    self.ring.release(payload)
                    continue
                status, payload = _BYTES, self.ring.take(payload)
            if sent is None:
                continue
            if sent.task is not None or sent.raw:
                times.append(seconds)
                if callStats:
                    # Noted before its caller hears of it (and asks for stats).
                    worker._noteRan([seconds])
            sent.answer(status, payload, seconds, self)
        if times:
            worker.ran(times)
        # The oldest call still unanswered is the one the child runs now.
        self._markRunning()
        self._checkIdle()

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        """
        A task's print or a warning: pass whole lines on to the log.

        The start of a line is kept in pieces until its end comes (joining
        it again on every read would cost time quadratic in its length),
        and a line longer than L{_LINE_BYTES} is logged in parts.
        """
        pieces = self._lines.setdefault(childFD, [])
        start = 0
        while (end := data.find(b"\n", start)) >= 0:
            pieces.append(data[start:end])
            self._logLine(b"".join(pieces))
            pieces.clear()
            self._lineBytes[childFD] = 0
            start = end + 1
        if start < len(data):
            pieces.append(data[start:])
            kept = self._lineBytes.get(childFD, 0) + len(data) - start
            if kept >= _LINE_BYTES:
                self._logLine(b"".join(pieces), part=True)
                pieces.clear()
                kept = 0
            self._lineBytes[childFD] = kept

    def _logLine(self, line: bytes, part: bool = False) -> None:
        self.log.info(
            "[{worker} pid {pid}] {line}",
            worker=self.worker.name,
            pid=self.pid,
            line=line.decode("utf-8", "replace"),
            part=part,
        )

    def processExited(self, reason: Failure) -> None:
        # Its end, seen at once: not once its output closes too (as
        # processEnded is), which a process it started may hold open.
        self._gone("process", reason)

    def pipeClosed(self, reason: Failure) -> None:
        self.amp.connectionLost(reason)
        busy = self.inFlight or self.openIterators
        if "process" in self._waitingFor and (not self.stopping or busy):
            # It can report nothing more, and a process that lives on would
            # hold its calls (and the worker) for as long as it lives. One
            # that is ending anyway gets a moment to say how it ended. (A
            # child asked to stop with nothing out is ending.)
            self._pipeKill = self.worker.reactor.callLater(
                self.pipeGrace, self._killForPipe
            )
        self._gone("pipe", reason)

    def _stillRuns(self) -> bool:
        """
        Whether its process has not exited, asking afresh: a timer may come
        due once it has exited but before the reactor has heard (a spawned
        child's SIGCHLD, a forked one's end on the zygote's socket, unread).
        """
        if self.transport is None or "process" not in self._waitingFor:
            return False
        self.transport.reapProcess()  # type: ignore[attr-defined]
        return "process" in self._waitingFor

    def _killForPipe(self) -> None:
        self._pipeKill = None
        if not self._stillRuns():
            return
        assert self.transport is not None
        try:
            self.transport.signalProcess("KILL")
        except (ProcessLookupError, ProcessExitedAlready):
            # It ended meanwhile, on its own or killed by another: its end
            # says how.
            return
        self.closedItsPipe = True

    def _killForStop(self) -> None:
        self._stopKill = None
        if not self._stillRuns():
            return
        assert self.transport is not None
        self.log.warn(
            "{worker}'s child{pid} had not exited {grace:g} s after it was "
            "asked to stop (a thread a task started that is not a daemon, or an "
            "exit handler, may hold it); killing it",
            worker=self.worker.name,
            pid="" if self.pid is None else f" (pid {self.pid})",
            grace=self.stopGrace,
        )
        try:
            self.transport.signalProcess("KILL")
        except (ProcessLookupError, ProcessExitedAlready):
            return
        self.outstayedStop = True

    def killedFromOutside(self, reason: Failure) -> bool:
        """
        Whether its process ended (C{reason}) by a SIGKILL not of ours (an
        operator's, the out-of-memory killer's).
        """
        killed = getattr(reason.value, "signal", None) == signal.SIGKILL
        return killed and not (self.closedItsPipe or self.outstayedStop)

    def endedInWords(self, reason: Failure) -> str:
        """How its process ended (C{reason}), for the calls it leaves."""
        killed = getattr(reason.value, "signal", None) == signal.SIGKILL
        if killed and self.closedItsPipe:
            return "it closed its result pipe and lived on, so it was killed"
        if killed and self.outstayedStop:
            return (
                f"it had not exited {self.stopGrace:g} s after it was asked "
                "to stop, so it was killed"
            )
        if reason.check(ProcessDone):
            return "it exited"
        return reason.getErrorMessage()

    def _gone(self, what: str, reason: Failure) -> None:
        # Results may still be in the pipe when the process has ended, so
        # the child is only over once both have happened.
        self._waitingFor.discard(what)
        if what == "process":
            self.exitReason = reason
            _cancel(self._pipeKill)
            _cancel(self._stopKill)
            self._pipeKill = self._stopKill = None
        if not self._waitingFor:
            self.dead = True
            try:
                self.worker.childEnded(self, self.exitReason)
            finally:
                # Every descriptor and mapping the child was given goes now.
                # Its output is read to the end, but waited for a moment
                # only: a process it started may hold it open for as long
                # as it lives (and closing it would break that process).
                self.ring.close()
                self.note.close()
                self.writer.close()
                if self._outputOpen:
                    self._outputWait = self.worker.reactor.callLater(
                        self.pipeGrace, self._outputClosed
                    )
                self._maybeOver()

    def processEnded(self, reason: Failure) -> None:
        self._outputClosed()

    def _outputClosed(self) -> None:
        """Its output is closed, or has been waited for long enough."""
        self._outputOpen = False
        _cancel(self._outputWait)
        self._outputWait = None
        self._maybeOver()

    def _maybeOver(self) -> None:
        if self.dead and not self._outputOpen and not self.ended.called:
            self.ended.callback(None)

    # -- ending --------------------------------------------------------------

    def _checkIdle(self) -> None:
        busy = self.inFlight or (self.openIterators and self.keepForIterators)
        if not busy and self._idleWaiters:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def retire(self, waitForIterators: bool = True) -> Deferred[None]:
        """
        Let the child finish its calls, then ask it to end; kill it if it
        has not ended L{stopGrace} seconds later.

        With C{waitForIterators}, iterators it holds for the parent must be
        done first too (a child replaced after C{maxTasksPerWorker}); at
        shutdown they are not waited for, and end with the child.
        """
        self.stopping = True
        self.keepForIterators = waitForIterators
        idle: Deferred[None] = Deferred()
        self._idleWaiters.append(idle)
        self._checkIdle()

        def askToStop(_: object) -> Deferred[Any]:
            self.flush()
            if not self.dead:
                self.amp.callRemote(Stop).addErrback(lambda _: None)
                if "process" in self._waitingFor and self._stopKill is None:
                    self._stopKill = self.worker.reactor.callLater(
                        self.stopGrace, self._killForStop
                    )
            return self.ended

        return idle.addCallback(askToStop)

    def kill(self) -> None:
        # Through the transport: a forked child's pid may not be known yet.
        if self.transport is not None and not self.dead:
            try:
                self.transport.signalProcess("KILL")
            except (ProcessLookupError, ProcessExitedAlready):
                pass


class _PipeEnd:
    """Feeds the child's result pipe to its AMP, and tells when it closes."""

    def __init__(self, child: _Child) -> None:
        self.child = child
        # What is read goes straight to the child's AMP: a call fewer a read.
        self.dataReceived = child.amp.dataReceived

    def connectionLost(self, reason: Failure) -> None:
        self.child.pipeClosed(reason)
