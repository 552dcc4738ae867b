"""AsynQueue's import path of L{TaskQueue}; it lives in L{asynqueue.queue}."""

from asynqueue.queue.core import TaskQueue

__all__ = ["TaskQueue"]
