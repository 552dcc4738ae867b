"""
Process workers: L{ProcessWorker} runs calls in a child Python process
and replaces it when it dies, times out or is retired; L{ProcessQueue} is
a L{TaskQueue} of them, one per core by default.

A child that dies in a call costs that call (L{WorkerCrashed}, or a
retry); children that die before running anything are restarted with
back-off, and so many in a row make the worker resign (see
C{doc/processes.rst}).
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.errors import (
    NoWorkers,
    QueueRunError,
    UnpicklableError,
    WorkerCrashed,
    WorkerError,
)
from asynqueue.interfaces import (
    ICallPickling,
    IDescribedWorker,
    IReportingWorker,
    IResignationExplaining,
    IStopPreparing,
)
from asynqueue.node.child import _initialize
from asynqueue.settings import settingsForQueue
from asynqueue.tasks import Task
from asynqueue.wire.commands import NodeInfo
from asynqueue.wire.functions import pinned
from asynqueue.wire.pickling import dumpCall, pickledCall
from asynqueue.wire.results import WireIterationSource
from asynqueue.workers.base import AdaptiveBacklog, nameAndSeries, runReporting
from asynqueue.workers.children import _Child, _Sent
from asynqueue.workers.processextras import (
    ProcessQueueExtras,
    ProcessWorkerExtras,
    preloadFor,
)
from asynqueue.workers.spawning import ChildStarter, startMethod

#: The longest wait before starting a child after others died young (seconds).
_MAX_RESPAWN_DELAY = 2.0


#: AsynQueue-era name of the iteration source over the wire.
ProcessIterationSource = WireIterationSource


@implementer(
    IReportingWorker,
    ICallPickling,
    IDescribedWorker,
    IStopPreparing,
    IResignationExplaining,
)
class ProcessWorker(ProcessWorkerExtras):
    """
    Runs calls in a child Python process.

    @param initializer: Called with C{initargs} in each new child before
        any task; what it returns is the process's L{context}. If it fails,
        every task given to the worker fails with L{WorkerError}.
    @param maxTasksPerWorker: Replace the child after this many tasks (its
        tasks are finished, none is lost).
    @param callStats: Keep AsynQueue's call statistics (see L{stats}).
    @param capacity: How many tasks may be in flight to the child. C{None}
        adapts it to the tasks' run times (see L{ThreadWorker}); 1 keeps
        priorities exact.
    @param start: C{"fork"}: children are forked, in milliseconds, by a
        zygote process that has the child runtime and the initializer's
        module imported; C{"spawn"}: each child is a fresh interpreter.
        C{None} (the default): C{"fork"} where available (Linux), else
        C{"spawn"}.

    Cancelling a running task, or its timeout, kills the child; a new one
    takes over the tasks queued behind it. Cancelling a task not yet
    started just withdraws it.
    """

    log = Logger()
    _ids = itertools.count(1)

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
        start: str | None = None,
        callStats: bool = False,
        raw: bool = False,
        useReactor: bool = False,
    ) -> None:
        name, series = nameAndSeries(name, series)
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
        self._keepCallStats(callStats)
        self._keepAsynQueueOptions(raw, useReactor)
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
        # Forked by a zygote that has the initializer's module imported too.
        self._starter = ChildStarter(startMethod(start), preloadFor(initializer))
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
        self.resignationError: type[NoWorkers] | None = None
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
            call = task.pickled
            if self.raw:
                call = self._rawCall(task)
            elif call is None:
                call = pickledCall(task)
        except UnpicklableError:
            task.finished(Failure(), attempt)
            return
        if task.update == "kept":
            self._setup.append(pinned(call))
        if self._maxTasks is not None and self._child.sent >= self._maxTasks + len(
            self._setup
        ):
            self._replace()
        sent = task.handle = _Sent(
            next(self._taskIDs), call, task, None, False, False, attempt
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
        them (see L{asynqueue.wire.commands.TaskResult}); a worker node uses this to
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
        if self.callStats:
            self._noteSent()
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
        # Then the zygote, if no other worker uses it.
        return d.addCallback(lambda _: self._starter.release())

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
        # The zygote ends once these children have, unless others use it.
        self._starter.release()
        return unstarted

    def info(self) -> dict[str, Any]:
        """What L{TaskQueue.stats} shows of me: my child's pid and its tasks done."""
        return {
            "pid": self._child.pid,
            "processDone": self._child.done,
            "replaced": self.replaced,
        }

    def whenStarted(self) -> Deferred[int]:
        """
        Fire with my child's pid once it has one: at once for a spawned
        child; for a forked one, once its zygote has forked it.
        """
        pid = self._child.pid
        if pid is not None:
            return succeed(pid)
        whenStarted = getattr(self._child.transport, "whenStarted", None)
        if whenStarted is None:
            return fail(WorkerCrashed(f"{self.name} has no process"))
        started: Deferred[int] = whenStarted()
        return started

    def nodeInfo(self) -> Deferred[dict[str, Any]]:
        """Ask my child for its pid, resident memory (bytes) and tasks done."""
        result: Deferred[dict[str, Any]] = self._child.amp.callRemote(NodeInfo)
        return result

    # -- children ------------------------------------------------------------

    def _spawn(self) -> _Child:
        child = _Child(self)
        child.start(self.reactor, self._executable, self._env, self._starter)
        for i, call in enumerate(self._setup):
            d: Deferred[Any] = Deferred()
            if i == 0 and self._hasInitializer:
                d.addErrback(self._setupFailed)
            else:
                d.addErrback(self._replayFailed)
            sent = _Sent(next(self._taskIDs), call, None, d)
            child.send(sent)
            # A child that dies in these has not come up (see childEnded).
            child.setupThrough = sent.taskID
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

    def ran(self, times: list[float]) -> None:
        """A child reported the run times of tasks (answered): adapt my capacity."""
        if self._backlog is not None:
            self.capacity = self._backlog.ranAll(times)

    def childEnded(self, child: _Child, reason: Failure) -> None:
        """A child's process and pipe are both gone."""
        self._forgetSent()
        maybeRan, neverRan = child.unanswered()
        child.inFlight.clear()
        if not maybeRan and not neverRan and (child.stopping or self._stopped):
            return
        why = child.endedInWords(reason)

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
            killed = child.killedFromOutside(reason)
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
        result: float = min(_MAX_RESPAWN_DELAY, delay)
        return result

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


class ProcessQueue(ProcessQueueExtras):
    """
    A L{TaskQueue} of C{n} L{ProcessWorker}s (one per core by default).

    C{initializer}, C{initargs}, C{maxTasksPerWorker}, C{capacity} and
    C{start} go to each worker; other keywords to L{TaskQueue}. C{callStats=True}
    makes L{stats} AsynQueue's list of call times.
    """

    def __init__(
        self,
        n: int | None = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        maxTasksPerWorker: int | None = None,
        capacity: int | None = None,
        callStats: bool = False,
        start: str | None = None,
        **kwargs: Any,
    ) -> None:
        if n is not None and n < 1:
            raise ValueError(f"a ProcessQueue needs at least one process, not {n}")
        settings = settingsForQueue(
            kwargs, workers=n, capacity=capacity, maxTasksPerWorker=maxTasksPerWorker
        )
        super().__init__(settings=settings, **kwargs)
        self._callStats = callStats
        for _ in range(settings.workers or os.cpu_count() or 1):
            self.attachWorker(
                ProcessWorker(
                    initializer=initializer,
                    initargs=initargs,
                    maxTasksPerWorker=settings.maxTasksPerWorker,
                    capacity=settings.capacity,
                    start=start,
                    callStats=callStats,
                )
            )

    def nodeInfo(self) -> Deferred[list[dict[str, Any]]]:
        """Ask every child for its pid, resident memory and tasks done."""
        from twisted.internet.defer import gatherResults

        return gatherResults(
            [w.nodeInfo() for w in self.workers() if isinstance(w, ProcessWorker)]
        )
