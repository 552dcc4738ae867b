"""
The network node's pool: L{NodePool}, the child processes shared by all
its connections, and L{PoolRunner}, which runs one connection's calls on
them, still pickled (a node never unpickles a client's call itself).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from time import perf_counter
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from asynqueue.wire.commands import (
    CloseIterator,
    NextItems,
    Status,
)
from asynqueue.wire.pickling import dumps, encodeError, loadsPlain
from asynqueue.wire.universe import WireWorkerUniverse, callUniverse, makeUniverse

_ERROR = Status.ERROR.value

# ----------------------------------------------------------------------
# The network node: the same protocol, tasks run on a pool of children


class NodePool:
    """
    A node's child processes, shared by all its connections.

    Calls go to the child with the fewest outstanding; they are never
    unpickled in the node itself, only in the children.
    """

    def __init__(
        self,
        processes: int,
        perProcess: int = 16,
        universe: str | None = None,
        **workerOptions: Any,
    ) -> None:
        from asynqueue.workers.process import ProcessWorker

        self.universe = universe
        self.universeClass: type | None = None
        if universe is not None:
            import importlib

            module, _, name = universe.rpartition(".")
            self.universeClass = getattr(importlib.import_module(module), name)
            if not (
                isinstance(self.universeClass, type)
                and issubclass(self.universeClass, WireWorkerUniverse)
            ):
                raise TypeError(f"{universe} is not a WireWorkerUniverse subclass")
            workerOptions.update(initializer=makeUniverse, initargs=(universe,))
        if processes < 1:
            raise ValueError(f"a node needs at least one process, not {processes}")
        self.workers = [
            ProcessWorker(
                name=f"node-{i + 1}",
                capacity=perProcess,
                # A node serves for as long as it runs: its workers never
                # give up starting children, however long that takes.
                maxStartFailures=None,
                **workerOptions,
            )
            for i in range(processes)
        ]
        self.capacity = processes * perProcess

    def admit(self, call: bytes) -> bytes:
        """
        The call to send on: as it came, or, for a universe node, checked.

        A universe node reads C{(methodName, args, kwargs)} as plain data
        (no class or function may be in it) and runs only its universe's
        public methods.
        """
        if self.universe is None:
            return call
        name, args, kwargs = loadsPlain(call)
        if (
            not isinstance(name, str)
            or name.startswith("_")
            or not callable(getattr(self.universeClass, name, None))
        ):
            raise AttributeError(f"this node's universe has no method {name!r}")
        return dumps((callUniverse, (name, tuple(args), dict(kwargs)), {}))

    def runPickled(self, call: bytes) -> Deferred[tuple[str, bytes, float, Any]]:
        worker = min(self.workers, key=lambda w: w.outstanding)
        return worker.runPickled(call)

    def stop(self) -> Deferred[None]:
        from twisted.internet.defer import DeferredList

        return DeferredList([w.stop() for w in self.workers]).addCallback(
            lambda _: None
        )


class PoolRunner:
    """
    Runs one connection's tasks on the node's L{NodePool}.

    Results and iterator items pass through as the children pickled them.
    When the connection is lost, its tasks still running are cancelled,
    which ends the children running them.
    """

    def __init__(self, pool: NodePool, send: Callable[..., object]) -> None:
        self._pool = pool
        self._send = send
        self._running: dict[int, Deferred[Any]] = {}
        self._iterators: dict[int, tuple[Any, int]] = {}
        self._iteratorIDs = itertools.count(1)
        self._idleWaiters: list[Deferred[None]] = []
        self._unsent: list[tuple[int, str, bytes, float]] = []
        self._flushCall: Any = None
        self.capacity = pool.capacity
        self.processes = len(pool.workers)
        self.done = 0

    def _reply(self, result: tuple[int, str, bytes, float]) -> None:
        # Results that arrive in the same reactor turn travel together.
        self._unsent.append(result)
        if self._flushCall is None:
            from twisted.internet import reactor

            self._flushCall = reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flushCall = None
        batch, self._unsent = self._unsent, []
        if batch:
            self._send(batch)

    def add(self, tasks: list[tuple[int, bytes]]) -> None:
        for taskID, call in tasks:
            try:
                call = self._pool.admit(call)
            except Exception as e:
                self._reply((taskID, _ERROR, encodeError(e), 0.0))
                continue
            d = self._pool.runPickled(call)
            self._running[taskID] = d
            d.addBoth(self._ran, taskID, perf_counter())

    def _ran(self, result: object, taskID: int, began: float) -> None:
        if self._running.pop(taskID, None) is None:
            return
        self.done += 1
        if isinstance(result, Failure):
            if result.check(CancelledError):
                return
            error = result.value or Exception(result.getErrorMessage())
            self._reply((taskID, _ERROR, encodeError(error), perf_counter() - began))
        else:
            status, payload, seconds, child = cast(
                tuple[str, bytes, float, Any], result
            )
            if status == Status.ITERATOR:
                iteratorID = next(self._iteratorIDs)
                self._iterators[iteratorID] = (child, loadsPlain(payload))
                payload = dumps(iteratorID)
            self._reply((taskID, status, payload, seconds))
        self._checkIdle()

    def cancel(self, taskID: int) -> None:
        d = self._running.pop(taskID, None)
        if d is not None:
            d.cancel()
            self._checkIdle()

    def nextItems(self, iteratorID: int, maxItems: int) -> Any:
        entry = self._iterators.get(iteratorID)
        if entry is None or entry[0].dead:
            self._iterators.pop(iteratorID, None)
            return {"items": dumps([]), "exhausted": True, "error": None}
        child, childID = entry

        def answered(answer: dict[str, Any]) -> dict[str, Any]:
            if answer["exhausted"]:
                self._iterators.pop(iteratorID, None)
            return answer

        return child.amp.callRemote(
            NextItems, iteratorID=childID, maxItems=maxItems
        ).addCallback(answered)

    def closeIterator(self, iteratorID: int) -> None:
        entry = self._iterators.pop(iteratorID, None)
        if entry is not None and not entry[0].dead:
            entry[0].amp.callRemote(CloseIterator, iteratorID=entry[1])

    def whenIdle(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        self._checkIdle()
        return d

    def _checkIdle(self) -> None:
        if not self._running and self._idleWaiters:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def connectionLost(self) -> None:
        for d in list(self._running.values()):
            d.cancel()
        for iteratorID in list(self._iterators):
            self.closeIterator(iteratorID)
