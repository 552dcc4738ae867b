"""
What runs on the Dask workers for a L{asynqueue.workers.dask.DaskWorker}:
the wrapper of each call (L{runCall}), the iterators a call returned,
kept there until asked for (L{fetchItems}, L{closeIterator}), and the
L{AsynQueuePlugin} that runs a queue's initializer and kept updates on
every Dask worker, including those that join later.

Dask pickles these by reference: C{asynqueue} must be importable on the
Dask workers.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from time import perf_counter
from typing import Any

from distributed.diagnostics.plugin import WorkerPlugin

from asynqueue.iteration import isIterator
from asynqueue.sources import takeItems

__all__ = [
    "IteratorRef",
    "runCall",
    "fetchItems",
    "closeIterator",
    "AsynQueuePlugin",
    "updateResult",
]

#: The iterators calls returned on this process's Dask workers, by key.
_iterators: dict[str, Iterator[Any]] = {}
#: What each kept update returned here, by plugin name and worker address.
_updateResults: dict[tuple[str, str], tuple[bool, Any]] = {}
_lock = threading.Lock()


@dataclass(frozen=True)
class IteratorRef:
    """An iterator that stays on the Dask worker at C{address}, under C{key}."""

    address: str
    key: str


def _address() -> str:
    from distributed import get_worker

    try:
        return str(get_worker().address)
    except ValueError:
        # Not in a Dask task (called directly, as in a test).
        return "local"


def runCall(
    f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[str, Any, float]:
    """
    Run C{f(*args, **kwargs)} on this Dask worker: C{(address, result,
    seconds it ran)}.

    An iterator result stays here; an L{IteratorRef} to it travels instead.
    A failed initializer fails every call, as in a process worker.
    """
    from asynqueue.node.child import _checkSetup

    _checkSetup()
    address = _address()
    began = perf_counter()
    result = f(*args, **kwargs)
    ran = perf_counter() - began
    if isIterator(result):
        key = uuid.uuid4().hex
        with _lock:
            _iterators[key] = result
        return address, IteratorRef(address, key), ran
    return address, result, ran


async def fetchItems(key: str, maxItems: int) -> tuple[list[Any], bool]:
    """
    Take up to C{maxItems} next items of iterator C{key}: C{(items, exhausted)}.

    Run by C{Client.run} in the worker's event loop; the iterator runs in a
    thread, so that a slow one does not hold up the worker's heartbeats. The
    items before an error come first; the error comes with the next fetch.
    """
    with _lock:
        iterator = _iterators.get(key)
    if iterator is None:
        raise LookupError(f"no iterator {key} on this Dask worker (closed or lost)")
    if isinstance(iterator, _Failed):
        closeIterator(key)
        raise iterator.error
    items, exhausted, error = await asyncio.to_thread(takeItems, iterator, maxItems)
    if error is not None:
        if not items:
            closeIterator(key)
            raise error
        with _lock:
            _iterators[key] = _Failed(error)
        return items, False
    if exhausted:
        closeIterator(key)
    return items, exhausted


class _Failed(Iterator[Any]):
    """An iterator that raised, after the items before its error were taken."""

    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __next__(self) -> Any:
        raise self.error


def closeIterator(key: str) -> bool:
    """Forget iterator C{key}, closing it if it can be; whether it was here."""
    with _lock:
        iterator = _iterators.pop(key, None)
    close = getattr(iterator, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass
    return iterator is not None


def liveIterators() -> int:
    """How many iterators this process holds (for tests)."""
    return len(_iterators)


def _asWorker(worker: Any, f: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """
    Call C{f} as if in a task of C{worker}, so that C{get_worker()} works in
    an update as it does in a call.
    """
    try:
        from distributed.worker import _worker_cvar
    except ImportError:  # pragma: no cover - another version of distributed
        return f(*args, **kwargs)
    token = _worker_cvar.set(worker)
    try:
        return f(*args, **kwargs)
    finally:
        _worker_cvar.reset(token)


def _bare(error: BaseException) -> BaseException:
    """C{error} without the frames it was raised through, which may not pickle."""
    error.__traceback__ = error.__context__ = error.__cause__ = None
    return error


def runUpdate(
    f: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    dask_worker: Any = None,
) -> Any:
    """Run an update call here, by C{Client.run} (which passes C{dask_worker})."""
    try:
        return _asWorker(dask_worker, f, *args, **kwargs)
    except Exception as e:
        raise _bare(e) from None


class AsynQueuePlugin(WorkerPlugin):
    """
    Runs a queue's initializer (C{update} is C{None}) or one kept update on
    each Dask worker as it starts, and on those running when registered.

    The initializer's result becomes what L{asynqueue.context} returns there;
    a failed initializer fails every call on that worker. What an update
    returned is kept for L{updateResult}.
    """

    def __init__(
        self,
        name: str,
        f: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        initializer: bool = False,
    ) -> None:
        self.name = name
        self.f = f
        self.args = args
        self.kwargs = kwargs
        self.initializer = initializer

    def setup(self, worker: Any) -> None:
        """Run my call on C{worker}; never raise (that would stop the worker)."""
        if self.initializer:
            from asynqueue.node.child import _initialize

            try:
                _initialize(self.f, self.args)
            except BaseException:
                # Kept by _initialize: every call on this worker fails with it.
                pass
            return
        try:
            outcome: tuple[bool, Any] = (
                True,
                _asWorker(worker, self.f, *self.args, **self.kwargs),
            )
        except Exception as e:
            outcome = (False, _bare(e))
        with _lock:
            _updateResults[(self.name, str(worker.address))] = outcome

    def teardown(self, worker: Any) -> None:
        """Forget what my update returned on C{worker}."""
        with _lock:
            _updateResults.pop((self.name, str(worker.address)), None)


def updateResult(name: str, dask_worker: Any = None) -> Any:
    """
    What kept update C{name} returned on this worker (by C{Client.run}, which
    passes C{dask_worker}); raise its error if it failed.
    """
    address = str(dask_worker.address) if dask_worker is not None else _address()
    with _lock:
        ok, value = _updateResults[(name, address)]
    if not ok:
        raise value from None
    return value
