"""
The pending store: tasks waiting for a worker, by series, priority and
arrival, and the lanes that hold back all but the front task of each lane.
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections import deque
from collections.abc import Hashable, Iterator
from dataclasses import dataclass, field

from twisted.python.failure import Failure

from asynqueue.interfaces import IWorker
from asynqueue.queue.taskstate import QueuedTask

__all__ = ["PendingStore"]


class _Line:
    """
    The pending tasks of one series, in (priority, arrival) order.

    A heap of the priorities present, each with a deque of its tasks in
    arrival order: pushing and popping are O(1) for a priority already
    present, which is the common case. Cancelled tasks stay in place and are
    skipped when they reach the front.
    """

    __slots__ = ("levels", "priorities")

    def __init__(self) -> None:
        self.levels: dict[float, deque[QueuedTask]] = {}
        self.priorities: list[float] = []

    def push(self, task: QueuedTask) -> None:
        priority = task.priority
        level = self.levels.get(priority)
        if level is None:
            level = self.levels[priority] = deque()
            heapq.heappush(self.priorities, priority)
        elif level and level[-1].id > task.id:
            # Arrived earlier than tasks already in line (a lane's next task,
            # a task put back after a crash): it goes in its arrival place.
            ids = [t.id for t in level]
            level.insert(bisect.bisect(ids, task.id), task)
            return
        level.append(task)

    def head(self) -> QueuedTask | None:
        """The most urgent task not cancelled, left in line."""
        priorities, levels = self.priorities, self.levels
        while priorities:
            level = levels[priorities[0]]
            while level:
                if not level[0].cancelled:
                    return level[0]
                level.popleft()
            del levels[heapq.heappop(priorities)]
        return None

    def pop(self) -> QueuedTask | None:
        """Take the most urgent task not cancelled."""
        task = self.head()
        if task is not None:
            self.levels[self.priorities[0]].popleft()
        return task

    def __iter__(self) -> Iterator[QueuedTask]:
        for level in self.levels.values():
            yield from level


@dataclass(eq=False)
class _Lane:
    """Tasks of one lane: the one at the front, and those waiting behind it."""

    front: QueuedTask | None = None
    waiting: deque[QueuedTask] = field(default_factory=deque)
    failure: Failure | None = None


class PendingStore:
    """
    The tasks that wait for a worker.

    C{lines} holds, by series, the tasks a worker may take now; C{count} is
    how many of them are not cancelled. C{lanes} holds, by lane, the task
    at the front (in a line or running) and those waiting behind it, which
    are in no line until their turn comes.
    """

    __slots__ = ("lines", "count", "lanes")

    def __init__(self) -> None:
        self.lines: dict[Hashable | None, _Line] = {}
        self.count = 0
        self.lanes: dict[Hashable, _Lane] = {}

    def push(self, task: QueuedTask) -> None:
        """Put a task in its series' line."""
        series = task.options.series
        line = self.lines.get(series)
        if line is None:
            line = self.lines[series] = _Line()
        line.push(task)
        self.count += 1

    def popFor(self, worker: IWorker) -> QueuedTask | None:
        """Take the most urgent pending task C{worker} may run."""
        best: _Line | None = None
        lines = self.lines
        if not worker.iQualified or (len(lines) == 1 and None in lines):
            # The common case: no series pending, or a worker of none.
            best = lines.get(None)
        else:
            bestKey: tuple[float, int] | None = None
            for series in itertools.chain((None,), worker.iQualified):
                line = lines.get(series)
                head = line.head() if line is not None else None
                if head is not None:
                    key = (head.priority, head.id)
                    if bestKey is None or key < bestKey:
                        best, bestKey = line, key
        task = best.pop() if best is not None else None
        if task is not None:
            self.count -= 1
        return task

    def lane(self, lane: Hashable) -> _Lane:
        """The state of C{lane}, made if it has none."""
        state = self.lanes.get(lane)
        if state is None:
            state = self.lanes[lane] = _Lane()
        return state

    def backlog(self) -> int:
        """How many tasks wait behind their lane's front task."""
        return sum(len(lane.waiting) for lane in self.lanes.values())

    def size(self) -> int:
        """How many tasks are pending, in lines and behind lanes."""
        return self.count + self.backlog()

    def cancelled(self, task: QueuedTask) -> None:
        """A pending task was cancelled: it stays in line, but counts no more."""
        lane = self.lanes.get(task.lane) if task.lane is not None else None
        if lane is None or task not in lane.waiting:
            # Left in its line and skipped when it reaches the front.
            self.count -= 1

    def takeSeries(self, series: Hashable | None) -> list[QueuedTask]:
        """Take the line of C{series}; return its tasks not cancelled."""
        line = self.lines.pop(series, None)
        if line is None:
            return []
        tasks = [task for task in line if not task.cancelled]
        self.count -= len(tasks)
        return tasks

    def takeAll(self) -> list[QueuedTask]:
        """
        Take every pending task: those behind a lane's front first, so that
        ending a front moves no other task of its lane into the lines.
        """
        tasks = [t for lane in self.lanes.values() for t in lane.waiting]
        lines, self.lines = self.lines, {}
        self.count = 0
        tasks.extend(t for line in lines.values() for t in line if not t.cancelled)
        return tasks

    def __iter__(self) -> Iterator[QueuedTask]:
        """Every pending task not cancelled, those behind lanes first."""
        for lane in list(self.lanes.values()):
            yield from list(lane.waiting)
        for line in list(self.lines.values()):
            for task in list(line):
                if not task.cancelled:
                    yield task
