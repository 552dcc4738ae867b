"""
asynqueue: prioritized Deferred task queues for Twisted.

Send calls to workers in the reactor, in threads, in child processes and
on remote nodes; every call returns a Deferred (which can be awaited).
"""

from asynqueue.base import TaskQueue
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
from asynqueue.node import context
from asynqueue.ordered import OrderedQueue
from asynqueue.process import ProcessQueue, ProcessWorker
from asynqueue.remote import RemoteWorker, WireWorker
from asynqueue.settings import Settings
from asynqueue.tasks import Task, TaskOptions, TaskRecord
from asynqueue.threads import ThreadQueue, ThreadWorker, deferToThread
from asynqueue.util import DeferredLock, DeferredTracker
from asynqueue.workers import AsyncWorker, MemoryWorker

__all__ = [
    "AsyncWorker",
    "AsynQueueError",
    "Deferator",
    "DeferredLock",
    "DeferredTracker",
    "Feeder",
    "IIterationSource",
    "IWorker",
    "IterationProducer",
    "LaneError",
    "MemoryWorker",
    "NoQualifiedWorker",
    "NoWorkers",
    "OrderedQueue",
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
    "deferToThread",
    "iteratorToProducer",
]

__version__ = "1.0.0.dev0"
