"""
What a L{TaskQueue} keeps of each of its tasks, apart from the public
L{asynqueue.tasks.Task}: the worker slot a run holds, the run's Deferred
(a plain worker's), its timeout timer, and whether it timed out or was
cancelled.

A L{TaskState} is also the task's L{ITaskReporter}: a worker's
C{task.markStarted()} and C{task.finished()} reach the queue through it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from zope.interface import implementer

from asynqueue.interfaces import ITaskReporter
from asynqueue.tasks import Task

if TYPE_CHECKING:
    from asynqueue.queue.slots import _WorkerSlot

__all__ = ["TaskState", "stateOf", "cancelTimeout"]


class _Hearing(Protocol):
    """The part of the queue a task's news goes to."""

    def _taskStarted(self, task: Task, ago: float) -> None: ...

    def _taskDone(self, task: Task, result: object, attempt: int) -> None: ...


@implementer(ITaskReporter)
class TaskState:
    """
    The queue's own state of one task, and the task's reporter.

    @ivar slot: The worker slot of the run in progress, or C{None} when
        the task is not running (a run's news after that is stale).
    @ivar workerDeferred: The Deferred a plain worker's C{run} returned for
        the run in progress (a reporting worker's runs have none).
    @ivar timeoutCall: The run's timeout timer, if it has one and it is set.
    @ivar timedOut: The run was abandoned because it ran out of time.
    @ivar cancelled: The caller cancelled the task's Deferred.
    """

    # One per call on the hot path: slots keep it small and quick.
    __slots__ = (
        "queue",
        "slot",
        "workerDeferred",
        "timeoutCall",
        "timedOut",
        "cancelled",
    )

    def __init__(self, queue: _Hearing) -> None:
        self.queue = queue
        self.slot: _WorkerSlot | None = None
        self.workerDeferred: Deferred[Any] | None = None
        self.timeoutCall: IDelayedCall | None = None
        self.timedOut = False
        self.cancelled = False

    def started(self, task: Task, ago: float) -> None:
        """A worker began C{task} C{ago} seconds ago."""
        self.queue._taskStarted(task, ago)

    def done(self, task: Task, result: object, attempt: int) -> None:
        """A reporting worker says how run C{attempt} of C{task} ended."""
        self.queue._taskDone(task, result, attempt)


def stateOf(task: Task) -> TaskState:
    """The queue's state of C{task}, one the queue made."""
    return cast(TaskState, task.reporter)


def cancelTimeout(task: Task) -> None:
    """Stop the timer of C{task}'s run, if it has one."""
    state = cast(TaskState, task.reporter)
    timeoutCall = state.timeoutCall
    if timeoutCall is not None:
        state.timeoutCall = None
        if timeoutCall.active():
            timeoutCall.cancel()
