"""
C{map} over a queue: many items, one function, results streamed back.

L{mapOver} consumes the items lazily, packs them into chunks (one task per
chunk, sized so that a chunk runs for a few milliseconds), keeps a bounded
number of chunks in flight, and hands the results out through a
L{Deferator}, in order or as they complete. The parent's memory stays
bounded whatever the number of items.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterable, Sized
from time import perf_counter
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from asynqueue.interfaces import IIterationSource
from asynqueue.iteration import Deferator
from asynqueue.tasks import TaskOptions

if TYPE_CHECKING:
    from asynqueue.queue.core import TaskQueue

__all__ = ["mapOver", "runChunk"]

#: How long (seconds) an automatically sized chunk should run.
CHUNK_SECONDS = 0.005
MAX_CHUNK = 4096


def runChunk(
    f: Callable[..., Any], items: list[Any], star: bool
) -> tuple[list[Any], dict[int, BaseException], float]:
    """
    Call C{f} on each item (unpacked with C{*} if C{star}); runs in the worker.

    Returns C{(results, errors, seconds)}: C{errors} maps the index of each
    item whose call raised to its exception (its result is C{None}), so one
    failing item spoils no other.
    """
    began = perf_counter()
    errors: dict[int, BaseException] = {}
    if star:
        try:
            return [f(*item) for item in items], errors, perf_counter() - began
        except Exception:
            pass
    else:
        try:
            return list(map(f, items)), errors, perf_counter() - began
        except Exception:
            pass
    # Something raised: go again one by one to keep every other result.
    results: list[Any] = []
    for i, item in enumerate(items):
        try:
            results.append(f(*item) if star else f(item))
        except Exception as e:
            results.append(None)
            errors[i] = e
    return results, errors, perf_counter() - began


class _Ready:
    """The results of one chunk, handed out from C{position} on."""

    __slots__ = ("results", "errors", "position")

    def __init__(self, results: list[Any], errors: dict[int, BaseException]) -> None:
        self.results = results
        self.errors = errors
        self.position = 0


_DELIVERED = _Ready([], {})


@implementer(IIterationSource)
class _MapSource:
    """Feeds a Deferator with the results of chunks of items run on a queue."""

    def __init__(
        self,
        queue: TaskQueue,
        f: Callable[..., Any],
        items: Iterable[Any],
        ordered: bool,
        chunksize: int | None,
        maxInFlight: int,
        star: bool,
        options: TaskOptions,
        bar: Any = None,
    ) -> None:
        self._bar = bar
        self._queue = queue
        self._f = f
        self._sized = isinstance(items, Sized)
        #: Items announced to the queue's watchers and not yet done.
        self._workLeft = len(items) if isinstance(items, Sized) else 0
        if self._workLeft:
            queue.announceWork(expected=self._workLeft)
        self._items = iter(items)
        self._ordered = ordered
        self._fixedSize = chunksize
        self._size = chunksize or 1
        self._maxInFlight = maxInFlight
        self._star = star
        self._options = options
        self._itemsDone = False
        self._chunks: deque[_Ready | None] = deque()
        self._ready: deque[_Ready] = deque()
        self._inFlight: dict[int, Deferred[Any]] = {}
        self._ids = itertools.count()
        self._firstID = 0
        self._waiter: Deferred[None] | None = None
        self._sourceFailure: Failure | None = None
        self._closed = False
        self.submitted = 0
        self._fill()

    # -- submitting chunks ---------------------------------------------------

    def _fill(self) -> None:
        while (
            not self._itemsDone
            and not self._closed
            and len(self._chunks) + len(self._ready) < self._maxInFlight
        ):
            try:
                chunk = list(itertools.islice(self._items, self._size))
            except Exception:
                self._sourceFailure = Failure()
                self._itemsDone = True
                break
            if not chunk:
                self._itemsDone = True
                break
            chunkID = next(self._ids)
            self._chunks.append(None)
            self.submitted += len(chunk)
            if self._bar is not None and not self._sized:
                self._bar.expect(len(chunk))
            d = self._queue.callWith(
                self._options, runChunk, self._f, chunk, self._star
            )
            self._inFlight[chunkID] = d
            d.addBoth(self._chunkDone, chunkID, len(chunk))
        if self._itemsDone and not self._inFlight:
            self._withdrawWork()
        self._wake()

    def _withdrawWork(self) -> None:
        """Withdraw announced work that will not run (fewer items, closed early)."""
        if self._workLeft:
            self._queue.announceWork(expected=-self._workLeft)
            self._workLeft = 0

    def _chunkDone(self, result: Any, chunkID: int, count: int) -> None:
        self._inFlight.pop(chunkID, None)
        if self._closed:
            return
        if self._bar is not None:
            self._bar.advance(count)
        if self._workLeft:
            self._workLeft -= count
            self._queue.announceWork(done=count)
        if isinstance(result, Failure):
            error = result.value or Exception(result.getErrorMessage())
            ready = _Ready([None] * count, dict.fromkeys(range(count), error))
        else:
            results, errors, seconds = result
            ready = _Ready(results, errors)
            if self._fixedSize is None and seconds > 0:
                perItem = seconds / count
                wanted = int(CHUNK_SECONDS / perItem) if perItem > 0 else MAX_CHUNK
                self._size = max(1, min(MAX_CHUNK, wanted, 4 * self._size))
        index = chunkID - self._firstID
        if self._ordered:
            self._chunks[index] = ready
            while self._chunks and self._chunks[0] is not None:
                self._ready.append(self._chunks.popleft())  # type: ignore[arg-type]
                self._firstID += 1
        else:
            self._chunks[index] = _DELIVERED
            self._ready.append(ready)
            while self._chunks and self._chunks[0] is _DELIVERED:
                self._chunks.popleft()
                self._firstID += 1
        self._fill()

    def _wake(self) -> None:
        if self._waiter is not None and (
            self._ready or (self._itemsDone and not self._chunks)
        ):
            waiter, self._waiter = self._waiter, None
            waiter.callback(None)

    # -- IIterationSource ----------------------------------------------------

    def fetch(self, maxItems: int) -> Deferred[tuple[list[Any], bool]]:
        if self._ready or (self._itemsDone and not self._chunks):
            return self._take(maxItems)
        self._waiter = Deferred()
        return self._waiter.addCallback(lambda _: self._take(maxItems))

    def _take(self, maxItems: int) -> Deferred[tuple[list[Any], bool]]:
        items: list[Any] = []
        ready = self._ready
        while ready and len(items) < maxItems:
            chunk = ready[0]
            start = chunk.position
            end = min(len(chunk.results), start + maxItems - len(items))
            if chunk.errors:
                failing = min((i for i in chunk.errors if i >= start), default=end)
                if failing == start:
                    if items:
                        break
                    self.close()
                    return fail(chunk.errors[start])
                end = min(end, failing)
            items.extend(chunk.results[start:end])
            chunk.position = end
            if end >= len(chunk.results):
                ready.popleft()
        self._fill()
        done = self._itemsDone and not self._chunks and not ready
        if done and self._bar is not None:
            self._bar.close()
        if done and self._sourceFailure is not None and not items:
            return fail(self._sourceFailure)
        return succeed((items, done and self._sourceFailure is None))

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        if not self._closed:
            self._closed = True
            self._withdrawWork()
            self._ready.clear()
            for d in list(self._inFlight.values()):
                d.cancel()
            self._inFlight.clear()


def mapOver(
    queue: TaskQueue,
    f: Callable[..., Any],
    items: Iterable[Any],
    ordered: bool = True,
    chunksize: int | None = None,
    maxInFlight: int | None = None,
    star: bool = False,
    options: TaskOptions | None = None,
    progress: bool = False,
) -> Deferator[Any]:
    """
    Run C{f} on every item through C{queue}; a L{Deferator} of the results.

    See L{TaskQueue.map}.
    """
    if chunksize is not None and chunksize < 1:
        raise ValueError(f"chunksize must be at least 1, not {chunksize}")
    if maxInFlight is None:
        maxInFlight = max(4, 4 * len(queue))
    if maxInFlight < 1:
        raise ValueError(f"maxInFlight must be at least 1, not {maxInFlight}")
    bar = None
    if progress:
        from asynqueue.progress import ProgressBar

        total = len(items) if isinstance(items, Sized) else None
        bar = ProgressBar(total=total, description=getattr(f, "__name__", "map"))
    source = _MapSource(
        queue,
        f,
        items,
        ordered,
        chunksize,
        maxInFlight,
        star,
        options or TaskOptions(),
        bar,
    )
    return Deferator(source, batchSize=256)
