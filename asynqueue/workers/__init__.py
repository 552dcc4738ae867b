"""
Workers, one module per kind: in the reactor (and in memory, for tests),
in threads, in child processes, on remote nodes and on a Dask cluster, on
one shared base.

AsynQueue's C{asynqueue.workers} names (C{ThreadWorker}, C{ProcessWorker},
C{AsyncWorker}, C{IWorker}) are here too.
"""

from asynqueue._lazy import lazyExports

_EXPORTS = {
    "AdaptiveBacklog": "asynqueue.workers.base",
    "settle": "asynqueue.workers.base",
    "WorkerBase": "asynqueue.workers.base",
    "PLAIN_TYPES": "asynqueue.workers.base",
    "runReporting": "asynqueue.workers.base",
    "AsyncWorker": "asynqueue.workers.reactor",
    "MemoryWorker": "asynqueue.workers.reactor",
    "ThreadWorker": "asynqueue.workers.threads",
    "ThreadQueue": "asynqueue.workers.threads",
    "deferToThread": "asynqueue.workers.threads",
    "ThreadIterationSource": "asynqueue.workers.threads",
    "ProcessWorker": "asynqueue.workers.process",
    "ProcessQueue": "asynqueue.workers.process",
    "ProcessIterationSource": "asynqueue.workers.process",
    "RemoteWorker": "asynqueue.workers.remote",
    "WireWorker": "asynqueue.workers.remote",
    "clientEndpoint": "asynqueue.workers.connection",
    "DaskWorker": "asynqueue.workers.dask",
    "DaskQueue": "asynqueue.workers.dask",
    "IWorker": "asynqueue.interfaces",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazyExports(__name__, _EXPORTS)
