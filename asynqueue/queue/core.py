"""
L{TaskQueue}: what a caller submits, attaches and reads.

The queue's class is built in layers, each in its own module, each using
only those below it: L{asynqueue.queue.running} (dispatch, start, end,
timeouts, retries, lanes moving along; the state they share),
L{asynqueue.queue.slots} (attaching and losing workers) and
L{asynqueue.queue.shutdown}. The pending tasks live in a
L{asynqueue.queue.pending.PendingStore}. The layers are base classes
rather than objects the queue calls into, so that the hot path (call,
dispatch, start, finished) takes no extra call per task.

The queue knows its workers only through the interfaces of
L{asynqueue.interfaces}. A task goes to a worker when it arrives or when a
worker frees a slot, never by polling.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import operator
import os
from collections.abc import Callable, Iterable
from typing import IO, TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from asynqueue.errors import (
    LaneError,
    NoQualifiedWorker,
    NoWorkers,
    QueueRunError,
    UnpicklableError,
)
from asynqueue.interfaces import IDescribedWorker, IWorker
from asynqueue.queue.inspection import _Inspection
from asynqueue.queue.kept import KeptRecords
from asynqueue.queue.pending import PendingStore
from asynqueue.queue.running import _NO_KEYWORDS, _RUNNING, _Running
from asynqueue.queue.shutdown import _Shutdown
from asynqueue.queue.slots import _Workers
from asynqueue.queue.talk import Talk
from asynqueue.settings import Settings, shutdownTimeoutOf
from asynqueue.tasks import (
    _DEFAULT_OPTIONS,
    IN_THE_PICKLE,
    OPTION_NAMES,
    RawCall,
    TaskOptions,
    TaskRecord,
    nameFor,
)

if TYPE_CHECKING:
    from asynqueue.feed import Feeder, Writer
    from asynqueue.iteration import Deferator
    from asynqueue.web import Dashboard

__all__ = ["TaskQueue"]

_recordID = operator.attrgetter("id")


class TaskQueue(_Shutdown, _Inspection):
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
    @param taskTimeout: Seconds a call may run unless it gives its own
        C{timeout} (the C{timeout} setting).
    @param timeout: AsynQueue's name for C{shutdownTimeout}: seconds
        L{shutdown} lets running tasks finish before it cancels them.
    @param warn: Log each task's failure (AsynQueue's C{warn}); a call may
        say otherwise with its own C{warn}.
    @param verbose: Describe each call (its function and arguments) in
        what is logged of it.
    @param spew: Log every call and its outcome (implies C{verbose}).
    @param returnFailure: AsynQueue's C{returnFailure}, accepted either
        way: a task's exception always fails its Deferred, never stops the
        reactor.
    @param raw: The default of the calls' C{raw} (AsynQueue's
        C{ThreadQueue(raw=True)}): iterator results come back as they are.
    """

    def __init__(
        self,
        *workers: IWorker,
        name: str = "",
        clock: IReactorTime | None = None,
        stopOnLaneError: bool = False,
        shutdownWithReactor: bool = True,
        maxRecords: int | None = 100_000,
        logFile: str | os.PathLike[str] | IO[str] | None = None,
        taskTimeout: float | None = None,
        timeout: float | None = None,
        shutdownTimeout: float | None = None,
        settings: Settings | None = None,
        warn: bool = False,
        verbose: bool = False,
        spew: bool = False,
        returnFailure: bool = True,
        raw: bool = False,
    ) -> None:
        from twisted.internet import reactor

        # Defaults from the arguments, then the environment (asynqueue.settings).
        self.settings = (
            settings
            if settings is not None
            else Settings.resolve(
                name,
                timeout=taskTimeout,
                shutdownTimeout=shutdownTimeoutOf(timeout, shutdownTimeout),
            )
        )
        self._talk = Talk(warn, verbose, spew)
        self._raw = raw
        self._feeders = set()
        self.name = name or f"TaskQueue-{id(self):x}"
        self._reactor = reactor
        self._clock = clock if clock is not None else reactor
        self._stopOnLaneError = stopOnLaneError
        self._slots = {}
        self._slotList = []
        self._callPickler = None
        self._argumentsReader = None
        self._dropsArguments = False
        self._pending = PendingStore()
        self._running = set()
        self._updates = []
        self._seq = itertools.count()
        self._done = self._failed = self._cancelled = 0
        self._records = KeptRecords(maxRecords)
        self._live = {}
        self._state = _RUNNING
        self._noWorkers = None
        self._noWorkersError = NoWorkers
        self._cancelReason = None
        self._dispatching = False
        self._dispatchAgain = False
        self._shutdownDeferred = None
        self._idleWaiters = []
        self._triggerID = None
        self._observers = []
        self._endObservers = []
        self._shutdownHooks = []
        self._closeLog = None
        if logFile is not None:
            from asynqueue.records import openRecordLog

            self._closeLog = openRecordLog(self, logFile)
        # Made once: a bound method per task would be more garbage to collect.
        self._canceller = self._cancelDeferred
        if shutdownWithReactor:
            self._triggerID = reactor.addSystemEventTrigger(
                "before", "shutdown", self._reactorShutdown
            )
        for worker in workers:
            self.attachWorker(worker)

    # The public methods the lower layers define, named here too so that the
    # class shows its whole face (and the API reference lists them).
    attachWorker = _Workers.attachWorker
    detachWorker = _Workers.detachWorker
    qualifyWorker = _Workers.qualifyWorker
    clearLaneError = _Running.clearLaneError
    shutdown = _Shutdown.shutdown
    observeEnds = _Inspection.observeEnds
    notifyShutdown = _Inspection.notifyShutdown
    runningRecords = _Inspection.runningRecords
    pendingRecords = _Inspection.pendingRecords
    pendingCounts = _Inspection.pendingCounts
    workerStates = _Inspection.workerStates
    cancelTask = _Inspection.cancelTask

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
        if not kwargs:
            # The shared empty dict, not this call's own: one object fewer
            # alive a waiting call, for every pass of the collector to count.
            return self._submit(_DEFAULT_OPTIONS, f, args, _NO_KEYWORDS)
        if OPTION_NAMES.isdisjoint(kwargs):
            return self._submit(_DEFAULT_OPTIONS, f, args, kwargs)
        try:
            options = TaskOptions.fromKeywords(kwargs)
        except (TypeError, ValueError) as e:
            return fail(e)
        return self._submit(options, f, args, kwargs)

    def callWith(
        self, options: TaskOptions, f: Callable[..., Any], *args: Any, **kwargs: Any
    ) -> Deferred[Any]:
        """
        Queue C{f(*args, **kwargs)} with the given L{TaskOptions}.

        Every keyword goes to C{f} unchanged, so this is the way to call a
        function that takes a keyword named C{priority}, C{timeout}, etc.
        """
        return self._submit(options, f, args, kwargs or _NO_KEYWORDS)

    def _submit(
        self,
        options: TaskOptions,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Deferred[Any]:
        """Queue a call: L{call} and L{callWith}, without packing it again."""
        if self._state != _RUNNING:
            return fail(QueueRunError(f"{self.name} is shut down and takes no calls"))
        if self._noWorkers is not None:
            return fail(self._noWorkersError(self._noWorkers))
        if options.timeout is None and self.settings.timeout is not None:
            options = dataclasses.replace(options, timeout=self.settings.timeout)
        if options.raw or (options.raw is None and self._raw):
            # The record keeps the function's own name.
            options = dataclasses.replace(options, name=nameFor(f, options))
            f = RawCall(f)
        series = options.series
        if isinstance(f, str) and series is None and self._qualifiedFor("wire"):
            # AsynQueue's q.call("method"): a universe method, for the
            # workers of the "wire" series (its WireWorkers' class series).
            series = "wire"
            options = dataclasses.replace(options, series=series)
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
        pickler = self._callPickler
        if pickler is not None:
            # Every worker would pickle the call: do it now, so that a call
            # that cannot travel fails at once, not when a worker is free.
            try:
                # A plain dict, not the shared frozen one: it pickles as such.
                call = pickler.prepareCall(f, args, kwargs or {})
            except UnpicklableError as e:
                return fail(e)
            except Exception as e:
                # Whatever else pickling raises (a recursion, say) fails the
                # call's Deferred too, never the caller.
                return fail(UnpicklableError(f"the call cannot be pickled: {_say(e)}"))
        task = self._newTask(f, args, kwargs, options)
        task.pickled = call
        if (
            call is not None
            and self._dropsArguments
            and not (self._endObservers or self._talk.on or options._talks)  # type: ignore[attr-defined]
        ):
            # The pickle holds the arguments: a waiting call keeps them once,
            # not twice, and is an object fewer for the collector to walk.
            task.args, task.kwargs = IN_THE_PICKLE, _NO_KEYWORDS
        lane = options.lane
        if lane is not None:
            state = self._pending.lane(lane)
            if state.failure is not None and self._stopsOnLaneError(task):
                self._finish(task, Failure(LaneError(lane, state.failure.value)))
                return task.deferred
            if state.front is not None:
                state.waiting.append(task)
                return task.deferred
            state.front = task
        self._pending.push(task)
        if self._dispatching:
            self._dispatchAgain = True
        else:
            # A burst of calls finds every worker full after the first few.
            for slot in self._slotList:
                if slot.free > 0:
                    self._dispatch()
                    break
        return task  # the caller's Deferred

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
        return bool(self._pending.size() or self._running)

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
            "pending": self._pending.size(),
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
                    **(
                        slot.worker.info()
                        if IDescribedWorker.providedBy(slot.worker)
                        else {}
                    ),
                }
                for slot in self._slots.values()
            },
        }

    def records(self) -> list[TaskRecord]:
        """
        The records of the tasks submitted so far (the newest C{maxRecords}),
        in the order they were submitted.

        The record of a task that ended is made afresh from what the queue
        keeps of it (a row of plain values, which the cyclic garbage
        collector does not walk): equal to the one observers were told of,
        not the same object.
        """
        records = [TaskRecord.fromRow(row) for row in self._records.rows()]
        records += [task.record for task in self._live.values()]
        # Kept in the order they ended; told in the order they were submitted.
        records.sort(key=_recordID)
        limit = self._records.maxRecords
        if limit is not None and len(records) > limit:
            del records[: len(records) - limit]
        return records

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
            total += self._pending.size()
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

    def serveDashboard(
        self, endpoint: str = "tcp:8765:interface=127.0.0.1", **options: Any
    ) -> Deferred[Dashboard]:
        """
        Serve a live view of this queue to browsers; fire with the started
        L{asynqueue.web.Dashboard} (its C{url} is the page's address).

        It listens on loopback unless C{endpoint} says otherwise, which
        needs a C{token}; see L{asynqueue.web.Dashboard} for C{options}. It
        stops when the queue has shut down.
        """
        from asynqueue.web import Dashboard

        dashboard = Dashboard(self, endpoint, **options)
        return dashboard.start().addCallback(lambda _: dashboard)

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


def _say(error: BaseException) -> str:
    """C{Type: message}, even for an exception whose C{str()} fails."""
    try:
        message = str(error).strip().partition("\n")[0]
    except Exception:
        message = "(its str() failed)"
    name = type(error).__name__
    return f"{name}: {message}" if message else name


def _firstError(failure: Failure) -> Failure:
    from twisted.internet.defer import FirstError

    if isinstance(failure.value, FirstError):
        return failure.value.subFailure
    return failure
