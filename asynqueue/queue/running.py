"""
The running side of a L{TaskQueue}: making tasks, dispatching them to
workers with free slots, starting them, their timeouts, how a run ends
(retries, a crashed worker's tasks, a task never started), lanes moving
along, cancelling, and firing each task's Deferred.

L{_Running} is the lowest layer of the queue's class: it holds the state
every other layer reads, and the hot path (dispatch, start, end) in as few
calls as it can.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from asynqueue.errors import (
    LaneError,
    NoQualifiedWorker,
    TaskNotStarted,
    TimeoutError,
    WorkerCrashed,
)
from asynqueue.queue.kept import KeptRecords
from asynqueue.queue.pending import PendingStore
from asynqueue.queue.talk import Talk
from asynqueue.queue.taskstate import QueuedTask, cancelTimeout
from asynqueue.tasks import IN_THE_PICKLE, RawResult, TaskOptions, TaskRecord

if TYPE_CHECKING:
    from asynqueue.interfaces import ICallPickling, IWorker
    from asynqueue.queue.slots import _WorkerSlot

_RUNNING, _STOPPING, _STOPPED = "running", "stopping", "stopped"


class _NoKeywords(dict[str, Any]):
    """
    The keywords of every call made without any: one empty dict, shared,
    so it refuses to change (it pickles as a plain empty dict).
    """

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("the keywords of a call made without any cannot change")

    __setitem__ = __delitem__ = __ior__ = _refuse
    setdefault = update = pop = popitem = clear = _refuse

    def __reduce__(self) -> tuple[type[dict[str, Any]], tuple[()]]:
        return dict, ()


#: The keywords of a call made without any, and what a finished task's
#: keywords become.
_NO_KEYWORDS: dict[str, Any] = _NoKeywords()


class _Running:
    """
    Dispatch, start and end tasks; the state of the queue they share.

    The attributes are set by L{TaskQueue.__init__}.
    """

    log = Logger()

    name: str
    _clock: IReactorTime
    _state: str
    _stopOnLaneError: bool
    _pending: PendingStore
    _slots: dict[IWorker, _WorkerSlot]
    _slotList: list[_WorkerSlot]
    _running: set[QueuedTask]
    #: Why tasks are being cancelled (set by a queue shutting down), or None.
    _cancelReason: str | None
    _seq: itertools.count[int]
    #: The records of tasks that ended, the newest.
    _records: KeptRecords
    #: The tasks not ended yet, by ID.
    _live: dict[int, QueuedTask]
    _observers: list[Callable[[str, TaskRecord], object]]
    _endObservers: list[
        Callable[[TaskRecord, tuple[Any, ...], dict[str, Any], object], object]
    ]
    _done: int
    _failed: int
    _cancelled: int
    _dispatching: bool
    #: Where the next pass of dispatch starts in C{_slotList}.
    _nextSlot: int = 0
    #: The slot whose worker ran out of work last: a pass that finds it
    #: idle starts there, so that calls made one at a time go to the child
    #: or thread still awake (and on its CPU), not to each worker in turn.
    _warmSlot: _WorkerSlot | None = None
    _dispatchAgain: bool
    _idleWaiters: list[Deferred[None]]
    _canceller: Callable[[Deferred[Any]], None]
    _talk: Talk
    #: A worker that pickles calls and reads their arguments back
    #: (L{ICallPickling.argumentsOf}): an attached one, else the last one
    #: seen, for calls whose arguments the queue let go once pickled.
    _argumentsReader: ICallPickling | None
    #: Every worker sends calls pickled and can read them back: a call's
    #: arguments go once it is pickled.
    _dropsArguments: bool

    # ------------------------------------------------------------------
    # Making tasks

    def _newTask(
        self,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions,
        recorded: bool = True,
    ) -> QueuedTask:
        """
        A new task. An unrecorded one (an update) has no ID, record or
        canceller, and tells the queue nothing of how it goes.
        """
        if not recorded:
            return QueuedTask(f, args, kwargs, options, None, -1, self._clock.seconds())
        task = QueuedTask(
            f,
            args,
            kwargs,
            options,
            self._canceller,
            next(self._seq),
            self._clock.seconds(),
            self,
        )
        self._live[task.id] = task
        if self._observers:
            self._tell("submitted", task.record)
        return task

    def _arguments(self, task: QueuedTask) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """
        C{task}'s arguments: copies read from its pickle if the queue let
        the originals go (L{IN_THE_PICKLE}); raise if they cannot be read.
        """
        if task.args is not IN_THE_PICKLE:
            return task.args, task.kwargs
        reader = self._argumentsReader
        if reader is None or task.pickled is None:
            raise ValueError(f"the arguments of {task.name!r} are gone")
        return reader.argumentsOf(task.pickled)

    def _tellEnd(self, task: QueuedTask, result: object) -> None:
        try:
            args, kwargs = self._arguments(task)
        except Exception:
            self.log.failure("Cannot read the arguments of {task}", task=task.name)
            args, kwargs = task.args, task.kwargs
        for observer in list(self._endObservers):
            try:
                observer(task.record, args, kwargs, result)
            except Exception:
                self.log.failure("End observer {observer} failed", observer=observer)

    def _tell(self, event: str, record: TaskRecord) -> None:
        for observer in list(self._observers):
            try:
                observer(event, record)
            except Exception:
                self.log.failure("Observer {observer} failed", observer=observer)

    def _cancelDeferred(self, d: Deferred[Any]) -> None:
        """The canceller of every task's Deferred (the task itself)."""
        self._cancelTask(cast(QueuedTask, d))

    def _requeue(self, task: QueuedTask) -> None:
        """Put a task that never started (or may be retried) back in line."""
        self._running.discard(task)
        task.state = "pending"
        task.worker = None
        task.started = None
        task.noteChange()
        task.workerDeferred = None
        task.slot = None
        task.handle = None
        if task.series is not None and not self._qualifiedFor(task.series):
            self._finish(
                task, Failure(NoQualifiedWorker(f"no worker for {task.series!r}"))
            )
            return
        self._pending.push(task)

    def _stopsOnLaneError(self, task: QueuedTask) -> bool:
        option = task.options.stopOnLaneError
        return self._stopOnLaneError if option is None else option

    def _qualifiedFor(self, series: Hashable) -> bool:
        return any(
            series in slot.worker.iQualified
            for slot in self._slots.values()
            if not slot.leaving
        )

    # ------------------------------------------------------------------
    # Dispatch and start

    def _dispatch(self) -> None:
        """Hand pending tasks to workers with free slots, most urgent first."""
        if self._dispatching:
            self._dispatchAgain = True
            return
        self._dispatching = True
        pending = self._pending
        try:
            again = True
            while again:
                self._dispatchAgain = False
                again = False
                if not pending.count:
                    break
                # One task per free worker per pass, each pass starting
                # after the worker given the last task, spreads the load:
                # calls made one at a time (each dispatched as it comes)
                # would otherwise all go to the first worker with room, up
                # to its capacity, before any of them ran.
                slots = self._slotList
                count = len(slots)
                first = self._nextSlot % count if count else 0
                warm = self._warmSlot
                if warm is not None and not warm.outstanding and warm.free > 0:
                    try:
                        first = slots.index(warm)
                    except ValueError:
                        # Detached since.
                        self._warmSlot = None
                for k in range(count):
                    slot = slots[(first + k) % count]
                    if slot.free > 0 and pending.count:
                        task = pending.popFor(slot.worker)
                        if task is not None:
                            self._start(slot, task)
                            self._nextSlot = first + k + 1
                            # Another pass only if a worker given a task
                            # has room still: the others had none, or no
                            # task they may run, and what changes that
                            # (a run ending, a task queued) asks again.
                            again = again or slot.free > 0
                again = again or self._dispatchAgain
        finally:
            self._dispatching = False

    def _refill(self, slot: _WorkerSlot) -> None:
        """
        Give C{slot}, where a run just ended, the most urgent tasks it may
        run: what a dispatch pass would, without a pass over every slot.
        No other slot's room changed (what changes it asks for a pass).
        """
        if self._dispatching or slot.free <= 0:
            self._dispatch()
            return
        self._dispatching = True
        self._dispatchAgain = False
        pending, worker = self._pending, slot.worker
        try:
            while slot.free > 0 and pending.count:
                task = pending.popFor(worker)
                if task is None:
                    break
                self._start(slot, task)
        finally:
            self._dispatching = False
        if self._dispatchAgain:
            # Something asked for a pass meanwhile.
            self._dispatch()

    def _start(self, slot: _WorkerSlot, task: QueuedTask) -> None:
        if task.args is IN_THE_PICKLE and not slot.picklesCalls:
            # Held pickled for workers that pickle; this one runs the call
            # as it is: copies of the arguments, from the pickle.
            try:
                task.args, task.kwargs = self._arguments(task)
            except Exception:
                self._finish(task, Failure())
                self._checkIdle()
                return
        slot.outstanding.add(task)
        slot.free -= 1
        self._running.add(task)
        task.state = "running"
        task.worker = slot.worker.name
        task.attempts += 1
        task.runs += 1
        task.slot = slot
        if task._record is not None:
            task.noteChange()
        reporting = slot.reportingWorker
        if reporting is not None:
            # The fast path: the worker calls task.finished, no Deferred.
            try:
                reporting.start(task)
            except Exception:
                self._taskDone(task, Failure(), task.runs)
            return
        try:
            d = slot.worker.run(task)
        except Exception:
            d = fail()
        task.workerDeferred = d
        d.addBoth(self._ran, task, slot, d)

    def _taskStarted(self, task: QueuedTask, ago: float) -> None:
        if task.slot is None:
            # News of a run that has ended already (cancelled, timed out).
            return
        task.started = self._clock.seconds() - ago
        if task._record is not None:
            task.noteChange()
        timeout = task.options.timeout
        if timeout is not None:
            task.timeoutCall = self._clock.callLater(timeout, self._timeOut, task)
        # Observers come last: what they do may depend on the timer being set.
        if self._observers:
            self._tell("started", task.record)

    # ------------------------------------------------------------------
    # Timeouts and cancelling

    def _timeOut(self, task: QueuedTask) -> None:
        task.timeoutCall = None
        if task.slot is not None:
            task.timedOut = True
            self._abandon(task)

    def _abandon(self, task: QueuedTask) -> None:
        """Give up a running task (cancelled, or timed out)."""
        wd = task.workerDeferred
        if wd is not None:
            wd.cancel()
            return
        slot = task.slot
        reporting = slot.reportingWorker if slot is not None else None
        if slot is None or reporting is None:
            # Not started yet, or still inside a plain worker's run(): there
            # is nothing to cancel yet.
            return
        attempt = task.runs
        try:
            reporting.abandon(task)
        except Exception:
            self.log.failure(
                "Worker {worker} failed to abandon {task}",
                worker=slot.worker.name,
                task=task.name,
            )
        finally:
            # Whether or not the worker reported it: it ends as a cancelled
            # Deferred would.
            self._taskDone(task, Failure(CancelledError()), attempt)

    def _cancellation(self) -> CancelledError:
        """What a cancelled task fails with: saying why, if shutdown said."""
        if self._cancelReason is None:
            return CancelledError()
        return CancelledError(self._cancelReason)

    def _cancelTask(self, task: QueuedTask) -> None:
        """The canceller of a task's Deferred."""
        task.cancelled = True
        state = task.state
        if state == "pending":
            self._pending.cancelled(task)
            self._finish(task, Failure(self._cancellation()))
            self._checkIdle()
        elif state == "running":
            self._abandon(task)

    # ------------------------------------------------------------------
    # How a run ends

    def _ran(
        self, result: object, task: QueuedTask, slot: _WorkerSlot, d: Deferred[Any]
    ) -> None:
        """A worker's Deferred for a task fired."""
        if task.workerDeferred is not d:
            # A worker fired a task it had handed back (crash); it was rerun.
            return
        task.workerDeferred = None
        task.slot = None
        self._ended(task, slot, result)

    def _taskDone(self, task: QueuedTask, result: object, attempt: int) -> None:
        """A reporting worker says how run C{attempt} of a task ended."""
        slot = task.slot
        if slot is None or attempt != task.runs:
            # Ended already (cancelled, timed out), or an earlier run's news.
            return
        task.slot = None
        self._ended(task, slot, result)

    def _ended(self, task: QueuedTask, slot: _WorkerSlot, result: object) -> None:
        """A task's run on a worker ended with C{result} (a Failure if it failed)."""
        # What the worker kept for the run (it may refer back to the task,
        # and hold the pickled call) goes now, not when the collector comes.
        task.handle = None
        if task.timeoutCall is not None:
            cancelTimeout(task)
        outstanding = slot.outstanding
        if task in outstanding:
            outstanding.discard(task)
            if not outstanding:
                self._warmSlot = slot
            if slot.ready and not slot.leaving:
                # Read afresh: a worker's capacity may change as it runs.
                slot.free = int(slot.worker.capacity) - len(outstanding)
        self._running.discard(task)
        if isinstance(result, Failure):
            if task.timedOut and result.check(CancelledError):
                result = Failure(
                    TimeoutError(
                        f"task {task.name!r} ran longer than its timeout of "
                        f"{task.options.timeout} s"
                    )
                )
            elif (
                self._cancelReason is not None
                and result.check(CancelledError)
                and not getattr(result.value, "args", ())
            ):
                # A worker's own CancelledError, while shutdown says why.
                result = Failure(self._cancellation())
            elif result.check(TaskNotStarted):
                if not task.deferred.called and self._state != _STOPPED:
                    # It never ran: it uses up none of its attempts.
                    task.attempts -= 1
                    self._requeue(task)
                    self._afterSlotFreed(slot)
                    return
            elif result.check(WorkerCrashed) and task.attempts <= task.options.retries:
                if not task.deferred.called and self._state != _STOPPED:
                    self.log.warn(
                        "Retrying {task} after its worker {worker} crashed",
                        task=task.name,
                        worker=slot.worker.name,
                    )
                    self._requeue(task)
                    self._afterSlotFreed(slot)
                    return
            slot.failed += 1
        else:
            slot.done += 1
        self._finish(task, result)
        if slot.idleWaiters or self._idleWaiters:
            self._afterSlotFreed(slot)
        elif self._pending.count:
            # _afterSlotFreed's common case, a call fewer.
            self._refill(slot)

    def _afterSlotFreed(self, slot: _WorkerSlot) -> None:
        if slot.idleWaiters and not slot.outstanding:
            waiters, slot.idleWaiters = slot.idleWaiters, []
            for d in waiters:
                d.callback(None)
        if self._pending.count:
            self._dispatch()
        if self._idleWaiters:
            self._checkIdle()

    def _finish(self, task: QueuedTask, result: object) -> None:
        """Record how a task ended, move its lane along, fire its Deferred."""
        options = task.options
        if type(result) is RawResult:
            result = result.value
        task.ended = self._clock.seconds()
        failed = isinstance(result, Failure)
        if failed:
            result = cast(Failure, result)
            if task.timedOut and result.check(TimeoutError):
                task.state = "timedOut"
            elif result.check(CancelledError) or task.cancelled:
                task.state = "cancelled"
            else:
                task.state = "failed"
            task.outcome = result.type.__name__ if result.type else "Failure"
            if task.state == "cancelled":
                self._cancelled += 1
            else:
                self._failed += 1
        else:
            task.state = "done"
            task.outcome = "result"
            self._done += 1
        if task._record is not None:
            task.noteChange()
        if self._live.pop(task.id, None) is not None:
            self._records.add(task.row())
        if self._observers:
            self._tell("ended", task.record)
        if self._endObservers:
            self._tellEnd(task, result)
        if self._talk.on or options._talks:  # type: ignore[attr-defined]
            self._talk.tell(task, result)
        if options.lane is not None:
            self._advanceLane(task, result)
        # The caller may keep the task (its Deferred) long after: what the
        # call took goes now.
        task.args, task.kwargs = (), _NO_KEYWORDS
        task.pickled = None
        if task.called:
            return
        if options.consumer is not None and not failed:
            from asynqueue.iteration import Deferator, IterationProducer

            if isinstance(result, Deferator):
                # Cancellable until the consumer has it all.
                IterationProducer(result, options.consumer).run().chainDeferred(task)
                return
        if failed:
            task.errback(cast(Failure, result))
        else:
            task.callback(result)

    # ------------------------------------------------------------------
    # Lanes

    def _advanceLane(self, task: QueuedTask, result: object) -> None:
        lanes = self._pending.lanes
        lane = lanes.get(task.lane)
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
            self._pending.push(lane.front)
            self._dispatch()
        elif lane.failure is None:
            del lanes[task.lane]

    def clearLaneError(self, lane: Hashable) -> None:
        """Let a lane stopped by a failure (C{stopOnLaneError}) take tasks again."""
        lanes = self._pending.lanes
        state = lanes.get(lane)
        if state is not None:
            state.failure = None
            if state.front is None and not state.waiting:
                del lanes[lane]

    # ------------------------------------------------------------------
    # Idleness, and failing what waits

    def _whenAllDone(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        self._checkIdle()
        return d

    def _checkIdle(self) -> None:
        if self._idleWaiters and not (self._pending.size() or self._running):
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def _failPending(self, error: Exception) -> None:
        """Fail every task that is waiting for a worker with C{error}."""
        for task in self._pending.takeAll():
            if not task.deferred.called:
                self._finish(task, Failure(error))
        self._checkIdle()
