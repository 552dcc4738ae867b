"""
The queue's extension points for tools that watch it (the dashboard, a
monitor of your own): what is pending and running, the workers' states,
each task's end with its arguments and outcome, cancelling a task by its
ID, and word of the queue's shutdown. All read-only but L{cancelTask},
all public, so that no tool reaches into the queue's private state.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Hashable
from typing import Any

from asynqueue.queue.pending import PendingStore
from asynqueue.queue.running import _Running
from asynqueue.queue.taskstate import QueuedTask
from asynqueue.tasks import TaskRecord

__all__ = ["EndObserver", "WorkObserver"]

_taskID = operator.attrgetter("id")

#: Hears of a task's end: its record (state set), the call's arguments and
#: keywords, and what it ended with (a C{Failure} if it failed).
EndObserver = Callable[[TaskRecord, tuple[Any, ...], dict[str, Any], object], object]

#: Hears of work announced to a queue (L{_Inspection.announceWork}): how many
#: more items are expected (negative when work is withdrawn) and how many
#: more are done.
WorkObserver = Callable[[int, int], object]


class _Inspection(_Running):
    """Public ways to watch a queue and to act on one of its tasks."""

    _pending: PendingStore
    _running: set[QueuedTask]
    _endObservers: list[EndObserver]
    _shutdownHooks: list[Callable[[], object]]
    #: Made on the first L{observeWork}: the hot path never looks at it.
    _workObservers: list[WorkObserver] | None = None

    def observeEnds(self, observer: EndObserver) -> Callable[[], None]:
        """
        Call C{observer(record, args, kwargs, outcome)} as each task ends
        (done, failed, timed out or cancelled), in the reactor thread, before
        the queue lets go of its arguments. Return a function that stops it.

        A queue of workers that pickle calls keeps the arguments of a call
        made while nobody observed only in its pickle: the observer then
        gets copies read from it (equal, not the caller's own objects), or
        L{asynqueue.tasks.IN_THE_PICKLE} if they cannot be read back. The
        keywords of a call made without any are one shared empty dict,
        which refuses to change.

        It costs a task one call, and nothing while no one observes.
        """
        self._endObservers.append(observer)

        def stop() -> None:
            if observer in self._endObservers:
                self._endObservers.remove(observer)

        return stop

    def notifyShutdown(self, callback: Callable[[], object]) -> Callable[[], None]:
        """
        Call C{callback()} once the queue has shut down (every task ended
        and every worker stopped); return a function that cancels it.
        """
        self._shutdownHooks.append(callback)

        def cancel() -> None:
            if callback in self._shutdownHooks:
                self._shutdownHooks.remove(callback)

        return cancel

    def observeWork(self, observer: WorkObserver) -> Callable[[], None]:
        """
        Call C{observer(expected, done)} whenever work is announced with
        L{announceWork}: C{expected} more items are to come (negative when
        work is withdrawn), C{done} more were done. A dashboard's ETA comes
        from it. Return a function that stops it.
        """
        if self._workObservers is None:
            self._workObservers = []
        self._workObservers.append(observer)

        def stop() -> None:
            if self._workObservers is not None and observer in self._workObservers:
                self._workObservers.remove(observer)

        return stop

    def announceWork(self, expected: int = 0, done: int = 0) -> None:
        """
        Tell whoever watches that C{expected} more items of work are to
        come, or that C{done} more are done: what the queue cannot count by
        itself, since an item is not always a task. L{map} of a sized
        iterable and a L{Feeder} given its C{total} call it; so may you.
        """
        observers = self._workObservers
        if observers:
            for observer in list(observers):
                observer(expected, done)

    def runningRecords(self) -> list[TaskRecord]:
        """The records of the tasks handed to workers, oldest first."""
        return [t.record for t in sorted(self._running, key=_taskID)]

    def pendingRecords(self, limit: int) -> list[TaskRecord]:
        """
        The records of at most C{limit} pending tasks: each series' most
        urgent first, then those waiting behind their lane's front. It reads
        only as far as it must, however many are pending.
        """
        out: list[TaskRecord] = []
        for line in list(self._pending.lines.values()):
            for priority in sorted(line.levels):
                for task in line.levels[priority]:
                    if not task.cancelled:
                        out.append(task.record)
                        if len(out) >= limit:
                            return out
        for lane in list(self._pending.lanes.values()):
            for task in lane.waiting:
                out.append(task.record)
                if len(out) >= limit:
                    return out
        return out

    def pendingCounts(self) -> dict[tuple[float, Hashable, Hashable], int]:
        """
        How many tasks are pending, by C{(priority, series, lane)}.

        Read from the sizes of the pending lines, so it costs the number of
        series and priorities, not of tasks; only a line holding cancelled
        tasks and the tasks behind their lane's front are counted one by one.
        """
        store = self._pending
        counts: dict[tuple[float, Hashable, Hashable], int] = {}

        def add(key: tuple[float, Hashable, Hashable], n: int) -> None:
            if n > 0:
                counts[key] = counts.get(key, 0) + n

        lines = list(store.lines.items())
        queued = sum(len(level) for _, line in lines for level in line.levels.values())
        exact = queued == store.count
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
            if exact and front is not None and front.state == "pending":
                # Counted above without its lane.
                key = (front.priority, front.series, None)
                counts[key] -= 1
                if not counts[key]:
                    del counts[key]
                add((front.priority, front.series, lane), 1)
            for task in list(state.waiting):
                add((task.priority, task.series, lane), 1)
        return counts

    def workerStates(self) -> dict[str, str]:
        """
        By worker name: C{"starting"} (running the kept updates first),
        C{"leaving"} (being detached) or C{"attached"}.
        """
        states: dict[str, str] = {}
        for slot in list(self._slotList):
            if slot.leaving:
                states[slot.worker.name] = "leaving"
            elif not slot.ready:
                states[slot.worker.name] = "starting"
            else:
                states[slot.worker.name] = "attached"
        return states

    def cancelTask(self, taskID: int) -> bool:
        """
        Cancel the pending or running task whose record has ID C{taskID}, as
        cancelling its Deferred does; return whether there was one. It looks
        through the tasks one by one: for a click, not a loop.
        """
        for task in list(self._running):
            if task.id == taskID:
                task.deferred.cancel()
                return True
        for task in self._pending:
            if task.id == taskID:
                task.deferred.cancel()
                return True
        return False
