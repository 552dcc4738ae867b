"""
asynqueue: prioritized Deferred task queues for Twisted.

Send calls to workers in the reactor, in threads, in child processes and
on remote nodes; every call returns a Deferred (which can be awaited).

Every name loads from its module when first used: importing the package
costs nothing, so a child process (see L{asynqueue.node.child}) starts
without the queue machinery or Twisted.
"""

from asynqueue._lazy import lazyExports

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from asynqueue.errors import (
        AsynQueueError,
        LaneError,
        NodeLost,
        NoQualifiedWorker,
        NoWorkers,
        QueueRunError,
        RemoteError,
        TimeoutError,
        UnpicklableError,
        WorkerCrashed,
    )
    from asynqueue.feed import Feeder
    from asynqueue.interfaces import IIterationSource, IWorker
    from asynqueue.iteration import Deferator, IterationProducer, iteratorToProducer
    from asynqueue.legacy.delay import deferToDelay
    from asynqueue.legacy.info import Info, showResult
    from asynqueue.node.child import context
    from asynqueue.ordered import OrderedQueue
    from asynqueue.queue.core import TaskQueue
    from asynqueue.settings import Settings
    from asynqueue.tasks import Task, TaskOptions, TaskRecord
    from asynqueue.util import DeferredLock, DeferredTracker
    from asynqueue.workers.dask import DaskQueue, DaskWorker
    from asynqueue.workers.process import ProcessQueue, ProcessWorker
    from asynqueue.workers.processextras import ProcessBase
    from asynqueue.workers.reactor import AsyncWorker, MemoryWorker
    from asynqueue.workers.remote import RemoteWorker, WireWorker
    from asynqueue.workers.threads import ThreadQueue, ThreadWorker, deferToThread

_EXPORTS = {
    **dict.fromkeys(
        (
            "AsynQueueError",
            "LaneError",
            "NodeLost",
            "NoQualifiedWorker",
            "NoWorkers",
            "QueueRunError",
            "RemoteError",
            "TimeoutError",
            "UnpicklableError",
            "WorkerCrashed",
        ),
        "asynqueue.errors",
    ),
    "IIterationSource": "asynqueue.interfaces",
    "IWorker": "asynqueue.interfaces",
    "Deferator": "asynqueue.iteration",
    "IterationProducer": "asynqueue.iteration",
    "iteratorToProducer": "asynqueue.iteration",
    "TaskQueue": "asynqueue.queue.core",
    "Settings": "asynqueue.settings",
    "Task": "asynqueue.tasks",
    "TaskOptions": "asynqueue.tasks",
    "TaskRecord": "asynqueue.tasks",
    "DeferredLock": "asynqueue.util",
    "DeferredTracker": "asynqueue.util",
    "AsyncWorker": "asynqueue.workers.reactor",
    "MemoryWorker": "asynqueue.workers.reactor",
    "Feeder": "asynqueue.feed",
    "OrderedQueue": "asynqueue.ordered",
    "context": "asynqueue.node.child",
    "ProcessQueue": "asynqueue.workers.process",
    "ProcessWorker": "asynqueue.workers.process",
    "RemoteWorker": "asynqueue.workers.remote",
    "DaskQueue": "asynqueue.workers.dask",
    "DaskWorker": "asynqueue.workers.dask",
    "WireWorker": "asynqueue.workers.remote",
    "ThreadQueue": "asynqueue.workers.threads",
    "ThreadWorker": "asynqueue.workers.threads",
    "deferToThread": "asynqueue.workers.threads",
    "deferToDelay": "asynqueue.legacy.delay",
    "Info": "asynqueue.legacy.info",
    "showResult": "asynqueue.legacy.info",
    "ProcessBase": "asynqueue.workers.processextras",
}
__getattr__ = lazyExports(__name__, _EXPORTS)

__all__ = [
    "AsyncWorker",
    "AsynQueueError",
    "DaskQueue",
    "DaskWorker",
    "Deferator",
    "DeferredLock",
    "DeferredTracker",
    "Feeder",
    "IIterationSource",
    "IWorker",
    "Info",
    "IterationProducer",
    "LaneError",
    "MemoryWorker",
    "NoQualifiedWorker",
    "NoWorkers",
    "OrderedQueue",
    "ProcessBase",
    "ProcessQueue",
    "ProcessWorker",
    "QueueRunError",
    "RemoteError",
    "RemoteWorker",
    "Settings",
    "WireWorker",
    "NodeLost",
    "UnpicklableError",
    "context",
    "Task",
    "TaskOptions",
    "TaskQueue",
    "TaskRecord",
    "ThreadQueue",
    "ThreadWorker",
    "TimeoutError",
    "WorkerCrashed",
    "deferToDelay",
    "deferToThread",
    "iteratorToProducer",
    "showResult",
]

__version__ = "1.0.0.dev0"
