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

from twisted.logger import Logger

__all__ = [
    "EndTap",
    "onShutdown",
    "findTask",
    "slotStates",
    "runningRecords",
    "pendingRecords",
    "pendingCounts",
]


#: What hears of each task's end: its record (its state set), the call's
#: arguments and keywords (or C{None}, C{None} when unknown), and what it
#: ended with (a C{Failure} if it failed; C{None} when unknown).
OnEnd = Callable[[Any, Any, Any, object], None]


class EndTap:
    """
    Call C{onEnd(record, args, kwargs, result)} as each task of a queue ends.

    It wraps the queue's C{_finish}, which ends every recorded task (run,
    failed, timed out or cancelled, started or not): the arguments are
    read before C{_finish} lets them go, and C{onEnd} is called once it
    has set the record's state. This costs a task one call; it is cheaper
    than C{queue.observe} (three calls, one per event), which is used
    instead if the queue has no C{_finish}, without arguments or failures.
    """

    log = Logger()

    def __init__(self, queue: Any, onEnd: OnEnd) -> None:
        self._queue = queue
        self._active = True
        self._stopObserving: Callable[[], None] | None = None
        original: Callable[[Any, object], None] | None = getattr(queue, "_finish", None)
        self._original = original
        if original is None:

            def observer(event: str, record: Any) -> None:
                if event == "ended":
                    onEnd(record, None, None, None)

            self._stopObserving = queue.observe(observer)
            return

        def finish(task: Any, result: object) -> None:
            args, kwargs = task.args, task.kwargs
            original(task, result)
            if self._active:
                try:
                    onEnd(task.record, args, kwargs, result)
                except Exception:
                    self.log.failure("The dashboard failed to note a task's end")

        self._wrapper = finish
        queue._finish = finish

    def remove(self) -> None:
        """Stop tapping; the queue's own C{_finish} is back unless tapped again."""
        if not self._active:
            return
        self._active = False
        if self._stopObserving is not None:
            self._stopObserving()
            return
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


def pendingCounts(queue: Any) -> dict[tuple[float, Any, Any], int]:
    """
    How many tasks of C{queue} are pending, by C{(priority, series, lane)}.

    Read from the sizes of the pending store's lines, so it costs the
    number of series and priorities, not of tasks; only a line holding
    cancelled tasks (skipped when they reach its front) and the tasks
    waiting behind their lane's front are looked at one by one.
    """
    store = getattr(queue, "_pending", None)
    counts: dict[tuple[float, Any, Any], int] = {}
    if store is None:
        return counts

    def add(key: tuple[float, Any, Any], n: int) -> None:
        if n > 0:
            counts[key] = counts.get(key, 0) + n

    lines = list(store.lines.items())
    exact = sum(len(level) for _, line in lines for level in line.levels.values())
    exact = exact == store.count
    for series, line in lines:
        for priority, level in list(line.levels.items()):
            if exact:
                add((priority, series, None), len(level))
            else:
                for task in list(level):
                    if not task.cancelled:
                        add((priority, series, task.lane), 1)
    for lane, state in list(store.lanes.items()):
        front = state.front
        if exact and front is not None and front.record.state == "pending":
            # Counted above without its lane.
            key = (front.record.priority, front.series, None)
            counts[key] -= 1
            if not counts[key]:
                del counts[key]
            add((front.record.priority, front.series, lane), 1)
        for task in list(state.waiting):
            add((task.record.priority, task.series, lane), 1)
    return counts
