"""
What the dashboard needs of a queue beyond its public face: the task and
outcome behind an ended record, the worker slots, a task found by its ID,
and word of the queue's shutdown.

C{TaskQueue.observe} tells an observer of records only, yet the dashboard
shows a failure's message and traceback and a slow task's arguments, and
stops when the queue shuts down. These taps reach into the queue's private
state, all of it here, so that the rest of L{asynqueue.web} uses only what
is public; each tap undoes itself. This module imports nothing of
L{asynqueue.queue} (the queue imports this package inside a function).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "EndTap",
    "onShutdown",
    "findTask",
    "slotStates",
    "runningRecords",
    "pendingRecords",
]


class EndTap:
    """
    While a queue's observers hear of a task's end, C{task} and C{result}
    are the task (its arguments still held) and what it ended with (a
    C{Failure} if it failed); C{None} at any other time.

    It wraps the queue's C{_finish}, which tells the observers before it
    lets the arguments go: one attribute store per task, no more.
    """

    task: Any = None
    result: object = None

    def __init__(self, queue: Any) -> None:
        self._queue = queue
        self._original: Callable[[Any, object], None] | None = getattr(
            queue, "_finish", None
        )
        self._active = self._original is not None
        if self._original is None:
            return
        original = self._original

        def finish(task: Any, result: object) -> None:
            if not self._active:
                original(task, result)
                return
            self.task, self.result = task, result
            try:
                original(task, result)
            finally:
                # No reference outlives the end of the task.
                self.task = self.result = None

        self._wrapper = finish
        queue._finish = finish

    def remove(self) -> None:
        """Stop tapping; the queue's own C{_finish} is back unless tapped again."""
        if not self._active:
            return
        self._active = False
        queue = self._queue
        if queue.__dict__.get("_finish") is self._wrapper:
            if getattr(type(queue), "_finish", None) is getattr(
                self._original, "__func__", None
            ):
                del queue._finish
            else:
                queue._finish = self._original


def onShutdown(queue: Any, callback: Callable[[], object]) -> Callable[[], None]:
    """
    Call C{callback()} once C{queue.shutdown()} has stopped its workers;
    return a function that cancels it.

    The queue calls its C{_closeLog} then (a C{logFile}'s closer): the
    callback is chained in front of whatever is there.
    """
    previous: Callable[[], None] | None = getattr(queue, "_closeLog", None)
    cancelled = False

    def closing() -> None:
        if not cancelled:
            callback()
        if previous is not None:
            previous()

    queue._closeLog = closing

    def cancel() -> None:
        nonlocal cancelled
        cancelled = True
        if getattr(queue, "_closeLog", None) is closing:
            queue._closeLog = previous

    return cancel


def findTask(queue: Any, taskID: int) -> Any:
    """
    The running or pending task of C{queue} whose record's ID is C{taskID},
    or C{None}. It looks through every such task: for a click, not a loop.
    """
    for task in list(getattr(queue, "_running", ())):
        if task.record.id == taskID:
            return task
    pending = getattr(queue, "_pending", None)
    for task in pending if pending is not None else ():
        if task.record.id == taskID:
            return task
    return None


def slotStates(queue: Any) -> dict[str, str]:
    """By worker name, C{"starting"} or C{"leaving"} for workers not simply attached."""
    states: dict[str, str] = {}
    for slot in list(getattr(queue, "_slotList", ())):
        if slot.leaving:
            states[slot.worker.name] = "leaving"
        elif not slot.ready:
            states[slot.worker.name] = "starting"
    return states


def runningRecords(queue: Any) -> list[Any]:
    """The records of the tasks handed to workers (a few: the workers' capacity)."""
    records = [task.record for task in list(getattr(queue, "_running", ()))]
    records.sort(key=lambda record: record.id)
    return records


def pendingRecords(queue: Any, limit: int) -> list[Any]:
    """
    The records of at most C{limit} pending tasks: each series' most urgent
    first, then those waiting behind their lane's front. It reads only as
    far as it must, however many are pending.
    """
    store = getattr(queue, "_pending", None)
    out: list[Any] = []
    if store is None:
        return out
    for line in list(store.lines.values()):
        for priority in sorted(line.levels):
            for task in line.levels[priority]:
                if not task.cancelled:
                    out.append(task.record)
                    if len(out) >= limit:
                        return out
    for lane in list(store.lanes.values()):
        for task in lane.waiting:
            out.append(task.record)
            if len(out) >= limit:
                return out
    return out
