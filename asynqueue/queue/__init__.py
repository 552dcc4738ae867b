"""
The queue core: L{TaskQueue}, its pending tasks, dispatch, timeouts,
retries and shutdown.
"""

from asynqueue.queue.core import TaskQueue

__all__ = ["TaskQueue"]
