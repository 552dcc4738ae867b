"""
AsynQueue's import path of the thread workers (L{asynqueue.workers.threads}),
with its L{ThreadLooper} (L{asynqueue.legacy.looper}) and its iterators for blocking
code: L{Consumerator}, L{Filerator} and L{OrderedItemProducer}
(L{asynqueue.legacy.blocking}).
"""

from asynqueue.legacy.blocking import (
    Consumerator,
    Filerator,
    IterationGetter,
    OrderedItemProducer,
    PoolUser,
)
from asynqueue.legacy.looper import ThreadLooper
from asynqueue.queue.core import TaskQueue
from asynqueue.workers.threads import (
    ThreadIterationSource,
    ThreadQueue,
    ThreadWorker,
    deferToThread,
)

__all__ = [
    "Consumerator",
    "Filerator",
    "IterationGetter",
    "OrderedItemProducer",
    "PoolUser",
    "TaskQueue",
    "ThreadIterationSource",
    "ThreadLooper",
    "ThreadQueue",
    "ThreadWorker",
    "deferToThread",
]
