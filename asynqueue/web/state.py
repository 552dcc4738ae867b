"""
The dashboard's view of a queue: counts, workers, recent task bars,
failures and the slowest tasks, derived from the queue's records.

L{QueueView} hears of each task as it ends (L{TaskQueue.observeEnds});
what it does then is O(1), a few operations, and its memory is bounded
(rings of the newest records), so a queue may run for days with it
attached. What is pending and running is read from the queue when a
snapshot is made: L{QueueView.snapshot} builds the JSON-ready dict the
page draws, only while a page is open, at most a few times a second (see
L{asynqueue.web.server}).
"""

from __future__ import annotations

import heapq
import math
import reprlib
import socket
import traceback
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from asynqueue.tasks import TaskRecord

if TYPE_CHECKING:
    from asynqueue.queue.core import TaskQueue

__all__ = ["QueueView", "workerKind", "priorityBand", "shortCall"]

#: Worker kinds by class name, most specific first.
_KINDS: tuple[tuple[str, str], ...] = (
    ("DaskWorker", "Dask"),
    ("WireWorker", "remote node"),
    ("RemoteWorker", "remote node"),
    ("ProcessWorker", "process"),
    ("ThreadWorker", "thread"),
    ("MemoryWorker", "reactor"),
    ("AsyncWorker", "reactor"),
)

_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 4
_short.maxlevel = 2

#: The longest traceback text kept of a failure (its end is kept).
MAX_TRACEBACK = 6000
#: The longest message kept of a failure.
MAX_MESSAGE = 500
#: Seconds over which "throughput now" is measured.
RATE_SPAN = 5.0
#: Seconds a worker shows as "respawned" after its child was replaced.
RESPAWN_SHOWN = 10.0


def workerKind(worker: object) -> str:
    """C{reactor}, C{thread}, C{process}, C{remote node} or C{Dask}."""
    names = {cls.__name__ for cls in type(worker).__mro__}
    for name, kind in _KINDS:
        if name in names:
            return kind
    return type(worker).__name__


def priorityBand(priority: float) -> str:
    """The band a priority is counted in: C{next}, C{last}, or the number."""
    if priority == -math.inf:
        return "next"
    if priority == math.inf:
        return "last"
    return f"{priority:g}"


def shortCall(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """C{name(args...)}, each argument shortened, the whole at most 200 characters."""
    parts = [_safeRepr(a) for a in args]
    parts.extend(f"{k}={_safeRepr(v)}" for k, v in kwargs.items())
    text = f"{name}({', '.join(parts)})"
    return text if len(text) <= 200 else text[:197] + "..."


def _safeRepr(value: object) -> str:
    try:
        return _short.repr(value)
    except Exception:
        return f"<{type(value).__name__}>"


def _label(value: Hashable | None) -> str:
    return "none" if value is None else str(value)[:60]


def _count(counts: dict[str, int], key: str, n: int) -> None:
    value = counts.get(key, 0) + n
    if value > 0:
        counts[key] = value
    else:
        counts.pop(key, None)


def describeFailure(result: object) -> tuple[str, str, str]:
    """The exception's type name, message and traceback text of a failure."""
    if not isinstance(result, Failure):
        return "Failure", "", ""
    value: BaseException = result.value  # type: ignore[assignment]
    kind = type(value).__name__
    try:
        message = str(value)
    except Exception:
        message = "(its str() failed)"
    text = getattr(value, "remoteTraceback", None)
    if not isinstance(text, str):
        try:
            text = "".join(traceback.format_exception(value))
        except Exception:
            text = result.getTraceback()
    if len(text) > MAX_TRACEBACK:
        text = "...\n" + text[-MAX_TRACEBACK:]
    return kind, message[:MAX_MESSAGE], text


class QueueView:
    """
    A queue as the dashboard shows it, kept up to date by the queue's events.

    @param queue: The L{asynqueue.TaskQueue} to watch.
    @param clock: The queue's clock (its records' times are in it).
    @param window: Seconds of task bars the task stream shows.
    @param keep: How many ended records the stream keeps at most.
    @param perPush: How many bars of ended tasks a push carries at most
        (the newest): at thousands of tasks a second the stream shows a
        sample of them.
    @param onChange: Called (with no argument) after each event; the
        server coalesces what it does then.
    """

    def __init__(
        self,
        queue: TaskQueue,
        clock: IReactorTime,
        window: float = 60.0,
        keep: int = 1000,
        perPush: int = 200,
        onChange: Callable[[], object] | None = None,
    ) -> None:
        self.queue = queue
        self.clock = clock
        self.window = window
        self.onChange = onChange
        self.host = socket.gethostname()
        self.started = clock.seconds()
        self.ended = 0
        self.expected: int | None = None
        self._endedAtExpect = 0
        #: By worker name: seconds spent running tasks, and when first seen.
        self._busy: dict[str | None, float] = {}
        self._firstSeen: dict[str, float] = {}
        #: By worker name: its restarts when last looked at, and since when.
        self._restarts: dict[str, tuple[int, float]] = {}
        self.recent: deque[TaskRecord] = deque(maxlen=keep)
        #: Records ended since the server last took them (for its deltas):
        #: the newest C{perPush}, so that a push stays small at any rate.
        self.fresh: deque[TaskRecord] = deque(maxlen=perPush)
        self.failures: deque[dict[str, Any]] = deque(maxlen=20)
        self._slowest: list[tuple[float, int, dict[str, Any]]] = []
        #: The run time a task must beat to be among the slowest.
        self._slowFloor = -math.inf
        self._rates: deque[tuple[float, int]] = deque(maxlen=64)
        #: Items of work announced to the queue (map, feeders with a total),
        #: for an ETA when no total was given to L{expect}.
        self.workExpected = 0
        self.workDone = 0
        self._workRates: deque[tuple[float, int]] = deque(maxlen=64)
        self._stopObserving: Callable[[], None] | None = None
        self._stopWatchingWork: Callable[[], None] | None = None

    # ------------------------------------------------------------------
    # Attaching

    def attach(self) -> None:
        """Start hearing of the queue's tasks as they end."""
        if self._stopObserving is not None:
            return
        now = self.clock.seconds()
        for name in self._workerNames():
            self._firstSeen.setdefault(name, now)
        self._stopObserving = self.queue.observeEnds(self._ended)
        self._stopWatchingWork = self.queue.observeWork(self._work)

    def detach(self) -> None:
        """Stop hearing of the queue's tasks."""
        if self._stopObserving is not None:
            self._stopObserving()
            self._stopObserving = None
        if self._stopWatchingWork is not None:
            self._stopWatchingWork()
            self._stopWatchingWork = None

    def expect(self, total: int) -> None:
        """C{total} tasks are to end from now: the headline shows an ETA."""
        self.expected = int(total)
        self._endedAtExpect = self.ended

    # ------------------------------------------------------------------
    # Events: O(1) each, and few operations (they run for every task)

    def _work(self, expected: int, done: int) -> None:
        """Work was announced to the queue (a work observer)."""
        self.workExpected += expected
        self.workDone += done

    def _ended(
        self, record: TaskRecord, args: Any, kwargs: Any, result: object
    ) -> None:
        """A task ended (an end observer): a few operations, every task."""
        self.ended += 1
        started = record.started
        if started is not None:
            runTime = (record.ended or started) - started
            busy = self._busy
            worker = record.worker
            busy[worker] = busy.get(worker, 0.0) + runTime
            self.recent.append(record)
            self.fresh.append(record)
            if runTime > self._slowFloor:
                self._noteSlow(record, runTime, args, kwargs)
        state = record.state
        if state == "failed" or state == "timedOut":
            self._noteFailure(record, result)
        onChange = self.onChange
        if onChange is not None:
            onChange()

    def _noteFailure(self, record: TaskRecord, result: object) -> None:
        if isinstance(result, Failure):
            kind, message, text = describeFailure(result)
        else:
            kind, message, text = record.outcome or "Failure", "", ""
        self.failures.append(
            {
                "id": record.id,
                "name": record.name,
                "worker": record.worker,
                "state": record.state,
                "ended": record.ended,
                "type": kind,
                "message": message,
                "traceback": text,
            }
        )

    def _noteSlow(
        self, record: TaskRecord, runTime: float, args: Any, kwargs: Any
    ) -> None:
        call = (
            shortCall(record.name, args, kwargs)
            if args is not None
            else f"{record.name}(...)"
        )
        entry = {
            "id": record.id,
            "name": record.name,
            "call": call,
            "runTime": runTime,
            "worker": record.worker,
            "state": record.state,
        }
        item = (runTime, record.id, entry)
        if len(self._slowest) < 10:
            heapq.heappush(self._slowest, item)
        else:
            heapq.heapreplace(self._slowest, item)
        if len(self._slowest) == 10:
            self._slowFloor = self._slowest[0][0]

    # ------------------------------------------------------------------
    # What the page is sent

    def _workerNames(self) -> list[str]:
        return [w.name for w in self.queue.workers()]

    def rates(self, now: float) -> tuple[float, float]:
        """Tasks ended per second lately (over about 5 s) and since attached."""
        return self._rateOf(self._rates, self.ended, now)

    def _rateOf(
        self, samples: deque[tuple[float, int]], count: int, now: float
    ) -> tuple[float, float]:
        """How fast C{count} grew lately (over about 5 s) and since attached."""
        samples.append((now, count))
        while len(samples) > 2 and samples[1][0] <= now - RATE_SPAN:
            samples.popleft()
        then, countThen = samples[0]
        rateNow = (count - countThen) / (now - then) if now > then else 0.0
        span = now - self.started
        average = count / span if span > 0 else 0.0
        return rateNow, average

    def pendingBy(self) -> dict[str, dict[str, int]]:
        """How many tasks are pending, by priority band, series and lane."""
        counts = self.queue.pendingCounts()
        by: dict[str, dict[str, int]] = {"priority": {}, "series": {}, "lane": {}}
        for (priority, series, lane), n in counts.items():
            _count(by["priority"], priorityBand(priority), n)
            if series is not None:
                _count(by["series"], _label(series), n)
            if lane is not None:
                _count(by["lane"], _label(lane), n)
        return by

    def headline(self, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The counts, rates and ETA at the top of the page; and C{queue.stats()}."""
        stats = self.queue.stats()
        rateNow, average = self.rates(now)
        eta = None
        progress = None
        rate = 0.0
        expected = self.expected
        if expected is not None:
            progress = self.ended - self._endedAtExpect
            rate = rateNow or average
        elif self.workExpected > 0:
            # No total given: the items that map and feeders announced.
            expected, progress = self.workExpected, self.workDone
            itemsNow, itemsAverage = self._rateOf(self._workRates, progress, now)
            rate = itemsNow or itemsAverage
        if expected is not None and progress is not None:
            left = max(0, expected - progress)
            eta = 0.0 if left == 0 else (left / rate if rate > 0 else None)
        return {
            "pending": stats["pending"],
            "running": stats["running"],
            "done": stats["done"],
            "failed": stats["failed"],
            "cancelled": stats["cancelled"],
            "pendingBy": self.pendingBy(),
            "rateNow": rateNow,
            "rateAverage": average,
            "expected": expected,
            "progress": progress,
            "eta": eta,
        }, stats

    def workers(
        self, now: float, stats: dict[str, Any], running: list[TaskRecord]
    ) -> list[dict[str, Any]]:
        """One row per attached worker."""
        rows = []
        special = {
            name: state
            for name, state in self.queue.workerStates().items()
            if state != "attached"
        }
        runningOn: dict[str | None, list[TaskRecord]] = {}
        for record in running:
            runningOn.setdefault(record.worker, []).append(record)
        firstSeen = self._firstSeen
        for worker in self.queue.workers():
            name = worker.name
            info = stats["workers"].get(name, {})
            mine = runningOn.get(name, [])
            capacity = max(1, int(info.get("capacity", 1) or 1))
            busy = self._busy.get(name, 0.0) + sum(
                now - r.started for r in mine if r.started is not None
            )
            wall = (now - firstSeen.setdefault(name, now)) * capacity
            restarts = int(info.get("replaced", 0) or 0)
            seen = self._restarts.get(name)
            if seen is None or seen[0] != restarts:
                # A new child since the last look (none at the first look).
                seen = self._restarts[name] = (
                    restarts,
                    now if seen is not None else -math.inf,
                )
            state = special.get(name)
            if state is None:
                if now - seen[1] < RESPAWN_SHOWN:
                    state = "respawned"
                elif info.get("connected") is False:
                    state = "disconnected"
                elif info.get("running", 0):
                    state = "busy"
                else:
                    state = "ready"
            host = info.get("node") or info.get("scheduler") or self.host
            rows.append(
                {
                    "name": name,
                    "kind": workerKind(worker),
                    "host": str(host),
                    "pid": info.get("pid"),
                    "state": state,
                    "capacity": capacity,
                    "running": info.get("running", 0),
                    "done": info.get("done", 0),
                    "failed": info.get("failed", 0),
                    "utilisation": min(1.0, busy / wall) if wall > 0 else 0.0,
                    "restarts": restarts,
                    "tasks": [
                        {"id": r.id, "name": r.name, "started": r.started}
                        for r in mine[:8]
                    ],
                }
            )
        # Workers gone for good are forgotten, so that nothing piles up.
        names = {row["name"] for row in rows}
        for gone in [n for n in firstSeen if n not in names]:
            del firstSeen[gone]
            self._busy.pop(gone, None)
            self._restarts.pop(gone, None)
        return rows

    def pendingTasks(self, limit: int = 10) -> list[dict[str, Any]]:
        """Pending tasks (at most C{limit}), the most urgent of each series first."""
        return [
            {
                "id": record.id,
                "name": record.name,
                "priority": priorityBand(record.priority),
                "submitted": record.submitted,
            }
            for record in self.queue.pendingRecords(limit)
        ]

    @staticmethod
    def bar(record: TaskRecord) -> list[Any]:
        """A task stream bar: C{[id, worker, started, ended, state]}."""
        return [record.id, record.worker, record.started, record.ended, record.state]

    def bars(self, now: float, fresh: bool) -> list[list[Any]]:
        """
        The bars of tasks that ended within the window: all of them, or
        with C{fresh} only those ended since the last call with C{fresh}.
        """
        since = now - self.window
        if fresh:
            records = list(self.fresh)
            self.fresh.clear()
        else:
            records = list(self.recent)
        return [
            self.bar(r) for r in records if r.ended is not None and r.ended >= since
        ]

    def snapshot(self, now: float | None = None, full: bool = True) -> dict[str, Any]:
        """
        Everything the page shows, as JSON-ready data.

        With C{full=False} the task stream holds only the bars ended since
        the last such snapshot (a page keeps the earlier ones itself).
        """
        if now is None:
            now = self.clock.seconds()
        records = self.queue.runningRecords()
        headline, stats = self.headline(now)
        running = [self.bar(r) for r in records if r.started is not None]
        return {
            "queue": str(self.queue.name),
            "open": bool(self.queue.isRunning()),
            "now": now,
            "window": self.window,
            "headline": headline,
            "workers": self.workers(now, stats, records),
            "pendingTasks": self.pendingTasks(),
            "stream": {
                "full": full,
                "ended": self.bars(now, fresh=not full),
                "running": running,
            },
            "failures": list(self.failures),
            "slowest": [e for _, _, e in sorted(self._slowest, reverse=True)],
        }
