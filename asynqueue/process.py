"""AsynQueue's import path of the process workers (L{asynqueue.workers.process})."""

from asynqueue.node.child import context
from asynqueue.workers.process import (
    ProcessIterationSource,
    ProcessQueue,
    ProcessWorker,
)
from asynqueue.workers.processextras import ProcessBase

__all__ = [
    "ProcessBase",
    "ProcessWorker",
    "ProcessQueue",
    "ProcessIterationSource",
    "context",
]
