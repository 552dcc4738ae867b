"""AsynQueue's import path of the thread workers (L{asynqueue.workers.threads})."""

from asynqueue.workers.threads import (
    ThreadIterationSource,
    ThreadQueue,
    ThreadWorker,
    deferToThread,
)

__all__ = ["ThreadWorker", "ThreadQueue", "deferToThread", "ThreadIterationSource"]
