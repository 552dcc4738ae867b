"""
What a L{TaskQueue} keeps of each of its tasks, apart from the public
L{asynqueue.tasks.Task}: the worker slot a run holds, the run's Deferred
(a plain worker's), its timeout timer, and whether it timed out or was
cancelled. A L{QueuedTask} is the task as its queue holds it, and the
Deferred its caller was given.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from asynqueue.tasks import Task, TaskOptions, TaskRecord, nameFor

if TYPE_CHECKING:
    from asynqueue.queue.slots import _WorkerSlot

__all__ = ["QueuedTask", "cancelTimeout"]


class _Hearing(Protocol):
    """The part of the queue a task's news goes to."""

    def _taskStarted(self, task: QueuedTask, ago: float) -> None: ...

    def _taskDone(self, task: QueuedTask, result: object, attempt: int) -> None: ...


class QueuedTask(Deferred[Any], Task):
    """
    A task as its queue holds it: the public L{Task}, which is all a
    worker sees, and the queue's own state of it, which no worker reads.
    It is also the Deferred the caller was given (C{deferred} is the task
    itself).

    One object, not three (a Deferred, a task, a link back for the
    Deferred's canceller): a burst of waiting calls is that many fewer
    objects for every pass of the cyclic collector to walk, and a call
    that ends leaves no cycle behind.

    A worker's C{markStarted} and C{finished} go straight to the queue.
    The state is held in the task's own object, in the queue's subclass,
    rather than in an object beside it: a call then costs the hot path one
    object, not two. So is what its record says: the L{TaskRecord} is made
    only when asked for (by an observer, by C{records()}, by a worker that
    reads C{record}), and from then on follows the task (L{noteChange}).

    @ivar hearing: The queue the task's news goes to.
    @ivar slot: The worker slot of the run in progress, or C{None} when
        the task is not running (a run's news after that is stale).
    @ivar workerDeferred: The Deferred a plain worker's C{run} returned for
        the run in progress (a reporting worker's runs have none).
    @ivar timeoutCall: The run's timeout timer, if it has one and it is set.
    @ivar timedOut: The run was abandoned because it ran out of time.
    @ivar cancelled: The caller cancelled the task's Deferred.
    @ivar id: The record's C{id}; C{started}, C{ended}, C{worker},
        C{state}, C{outcome} and C{attempts} are the record's too.
    """

    __slots__ = (
        "hearing",
        "slot",
        "workerDeferred",
        "timeoutCall",
        "timedOut",
        "cancelled",
        "id",
        "priority",
        "submitted",
        "started",
        "ended",
        "worker",
        "state",
        "outcome",
        "attempts",
        "_record",
    )

    hearing: _Hearing | None
    slot: _WorkerSlot | None
    workerDeferred: Deferred[Any] | None
    timeoutCall: IDelayedCall | None
    timedOut: bool
    cancelled: bool
    id: int
    priority: float
    submitted: float
    started: float | None
    ended: float | None
    worker: str | None
    state: str
    outcome: str | None
    attempts: int
    _record: TaskRecord | None

    def __init__(
        self,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: TaskOptions,
        canceller: Callable[[Deferred[Any]], None] | None,
        id: int,
        submitted: float,
        hearing: _Hearing | None = None,
    ) -> None:
        Deferred.__init__(self, canceller)
        # Not Task.__init__: it would take a record.
        self.f = f
        self.args = args
        self.kwargs = kwargs
        self.options = options
        self.pickled = self.update = self.handle = self.reporter = None
        self.runs = self.attempts = 0
        self.id = id
        self.priority = options._priority  # type: ignore[attr-defined]
        self.submitted = submitted
        self.hearing = hearing
        self.slot = self.workerDeferred = self.timeoutCall = None
        self.timedOut = self.cancelled = False
        self.started = self.ended = self.worker = self.outcome = None
        self.state = "pending"
        self._record = None

    @property
    def deferred(self) -> Deferred[Any]:
        """The caller's Deferred: the task itself."""
        return self

    @deferred.setter
    def deferred(self, deferred: Deferred[Any]) -> None:
        raise AttributeError("a queued task is its own Deferred: it cannot be set")

    @property
    def record(self) -> TaskRecord:
        """The task's record, made when first asked for; it follows the task."""
        record = self._record
        if record is None:
            record = self._record = TaskRecord.fromRow(self.row())
        return record

    @record.setter
    def record(self, record: TaskRecord) -> None:
        raise AttributeError("a queued task's record is its own: it cannot be set")

    @property
    def name(self) -> str:
        """The task's name in records and logs."""
        return nameFor(self.f, self.options)

    def row(self) -> tuple[Any, ...]:
        """What the record says, as L{recordRow} would give it."""
        f = self.f
        options = self.options
        return (
            self.id,
            nameFor(f, options),
            getattr(f, "__qualname__", None) or type(f).__qualname__,
            self.priority,
            options.series,
            options.lane,
            self.submitted,
            self.started,
            self.ended,
            self.worker,
            self.state,
            self.outcome,
            self.attempts,
        )

    def noteChange(self) -> None:
        """The queue changed the record's fields: a record made already follows."""
        record = self._record
        if record is not None:
            record.started = self.started
            record.ended = self.ended
            record.worker = self.worker
            record.state = self.state
            record.outcome = self.outcome
            record.attempts = self.attempts

    def noteWorker(self, name: str) -> None:
        """Name the worker that ran the call (see L{Task.noteWorker})."""
        self.worker = name
        self.noteChange()

    def markStarted(self, ago: float = 0.0) -> None:
        """Tell the queue that the call has begun (see L{Task.markStarted})."""
        hearing = self.hearing
        if self.started is None and hearing is not None:
            hearing._taskStarted(self, ago)

    def finished(self, result: object, attempt: int) -> None:
        """Tell the queue how run C{attempt} ended (see L{Task.finished})."""
        hearing = self.hearing
        if hearing is not None:
            hearing._taskDone(self, result, attempt)

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.name} {self.state}>"


#: Every attribute a task's object gets outside the slots (its own and
#: L{Task}'s): those its Deferred sets, as it is made, fires or is cancelled.
_DICT_ATTRIBUTES = (
    "_callbacks",
    "_canceller",
    "called",
    "result",
    "_runningCallbacks",
    "_chainedTo",
    "paused",
    "_suppressAlreadyCalled",
    "_debugInfo",
)


def _nameEveryAttribute() -> None:
    """
    Have one throwaway task name every attribute a task's object may get,
    before any real task is made.

    CPython (3.11 on) keeps an object's attributes without a dict of its
    own for the names its class has seen while it still had room for new
    ones, and each object made takes some of that room. The Deferred's
    C{result} is first set when the first task ends, after a burst of tasks
    was made: with no room left, every task would then get a dict when it
    fired, one more object per call for every pass of the collector.
    """
    task = QueuedTask.__new__(QueuedTask)
    for name in _DICT_ATTRIBUTES:
        setattr(task, name, None)


_nameEveryAttribute()


def cancelTimeout(task: QueuedTask) -> None:
    """Stop the timer of C{task}'s run, if it has one."""
    timeoutCall = task.timeoutCall
    if timeoutCall is not None:
        task.timeoutCall = None
        if timeoutCall.active():
            timeoutCall.cancel()
