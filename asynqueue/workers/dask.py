"""
Dask: L{DaskWorker} puts a whole Dask cluster behind one L{TaskQueue};
L{DaskQueue} is a L{TaskQueue} with one of them.

The worker talks to the scheduler with one C{distributed.Client(...,
asynchronous=True)} on an asyncio loop: the reactor's own loop under the
asyncio reactor, or else a loop in one thread of the worker's own, whence
results come back to the reactor with C{callFromThread}, many per wake-up.
One harvester over C{as_completed} collects finished calls in batches.
What runs on the Dask workers is in L{asynqueue.workers.daskside}.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterable
from time import perf_counter
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

try:
    import distributed
except ImportError as e:  # pragma: no cover - the extra is installed in tests
    raise ImportError(
        "DaskWorker needs Dask's distributed: pip install 'asynqueue[dask]'"
    ) from e

from asynqueue.errors import NodeLost, QueueRunError, WorkerError
from asynqueue.interfaces import ICapacityReporting, IDescribedWorker, IIterationSource
from asynqueue.iteration import Deferator
from asynqueue.queue.core import TaskQueue
from asynqueue.tasks import Task
from asynqueue.workers import daskside
from asynqueue.workers.base import AdaptiveBacklog
from asynqueue.workers.daskbridge import Bridge
from asynqueue.workers.dasklink import SCATTER_BYTES, DaskLink
from asynqueue.workers.daskside import IteratorRef

__all__ = ["DaskWorker", "DaskQueue", "DaskIterationSource", "DaskError"]

#: Dask priorities are bounded; ours may be infinite (doNext, doLast).
_PRIORITY_BOUND = 1e9

#: The fewest calls out per thread: one running and one ready on the Dask
#: worker (as many as the scheduler gives it by default), and two waiting at
#: the scheduler, which starts them as others end while results come back
#: (in batches, see L{asynqueue.workers.dasklink.GATHER_HOLD}); with two,
#: the worker waits for our round trip whenever it takes longer than a call.
_FLOOR = 4


class DaskError(WorkerError):
    """The Dask cluster could not be reached or used."""


class _Run:
    """One run of a task on the cluster, as the reactor side sees it."""

    __slots__ = ("task", "deferred", "key", "sent")

    def __init__(self, task: Task, deferred: Deferred[Any], key: str) -> None:
        self.task = task
        self.deferred = deferred
        self.key = key
        self.sent = perf_counter()


@implementer(ICapacityReporting, IDescribedWorker)
class DaskWorker:
    """
    Runs calls on a Dask cluster.

    C{DaskWorker("tcp://scheduler:8786")}, C{DaskWorker(client)} or
    C{DaskWorker(cluster)}: the address of a scheduler, a
    C{distributed.Client} or a Cluster (whose address and security are
    used; the worker keeps a client of its own). C{None} or C{"local"}
    starts a C{LocalCluster} sized to the machine, closed when I stop;
    C{localOptions} go to it.

    My capacity is a number of calls per thread times the threads of the
    cluster's workers, counted again whenever a Dask worker joins or leaves,
    so that the queue keeps the cluster busy without flooding the
    scheduler; it is 0 until connected and while the scheduler is lost. The
    number per thread adapts (by default, C{tasksPerThread=None}): one, plus
    as many calls as run, by the average so far, while one makes its round
    trip through the scheduler, at least four and up to
    C{maxTasksPerThread}; so that short calls keep the threads busy. Give an
    int for a fixed number. A task counts as started when it is sent to the
    cluster. Our priorities become Dask's (negated: ours run lowest first).

    C{initializer(*initargs)} runs on every Dask worker, those joining later
    too, and what it returns is L{asynqueue.context} there, as in a
    process worker. Arguments of at least C{scatterBytes} bytes (C{bytes},
    arrays) are scattered once and the same object is not sent again while
    I keep it (the last C{scatterKeep} of them). C{security} is a
    C{distributed.security.Security}, for TLS.

    Cancelling a call (or its timeout) cancels its Dask future and fails
    its Deferred at once; a call already running on a Dask worker is not
    interrupted (Dask cannot stop a running task), its result is dropped.
    """

    log = Logger()
    _ids = itertools.count(1)

    def __init__(
        self,
        addressOrClient: Any = None,
        name: str | None = None,
        series: Iterable[Any] = (),
        security: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        tasksPerThread: int | None = None,
        maxTasksPerThread: int = 64,
        scatterBytes: int = SCATTER_BYTES,
        scatterKeep: int = 8,
        timeout: float = 10.0,
        reactor: Any = None,
        **localOptions: Any,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        if tasksPerThread is not None and tasksPerThread < 1:
            raise ValueError(f"tasksPerThread must be at least 1, not {tasksPerThread}")
        # Per thread: one call, plus as many as run while one makes its round
        # trip through the scheduler (measured), at least _FLOOR, so that
        # short calls keep the threads busy; a fixed number if given.
        self._backlog = None
        if tasksPerThread is None:
            self._backlog = AdaptiveBacklog(0.01, maxTasksPerThread, floor=_FLOOR)
            # Until calls say otherwise, take them for short ones.
            self._backlog.average = 0.001
        self.address: str | None = None
        if addressOrClient is None or addressOrClient == "local":
            pass
        elif isinstance(addressOrClient, str):
            self.address = addressOrClient
        elif isinstance(addressOrClient, distributed.Client):
            self.address = str(getattr(addressOrClient.scheduler, "address", ""))
            security = security or addressOrClient.security
        elif hasattr(addressOrClient, "scheduler_address"):
            self.address = addressOrClient.scheduler_address
            security = security or getattr(addressOrClient, "security", None)
        else:
            raise TypeError(
                f"DaskWorker needs a scheduler address, a Client or a Cluster, "
                f"not {addressOrClient!r}"
            )
        self.name = name or f"DaskWorker-{next(self._ids)}"
        self.iQualified: list[Any] = list(series)
        self.capacity = 0
        self.threads = 0
        self.security = security
        self.tasksPerThread = tasksPerThread
        self.scatterBytes = scatterBytes
        self.scatterKeep = scatterKeep
        self.timeout = timeout
        #: How many tasks each Dask worker (by address) ran for me.
        self.hosts: dict[str, int] = {}
        self._bridge = Bridge(reactor)
        self._resignator: Callable[[Any], object] | None = None
        self._capacityObserver: Callable[[], object] | None = None
        self._runs: dict[str, _Run] = {}
        self._outgoing: list[
            tuple[str, Any, tuple[Any, ...], dict[str, Any], float]
        ] = []
        self._stopped = False
        self._idleWaiters: list[Deferred[None]] = []
        self._connectWaiters: list[Deferred[DaskWorker]] = []
        self._connected = False
        self._stopDeferred: Deferred[None] | None = None
        self._link = DaskLink(
            self,
            self._bridge,
            self.address,
            security,
            timeout,
            initializer,
            initargs,
            scatterBytes,
            scatterKeep,
            localOptions,
        )
        self._bridge.call(self._link.start).addErrback(self._startFailed)

    def __repr__(self) -> str:
        return f"<DaskWorker {self.name} {self.address or 'local'}>"

    # -- in the reactor thread: IWorker and its optional parts -------------

    def setResignator(self, callableObject: Callable[[Any], object]) -> None:
        """Register what to call, with me, if I must resign."""
        self._resignator = callableObject

    def setCapacityObserver(self, callableObject: Callable[[], object]) -> None:
        """Register what to call when my capacity changes (workers join, leave)."""
        self._capacityObserver = callableObject

    def whenConnected(self) -> Deferred[DaskWorker]:
        """A Deferred that fires with me once I am connected and know my capacity."""
        if self._connected:
            return succeed(self)
        d: Deferred[DaskWorker] = Deferred()
        self._connectWaiters.append(d)
        return d

    def info(self) -> dict[str, Any]:
        """What L{TaskQueue.stats} shows of me: the cluster, its hosts and counts."""
        return {
            "scheduler": self.address,
            "connected": self._connected,
            "threads": self.threads,
            "hosts": dict(self.hosts),
            "scattered": self._link.scattered,
        }

    def run(self, task: Task) -> Deferred[Any]:
        """Send the call to the cluster; a Deferred of its result."""
        if self._stopped:
            return fail(QueueRunError(f"{self.name} is stopped"))
        if task.update is not None:
            return self._update(task)
        key = f"{task.name}-{uuid.uuid4().hex}"
        run = _Run(task, Deferred(lambda _: self._cancel(key)), key)
        self._runs[key] = run
        priority = -max(-_PRIORITY_BOUND, min(_PRIORITY_BOUND, task.priority))
        self._outgoing.append((key, task.f, task.args, task.kwargs, priority))
        if len(self._outgoing) == 1:
            # The calls of this turn of the reactor go to the cluster together.
            self._bridge.reactor.callLater(0, self._send)
        task.markStarted()
        return run.deferred

    def _send(self) -> None:
        batch, self._outgoing = self._outgoing, []
        if batch:
            self._bridge.toLoop(self._link.enqueue, batch)

    def _cancel(self, key: str) -> None:
        if self._runs.pop(key, None) is not None:
            self._outgoing = [call for call in self._outgoing if call[0] != key]
            self._bridge.toLoop(self._link.cancel, key)
            self._idleCheck()

    def stop(self) -> Deferred[None]:
        """Finish the calls I was given, then close my client (and my cluster)."""
        self._stopped = True
        if self._stopDeferred is None:
            idle: Deferred[None] = Deferred()
            self._idleWaiters.append(idle)
            self._idleCheck()
            self._stopDeferred = idle.addCallback(lambda _: self._close())
        d: Deferred[None] = Deferred()
        self._stopDeferred.addBoth(lambda _: d.callback(None))
        return d

    def crash(self) -> list[Task]:
        """Stop at once: cancel every call on the cluster; return their tasks."""
        self._stopped = True
        runs = list(self._runs.values())
        self._runs.clear()
        for run in runs:
            self._bridge.toLoop(self._link.cancel, run.key)
        self._close()
        return [run.task for run in runs]

    def _close(self) -> Deferred[None]:
        def closed(result: object) -> None:
            self._connected = False
            self._bridge.close()
            if isinstance(result, Failure):
                self.log.failure("Closing {name}", result, name=self.name)

        return self._bridge.call(self._link.close).addBoth(closed)

    def _idleCheck(self) -> None:
        if not self._runs and self._idleWaiters:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def _setCapacity(self, threads: int) -> None:
        self.threads = threads
        if self._backlog is None:
            capacity = threads * (self.tasksPerThread or 2)
        else:
            capacity = threads * self._backlog.ran(self._backlog.average)
        if capacity != self.capacity:
            self.capacity = capacity
            if self._capacityObserver is not None:
                self._capacityObserver()

    def _connectedNow(self, address: str, threads: int) -> None:
        self.address = address
        self._connected = True
        self.log.info(
            "{name} connected to Dask at {address}, {n} threads",
            name=self.name,
            address=address,
            n=threads,
        )
        self._setCapacity(threads)
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.callback(self)

    def _startFailed(self, failure: Failure) -> None:
        self.log.failure("{name} could not start", failure, name=self.name)
        error = DaskError(f"{self.name} could not connect: {failure.getErrorMessage()}")
        waiters, self._connectWaiters = self._connectWaiters, []
        for d in waiters:
            d.errback(error)
        self._lost(str(error))

    def _lost(self, why: str) -> None:
        """The scheduler is gone for good: fail what runs, resign."""
        self._connected = False
        self._setCapacity(0)
        self._failAll(why)
        if not self._stopped:
            self._stopped = True
            if self._resignator is not None:
                self._resignator(self)

    def _failAll(self, why: str) -> None:
        runs = list(self._runs.values())
        self._runs.clear()
        for run in runs:
            if not run.deferred.called:
                run.deferred.errback(Failure(NodeLost(f"{self.name}: {why}")))
        self._idleCheck()

    def _delivered(self, outcomes: list[tuple[str, str, Any, Any, float]]) -> None:
        """
        Finished calls from the harvester: C{(key, kind, value, address,
        seconds it ran)}.
        """
        runs, hosts, backlog = self._runs, self.hosts, self._backlog
        for key, kind, value, address, ran in outcomes:
            run = runs.pop(key, None)
            if backlog is not None and run is not None and kind == "result":
                # What a call waits besides its own run: the round trip.
                backlog.seconds = 0.9 * backlog.seconds + 0.1 * max(
                    0.0, perf_counter() - run.sent - ran
                )
                perThread = backlog.ran(ran)
                self.capacity = self.threads * perThread
            if run is None or run.deferred.called:
                continue
            if address:
                hosts[address] = hosts.get(address, 0) + 1
                # Which Dask worker ran it, for records and statistics.
                run.task.noteWorker(f"{self.name}@{address}")
            if kind == "result":
                if isinstance(value, IteratorRef):
                    Deferator(DaskIterationSource(self, value)).ready().chainDeferred(
                        run.deferred
                    )
                else:
                    run.deferred.callback(value)
            elif kind == "error":
                run.deferred.errback(Failure(value))
            else:
                run.deferred.errback(Failure(NodeLost(f"{self.name}: {value}")))
        self._idleCheck()

    # -- update() -------------------------------------------------------------

    def _update(self, task: Task) -> Deferred[Any]:
        """
        Run an update on every Dask worker now: a Deferred of their results
        by address; a kept one also runs on Dask workers that join later.
        """
        f, args, kwargs = task.f, task.args, task.kwargs
        if task.update == "kept":
            name = f"asynqueue-{self.name}-update-{uuid.uuid4().hex}"
            return self.whenConnected().addCallback(
                lambda _: self._bridge.call(
                    self._link.keptUpdate, name, f, args, kwargs
                )
            )
        return self.whenConnected().addCallback(
            lambda _: self._bridge.call(
                self._link.client.run, daskside.runUpdate, f, args, kwargs
            )
        )

    # -- iterators ------------------------------------------------------------

    def fetchFrom(self, ref: IteratorRef, maxItems: int) -> Deferred[Any]:
        """Take up to C{maxItems} items of an iterator on a Dask worker."""
        return self._bridge.call(self._link.fetch, ref, maxItems)

    def closeAt(self, ref: IteratorRef) -> Deferred[Any]:
        """Close an iterator on a Dask worker (if both are still there)."""
        if self._link.closing:
            return succeed(None)
        d = self._bridge.call(self._link.closeIterator, ref)
        return d.addErrback(lambda _: None)


@implementer(IIterationSource)
class DaskIterationSource:
    """The items of an iterator kept on a Dask worker, fetched in batches."""

    def __init__(self, worker: DaskWorker, ref: IteratorRef) -> None:
        self._worker = worker
        self._ref = ref
        #: Fires once the iterator is released there (after L{close}).
        self.released: Deferred[Any] | None = None

    def fetch(self, maxItems: int) -> Deferred[tuple[list[Any], bool]]:
        """Take up to C{maxItems} next items on the Dask worker."""
        return self._worker.fetchFrom(self._ref, maxItems).addCallback(
            lambda answer: (list(answer[0]), bool(answer[1]))
        )

    def close(self) -> Deferred[Any]:
        """Release the iterator on its Dask worker."""
        if self.released is None:
            self.released = self._worker.closeAt(self._ref)
        return self.released


class DaskQueue(TaskQueue):
    """
    A L{TaskQueue} with one L{DaskWorker}.

    C{addressOrClient} as for L{DaskWorker} (C{None} starts a
    C{LocalCluster} sized to the machine and closes it at shutdown);
    C{workerOptions} go to the worker, other keywords to L{TaskQueue}.
    """

    def __init__(
        self,
        addressOrClient: Any = None,
        workerOptions: dict[str, Any] | None = None,
        **queueOptions: Any,
    ) -> None:
        super().__init__(**queueOptions)
        self.daskWorker = DaskWorker(addressOrClient, **(workerOptions or {}))
        self.attachWorker(self.daskWorker)
