"""
The contracts between the queue, its workers and iteration sources.

The queue sees a worker only through L{IWorker}: how many tasks it may hand
it at once, how to run one, and how to stop it gently or at once. It knows
nothing of threads, processes or networks; a worker knows nothing of
priorities, series or lanes.
"""

from __future__ import annotations

from zope.interface import Attribute, Interface

__all__ = ["IWorker", "IReportingWorker", "IIterationSource"]


class IWorker(Interface):
    """
    Something that runs the tasks a L{TaskQueue} hands it.

    A worker calls C{task.markStarted()} (in the reactor thread) when a task
    it accepted actually begins, so that the queue can start the task's
    timeout and record the time.
    """

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
        "itself also offers setCapacityObserver(callable) to say so."
    )

    def setResignator(callableObject):  # type: ignore[no-untyped-def]
        """
        Register C{callableObject(worker)} to be called if I must resign.

        A worker resigns when it can no longer run tasks (its process died,
        its connection was lost). The queue then detaches it and runs the
        tasks it had not finished elsewhere.
        """

    def run(task):  # type: ignore[no-untyped-def]
        """
        Run C{task} and return a Deferred firing with its result.

        The Deferred fails with the task's own exception. If the result is an
        iterator, it fires with a L{Deferator} that pulls its items from
        where the iterator lives. Cancelling the Deferred asks me to abandon
        the task, which I do as far as I can (see each worker's docs).
        """

    def stop():  # type: ignore[no-untyped-def]
        """
        Stop after the tasks I accepted are done; return a Deferred that fires
        when I have stopped and released everything I hold.
        """

    def crash():  # type: ignore[no-untyped-def]
        """
        Stop at once and return the list of tasks I accepted but did not finish.

        Their Deferreds from L{run} are left unfired; the queue reassigns or
        fails the tasks.
        """


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

    def start(task):  # type: ignore[no-untyped-def]
        """
        Take C{task} and run it; return nothing.

        Note C{attempt = task.attempt} now, and when the call ends call
        C{task.finished(outcome, attempt)} in the reactor thread, once:
        with its result (a L{Deferator} for an iterator), or a C{Failure}.
        A worker that cannot take the task reports the failure at once.
        """

    def abandon(task):  # type: ignore[no-untyped-def]
        """
        Give up a task taken with L{start} (it was cancelled or timed out),
        as far as the worker can: withdraw it if it has not begun, or stop
        it (an abandoned thread, a killed process). The queue ends the task
        itself; a later report of this run is ignored. It may come while
        L{start} is still on the stack (an observer of the task's start
        that cancels it): then the call must not be made.
        """


class IIterationSource(Interface):
    """
    Where a L{Deferator} pulls the items of an iterator from.

    The iterator stays where it was made (the reactor, a worker thread, a
    child process or a remote node); a source fetches its items in batches.
    """

    def fetch(maxItems):  # type: ignore[no-untyped-def]
        """
        Return a Deferred firing with C{(items, exhausted)}.

        C{items} is a list of at most C{maxItems} next items, and C{exhausted}
        is true once the iterator has no more. The Deferred fails with the
        iterator's own exception if it raised one.
        """

    def close():  # type: ignore[no-untyped-def]
        """Close the iterator where it lives; no more fetches follow."""
