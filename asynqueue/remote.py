"""The first layout's path of the remote workers (L{asynqueue.workers.remote})."""

from asynqueue.workers.connection import clientEndpoint
from asynqueue.workers.remote import RemoteWorker, WireWorker

__all__ = ["RemoteWorker", "WireWorker", "clientEndpoint"]
