"""
L{TaskQueue}: pending tasks by priority, series and lanes; event-driven
dispatch to workers; statistics; shutdown.

The queue knows its workers only through L{IWorker}. A task goes to a
worker when it arrives or when a worker frees a slot, never by polling.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import heapq
import itertools
import os
from collections import deque
from collections.abc import Callable, Hashable, Iterable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import IO, TYPE_CHECKING, Any, cast

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from asynqueue.errors import (
    ImplementationError,
    LaneError,
    NoQualifiedWorker,
    NoWorkers,
    QueueRunError,
    TaskNotStarted,
    TimeoutError,
    UnpicklableError,
    WorkerCrashed,
)
from asynqueue.interfaces import IReportingWorker, IWorker
from asynqueue.settings import Settings
from asynqueue.tasks import (
    _DEFAULT_OPTIONS,
    OPTION_NAMES,
    Task,
    TaskOptions,
    TaskRecord,
    nameFor,
)
from asynqueue.wire.pickling import describeError, dumpCall

if TYPE_CHECKING:
    from asynqueue.feed import Feeder, Writer
    from asynqueue.iteration import Deferator

__all__ = ["TaskQueue"]

_RUNNING, _STOPPING, _STOPPED = "running", "stopping", "stopped"
#: What a finished task's keywords become (never changed).
_NO_KEYWORDS: dict[str, Any] = {}


@dataclass(eq=False, slots=True)
class _WorkerSlot:
    """
    The queue's bookkeeping for one attached worker.

    C{free} is how many more tasks it may take now: 0 until it is ready
    and once it is leaving.
    """

    worker: IWorker
    outstanding: set[Task] = field(default_factory=set)
    reporting: bool = False
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

    def release(self, task: Task) -> None:
        """The worker is done with a task."""
        if task in self.outstanding:
            self.outstanding.discard(task)
            if self.ready and not self.leaving:
                # Read afresh: a worker's capacity may change as it runs.
                self.free = int(self.worker.capacity) - len(self.outstanding)


class _Line:
    """
    The pending tasks of one series, in (priority, arrival) order.

    A heap of the priorities present, each with a deque of its tasks in
    arrival order: pushing and popping are O(1) for a priority already
    present, which is the common case. Cancelled tasks stay in place and are
    skipped when they reach the front.
    """

    __slots__ = ("levels", "priorities")

    def __init__(self) -> None:
        self.levels: dict[float, deque[Task]] = {}
        self.priorities: list[float] = []

    def push(self, task: Task) -> None:
        record = task.record
        priority = record.priority
        level = self.levels.get(priority)
        if level is None:
            level = self.levels[priority] = deque()
            heapq.heappush(self.priorities, priority)
        elif level and level[-1].record.id > record.id:
            # Arrived earlier than tasks already in line (a lane's next task,
            # a task put back after a crash): it goes in its arrival place.
            ids = [t.record.id for t in level]
            level.insert(bisect.bisect(ids, record.id), task)
            return
        level.append(task)

    def head(self) -> Task | None:
        """The most urgent task not cancelled, left in line."""
        priorities, levels = self.priorities, self.levels
        while priorities:
            level = levels[priorities[0]]
            while level:
                if not level[0].cancelled:
                    return level[0]
                level.popleft()
            del levels[heapq.heappop(priorities)]
        return None

    def pop(self) -> Task | None:
        """Take the most urgent task not cancelled."""
        task = self.head()
        if task is not None:
            self.levels[self.priorities[0]].popleft()
        return task

    def __iter__(self) -> Iterator[Task]:
        for level in self.levels.values():
            yield from level


@dataclass(eq=False)
class _Lane:
    """Tasks of one lane: the one at the front, and those waiting behind it."""

    front: Task | None = None
    waiting: deque[Task] = field(default_factory=deque)
    failure: Failure | None = None


class TaskQueue:
    """
    A prioritized queue of calls, run by interchangeable workers.

    C{TaskQueue(*workers)} attaches the workers given; more can be attached
    or detached at any time. Every call returns a Deferred that fires with
    the call's result, fails with its exception, or fires with a
    L{asynqueue.iteration.Deferator} when the result is an iterator.

    @param name: A name for logs, records and statistics.
    @param clock: What times timeouts and records (default: the reactor).
    @param stopOnLaneError: The default for C{TaskOptions.stopOnLaneError}.
    @param shutdownWithReactor: Shut the queue down, cancelling what is
        pending, when the reactor shuts down (the default).
    @param maxRecords: How many L{TaskRecord}s to keep (the newest);
        C{None} keeps every one, which costs memory on a long-lived queue.
    @param logFile: A path (or open text file) to which a CSV row is
        written for every task as it ends (see L{asynqueue.records}).
    """

    log = Logger()

    def __init__(
        self,
        *workers: IWorker,
        name: str = "",
        clock: IReactorTime | None = None,
        stopOnLaneError: bool = False,
        shutdownWithReactor: bool = True,
        maxRecords: int | None = 100_000,
        logFile: str | os.PathLike[str] | IO[str] | None = None,
        timeout: float | None = None,
        shutdownTimeout: float | None = None,
        settings: Settings | None = None,
    ) -> None:
        from twisted.internet import reactor

        # Defaults from the arguments, then the environment (asynqueue.settings).
        self.settings = (
            settings
            if settings is not None
            else Settings.resolve(
                name, timeout=timeout, shutdownTimeout=shutdownTimeout
            )
        )
        self._feeders: set[Feeder] = set()
        self.name = name or f"TaskQueue-{id(self):x}"
        self._reactor = reactor
        self._clock: IReactorTime = clock if clock is not None else reactor
        self._stopOnLaneError = stopOnLaneError
        self._slots: dict[IWorker, _WorkerSlot] = {}
        self._slotList: list[_WorkerSlot] = []
        self._picklingWorkers = False
        self._pending: dict[Hashable | None, _Line] = {}
        self._pendingCount = 0
        self._lanes: dict[Hashable, _Lane] = {}
        self._running: set[Task] = set()
        self._updates: list[
            tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]
        ] = []
        self._seq = itertools.count()
        self._done = self._failed = self._cancelled = 0
        self._records: deque[TaskRecord] = deque(maxlen=maxRecords)
        self._state = _RUNNING
        #: Why every worker is gone, once the last one resigned.
        self._noWorkers: str | None = None
        self._dispatching = False
        self._dispatchAgain = False
        self._shutdownDeferred: Deferred[None] | None = None
        self._idleWaiters: list[Deferred[None]] = []
        self._triggerID: Any = None
        self._observers: list[Callable[[str, TaskRecord], object]] = []
        self._closeLog: Callable[[], None] | None = None
        if logFile is not None:
            from asynqueue.records import openRecordLog

            self._closeLog = openRecordLog(self, logFile)
        # Made once: a bound method per task would be more garbage to collect.
        self._canceller = self._cancelDeferred
        self._onStart = self._taskStarted
        self._onDone = self._taskDone
        if shutdownWithReactor:
            self._triggerID = reactor.addSystemEventTrigger(
                "before", "shutdown", self._reactorShutdown
            )
        for worker in workers:
            self.attachWorker(worker)

    # ------------------------------------------------------------------
    # Submitting calls

    def call(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Deferred[Any]:
        """
        Queue C{f(*args, **kwargs)} and return a Deferred of its result.

        Keywords named as a L{TaskOptions} field (C{priority}, C{niceness},
        C{doNext}, C{doLast}, C{series}, C{lane}, C{stopOnLaneError},
        C{timeout}, C{retries}, C{consumer}, C{name}) are options for the
        queue, not arguments for C{f}; see L{callWith} for functions that
        take such keywords themselves.
        """
        if not kwargs or OPTION_NAMES.isdisjoint(kwargs):
            return self.callWith(_DEFAULT_OPTIONS, f, *args, **kwargs)
        try:
            options = TaskOptions.fromKeywords(kwargs)
        except (TypeError, ValueError) as e:
            return fail(e)
        return self.callWith(options, f, *args, **kwargs)

    def callWith(
        self, options: TaskOptions, f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        """
        Queue C{f(*args, **kwargs)} with the given L{TaskOptions}.

        Every keyword goes to C{f} unchanged, so this is the way to call a
        function that takes a keyword named C{priority}, C{timeout}, etc.
        """
        if self._state != _RUNNING:
            return fail(QueueRunError(f"{self.name} is shut down and takes no calls"))
        if self._noWorkers is not None:
            return fail(NoWorkers(self._noWorkers))
        if options.timeout is None and self.settings.timeout is not None:
            options = dataclasses.replace(options, timeout=self.settings.timeout)
        series = options.series
        if not callable(f) and not (isinstance(f, str) and series is not None):
            # A string names a universe method, for the WireWorkers of a series.
            return fail(TypeError(f"{f!r} is not callable, so it cannot be queued"))
        if series is not None and not self._qualifiedFor(series):
            return fail(
                NoQualifiedWorker(
                    f"no worker of {self.name} is qualified for series "
                    f"{series!r}; use qualifyWorker() first"
                )
            )
        call = None
        if self._picklingWorkers:
            # Every worker would pickle the call: do it now, so that a call
            # that cannot travel fails at once, not when a worker is free.
            try:
                call = dumpCall(f, args, kwargs)
            except UnpicklableError as e:
                return fail(e)
            except Exception as e:
                # Whatever else pickling raises (a recursion, say) fails the
                # call's Deferred too, never the caller.
                why = f"the call cannot be pickled: {describeError(e)}"
                return fail(UnpicklableError(why))
        task = self._newTask(f, args, kwargs, options)
        task.pickled = call
        lane = options.lane
        if lane is not None:
            state = self._lanes.setdefault(lane, _Lane())
            if state.failure is not None and self._stopsOnLaneError(task):
                self._finish(task, Failure(LaneError(lane, state.failure.value)))
                return task.deferred
            if state.front is not None:
                state.waiting.append(task)
                return task.deferred
            state.front = task
        self._push(task)
        if not self._dispatching:
            self._dispatch()
        else:
            self._dispatchAgain = True
        return task.deferred

    def update(
        self, f: Callable[..., Any], *args: Any, ephemeral: bool = False, **kwargs: Any
    ) -> Deferred[list[Any]]:
        """
        Run C{f(*args, **kwargs)} on every worker, and on workers attached later.

        The call goes to each worker directly, ahead of what the queue has
        pending for it. The Deferred fires with the list of results from the
        workers attached now. With C{ephemeral=True} the call is not kept for
        later workers. A worker attached later runs the kept updates, in
        order, before it takes any task.
        """
        if self._state != _RUNNING:
            return fail(QueueRunError(f"{self.name} is shut down"))
        if not callable(f):
            return fail(TypeError(f"{f!r} is not callable"))
        if not ephemeral:
            self._updates.append((f, args, kwargs))
        ds = [
            self._runUpdate(slot, f, args, kwargs, ephemeral)
            for slot in self._slots.values()
        ]
        return gatherResults(ds, consumeErrors=True).addErrback(_firstError)

    def map(
        self,
        f: Callable[..., Any],
        iterable: Iterable[Any],
        ordered: bool = True,
        chunksize: int | None = None,
        maxInFlight: int | None = None,
        star: bool = False,
        progress: bool = False,
        **options: Any,
    ) -> Deferator[Any]:
        """
        Call C{f(item)} for every item; return a L{Deferator} of the results.

        Items are taken from C{iterable} lazily and sent in chunks, one task
        per chunk. With C{chunksize=None} the chunks grow until one runs for
        about 5 ms, so small tasks travel in bulk while long ones go one by
        one. At most C{maxInFlight} chunks (default 4 per worker) are out at
        once, so memory stays bounded however many items there are. With
        C{ordered=False} results come as they are ready. C{star=True} calls
        C{f(*item)}. An item whose call raises ends the iteration at its
        place with that exception, as C{multiprocessing}'s C{imap} does.
        C{progress=True} shows a progress bar of items (tqdm or rich, if
        installed). Other keywords are L{TaskOptions} for the chunks' tasks.
        """
        from asynqueue.mapper import mapOver

        return mapOver(
            self,
            f,
            iterable,
            ordered=ordered,
            chunksize=chunksize,
            maxInFlight=maxInFlight,
            star=star,
            options=TaskOptions(**options),
            progress=progress,
        )

    def wrap(self, f: Callable[..., Any] | None = None, **options: Any) -> Any:
        """
        Decorate a function so that calling it queues the call here.

        C{@queue.wrap} or C{@queue.wrap(priority=-1, timeout=5)}; the
        decorated function returns a Deferred. The original stays reachable
        as C{__wrapped__}.
        """
        taskOptions = TaskOptions(**options)

        def decorate(func: Callable[..., Any]) -> Callable[..., Deferred[Any]]:
            @functools.wraps(func)
            def queued(*args: Any, **kwargs: Any) -> Deferred[Any]:
                return self.callWith(taskOptions, func, *args, **kwargs)

            return queued

        return decorate if f is None else decorate(f)

    # ------------------------------------------------------------------
    # Workers

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
        slot = _WorkerSlot(worker, reporting=IReportingWorker.providedBy(worker))
        self._noWorkers = None
        self._slots[worker] = slot
        self._slotList = list(self._slots.values())
        self._notePickling()
        worker.setResignator(self._workerResigned)
        observe = getattr(worker, "setCapacityObserver", None)
        if observe is not None:
            observe(lambda: self._capacityChanged(slot))
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
            for task in worker.crash():
                slot.release(task)
                self._running.discard(task)
                self._cancelTimeout(task)
                task.record.attempts -= 1
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

    def workers(self) -> list[IWorker]:
        """The attached workers, in the order they were attached."""
        return list(self._slots)

    def __len__(self) -> int:
        """The number of attached workers (AsynQueue's meaning)."""
        return len(self._slots)

    def isRunning(self) -> bool:
        """True until L{shutdown} is called."""
        return self._state == _RUNNING

    def isBusy(self) -> bool:
        """True while any task is pending or running."""
        return bool(self._pendingCount or self._running or self._laneBacklog())

    # ------------------------------------------------------------------
    # Statistics and records

    def stats(self) -> dict[str, Any]:
        """
        Counts of tasks and the state of each worker.

        Keys: C{pending}, C{running}, C{done}, C{failed}, C{cancelled}, and
        C{workers}, a dict by worker name of C{capacity}, C{running},
        C{done} and C{failed}, plus what the worker's own C{info()} adds (a
        process worker: its C{pid} and tasks done by its current process).
        """
        return {
            "pending": self._pendingCount + self._laneBacklog(),
            "running": len(self._running),
            "done": self._done,
            "failed": self._failed,
            "cancelled": self._cancelled,
            "workers": {
                slot.worker.name: {
                    "capacity": slot.worker.capacity,
                    "running": len(slot.outstanding),
                    "done": slot.done,
                    "failed": slot.failed,
                    **(getattr(slot.worker, "info", dict)()),
                }
                for slot in self._slots.values()
            },
        }

    def records(self) -> list[TaskRecord]:
        """The records of the tasks submitted so far (the newest C{maxRecords})."""
        return list(self._records)

    def size(
        self, waiting: bool = False, working: bool = False, completed: bool = False
    ) -> int:
        """
        How many tasks are waiting, working (running) or completed, as ezpq counts.

        With no flag set, all three together.
        """
        if not (waiting or working or completed):
            waiting = working = completed = True
        total = 0
        if waiting:
            total += self._pendingCount + self._laneBacklog()
        if working:
            total += len(self._running)
        if completed:
            total += self._done + self._failed + self._cancelled
        return total

    def observe(
        self, observer: Callable[[str, TaskRecord], object]
    ) -> Callable[[], None]:
        """
        Call C{observer(event, record)} as tasks go: C{"submitted"},
        C{"started"} and C{"ended"}. Return a function that stops it.

        Observers run in the reactor thread, synchronously; progress bars,
        logs and statistics hang on here instead of polling.
        """
        self._observers.append(observer)

        def stop() -> None:
            if observer in self._observers:
                self._observers.remove(observer)

        return stop

    def _tell(self, event: str, record: TaskRecord) -> None:
        for observer in list(self._observers):
            try:
                observer(event, record)
            except Exception:
                self.log.failure("Observer {observer} failed", observer=observer)

    # ------------------------------------------------------------------
    # Feeders

    def feed(self, writer: Writer, f: Callable[..., Any], **options: Any) -> Feeder:
        """
        Call C{f(item)} for the items C{writer(desired)} gives, whenever the
        queue runs low; see L{asynqueue.feed.Feeder} for C{options}.

        Returns the started feeder; the queue stops it when it shuts down.
        """
        from asynqueue.feed import feed

        options.setdefault("clock", self._clock)
        feeder = feed(self, writer, f, **options)
        if feeder.isRunning():
            self._feeders.add(feeder)
            feeder.whenStopped().addBoth(lambda _: self._feeders.discard(feeder))
        return feeder

    # ------------------------------------------------------------------
    # Shutdown

    def shutdown(
        self, timeout: float | None = None, cancelPending: bool = False
    ) -> Deferred[None]:
        """
        Stop taking calls, finish or cancel what is queued, stop the workers.

        Pending tasks still run unless C{cancelPending} is true, in which case
        their Deferreds fail with C{CancelledError}. After C{timeout}
        seconds, whatever is still pending or running is cancelled. The
        Deferred fires once every task's Deferred has fired and every worker
        has stopped; calling again returns a Deferred of the same moment.
        """
        if self._shutdownDeferred is None:
            if timeout is None:
                timeout = self.settings.shutdownTimeout
            for feeder in list(self._feeders):
                feeder.stop(timeout=0)
            self._shutdownDeferred = Deferred()
            self._state = _STOPPING
            if self._triggerID is not None:
                try:
                    self._reactor.removeSystemEventTrigger(self._triggerID)
                except (ValueError, KeyError):
                    pass
                self._triggerID = None
            if cancelPending:
                self._cancelPending()
            timer = None
            if timeout is not None:
                timer = self._clock.callLater(timeout, self._cancelEverything)
            d = self._whenAllDone()

            def stopWorkers(_: object) -> Deferred[Any]:
                if timer is not None and timer.active():
                    timer.cancel()
                return DeferredList(
                    [self.detachWorker(w) for w in list(self._slots)],
                    consumeErrors=True,
                )

            def stopped(_: object) -> None:
                self._state = _STOPPED
                if self._closeLog is not None:
                    self._closeLog()
                    self._closeLog = None
                assert self._shutdownDeferred is not None
                self._shutdownDeferred.callback(None)

            d.addCallback(stopWorkers).addCallback(stopped)
        result: Deferred[None] = Deferred()
        self._shutdownDeferred.addBoth(_relay, result)
        return result

    async def __aenter__(self) -> TaskQueue:
        return self

    async def __aexit__(
        self,
        excType: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    def _reactorShutdown(self) -> Deferred[None]:
        # The program is ending: nothing may keep the reactor from stopping,
        # so running tasks are cancelled too (a thread is abandoned).
        self._triggerID = None
        d = self.shutdown(cancelPending=True)
        self._cancelEverything()
        return d

    # ------------------------------------------------------------------
    # Internals: tasks

    def _newTask(
        self,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions,
        recorded: bool = True,
    ) -> Task:
        """A new task; an unrecorded one (an update) has no ID, record or canceller."""
        qualname = getattr(f, "__qualname__", None) or type(f).__qualname__
        record = TaskRecord(
            next(self._seq) if recorded else -1,
            nameFor(f, options),
            qualname,
            options._priority,  # type: ignore[attr-defined]
            options.series,
            options.lane,
            self._clock.seconds(),
        )
        if not recorded:
            return Task(f, args, kwargs, options, record, Deferred())
        self._records.append(record)
        if self._observers:
            self._tell("submitted", record)
        d: Deferred[Any] = Deferred(self._canceller)
        task = Task(f, args, kwargs, options, record, d)
        d.task = task  # type: ignore[attr-defined]
        task.onStart = self._onStart
        return task

    def _cancelDeferred(self, d: Deferred[Any]) -> None:
        """The canceller of every task's Deferred."""
        self._cancelTask(d.task)  # type: ignore[attr-defined]

    def _push(self, task: Task) -> None:
        line = self._pending.get(task.series)
        if line is None:
            line = self._pending[task.series] = _Line()
        line.push(task)
        self._pendingCount += 1

    def _requeue(self, task: Task) -> None:
        """Put a task that never started (or may be retried) back in line."""
        self._running.discard(task)
        task.record.state = "pending"
        task.record.worker = None
        task.record.started = None
        task.workerDeferred = None
        task.slot = None
        task.handle = None
        if task.series is not None and not self._qualifiedFor(task.series):
            self._finish(
                task, Failure(NoQualifiedWorker(f"no worker for {task.series!r}"))
            )
            return
        self._push(task)

    def _stopsOnLaneError(self, task: Task) -> bool:
        option = task.options.stopOnLaneError
        return self._stopOnLaneError if option is None else option

    def _laneBacklog(self) -> int:
        return sum(len(lane.waiting) for lane in self._lanes.values())

    def _qualifiedFor(self, series: Hashable) -> bool:
        return any(
            series in slot.worker.iQualified
            for slot in self._slots.values()
            if not slot.leaving
        )

    def _popBest(self, worker: IWorker) -> Task | None:
        """Take the most urgent pending task this worker may run."""
        best: _Line | None = None
        if not worker.iQualified:
            best = self._pending.get(None)
        else:
            bestKey: tuple[float, int] | None = None
            for series in itertools.chain((None,), worker.iQualified):
                line = self._pending.get(series)
                head = line.head() if line is not None else None
                if head is not None:
                    key = (head.record.priority, head.record.id)
                    if bestKey is None or key < bestKey:
                        best, bestKey = line, key
        task = best.pop() if best is not None else None
        if task is not None:
            self._pendingCount -= 1
        return task

    def _dispatch(self) -> None:
        """Hand pending tasks to workers with free slots, most urgent first."""
        if self._dispatching:
            self._dispatchAgain = True
            return
        self._dispatching = True
        try:
            again = True
            while again:
                self._dispatchAgain = False
                again = False
                if not self._pendingCount:
                    break
                # One task per free worker per pass spreads the load.
                for slot in self._slotList:
                    if slot.free > 0:
                        task = self._popBest(slot.worker)
                        if task is not None:
                            self._start(slot, task)
                            again = True
                again = again or self._dispatchAgain
        finally:
            self._dispatching = False

    def _start(self, slot: _WorkerSlot, task: Task) -> None:
        slot.outstanding.add(task)
        slot.free -= 1
        self._running.add(task)
        record = task.record
        record.state = "running"
        record.worker = slot.worker.name
        record.attempts += 1
        task.runs += 1
        task.slot = slot
        if slot.reporting:
            # The fast path: the worker calls task.finished, no Deferred.
            task.onDone = self._onDone
            try:
                slot.worker.start(task)  # type: ignore[attr-defined]
            except Exception:
                self._taskDone(task, Failure(), task.runs)
            return
        try:
            d = slot.worker.run(task)
        except Exception:
            d = fail()
        task.workerDeferred = d
        d.addBoth(self._ran, task, slot, d)

    def _taskStarted(self, task: Task, ago: float) -> None:
        if task.slot is None:
            # News of a run that has ended already (cancelled, timed out).
            return
        task.record.started = self._clock.seconds() - ago
        timeout = task.options.timeout
        if timeout is not None:
            task.timeoutCall = self._clock.callLater(timeout, self._timeOut, task)
        # Observers come last: what they do may depend on the timer being set.
        if self._observers:
            self._tell("started", task.record)

    def _timeOut(self, task: Task) -> None:
        task.timeoutCall = None
        if task.slot is not None:
            task.timedOut = True
            self._abandon(task)

    def _abandon(self, task: Task) -> None:
        """Give up a running task (cancelled, or timed out)."""
        wd = task.workerDeferred
        if wd is not None:
            wd.cancel()
            return
        slot = task.slot
        if slot is None or not slot.reporting:
            # Not started yet, or still inside a plain worker's run(): there
            # is nothing to cancel yet.
            return
        attempt = task.runs
        try:
            slot.worker.abandon(task)
        except Exception:
            self.log.failure(
                "Worker {worker} failed to abandon {task}",
                worker=slot.worker.name,
                task=task.record.name,
            )
        finally:
            # Whether or not the worker reported it: it ends as a cancelled
            # Deferred would.
            self._taskDone(task, Failure(CancelledError()), attempt)

    def _ran(
        self, result: object, task: Task, slot: _WorkerSlot, d: Deferred[Any]
    ) -> None:
        """A worker's Deferred for a task fired."""
        if task.workerDeferred is not d:
            # A worker fired a task it had handed back (crash); it was rerun.
            return
        task.workerDeferred = None
        task.slot = None
        self._ended(task, slot, result)

    def _taskDone(self, task: Task, result: object, attempt: int) -> None:
        """A reporting worker says how run C{attempt} of a task ended."""
        slot = task.slot
        if slot is None or attempt != task.runs:
            # Ended already (cancelled, timed out), or an earlier run's news.
            return
        task.slot = None
        self._ended(task, slot, result)

    def _ended(self, task: Task, slot: _WorkerSlot, result: object) -> None:
        """A task's run on a worker ended with C{result} (a Failure if it failed)."""
        # What the worker kept for the run (it may refer back to the task,
        # and hold the pickled call) goes now, not when the collector comes.
        task.handle = None
        if task.timeoutCall is not None:
            self._cancelTimeout(task)
        outstanding = slot.outstanding
        if task in outstanding:
            outstanding.discard(task)
            if slot.ready and not slot.leaving:
                # Read afresh: a worker's capacity may change as it runs.
                slot.free = int(slot.worker.capacity) - len(outstanding)
        self._running.discard(task)
        if isinstance(result, Failure):
            if task.timedOut and result.check(CancelledError):
                result = Failure(
                    TimeoutError(
                        f"task {task.record.name!r} ran longer than its timeout of "
                        f"{task.options.timeout} s"
                    )
                )
            elif result.check(TaskNotStarted):
                if not task.deferred.called and self._state != _STOPPED:
                    # It never ran: it uses up none of its attempts.
                    task.record.attempts -= 1
                    self._requeue(task)
                    self._afterSlotFreed(slot)
                    return
            elif (
                result.check(WorkerCrashed)
                and task.record.attempts <= task.options.retries
            ):
                if not task.deferred.called and self._state != _STOPPED:
                    self.log.warn(
                        "Retrying {task} after its worker {worker} crashed",
                        task=task.record.name,
                        worker=slot.worker.name,
                    )
                    self._requeue(task)
                    self._afterSlotFreed(slot)
                    return
            slot.failed += 1
        else:
            slot.done += 1
        self._finish(task, result)
        self._afterSlotFreed(slot)

    def _cancelTimeout(self, task: Task) -> None:
        if task.timeoutCall is not None:
            if task.timeoutCall.active():
                task.timeoutCall.cancel()
            task.timeoutCall = None

    def _afterSlotFreed(self, slot: _WorkerSlot) -> None:
        if slot.idleWaiters and not slot.outstanding:
            waiters, slot.idleWaiters = slot.idleWaiters, []
            for d in waiters:
                d.callback(None)
        if self._pendingCount:
            self._dispatch()
        if self._idleWaiters:
            self._checkIdle()

    def _finish(self, task: Task, result: object) -> None:
        """Record how a task ended, move its lane along, fire its Deferred."""
        record = task.record
        record.ended = self._clock.seconds()
        failed = isinstance(result, Failure)
        if failed:
            result = cast(Failure, result)
            if task.timedOut and result.check(TimeoutError):
                record.state = "timedOut"
            elif result.check(CancelledError) or task.cancelled:
                record.state = "cancelled"
            else:
                record.state = "failed"
            record.outcome = result.type.__name__ if result.type else "Failure"
            if record.state == "cancelled":
                self._cancelled += 1
            else:
                self._failed += 1
        else:
            record.state = "done"
            record.outcome = "result"
            self._done += 1
        if self._observers:
            self._tell("ended", record)
        options = task.options
        if options.lane is not None:
            self._advanceLane(task, result)
        # The task and its Deferred refer to each other: let the arguments
        # go now rather than whenever the cyclic collector comes by.
        task.args, task.kwargs = (), _NO_KEYWORDS
        task.pickled = None
        d = task.deferred
        if d.called:
            return
        if failed:
            d.errback(cast(Failure, result))
            return
        if options.consumer is not None:
            from asynqueue.iteration import Deferator, IterationProducer

            if isinstance(result, Deferator):
                IterationProducer(result, options.consumer).run().chainDeferred(d)
                return
        d.callback(result)

    def _advanceLane(self, task: Task, result: object) -> None:
        lane = self._lanes.get(task.lane)
        if lane is None:
            return
        if lane.front is task:
            lane.front = None
        elif task in lane.waiting:
            lane.waiting.remove(task)
            return
        else:
            return
        if (
            isinstance(result, Failure)
            and not task.cancelled
            and not result.check(LaneError)
            and self._stopsOnLaneError(task)
        ):
            lane.failure = result
            while lane.waiting:
                waiting = lane.waiting.popleft()
                if self._stopsOnLaneError(waiting):
                    self._finish(waiting, Failure(LaneError(task.lane, result.value)))
                else:
                    lane.waiting.appendleft(waiting)
                    break
        if lane.waiting:
            lane.front = lane.waiting.popleft()
            self._push(lane.front)
            self._dispatch()
        elif lane.failure is None:
            del self._lanes[task.lane]

    def clearLaneError(self, lane: Hashable) -> None:
        """Let a lane stopped by a failure (C{stopOnLaneError}) take tasks again."""
        state = self._lanes.get(lane)
        if state is not None:
            state.failure = None
            if state.front is None and not state.waiting:
                del self._lanes[lane]

    def _cancelTask(self, task: Task) -> None:
        """The canceller of a task's Deferred."""
        task.cancelled = True
        state = task.record.state
        if state == "pending":
            in_lane_wait = (
                task.lane is not None
                and task in self._lanes.get(task.lane, _Lane()).waiting
            )
            if not in_lane_wait:
                # Left in its heap and skipped when it reaches the top.
                self._pendingCount -= 1
            self._finish(task, Failure(CancelledError()))
            self._checkIdle()
        elif state == "running":
            self._abandon(task)

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
        task.onStart = None
        # A worker that replaces its process (or node) replays kept updates.
        task.update = "ephemeral" if ephemeral else "kept"
        try:
            return slot.worker.run(task)
        except Exception:
            return fail()

    # ------------------------------------------------------------------
    # Internals: workers leaving, idleness, shutdown

    def _notePickling(self) -> None:
        self._picklingWorkers = bool(self._slots) and all(
            getattr(w, "picklesCalls", False) for w in self._slots
        )

    def _capacityChanged(self, slot: _WorkerSlot) -> None:
        """A worker's capacity changed by itself (a remote node (dis)connected)."""
        slot.countFree()
        self._dispatch()

    def _workerResigned(self, worker: IWorker) -> None:
        """
        A worker said it can no longer run tasks: crash-detach it.

        If it was the last, no pending task or new call can run: they fail
        with L{NoWorkers} (until a worker is attached again) rather than
        wait on a queue that can no longer run them.
        """
        if worker not in self._slots:
            return
        why = getattr(worker, "resignedBecause", None) or "it resigned"
        self.log.warn("Worker {worker} resigned: {why}", worker=worker.name, why=why)
        self.detachWorker(worker, reassign=True, crash=True)
        if not self._slots and self._state == _RUNNING:
            self._noWorkers = (
                f"{self.name} has no worker left: the last, {worker.name}, "
                f"resigned ({why})"
            )
            self._failPending(NoWorkers(self._noWorkers))

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
        for series, line in list(self._pending.items()):
            if series is None or self._qualifiedFor(series):
                continue
            del self._pending[series]
            for task in line:
                if not task.cancelled:
                    self._pendingCount -= 1
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

    def _whenAllDone(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        self._checkIdle()
        return d

    def wait(self, progress: bool = False) -> Deferred[None]:
        """
        A Deferred that fires when no task is pending or running.

        With C{progress=True}, a progress bar (tqdm or rich, if installed)
        counts the tasks down meanwhile.
        """
        if not progress:
            return self._whenAllDone()
        from asynqueue.progress import progressFor

        close = progressFor(self, description=self.name)

        def closed(result: object) -> object:
            close()
            return result

        return self._whenAllDone().addBoth(closed)

    def _checkIdle(self) -> None:
        if self._idleWaiters and not self.isBusy():
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def _failPending(self, error: Exception) -> None:
        """Fail every task that is waiting for a worker with C{error}."""
        # Those behind a lane's front first, so that failing a front moves
        # no other task of its lane into the lines.
        for task in [t for lane in self._lanes.values() for t in lane.waiting]:
            self._finish(task, Failure(error))
        lines, self._pending = self._pending, {}
        self._pendingCount = 0
        for line in lines.values():
            for task in line:
                if not task.cancelled and not task.deferred.called:
                    self._finish(task, Failure(error))
        self._checkIdle()

    def _cancelPending(self) -> None:
        for lane in list(self._lanes.values()):
            for task in list(lane.waiting):
                task.deferred.cancel()
        for line in list(self._pending.values()):
            for task in list(line):
                if not task.cancelled:
                    task.deferred.cancel()

    def _cancelEverything(self) -> None:
        self._cancelPending()
        # Workers that replace what a cancel ends (a killed process) need
        # not: they are about to stop.
        for slot in self._slotList:
            prepare = getattr(slot.worker, "prepareToStop", None)
            if prepare is not None:
                prepare()
        for task in list(self._running):
            task.deferred.cancel()


def _relay(result: object, d: Deferred[Any]) -> None:
    """Pass a result or failure on to another Deferred; the chain goes on with None."""
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)


def _firstError(failure: Failure) -> Failure:
    from twisted.internet.defer import FirstError

    if isinstance(failure.value, FirstError):
        return cast(Failure, failure.value.subFailure)
    return failure
