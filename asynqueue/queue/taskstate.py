"""
What a L{TaskQueue} keeps of each of its tasks, apart from the public
L{asynqueue.tasks.Task}: the worker slot a run holds, the run's Deferred
(a plain worker's), its timeout timer, and whether it timed out or was
cancelled. A L{QueuedTask} is the task as its queue holds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall

from asynqueue.tasks import Task

if TYPE_CHECKING:
    from asynqueue.queue.slots import _WorkerSlot

__all__ = ["QueuedTask", "cancelTimeout"]


class _Hearing(Protocol):
    """The part of the queue a task's news goes to."""

    def _taskStarted(self, task: QueuedTask, ago: float) -> None: ...

    def _taskDone(self, task: QueuedTask, result: object, attempt: int) -> None: ...


@dataclass(eq=False, slots=True, repr=False)
class QueuedTask(Task):
    """
    A task as its queue holds it: the public L{Task}, which is all a
    worker sees, and the queue's own state of it, which no worker reads.

    A worker's C{markStarted} and C{finished} go straight to the queue.
    The state is held in the task's own object, in the queue's subclass,
    rather than in an object beside it: a call then costs the hot path one
    object, not two.

    @ivar hearing: The queue the task's news goes to.
    @ivar slot: The worker slot of the run in progress, or C{None} when
        the task is not running (a run's news after that is stale).
    @ivar workerDeferred: The Deferred a plain worker's C{run} returned for
        the run in progress (a reporting worker's runs have none).
    @ivar timeoutCall: The run's timeout timer, if it has one and it is set.
    @ivar timedOut: The run was abandoned because it ran out of time.
    @ivar cancelled: The caller cancelled the task's Deferred.
    """

    hearing: _Hearing | None = None
    slot: _WorkerSlot | None = None
    workerDeferred: Deferred[Any] | None = None
    timeoutCall: IDelayedCall | None = None
    timedOut: bool = False
    cancelled: bool = False

    def markStarted(self, ago: float = 0.0) -> None:
        """Tell the queue that the call has begun (see L{Task.markStarted})."""
        hearing = self.hearing
        if self.record.started is None and hearing is not None:
            hearing._taskStarted(self, ago)

    def finished(self, result: object, attempt: int) -> None:
        """Tell the queue how run C{attempt} ended (see L{Task.finished})."""
        hearing = self.hearing
        if hearing is not None:
            hearing._taskDone(self, result, attempt)


def cancelTimeout(task: QueuedTask) -> None:
    """Stop the timer of C{task}'s run, if it has one."""
    timeoutCall = task.timeoutCall
    if timeoutCall is not None:
        task.timeoutCall = None
        if timeoutCall.active():
            timeoutCall.cancel()
