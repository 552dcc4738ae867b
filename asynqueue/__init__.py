"""
asynqueue: prioritized Deferred task queues for Twisted.

Send calls to workers in the reactor, in threads, in child processes and
on remote nodes; every call returns a Deferred (which can be awaited).

The queue core and the vocabulary load with the package; the process,
remote and node machinery, and the layers on top, only when first used.
"""

from asynqueue._lazy import lazyExports
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
from asynqueue.interfaces import IIterationSource, IWorker
from asynqueue.iteration import Deferator, IterationProducer, iteratorToProducer
from asynqueue.queue.core import TaskQueue
from asynqueue.settings import Settings
from asynqueue.tasks import Task, TaskOptions, TaskRecord
from asynqueue.util import DeferredLock, DeferredTracker
from asynqueue.workers.reactor import AsyncWorker, MemoryWorker

_EXPORTS = {
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
