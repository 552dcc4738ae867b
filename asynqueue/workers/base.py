"""
What every worker kind shares: L{WorkerBase}, the adaptive backlog of
thread and process workers, L{runReporting} (C{run()} for reporting
workers) and how a call's result is settled.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from inspect import isawaitable
from typing import Any, cast

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.interfaces import IIterationSource, ITaskReporter
from asynqueue.iteration import Deferator, LocalIterationSource, isIterator
from asynqueue.tasks import Task
from asynqueue.util import deferredFromAwaitable

_names = itertools.count(1)


def settle(
    result: object,
    sourceFor: Callable[[Iterator[Any]], IIterationSource] = LocalIterationSource,
) -> Deferred[Any]:
    """
    Turn what a task's function returned into a Deferred of its final result.

    A Deferred is awaited and a coroutine (or other awaitable) is run in the
    reactor; an iterator becomes a L{Deferator} whose items come from
    C{sourceFor(iterator)}. An iterator that a Deferred or coroutine fires
    with was made in the reactor, so it is iterated there.
    """
    if type(result) in PLAIN_TYPES:
        return succeed(result)
    if isinstance(result, Deferred):
        return result.addCallback(_localDeferator)
    if isawaitable(result):
        return deferredFromAwaitable(result).addCallback(_localDeferator)
    if isIterator(result):
        return Deferator(sourceFor(result)).ready()  # type: ignore[arg-type]
    return succeed(result)


#: Result types that are never iterators, Deferreds or awaitables.
PLAIN_TYPES = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        bytearray,
        list,
        tuple,
        dict,
        set,
    }
)


def _localDeferator(result: object) -> object:
    if isIterator(result):
        return Deferator.fromIterator(result)  # type: ignore[arg-type]
    return result


def runReporting(worker: Any, task: Task) -> Deferred[Any]:
    """
    C{IWorker.run} for an L{IReportingWorker}: start the task and return a
    Deferred of what the worker reports. Cancelling it abandons the task.
    """
    # A run of its own: the same task may be run again meanwhile. It tells
    # the task when it starts (so a queue's timer, if any, is the task's),
    # and holds none of the queue's run state.
    d: Deferred[Any] = Deferred(lambda _: worker.abandon(run))
    run = Task(
        task.f,
        task.args,
        task.kwargs,
        task.options,
        task.record,
        task.deferred,
        pickled=task.pickled,
        update=task.update,
        runs=task.runs,
        reporter=_RunReporter(task, d),
    )
    worker.start(run)
    return d


@implementer(ITaskReporter)
class _RunReporter:
    """Passes a run's start on to its task, and its end to a Deferred."""

    __slots__ = ("task", "d")

    def __init__(self, task: Task, d: Deferred[Any]) -> None:
        self.task = task
        self.d = d

    def started(self, run: Task, ago: float) -> None:
        self.task.markStarted(ago)

    def done(self, run: Task, result: object, attempt: int) -> None:
        d = self.d
        if not d.called:
            if isinstance(result, Failure):
                d.errback(result)
            else:
                d.callback(result)


class AdaptiveBacklog:
    """
    How many tasks to hand a worker that runs them one at a time.

    One, plus as many more as take about C{seconds} to run by the moving
    average of run times so far, between C{floor} and C{ceiling}: short tasks
    go through in bulk, while a more urgent task that arrives later waits
    about C{seconds} at most behind those already handed out.
    """

    def __init__(self, seconds: float, ceiling: int, floor: int = 1) -> None:
        self.seconds = seconds
        self.ceiling = ceiling
        self.floor = floor
        self.average = seconds

    def ran(self, runTime: float) -> int:
        """Note one task's run time; return the capacity to use now."""
        average = self.average = 0.9 * self.average + 0.1 * runTime
        backlog = self.seconds / average if average > 0 else self.ceiling
        return max(self.floor, min(self.ceiling, 1 + int(backlog)))

    def ranAll(self, runTimes: list[float]) -> int:
        """L{ran} for each of C{runTimes} in turn, at the cost of one call."""
        average = self.average
        for runTime in runTimes:
            average = 0.9 * average + 0.1 * runTime
        self.average = average
        backlog = self.seconds / average if average > 0 else self.ceiling
        return max(self.floor, min(self.ceiling, 1 + int(backlog)))


def nameAndSeries(
    name: object, series: Iterable[Any]
) -> tuple[str | None, Iterable[Any]]:
    """
    A worker's C{name} and C{series} as given, or as AsynQueue's workers
    took them, series first: C{ThreadWorker(["big"])}.
    """
    if name is None or isinstance(name, str):
        return name, series
    if series:
        raise TypeError(f"a worker's name is a string, not {name!r}")
    return None, cast(Iterable[Any], name)


class WorkerBase:
    """What every worker here shares: a name, its series and its resignator."""

    def __init__(self, name: str | None, series: Iterable[Any], capacity: int) -> None:
        name, series = nameAndSeries(name, series)
        if capacity < 1:
            raise ValueError(f"a worker's capacity must be at least 1, not {capacity}")
        self.name = name or f"{type(self).__name__}-{next(_names)}"
        self.iQualified: list[Any] = list(series)
        self.capacity = capacity
        self._resignator: Callable[[Any], object] | None = None

    def setResignator(self, callableObject: Callable[[Any], object]) -> None:
        """Register what to call, with me, if I must resign."""
        self._resignator = callableObject

    def resign(self) -> None:
        """Tell the queue I can no longer run tasks."""
        if self._resignator is not None:
            self._resignator(self)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"
