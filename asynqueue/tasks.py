"""
A task: one call, its options, its Deferred and its record.

L{TaskOptions} holds what a caller may say about a call (priority, series,
lane, timeout, ...); L{Task} is what the queue schedules and a worker runs;
L{TaskRecord} is what stays afterwards for statistics and logs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, fields
from inspect import isawaitable
from numbers import Integral, Real
from operator import attrgetter
from types import FunctionType
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred

from asynqueue.util import callableName, deferredFromAwaitable

if TYPE_CHECKING:
    from twisted.internet.interfaces import IConsumer

    from asynqueue.interfaces import ITaskReporter

__all__ = [
    "TaskOptions",
    "Task",
    "TaskRecord",
    "OPTION_NAMES",
    "RawCall",
    "RawResult",
    "recordRow",
    "IN_THE_PICKLE",
]


@dataclass(frozen=True)
class TaskOptions:
    """
    What a caller may say about one call, apart from its arguments.

    C{TaskQueue.call} takes these as keywords and passes every other keyword
    to the function; use C{TaskQueue.callWith(TaskOptions(...), f, ...)}
    when the function itself takes a keyword of one of these names.

    @ivar priority: Lower runs sooner; equal priorities run in arrival order.
    @ivar niceness: AsynQueue's priority, an int from -20 to 20; it sets
        C{priority} to the same number.
    @ivar doNext: Run before every task not also marked C{doNext}.
    @ivar doLast: Run after every task not also marked C{doLast}.
    @ivar series: Only workers qualified for this series run the task.
    @ivar lane: Tasks of one lane run one at a time, in submission order.
    @ivar stopOnLaneError: Once a task of this lane fails, later tasks of the
        lane fail at once with L{asynqueue.errors.LaneError}. C{None} takes
        the queue's default.
    @ivar timeout: Seconds the task may run before its Deferred fails with
        L{asynqueue.errors.TimeoutError} and its worker abandons it.
    @ivar retries: How many times to run the task again if its worker
        crashes while running it.
    @ivar consumer: An C{IConsumer} that an iterator result is written to;
        the Deferred then fires with the consumer once all is written.
    @ivar name: A name for records and logs (default: the function's name).
    @ivar raw: AsynQueue's C{raw}: an iterator result comes back as it is,
        not as a L{Deferator} (from a child process or a node it must then
        be picklable itself: a list's iterator is, a generator is not).
        C{None} takes the queue's default.
    @ivar returnFailure: AsynQueue's C{returnFailure}: accepted either way;
        a task's exception always fails its Deferred with a C{Failure}.
    @ivar warn: Log the task's failure (AsynQueue's C{warn}). C{None}
        takes the queue's default.
    @ivar verbose: Describe the call (its function and arguments) in what
        is logged of it (AsynQueue's C{verbose}). C{None}: the queue's.
    @ivar spew: Log the call and its outcome, whatever it is (AsynQueue's
        C{spew}; implies C{verbose}). C{None}: the queue's.
    """

    priority: float | None = None
    niceness: int | None = None
    doNext: bool = False
    doLast: bool = False
    series: Hashable | None = None
    lane: Hashable | None = None
    stopOnLaneError: bool | None = None
    timeout: float | None = None
    retries: int = 0
    consumer: IConsumer | None = None
    name: str | None = None
    raw: bool | None = None
    returnFailure: bool | None = None
    warn: bool | None = None
    verbose: bool | None = None
    spew: bool | None = None

    def __post_init__(self) -> None:
        for name, whole, words in _NUMERIC_OPTIONS:
            value = getattr(self, name)
            if value is None and name != "retries":
                continue
            if not _isNumber(value, whole):
                raise TypeError(f"{name} must be {words}, not {value!r}")
            if not isinstance(value, Real):
                # A Decimal, say: a float, which the clock can add to its time.
                object.__setattr__(self, name, float(value))
        chosen = [
            n
            for n, v in (
                ("priority", self.priority is not None),
                ("niceness", self.niceness is not None),
                ("doNext", self.doNext),
                ("doLast", self.doLast),
            )
            if v
        ]
        if len(chosen) > 1:
            raise ValueError(f"give at most one of {', '.join(chosen)}")
        if self.niceness is not None and not -20 <= self.niceness <= 20:
            raise ValueError(f"niceness must be from -20 to 20, not {self.niceness}")
        if self.priority is not None and math.isnan(self.priority):
            raise ValueError("priority must be a number, not NaN")
        if self.timeout is not None and not self.timeout > 0:
            raise ValueError(f"timeout must be a positive number, not {self.timeout}")
        if self.retries < 0:
            raise ValueError(f"retries must be 0 or more, not {self.retries}")
        # Worked out once: the queue reads them for every task.
        object.__setattr__(self, "_priority", self._effectivePriority())
        object.__setattr__(self, "_talks", bool(self.warn or self.verbose or self.spew))

    @property
    def effectivePriority(self) -> float:
        """The number the queue orders by: lower runs sooner."""
        result: float = self._priority  # type: ignore[attr-defined]
        return result

    def _effectivePriority(self) -> float:
        if self.doNext:
            return -math.inf
        if self.doLast:
            return math.inf
        if self.niceness is not None:
            return float(self.niceness)
        return 0.0 if self.priority is None else float(self.priority)

    @classmethod
    def fromKeywords(cls, keywords: dict[str, Any]) -> TaskOptions:
        """Pop the option keywords out of C{keywords} and return them as options."""
        if not keywords or OPTION_NAMES.isdisjoint(keywords):
            return _DEFAULT_OPTIONS
        return cls(**{n: keywords.pop(n) for n in OPTION_NAMES if n in keywords})


OPTION_NAMES: frozenset[str] = frozenset(f.name for f in fields(TaskOptions))

#: The options that are numbers: name, whether whole, and what they must
#: be in words. Each may be None (not given), but retries (0 by default).
_NUMERIC_OPTIONS = (
    ("priority", False, "a number"),
    ("niceness", True, "a whole number"),
    ("timeout", False, "a number of seconds"),
    ("retries", True, "a whole number"),
)


def _isNumber(value: object, whole: bool) -> bool:
    """Whether C{value} is a number (an integral one, if C{whole}); no bool."""
    if isinstance(value, (bool, str, bytes)):
        return False
    if whole:
        return isinstance(value, Integral)
    # Decimal, numpy's and others' numbers too: whatever float() takes.
    return isinstance(value, Real) or hasattr(value, "__float__")


_DEFAULT_OPTIONS = TaskOptions()


@dataclass(eq=False, slots=True)
class TaskRecord:
    """
    What happened to one task: when it was submitted, started and ended,
    where it ran, and how it ended.

    Times are in the queue clock's seconds. C{state} is one of C{pending},
    C{running}, C{done}, C{failed}, C{cancelled} or C{timedOut}; C{outcome}
    is C{"result"} or the name of the exception type.
    """

    id: int
    name: str
    function: str
    priority: float
    series: Hashable | None
    lane: Hashable | None
    submitted: float
    started: float | None = None
    ended: float | None = None
    worker: str | None = None
    state: str = "pending"
    outcome: str | None = None
    attempts: int = 0

    @classmethod
    def fromRow(cls, row: tuple[Any, ...]) -> TaskRecord:
        """The record kept as C{recordRow(record)}."""
        return cls(*row)

    @property
    def waitTime(self) -> float | None:
        """Seconds from submission until the task started, if it did."""
        return None if self.started is None else self.started - self.submitted

    @property
    def runTime(self) -> float | None:
        """Seconds from start to end, if the task ran and ended."""
        if self.started is None or self.ended is None:
            return None
        return self.ended - self.started


#: A record's fields, in order, as the plain tuple a queue keeps of a task
#: that ended (L{TaskRecord.fromRow} makes the record again). A tuple of
#: numbers and strings is one the cyclic garbage collector stops walking,
#: where a queue keeps up to 100,000 records and every full pass would walk
#: each of them.
recordRow = attrgetter(*(f.name for f in fields(TaskRecord)))


class _InThePickle(tuple[Any, ...]):
    """What C{task.args} is while the call's pickle holds its arguments."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<arguments in task.pickled>"


#: C{task.args} of a waiting call that a queue of pickling workers holds
#: pickled (L{asynqueue.interfaces.ICallPickling}): the arguments are in
#: C{task.pickled}, and the originals were let go.
IN_THE_PICKLE: tuple[Any, ...] = _InThePickle()


@dataclass(eq=False, slots=True)
class Task:
    """
    One call on its way through a queue.

    A worker runs C{task.f(*task.args, **task.kwargs)} and calls
    L{markStarted} when the call begins. A worker that reports outcomes
    itself (L{asynqueue.interfaces.IReportingWorker}) then calls
    L{finished}.

    B{The worker contract.} Besides the interfaces of
    L{asynqueue.interfaces}, these are all a worker may use of a task:

      - read: C{f}, C{args}, C{kwargs}, C{options} (C{options.timeout},
        C{options.consumer}, ...), C{name}, C{record} (its C{id}, for
        logs), C{deferred} (to see whether the caller gave up), C{attempt}
        (also C{runs}, the same number), C{pickled} and C{update};
      - call: L{markStarted}, L{finished} (a reporting worker),
        L{noteWorker};
      - write: C{handle}, the worker's own, which the queue clears when the
        run ends.

    What the queue keeps of a task while it runs (its worker slot, timer,
    whether it timed out or was cancelled) is the queue's own: a queue's
    tasks are L{asynqueue.queue.taskstate.QueuedTask}s, whose extra fields
    no worker reads.

    @ivar pickled: The call as an L{asynqueue.interfaces.ICallPickling}
        worker's C{prepareCall} pickled it when it was queued (for a queue
        whose workers all pickle calls), or C{None}. Such a queue lets the
        arguments go once they are pickled: C{args} is then
        L{IN_THE_PICKLE} (and C{kwargs} empty), and a worker sends the
        pickle; a worker that does not pickle is given copies.
    @ivar update: C{"kept"} or C{"ephemeral"} for a L{TaskQueue.update}
        call, else C{None}.
    @ivar handle: Whatever the worker running the task keeps for it.
    @ivar runs: How many times a worker was given the task (L{attempt}).
    @ivar reporter: Who hears of the task's start and end
        (L{asynqueue.interfaces.ITaskReporter}), or C{None}; a queue's own
        tasks tell their queue directly.
    """

    f: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    options: TaskOptions
    record: TaskRecord
    deferred: Deferred[Any]
    pickled: bytes | None = None
    update: str | None = None
    handle: Any = None
    runs: int = 0
    reporter: ITaskReporter | None = None

    @property
    def priority(self) -> float:
        """The priority the queue orders this task by."""
        return self.record.priority

    @property
    def name(self) -> str:
        """The task's name in records and logs."""
        return self.record.name

    @property
    def series(self) -> Hashable | None:
        """The series of workers this task may run on, if any."""
        return self.options.series

    @property
    def lane(self) -> Hashable | None:
        """The lane this task runs in, one at a time with its lane-mates."""
        return self.options.lane

    @property
    def attempt(self) -> int:
        """
        Which run of the task this is: it grows each time a worker is
        given the task (a retry, or a task handed back by a crashed worker
        and given to another), and never goes back.

        A reporting worker notes it when it takes the task and passes it
        back to L{finished}, so that a late report of an earlier run is
        ignored.
        """
        return self.runs

    @property
    def callTuple(self) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
        """AsynQueue's C{(f, args, kwargs)}."""
        return self.f, self.args, self.kwargs

    def markStarted(self, ago: float = 0.0) -> None:
        """
        Tell the queue that the call has begun; call it in the reactor thread.

        A worker that learns of the start late says how many seconds C{ago}
        it was. A task with a C{timeout} must be marked when it starts, since
        that starts its timer.
        """
        reporter = self.reporter
        if self.record.started is None and reporter is not None:
            reporter.started(self, ago)

    def noteWorker(self, name: str) -> None:
        """
        Say which worker ran the call, where the worker that took it hands
        it on (a Dask worker of a cluster): the record names it.
        """
        self.record.worker = name

    def finished(self, result: object, attempt: int) -> None:
        """
        Report how run C{attempt} of the call ended: its result, or a
        L{Failure}. Call it in the reactor thread, once per run.

        The result may be a L{asynqueue.iteration.Deferator}, but not a
        Deferred or coroutine: a worker settles those first.
        """
        reporter = self.reporter
        if reporter is not None:
            reporter.done(self, result, attempt)

    def __repr__(self) -> str:
        return f"<Task {self.record.id} {self.record.name} {self.record.state}>"


def nameFor(f: Callable[..., Any], options: TaskOptions) -> str:
    """The name a task of C{f} with C{options} goes by in records."""
    if options.name:
        return options.name
    if type(f) is FunctionType or type(f) is type:
        # The common case, quickly: what callableName would say.
        return f.__qualname__.replace("<locals>.", "")
    return callableName(f)


class RawResult:
    """
    What a L{RawCall} returns: the call's result, wrapped so that no worker
    takes an iterator for one to stream; the queue unwraps it.
    """

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __reduce__(self) -> tuple[type[RawResult], tuple[object]]:
        return RawResult, (self.value,)


class RawCall:
    """
    C{f} for a call made with C{raw=True}: its result comes back as it is,
    in a L{RawResult}, even an iterator (a Deferred or coroutine is still
    waited for). It pickles as C{f} does, so it runs in a child or on a
    node too.
    """

    __slots__ = ("f",)

    def __init__(self, f: Callable[..., Any]) -> None:
        self.f = f

    def __call__(self, *args: Any, **kwargs: Any) -> object:
        result = self.f(*args, **kwargs)
        if isinstance(result, Deferred):
            return result.addCallback(RawResult)
        if isawaitable(result):
            return deferredFromAwaitable(result).addCallback(RawResult)
        return RawResult(result)

    def __reduce__(self) -> tuple[type[RawCall], tuple[Callable[..., Any]]]:
        return RawCall, (self.f,)
