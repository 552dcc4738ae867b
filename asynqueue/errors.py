"""
The exceptions that asynqueue raises and that its users catch.

Every class derives from L{AsynQueueError}, so C{except AsynQueueError}
catches anything the library itself raises; a task's own exception reaches
the caller unchanged and is never wrapped in one of these.
"""

from __future__ import annotations

import builtins

from zope.interface import Invalid

__all__ = [
    "AsynQueueError",
    "QueueRunError",
    "ImplementationError",
    "NotReadyError",
    "WorkerError",
    "ThreadError",
    "WorkerCrashed",
    "NodeLost",
    "TaskNotStarted",
    "TimeoutError",
    "NoQualifiedWorker",
    "NoWorkers",
    "LaneError",
    "UnpicklableError",
    "RemoteError",
    "InvariantError",
    "ProcessError",
]


class AsynQueueError(Exception):
    """Base class of every exception raised by asynqueue itself."""


class QueueRunError(AsynQueueError):
    """The queue (or lock) is shut down, or shutting down, and takes no calls."""


class ImplementationError(AsynQueueError, TypeError):
    """An object does not provide the interface it was given for."""


class NotReadyError(AsynQueueError):
    """Something was used before it was ready."""


class WorkerError(AsynQueueError):
    """A worker could not run a task."""


class ThreadError(WorkerError):
    """A worker thread failed outside the task it was running."""


class ProcessError(WorkerError):
    """A worker's process could not be reached (AsynQueue's name)."""


class WorkerCrashed(WorkerError):
    """The worker running the task died before the task finished."""


class NodeLost(WorkerCrashed):
    """
    The connection to the remote node running the task was lost.

    The task may have run there, so the queue runs it again elsewhere only
    as often as its C{retries} allow; with none it fails with this.
    """


class TaskNotStarted(WorkerError):
    """
    A worker gave a task back without starting it (a remote worker whose
    connection was lost before the call was sent).

    The queue runs such a task on a worker again without counting an
    attempt; a caller sees this only if the queue is stopped by then.
    """


class NoWorkers(QueueRunError):
    """
    The queue has no worker left to run the task: every one resigned.

    Pending tasks and new calls fail with this (its message names the
    last worker to go and why) until a worker is attached again.
    """


class TimeoutError(AsynQueueError, builtins.TimeoutError):
    """A task ran longer than its C{timeout}, or a wait timed out."""


class NoQualifiedWorker(AsynQueueError, LookupError):
    """No attached worker is qualified for the series a task names."""


class LaneError(AsynQueueError):
    """
    A task was not run because an earlier task of its lane failed.

    Raised only for queues or calls with C{stopOnLaneError=True}. The
    original failure is in L{LaneError.cause}.
    """

    def __init__(self, lane: object, cause: BaseException | None = None) -> None:
        super().__init__(f"an earlier task of lane {lane!r} failed: {cause!r}")
        self.lane = lane
        self.cause = cause


class UnpicklableError(AsynQueueError, TypeError):
    """A call, argument, result or item could not be pickled to travel."""


class RemoteError(AsynQueueError):
    """
    A task failed elsewhere with an exception that cannot be rebuilt here.

    C{typeName} and C{message} describe the original exception;
    C{remoteTraceback} is its traceback text.
    """

    def __init__(self, typeName: str, message: str, remoteTraceback: str) -> None:
        super().__init__(f"{typeName}: {message}")
        self.typeName = typeName
        self.message = message
        self.remoteTraceback = remoteTraceback


class InvariantError(AsynQueueError, Invalid):  # type: ignore[misc]
    """
    A worker does not meet an invariant of L{asynqueue.interfaces.IWorker}
    (AsynQueue's name: its C{iQualified} or C{cQualified} is not a list).
    """

    def __repr__(self) -> str:
        return f"InvariantError({self.args!r})"


class NodeUnreachable(NoWorkers, NodeLost):
    """
    The queue's last worker, a remote one, gave up reaching its node (its
    C{connectDeadline} passed): no worker is left to run the task, and it
    is a node that was lost.
    """
