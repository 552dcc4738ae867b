"""
The contracts between the queue, its workers and iteration sources.

The queue sees a worker only through these interfaces: L{IWorker} (how many
tasks it may hand it at once, how to run one, and how to stop it gently or
at once) and, where a worker declares them with C{@implementer}, its
optional abilities: L{IReportingWorker} (the fast path),
L{ICapacityReporting}, L{IDescribedWorker}, L{ICallPickling},
L{IStopPreparing} and L{IResignationExplaining}. The queue tests each
ability with C{providedBy}; a worker that declares none of them works, it
is just not asked. The queue knows nothing of threads, processes or
networks; a worker knows nothing of priorities, series or lanes.

The fields of L{asynqueue.tasks.Task} a worker may read and write are
listed there; a task passes what a worker says of it on to its
L{ITaskReporter}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from zope.interface import Attribute, Interface, invariant

from asynqueue.errors import InvariantError

if TYPE_CHECKING:
    from twisted.internet.defer import Deferred

    from asynqueue.tasks import Task

__all__ = [
    "qualifications",
    "IWorker",
    "IReportingWorker",
    "ICapacityReporting",
    "IDescribedWorker",
    "ICallPickling",
    "IStopPreparing",
    "IResignationExplaining",
    "IIterationSource",
    "ITaskReporter",
]


def _checkQualifications(ob: Any) -> None:
    """The qualifications are lists (AsynQueue's invariant)."""
    for attrName in ("cQualified", "iQualified"):
        x = getattr(ob, attrName, [])
        if not isinstance(x, list):
            raise InvariantError(ob)


class IWorker(Interface):
    """
    Something that runs the tasks a L{TaskQueue} hands it.

    A worker calls C{task.markStarted()} (in the reactor thread) when a task
    it accepted actually begins, so that the queue can start the task's
    timeout and record the time.

    As in AsynQueue, a worker class may also list in a class attribute
    C{cQualified} the series all its instances run (a process worker:
    C{["process", "local"]}); L{qualifications} gives both lists together.
    C{IWorker.validateInvariants(worker)} raises
    L{asynqueue.errors.InvariantError} unless C{iQualified} (and
    C{cQualified}, if there is one) is a list.
    """

    invariant(_checkQualifications)

    name = Attribute("A short name for logs, records and statistics.")

    iQualified = Attribute(
        "The list of series this worker runs tasks of, besides tasks of no series. "
        "The queue appends to it in L{TaskQueue.qualifyWorker}."
    )

    capacity = Attribute(
        "How many tasks the queue may have outstanding on me at once: an int, 0 "
        "while I can take none (a remote node not connected). Tasks beyond what I "
        "can run at the same moment wait in my own backlog. The queue reads it "
        "again whenever I finish a task; a worker whose capacity changes by "
        "itself also provides ICapacityReporting to say so."
    )

    def setResignator(callableObject: Callable[[Any], object]) -> None:
        """
        Register C{callableObject(worker)} to be called if I must resign.

        A worker resigns when it can no longer run tasks (its process died,
        its connection was lost). The queue then detaches it and runs the
        tasks it had not finished elsewhere.
        """

    def run(task: Task) -> Deferred[Any]:
        """
        Run C{task} and return a Deferred firing with its result.

        The Deferred fails with the task's own exception. If the result is an
        iterator, it fires with a L{Deferator} that pulls its items from
        where the iterator lives. Cancelling the Deferred asks me to abandon
        the task, which I do as far as I can (see each worker's docs).
        """

    def stop() -> Deferred[None]:
        """
        Stop after the tasks I accepted are done; return a Deferred that fires
        when I have stopped and released everything I hold.
        """

    def crash() -> list[Task]:
        """
        Stop at once and return the list of tasks I accepted but did not finish.

        Their Deferreds from L{run} are left unfired; the queue reassigns or
        fails the tasks.
        """


def qualifications(worker: Any) -> list[Any]:
    """
    The series C{worker} runs besides those of no series: its C{iQualified}
    and its class's C{cQualified} (AsynQueue's), without repeats.
    """
    series = list(worker.iQualified)
    for name in getattr(type(worker), "cQualified", ()):
        if name not in series:
            series.append(name)
    return series


class IReportingWorker(IWorker):
    """
    A worker that reports each outcome straight to its task, with no
    Deferred per task: the queue's fast path, used by the workers here.

    The queue calls L{start} instead of C{run} (so a subclass that
    overrides only C{run} changes nothing in a queue); C{run} still works
    for callers outside a queue. C{crash()} reports the tasks that were
    running (with L{asynqueue.errors.WorkerCrashed}) and returns those not
    begun, which it must never report afterwards.
    """

    def start(task: Task) -> None:
        """
        Take C{task} and run it; return nothing.

        Note C{attempt = task.attempt} now, and when the call ends call
        C{task.finished(outcome, attempt)} in the reactor thread, once:
        with its result (a L{Deferator} for an iterator), or a C{Failure}.
        A worker that cannot take the task reports the failure at once.
        """

    def abandon(task: Task) -> None:
        """
        Give up a task taken with L{start} (it was cancelled or timed out),
        as far as the worker can: withdraw it if it has not begun, or stop
        it (an abandoned thread, a killed process). The queue ends the task
        itself; a later report of this run is ignored. It may come while
        L{start} is still on the stack (an observer of the task's start
        that cancels it): then the call must not be made.
        """


class ICapacityReporting(IWorker):
    """A worker whose capacity changes by itself (a remote node (dis)connects)."""

    def setCapacityObserver(callableObject: Callable[[], object]) -> None:
        """
        Register C{callableObject()} to be called whenever my C{capacity}
        changes other than by finishing a task; the queue then reads it again.
        """


class IDescribedWorker(IWorker):
    """A worker with more to say in L{TaskQueue.stats} than the queue knows."""

    def info() -> dict[str, Any]:
        """
        Return what C{stats()["workers"][name]} shows of me besides the
        queue's own counts (a process worker: its child's pid, ...).
        """


class ICallPickling(IWorker):
    """
    A worker that sends calls pickled (to a child process, to a node).

    A queue whose workers all provide this pickles each call when it is
    submitted, with L{prepareCall} of one of them, so that a call that
    cannot travel fails at once; the bytes go in C{task.pickled}, which the
    worker sends instead of pickling the call again. Every worker providing
    this must accept what any other's L{prepareCall} made (the workers here
    all use L{asynqueue.wire.pickling.dumpCall}).
    """

    def prepareCall(
        f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bytes:
        """
        Pickle the call C{f(*args, **kwargs)} as I send it; raise
        L{asynqueue.errors.UnpicklableError} naming what cannot be pickled.
        """

    def argumentsOf(call: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """
        The arguments of a call L{prepareCall} (mine or another's) pickled,
        as C{(args, kwargs)}.

        A worker with this method sends C{task.pickled} and never reads the
        task's arguments. When every worker of a queue has it, the queue
        lets a call's arguments go once the call is pickled: C{task.args}
        is then L{asynqueue.tasks.IN_THE_PICKLE} (test it with C{is}: it is
        an empty tuple), and the queue asks for copies only if something
        needs them (a worker without this method, an end observer added
        since).
        """


class IStopPreparing(IWorker):
    """A worker that replaces what a cancel ends (a killed child process)."""

    def prepareToStop() -> None:
        """
        Replace nothing from now on: I am about to be stopped. The queue
        calls this before it cancels every task on a hurried shutdown.
        """


class IResignationExplaining(IWorker):
    """A worker that says why it resigned, for the queue's log and errors."""

    resignedBecause = Attribute(
        "Why I resigned, in a few plain words (None while I work); read when "
        "I call my resignator."
    )

    resignationError = Attribute(
        "The NoWorkers subclass that calls fail with if I was the queue's "
        "last worker (a remote worker that gave up on its node: "
        "NodeUnreachable), or None for NoWorkers itself."
    )


class ITaskReporter(Interface):
    """
    Who hears how a plain L{asynqueue.tasks.Task} goes, such as the run
    L{asynqueue.workers.base.runReporting} makes of a task (a queue's own
    tasks tell their queue directly).

    A worker never calls these itself: it calls the task's
    L{asynqueue.tasks.Task.markStarted} and L{asynqueue.tasks.Task.finished},
    which pass the news on here.
    """

    def started(task: Task, ago: float) -> None:
        """C{task} began C{ago} seconds ago."""

    def done(task: Task, result: object, attempt: int) -> None:
        """Run C{attempt} of C{task} ended with C{result} (a Failure if it failed)."""


class IIterationSource(Interface):
    """
    Where a L{Deferator} pulls the items of an iterator from.

    The iterator stays where it was made (the reactor, a worker thread, a
    child process or a remote node); a source fetches its items in batches.
    """

    def fetch(maxItems: int) -> Deferred[tuple[list[Any], bool]]:
        """
        Return a Deferred firing with C{(items, exhausted)}.

        C{items} is a list of at most C{maxItems} next items, and C{exhausted}
        is true once the iterator has no more. The Deferred fails with the
        iterator's own exception if it raised one.
        """

    def close() -> object:
        """
        Close the iterator where it lives; no more fetches follow. A source
        that closes it far away may return a Deferred of that.
        """
