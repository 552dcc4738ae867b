"""
Processes: L{ProcessWorker} runs calls in a child Python process, and
L{ProcessQueue} is a L{TaskQueue} of them, one per core by default.

Each child is a worker node (L{asynqueue.node}) talking AMP over two
dedicated pipes. Tasks are pickled at once in the parent, so a call that
cannot travel fails its own Deferred at once. Several tasks are kept in
flight per child, and tasks handed out in the same reactor turn travel in
one box.

A child runs its tasks one at a time in the order sent, and notes the ID
of each in memory it shares with the parent just before starting it. If the
child dies, the parent reads that note: the tasks up to it ran (their
results may have died with the child) or were running, and fail with
L{WorkerCrashed} (or run again if they asked for C{retries}); the tasks
after it never started and go to a fresh child. No task is lost or silently
run twice. Results of short tasks travel back together, a few at a time
(see L{asynqueue.node.LocalRunner}).
"""

from __future__ import annotations

import itertools
import os
import signal
import sys
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.base import TaskQueue
from asynqueue.errors import QueueRunError, UnpicklableError, WorkerCrashed, WorkerError
from asynqueue.interfaces import IReportingWorker
from asynqueue.node import PipeReader, PipeWriter, _initialize, context
from asynqueue.ring import ResultRing
from asynqueue.settings import settingsForQueue
from asynqueue.startnote import StartNote
from asynqueue.tasks import Task
from asynqueue.wire import (
    BoxReader,
    NodeInfo,
    Stop,
    WireIterationSource,
    bigValue,
    deliverResult,
    dumpCall,
    dumps,
    loads,
    pickledCall,
    reportResult,
    writeBox,
)
from asynqueue.workers import AdaptiveBacklog, runReporting

__all__ = ["ProcessWorker", "ProcessQueue", "ProcessIterationSource", "context"]

_CHILD_MAIN = "from asynqueue.node import childMain; childMain()"


def _pipe() -> tuple[int, int]:
    """A pipe, as large as the system allows up to 1 MiB (big values move faster)."""
    read, write = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(write, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass
    return read, write


#: The longest wait before starting a child after others died young (seconds).
_MAX_RESPAWN_DELAY = 2.0

#: A child's output line longer than this (bytes) is logged in parts.
_LINE_BYTES = 1 << 16

#: Calls at most this big travel together in one box.
_BATCH_BYTES = 1 << 16


@dataclass(eq=False, slots=True)
class _Sent:
    """
    A call handed to a child and not yet answered: a task (whose outcome
    is reported to it), or a call with a Deferred (a replayed update, a
    node's pickled call).
    """

    taskID: int
    call: bytes
    task: Task | None
    deferred: Deferred[Any] | None
    started: bool = False
    raw: bool = False
    attempt: int = 0
    settled: bool = False

    @property
    def open(self) -> bool:
        """Whether nobody has been told the outcome yet."""
        if self.deferred is not None:
            return not self.deferred.called
        return not self.settled

    def fail(self, error: BaseException) -> None:
        """End the call with C{error}, unless it has ended already."""
        if self.deferred is not None:
            if not self.deferred.called:
                self.deferred.errback(error)
        elif not self.settled and self.task is not None:
            self.settled = True
            self.task.finished(Failure(error), self.attempt)


class _ParentAMP(amp.AMP):
    """
    The parent's side of the wire to one child.

    Results, by far the most frequent boxes, are read straight off the
    wire (L{BoxReader}); every other box goes through AMP as usual.
    """

    def __init__(self, child: _Child) -> None:
        super().__init__()
        self.child = child
        self._reader = BoxReader(self._boxReceived, self._malformed)

    def dataReceived(self, data: bytes) -> None:
        self._reader.feed(data)

    def _boxReceived(self, box: dict[bytes, Any]) -> None:
        command = box.get(b"_command")
        if command == b"TaskResults":
            self.child.resultsReceived(loads(bigValue(box, b"batch") or b""))
        elif command == b"TaskResult":
            self.child.resultReceived(
                int(bytes(box[b"taskID"])),
                bytes(box[b"status"]).decode(),
                # Its own bytes: a raw result may be kept past this read.
                bytes(bigValue(box, b"payload") or b""),
                float(bytes(box[b"seconds"])),
            )
        else:
            self.ampBoxReceived(amp.AmpBox((k, bytes(v)) for k, v in box.items()))

    def _malformed(self, why: str) -> None:
        # The child is ours: garbage from it means it is broken. Replace it.
        self.child.log.error(
            "{worker}'s child sent {why}; killing it", worker=self.child.where, why=why
        )
        self.child.kill()

    def sendCommand(self, command: bytes, **values: bytes) -> None:
        """Send a command that wants no answer, without AMP's machinery."""
        if self.transport is not None:
            writeBox(self.transport, [(b"_command", command), *_pairs(values)])


def _pairs(values: dict[str, bytes]) -> list[tuple[bytes, bytes]]:
    return [(key.encode(), value) for key, value in values.items()]


class _Child(ProcessProtocol):
    """One child process of a L{ProcessWorker} and the conversation with it."""

    log = Logger()

    def __init__(self, worker: ProcessWorker) -> None:
        self.worker = worker
        self.amp = _ParentAMP(self)
        self.inFlight: OrderedDict[int, _Sent] = OrderedDict()
        self.outgoing: list[tuple[int, bytes]] = []
        self.flushCall: Any = None
        self.pid: int | None = None
        self.sent = 0
        self.done = 0
        self.openIterators = 0
        self.stopping = False
        self.dead = False
        self.ended: Deferred[None] = Deferred()
        self._waitingFor = {"process", "pipe"}
        self._lines: dict[int, list[bytes]] = {}
        self._lineBytes: dict[int, int] = {}
        self._idleWaiters: list[Deferred[None]] = []
        self.keepForIterators = True
        #: The ID of its last set-up call (initializer, kept updates), or 0.
        self.setupThrough = 0
        #: Whether it ever answered a call.
        self.answered = False

    @property
    def cameUp(self) -> bool:
        """Whether it ever got as far as running a call or answering one."""
        return self.answered or self.lastStarted() > self.setupThrough

    @property
    def where(self) -> str:
        """Where this child's results come from, for tracebacks."""
        return f"{self.worker.name} (pid {self.pid})"

    def iteratorClosed(self) -> None:
        """One of the iterators this child holds for the parent is done."""
        self.openIterators -= 1
        self._checkIdle()

    def start(self, reactor: Any, executable: str, env: dict[str, str]) -> None:
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
            transport = reactor.spawnProcess(
                self,
                executable,
                [executable, "-c", _CHILD_MAIN],
                env=env,
                childFDs={
                    0: "w",
                    1: "r",
                    2: "r",
                    3: toChildRead,
                    4: fromChildWrite,
                    5: startedFD,
                    6: self.ring.fd,
                },
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
        self.inFlight[sent.taskID] = sent
        self.sent += 1
        if len(sent.call) > _BATCH_BYTES:
            self.flush()
            self.amp.sendCommand(b"RunTasks", batch=dumps([(sent.taskID, sent.call)]))
        else:
            self.outgoing.append((sent.taskID, sent.call))
            if len(self.inFlight) == 1:
                # An idle child gets its call at once; others collect a
                # reactor turn's worth of calls into one box.
                self.flush()
            elif self.flushCall is None:
                self.flushCall = self.worker.reactor.callLater(0, self.flush)
        self._markRunning()

    def flush(self) -> None:
        if self.flushCall is not None:
            if self.flushCall.active():
                self.flushCall.cancel()
            self.flushCall = None
        if self.outgoing and not self.dead:
            batch, self.outgoing = self.outgoing, []
            self.amp.sendCommand(b"RunTasks", batch=dumps(batch))

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
        sent = self.inFlight.pop(taskID, None)
        if sent is None:
            return False
        if any(t == taskID for t, _ in self.outgoing):
            # Not even sent yet.
            self.outgoing = [(t, c) for t, c in self.outgoing if t != taskID]
        else:
            # The note says exactly what the child started, whatever has
            # come back of its results so far.
            last = self.lastStarted()
            if last == taskID:
                return True
            if last < taskID:
                self.amp.sendCommand(b"CancelTask", taskID=b"%d" % taskID)
                if self.note.noteCancelSent() >= taskID:
                    # It started before it could see the cancel.
                    return True
            # Otherwise it has run already; its result is ignored.
        self._checkIdle()
        return False

    # -- receiving ---------------------------------------------------------

    def resultReceived(
        self, taskID: int, status: str, payload: bytes | memoryview, seconds: float
    ) -> None:
        """One result from the child."""
        self.resultsReceived([(taskID, status, payload, seconds)])

    def resultsReceived(
        self, batch: list[tuple[int, str, bytes | memoryview, float]]
    ) -> None:
        """Results from the child, in the order its tasks ran."""
        inFlight, worker = self.inFlight, self.worker
        self.done += len(batch)
        self.answered = True
        for taskID, status, payload, seconds in batch:
            sent = inFlight.pop(taskID, None)
            if sent is not None:
                # Answered: the call will not be sent again.
                sent.call = b""
            if status == "m":
                # A large result, waiting in the memory we share.
                if sent is None or not sent.open:
                    self.ring.release(payload)
                    continue
                status, payload = "b", self.ring.take(payload)
            if sent is None:
                continue
            task = sent.task
            if task is not None or sent.raw:
                worker.ran(seconds)
            if sent.deferred is None:
                if sent.settled or task is None:
                    continue
                sent.settled = True
                if not sent.started and sent.attempt == task.runs:
                    # It ran and ended between two reads: it began this long ago.
                    sent.started = True
                    task.markStarted(ago=seconds)
                reportResult(task, sent.attempt, status, payload, self)
            elif sent.deferred.called:
                continue
            elif sent.raw:
                sent.deferred.callback((status, payload, seconds, self))
            else:
                deliverResult(sent.deferred, status, payload, self)
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

    def processEnded(self, reason: Failure) -> None:
        self._gone("process", reason)

    def pipeClosed(self, reason: Failure) -> None:
        self.amp.connectionLost(reason)
        self._gone("pipe", reason)

    def _gone(self, what: str, reason: Failure) -> None:
        # Results may still be in the pipe when the process has ended, so
        # the child is only over once both have happened.
        self._waitingFor.discard(what)
        if what == "process":
            self.exitReason = reason
        if not self._waitingFor:
            self.dead = True
            try:
                self.worker.childEnded(self, self.exitReason)
            finally:
                # Every descriptor and mapping the child was given goes now.
                self.ring.close()
                self.note.close()
                self.writer.close()
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
        Let the child finish its calls, then ask it to end.

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
            return self.ended

        return idle.addCallback(askToStop)

    def kill(self) -> None:
        if self.pid is not None and not self.dead:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except (ProcessLookupError, ProcessExitedAlready):
                pass


class _PipeEnd:
    """Feeds the child's result pipe to its AMP, and tells when it closes."""

    def __init__(self, child: _Child) -> None:
        self.child = child

    def dataReceived(self, data: bytes) -> None:
        self.child.amp.dataReceived(data)

    def connectionLost(self, reason: Failure) -> None:
        self.child.pipeClosed(reason)


#: AsynQueue-era name of the iteration source over the wire.
ProcessIterationSource = WireIterationSource


@implementer(IReportingWorker)
class ProcessWorker:
    """
    Runs calls in a child Python process.

    @param initializer: Called with C{initargs} in each new child before
        any task; what it returns is the process's L{context}. If it fails,
        every task given to the worker fails with L{WorkerError}.
    @param maxTasksPerWorker: Replace the child after this many tasks (its
        tasks are finished, none is lost).
    @param capacity: How many tasks may be in flight to the child. C{None}
        adapts it to the tasks' run times (see L{ThreadWorker}); 1 keeps
        priorities exact.

    Cancelling a running task, or its timeout, kills the child; a new one
    takes over the tasks queued behind it. Cancelling a task not yet
    started just withdraws it.
    """

    log = Logger()
    _ids = itertools.count(1)
    #: Calls travel pickled, so a queue of such workers pickles them at once.
    picklesCalls = True

    def __init__(
        self,
        name: str | None = None,
        series: Iterable[Any] = (),
        capacity: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        maxTasksPerWorker: int | None = None,
        reactor: Any = None,
        executable: str | None = None,
        env: dict[str, str] | None = None,
        backlogSeconds: float = 0.002,
        maxCapacity: int = 64,
        maxStartFailures: int | None = 10,
        respawnDelay: float = 0.05,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if capacity is not None and capacity < 1:
            raise ValueError(f"a worker's capacity must be at least 1, not {capacity}")
        if maxStartFailures is not None and maxStartFailures < 1:
            raise ValueError(
                f"maxStartFailures must be at least 1 (or None), not {maxStartFailures}"
            )
        if respawnDelay < 0:
            raise ValueError(f"respawnDelay cannot be negative, not {respawnDelay}")
        if maxTasksPerWorker is not None and maxTasksPerWorker < 1:
            raise ValueError(
                f"maxTasksPerWorker must be at least 1, not {maxTasksPerWorker}"
            )
        self.reactor = reactor
        self.name = name or f"ProcessWorker-{next(self._ids)}"
        self.iQualified: list[Any] = list(series)
        self.capacity = capacity or 2
        # At least two: a child has its next task at hand when one ends.
        self._backlog = (
            AdaptiveBacklog(backlogSeconds, maxCapacity, floor=2)
            if capacity is None
            else None
        )
        self._maxTasks = maxTasksPerWorker
        self._executable = executable or sys.executable
        self._env = dict(os.environ if env is None else env)
        # The child finds what the parent can import (functions pickled by
        # reference), then whatever PYTHONPATH says besides.
        paths = [p for p in sys.path if p]
        if self._env.get("PYTHONPATH"):
            paths.append(self._env["PYTHONPATH"])
        self._env["PYTHONPATH"] = os.pathsep.join(paths)
        # A task's print reaches the log as it happens, not when the child ends.
        self._env["PYTHONUNBUFFERED"] = "1"
        self._resignator: Callable[[Any], object] | None = None
        self._taskIDs = itertools.count(1)
        self._setup: list[bytes] = []
        self._setupFailure: Failure | None = None
        self._hasInitializer = initializer is not None
        if initializer is not None:
            self._setup.append(dumpCall(_initialize, (initializer, initargs), {}))
        self._stopped = False
        self._retiring: set[_Child] = set()
        self._maxStartFailures = maxStartFailures
        self._respawnDelay = respawnDelay
        #: Children in a row that died before they came up.
        self._startFailures = 0
        self._respawnCall: Any = None
        #: Calls given while no child is up (a respawn is delayed).
        self._waiting: list[_Sent] = []
        #: Why I resigned, for the queue to say (None while I work).
        self.resignedBecause: str | None = None
        self._neverRan: list[_Sent] = []
        self.replaced = 0
        self.outstanding = 0
        self._child = self._spawn()

    def __repr__(self) -> str:
        return f"<ProcessWorker {self.name} pid {self._child.pid}>"

    # -- IWorker -------------------------------------------------------------

    def setResignator(self, callableObject: Callable[[Any], object]) -> None:
        """Register what to call, with me, if I must resign."""
        self._resignator = callableObject

    def run(self, task: Task) -> Deferred[Any]:
        """Pickle the call now, send it to my child; a Deferred of its result."""
        return runReporting(self, task)

    def start(self, task: Task) -> None:
        """Pickle the call now (unless it was), send it to my child; report back."""
        attempt = task.runs
        if self._stopped:
            stopped = QueueRunError(f"{self.name} is stopped")
            task.finished(Failure(stopped), attempt)
            return
        if self._setupFailure is not None:
            task.finished(Failure(self._setupError()), attempt)
            return
        try:
            call = pickledCall(task)
        except UnpicklableError:
            task.finished(Failure(), attempt)
            return
        if task.update == "kept":
            self._setup.append(call)
        if self._maxTasks is not None and self._child.sent >= self._maxTasks + len(
            self._setup
        ):
            self._replace()
        sent = task.handle = _Sent(
            next(self._taskIDs), call, task, None, attempt=attempt
        )
        self._send(sent)

    def abandon(self, task: Task) -> None:
        """Withdraw the task if my child has not started it, else kill the child."""
        sent = task.handle
        if isinstance(sent, _Sent) and sent.task is task and sent.open:
            sent.settled = True
            self._cancel(sent)

    def runPickled(self, call: bytes) -> Deferred[tuple[str, bytes, float, Any]]:
        """
        Run a call pickled elsewhere, without unpickling it (or its result) here.

        Fires with C{(status, payload, seconds, child)} as the child sent
        them (see L{asynqueue.wire.TaskResult}); a worker node uses this to
        pass its clients' calls to its children untouched.
        """
        if self._stopped:
            return fail(QueueRunError(f"{self.name} is stopped"))
        if self._setupFailure is not None:
            return fail(self._setupError())
        sent = _Sent(next(self._taskIDs), call, None, None, raw=True)
        sent.deferred = Deferred(lambda d: self._cancel(sent))
        self.outstanding += 1
        sent.deferred.addBoth(self._rawDone)
        self._send(sent)
        return sent.deferred

    def _send(self, sent: _Sent) -> None:
        """Send a call to my child, or keep it for the next one if it is dead."""
        if self._respawnCall is not None:
            self._waiting.append(sent)
        else:
            self._child.send(sent)

    def _rawDone(self, result: object) -> object:
        self.outstanding -= 1
        return result

    def _cancel(self, sent: _Sent) -> None:
        if sent in self._waiting:
            self._waiting.remove(sent)
            return
        for child in (self._child, *self._retiring):
            if sent.taskID in child.inFlight:
                if child.cancel(sent.taskID):
                    # A Python call cannot be interrupted from outside. New
                    # tasks go to a fresh child at once; those the old one
                    # never started follow them when it has died.
                    if child is self._child and not self._stopped:
                        self._retiring.add(child)
                        child.ended.addBoth(self._forgetChild, child)
                        self._startChild()
                    child.kill()
                return

    def prepareToStop(self) -> None:
        """Start no new process from now on: I am about to be stopped."""
        self._stopped = True
        self._cancelRespawn(WorkerCrashed(f"{self.name} was stopped"))

    def _cancelRespawn(self, error: Exception) -> None:
        """Start no delayed child; fail the calls that waited for it."""
        if self._respawnCall is not None:
            if self._respawnCall.active():
                self._respawnCall.cancel()
            self._respawnCall = None
        waiting, self._waiting = self._waiting, []
        for sent in waiting:
            sent.fail(error)

    def _forgetChild(self, result: object, child: _Child) -> None:
        self._retiring.discard(child)

    def stop(self) -> Deferred[None]:
        """Let my child finish its tasks, then end it; fire when it has ended."""
        self._stopped = True
        self._cancelRespawn(WorkerCrashed(f"{self.name} was stopped"))
        children = [self._child, *self._retiring]
        ds = [c.retire(waitForIterators=False) for c in children]
        d: Deferred[None] = Deferred()
        pending = len(ds)

        def one(_: object) -> None:
            nonlocal pending
            pending -= 1
            if pending == 0:
                d.callback(None)

        for each in ds:
            each.addBoth(one)
        return d

    def crash(self) -> list[Task]:
        """Kill my child now; return the tasks it had not started."""
        self._stopped = True
        unstarted: list[Task] = []
        # Calls a dead child never started, kept for this moment.
        orphans, self._neverRan = self._neverRan, []
        orphans += self._waiting
        self._waiting = []
        if self._respawnCall is not None and self._respawnCall.active():
            self._respawnCall.cancel()
        self._respawnCall = None
        for sent in orphans:
            if sent.task is None:
                sent.fail(WorkerCrashed(f"{self.name} crashed"))
            elif sent.open:
                sent.settled = True
                unstarted.append(sent.task)
        for child in (self._child, *self._retiring):
            child.kill()
            # The child may start one more call before the signal lands.
            _, neverRan = child.unanswered(margin=1)
            for sent in neverRan:
                del child.inFlight[sent.taskID]
                if sent.task is not None and sent.open:
                    sent.settled = True
                    unstarted.append(sent.task)
        return unstarted

    def info(self) -> dict[str, Any]:
        """What L{TaskQueue.stats} shows of me: my child's pid and its tasks done."""
        return {
            "pid": self._child.pid,
            "processDone": self._child.done,
            "replaced": self.replaced,
        }

    def nodeInfo(self) -> Deferred[dict[str, Any]]:
        """Ask my child for its pid, resident memory (bytes) and tasks done."""
        return self._child.amp.callRemote(NodeInfo)

    # -- children ------------------------------------------------------------

    def _spawn(self) -> _Child:
        child = _Child(self)
        child.start(self.reactor, self._executable, self._env)
        for i, call in enumerate(self._setup):
            d: Deferred[Any] = Deferred()
            if i == 0 and self._hasInitializer:
                d.addErrback(self._setupFailed)
            else:
                d.addErrback(self._replayFailed)
            child.send(_Sent(next(self._taskIDs), call, None, d))
        return child

    def _setupFailed(self, failure: Failure) -> None:
        # The child refuses every task after this (see node._checkSetup); so
        # do I, at once, rather than start child after child.
        self.log.failure("The initializer of {name} failed", failure, name=self.name)
        self._setupFailure = failure

    def _replayFailed(self, failure: Failure) -> None:
        self.log.failure(
            "A kept update failed in a new process of {name}", failure, name=self.name
        )

    def _setupError(self) -> WorkerError:
        assert self._setupFailure is not None
        return WorkerError(
            f"{self.name} could not set up its process: "
            f"{self._setupFailure.getErrorMessage()}"
        )

    def _replace(self) -> None:
        """Start a fresh child; the old one finishes its tasks and ends."""
        old = self._child
        self._retiring.add(old)
        old.retire().addBoth(lambda _: self._retiring.discard(old))
        self._startChild()

    def ran(self, seconds: float) -> None:
        """A child reported a task's run time: adapt my capacity."""
        if self._backlog is not None:
            self.capacity = self._backlog.ran(seconds)

    def childEnded(self, child: _Child, reason: Failure) -> None:
        """A child's process and pipe are both gone."""
        maybeRan, neverRan = child.unanswered()
        child.inFlight.clear()
        if not maybeRan and not neverRan and (child.stopping or self._stopped):
            return
        why = reason.getErrorMessage() if not reason.check(ProcessDone) else "it exited"

        def fail(calls: list[_Sent], error: Exception) -> None:
            for sent in calls:
                sent.fail(error)

        crashed = WorkerCrashed(
            f"{self.name}'s process {child.pid} died ({why}) while running the task "
            "or before reporting on it"
        )
        if self._setupFailure is not None:
            fail(neverRan + maybeRan, self._setupError())
            return
        if self._stopped:
            fail(maybeRan, crashed)
            fail(neverRan, WorkerCrashed(f"{self.name} was stopped"))
            return
        if child is self._child:
            # A death in a call is the call's doing, and costs only that
            # call; a child that dies before it runs anything is broken, or
            # killed young: the next waits longer, and so many in a row mean
            # no child can start here.
            self._startFailures = 0 if child.cameUp else self._startFailures + 1
            # Killed from outside (SIGKILL: an operator, the out-of-memory
            # killer) says nothing of whether a child can start here: wait,
            # but never give up for that.
            killed = getattr(reason.value, "signal", None) == signal.SIGKILL
            if self._tooManyStartFailures() and not killed:
                self._resign(
                    f"{self._startFailures} processes in a row died before they "
                    f"could run a call; the last: {why}",
                    neverRan,
                )
                fail(maybeRan, crashed)
                fail(neverRan, WorkerCrashed(f"{self.name} resigned"))
                return
            delay = self._respawnBackoff()
            self.log.warn(
                "{name}'s process {pid} died ({why}); starting another in {delay} s",
                name=self.name,
                pid=child.pid,
                why=why,
                delay=round(delay, 3),
            )
            self._startChild(delay)
        # The calls it never started go to the fresh child first, so that
        # whatever the failures below set off finds it ready.
        for sent in neverRan:
            if sent.open and (sent.task is not None or sent.raw):
                self._resend(sent)
        fail(maybeRan, crashed)

    def _resign(self, why: str, neverRan: list[_Sent]) -> None:
        """Stop for good and tell the queue, which takes back what never ran."""
        self.log.error("{name} resigns: {why}", name=self.name, why=why)
        self.resignedBecause = why
        self._stopped = True
        # Resign first: the queue takes back the calls that never ran (see
        # crash) and retries the others on other workers.
        self._neverRan = [s for s in neverRan if s.task is not None]
        if self._resignator is not None:
            self._resignator(self)

    def _resend(self, sent: _Sent) -> None:
        """Send a call again, to a new child: with a new ID, as IDs grow as sent."""
        sent.taskID = next(self._taskIDs)
        self._send(sent)

    def _tooManyStartFailures(self) -> bool:
        limit = self._maxStartFailures
        return limit is not None and self._startFailures >= limit

    def _respawnBackoff(self) -> float:
        """How long to wait before the next child: doubling with each early death."""
        if not self._startFailures:
            return 0.0
        delay = self._respawnDelay * 2 ** (self._startFailures - 1)
        return min(_MAX_RESPAWN_DELAY, delay)

    def _startChild(self, delay: float = 0.0) -> None:
        """
        Replace my child, now or after C{delay} seconds.

        Calls given meanwhile wait for the new child. If it cannot even be
        started (no descriptors or memory left, say), that counts as a death
        before it came up: retried with back-off, or I resign.
        """
        self.replaced += 1
        if delay:
            self._respawnCall = self.reactor.callLater(delay, self._respawn)
            return
        try:
            self._child = self._spawn()
        except Exception as e:
            self._startFailures += 1
            why = f"a process could not be started: {type(e).__name__}: {e}"
            self.log.error("{name}: {why}", name=self.name, why=why)
            if self._tooManyStartFailures():
                self._resign(why, [])
            else:
                delay = self._respawnBackoff()
                self._respawnCall = self.reactor.callLater(delay, self._respawn)

    def _respawn(self) -> None:
        """The delayed start of a new child, and the calls that waited for it."""
        self._respawnCall = None
        if self._stopped:
            self._cancelRespawn(WorkerCrashed(f"{self.name} was stopped"))
            return
        self.replaced -= 1  # counted when it was put off
        self._startChild()
        if self._respawnCall is None and not self._stopped:
            waiting, self._waiting = self._waiting, []
            for sent in waiting:
                if sent.open:
                    self._resend(sent)


class ProcessQueue(TaskQueue):
    """
    A L{TaskQueue} of C{n} L{ProcessWorker}s (one per core by default).

    C{initializer}, C{initargs}, C{maxTasksPerWorker} and C{capacity} go
    to each worker; other keywords to L{TaskQueue}.
    """

    def __init__(
        self,
        n: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        maxTasksPerWorker: int | None = None,
        capacity: int | None = None,
        **kwargs: Any,
    ) -> None:
        if n is not None and n < 1:
            raise ValueError(f"a ProcessQueue needs at least one process, not {n}")
        settings = settingsForQueue(
            kwargs, workers=n, capacity=capacity, maxTasksPerWorker=maxTasksPerWorker
        )
        super().__init__(settings=settings, **kwargs)
        for _ in range(settings.workers or os.cpu_count() or 1):
            self.attachWorker(
                ProcessWorker(
                    initializer=initializer,
                    initargs=initargs,
                    maxTasksPerWorker=settings.maxTasksPerWorker,
                    capacity=settings.capacity,
                )
            )

    def nodeInfo(self) -> Deferred[list[dict[str, Any]]]:
        """Ask every child for its pid, resident memory and tasks done."""
        from twisted.internet.defer import gatherResults

        return gatherResults(
            [w.nodeInfo() for w in self.workers() if isinstance(w, ProcessWorker)]
        )
