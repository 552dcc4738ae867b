"""
Worker slots: the queue's bookkeeping for each attached worker, and
attaching, qualifying, detaching and losing workers.

The queue sees a worker only through the interfaces of
L{asynqueue.interfaces}: L{IWorker} always, and the optional abilities
(L{ICapacityReporting}, L{ICallPickling}, L{IResignationExplaining}, ...)
where the worker declares them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, cast

from twisted.internet.defer import Deferred, DeferredList, fail, succeed
from twisted.python.failure import Failure

from asynqueue.errors import (
    ImplementationError,
    NoQualifiedWorker,
    NoWorkers,
    QueueRunError,
    WorkerCrashed,
)
from asynqueue.interfaces import (
    ICallPickling,
    ICapacityReporting,
    IReportingWorker,
    IResignationExplaining,
    IWorker,
    qualifications,
)
from asynqueue.queue.running import _RUNNING, _STOPPED, _Running
from asynqueue.queue.taskstate import QueuedTask, cancelTimeout
from asynqueue.tasks import TaskOptions

__all__ = ["_WorkerSlot"]


def _sendsPickle(worker: IWorker) -> bool:
    """
    Whether C{worker} sends the calls it is given as pickled, never their
    arguments (an L{ICallPickling} that can read them back: C{argumentsOf}).
    """
    return ICallPickling.providedBy(worker) and hasattr(worker, "argumentsOf")


@dataclass(eq=False, slots=True)
class _WorkerSlot:
    """
    The queue's bookkeeping for one attached worker.

    C{free} is how many more tasks it may take now: 0 until it is ready
    and once it is leaving. C{reportingWorker} is the worker again when it
    provides L{IReportingWorker} (the fast path), else C{None}.
    """

    worker: IWorker
    outstanding: set[QueuedTask] = field(default_factory=set)
    reportingWorker: IReportingWorker | None = None
    #: The worker sends C{task.pickled} and never reads a task's arguments
    #: (an L{ICallPickling} with C{argumentsOf}; see L{_sendsPickle}).
    picklesCalls: bool = False
    ready: bool = False
    leaving: bool = False
    free: int = 0
    done: int = 0
    failed: int = 0
    idleWaiters: list[Deferred[None]] = field(default_factory=list)

    def countFree(self) -> None:
        """Work out C{free} afresh (after readiness, leaving or capacity changed)."""
        if self.ready and not self.leaving:
            self.free = int(self.worker.capacity) - len(self.outstanding)
        else:
            self.free = 0

    def release(self, task: QueuedTask) -> None:
        """The worker is done with a task."""
        if task in self.outstanding:
            self.outstanding.discard(task)
            if self.ready and not self.leaving:
                # Read afresh: a worker's capacity may change as it runs.
                self.free = int(self.worker.capacity) - len(self.outstanding)


class _Workers(_Running):
    """Attach, qualify, detach and lose workers."""

    _updates: list[tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]]
    #: The worker whose C{prepareCall} pickles each call at submission, when
    #: every attached worker pickles calls; else C{None}.
    _callPickler: ICallPickling | None
    #: Why every worker is gone, once the last one resigned.
    _noWorkers: str | None
    _noWorkersError: type[NoWorkers]

    def attachWorker(self, worker: IWorker) -> Deferred[None]:
        """
        Attach a worker; return a Deferred that fires when it takes tasks.

        It takes tasks once it has run the kept L{update} calls.
        """
        if not IWorker.providedBy(worker):
            raise ImplementationError(f"{worker!r} does not provide IWorker")
        if self._state != _RUNNING:
            raise QueueRunError(f"{self.name} is shut down")
        if worker in self._slots:
            return succeed(None)
        # AsynQueue's class qualifications (cQualified) join the worker's
        # own now, so that dispatch reads one list.
        for series in qualifications(worker):
            if series not in worker.iQualified:
                worker.iQualified.append(series)
        slot = _WorkerSlot(
            worker,
            reportingWorker=worker if IReportingWorker.providedBy(worker) else None,
            picklesCalls=_sendsPickle(worker),
        )
        self._noWorkers = None
        self._slots[worker] = slot
        self._slotList = list(self._slots.values())
        self._notePickling()
        worker.setResignator(self._workerResigned)
        if ICapacityReporting.providedBy(worker):
            worker.setCapacityObserver(lambda: self._capacityChanged(slot))
        ds = [self._runUpdate(slot, f, a, kw, False) for f, a, kw in self._updates]

        def ready(_: object) -> None:
            slot.ready = True
            slot.countFree()
            self._dispatch()

        return DeferredList(ds, consumeErrors=True).addCallback(ready)

    def detachWorker(
        self, worker: IWorker, reassign: bool = True, crash: bool = False
    ) -> Deferred[None]:
        """
        Detach a worker; return a Deferred that fires when it has stopped.

        The worker takes no more tasks. Without C{crash} it finishes what it
        accepted and is stopped. With C{crash=True} it is stopped at once: the
        tasks it accepted but had not started go back to the queue (or fail
        with L{WorkerCrashed} if C{reassign} is false); those it was running
        fail with L{WorkerCrashed} unless they have C{retries} left.
        """
        slot = self._slots.get(worker)
        if slot is None:
            return succeed(None)
        slot.leaving = True
        slot.countFree()
        if crash:
            # The tasks it was given are the queue's own.
            for task in cast(list[QueuedTask], worker.crash()):
                slot.release(task)
                self._running.discard(task)
                cancelTimeout(task)
                task.attempts -= 1
                if reassign:
                    self._requeue(task)
                else:
                    self._finish(task, Failure(WorkerCrashed(f"{worker.name} crashed")))
            self._forget(slot)
            self._failOrphans()
            self._dispatch()
            return succeed(None)
        d: Deferred[None] = self._whenIdle(slot).addCallback(lambda _: worker.stop())

        def gone(result: object) -> object:
            self._forget(slot)
            self._failOrphans()
            self._dispatch()
            return None

        return d.addBoth(gone)

    def qualifyWorker(self, worker: IWorker, series: Hashable) -> None:
        """Let C{worker} run tasks of C{series}, as well as those of no series."""
        if series not in worker.iQualified:
            worker.iQualified.append(series)
        self._dispatch()

    def _runUpdate(
        self,
        slot: _WorkerSlot,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        ephemeral: bool,
    ) -> Deferred[Any]:
        options = TaskOptions(doNext=True)
        task = self._newTask(f, args, kwargs, options, recorded=False)
        # A worker that replaces its process (or node) replays kept updates.
        task.update = "ephemeral" if ephemeral else "kept"
        try:
            return slot.worker.run(task)
        except Exception:
            return fail()

    def _notePickling(self) -> None:
        """Pickle calls at submission if, and only if, every worker pickles them."""
        workers = list(self._slots)
        if workers and all(ICallPickling.providedBy(w) for w in workers):
            self._callPickler = cast(ICallPickling, workers[0])
        else:
            self._callPickler = None
        # Arguments go once pickled only if no worker needs them.
        self._dropsArguments = bool(workers) and all(map(_sendsPickle, workers))
        readers = [w for w in workers if _sendsPickle(w)]
        if readers:
            # Kept once the pickling workers are gone: what waits pickled
            # may yet go to a worker that does not pickle.
            self._argumentsReader = cast(ICallPickling, readers[0])

    def _capacityChanged(self, slot: _WorkerSlot) -> None:
        """A worker's capacity changed by itself (a remote node (dis)connected)."""
        slot.countFree()
        self._dispatch()

    def _workerResigned(self, worker: IWorker) -> None:
        """
        A worker said it can no longer run tasks: crash-detach it.

        If it was the last, no pending task or new call can run: they fail
        with L{NoWorkers} (until a worker is attached again) rather than
        wait on a queue that can no longer run them. So too while the queue
        shuts down: no worker can be attached then, and shutdown waits on
        what is pending.
        """
        if worker not in self._slots:
            return
        why, error = None, NoWorkers
        if IResignationExplaining.providedBy(worker):
            why = worker.resignedBecause
            error = worker.resignationError or NoWorkers
        why = why or "it resigned"
        self.log.warn("Worker {worker} resigned: {why}", worker=worker.name, why=why)
        self.detachWorker(worker, reassign=True, crash=True)
        if not self._slots and self._state != _STOPPED:
            self._noWorkers = (
                f"{self.name} has no worker left: the last, {worker.name}, "
                f"resigned ({why})"
            )
            self._noWorkersError = error
            self._failPending(error(self._noWorkers))

    def _forget(self, slot: _WorkerSlot) -> None:
        self._slots.pop(slot.worker, None)
        self._slotList = list(self._slots.values())
        self._notePickling()
        for task in list(slot.outstanding):
            # A crashed worker fails its running tasks itself; whatever it
            # left unfired must not strand its caller.
            lost = Failure(WorkerCrashed(f"{slot.worker.name} left without finishing"))
            wd = task.workerDeferred
            if wd is not None and not wd.called:
                wd.errback(lost)
            elif wd is None and task.slot is slot:
                self._taskDone(task, lost, task.runs)

    def _failOrphans(self) -> None:
        """Fail pending tasks whose series no worker is qualified for any more."""
        for series in list(self._pending.lines):
            if series is None or self._qualifiedFor(series):
                continue
            for task in self._pending.takeSeries(series):
                self._finish(
                    task,
                    Failure(
                        NoQualifiedWorker(
                            f"the last worker qualified for series {series!r} left"
                        )
                    ),
                )
        self._checkIdle()

    def _whenIdle(self, slot: _WorkerSlot) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        slot.idleWaiters.append(d)
        self._afterSlotFreed(slot)
        return d
