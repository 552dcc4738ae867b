"""
The dashboard's view of a queue: counts, workers, recent task bars,
failures and the slowest tasks, derived from the queue's events.

L{QueueView} observes a queue (C{queue.observe}); what it does per event
is O(1) and its memory is bounded (rings of the newest records), so a
queue may run for days with it attached. L{QueueView.snapshot} builds the
JSON-ready dict the page draws; it is built only when a page is open, at
most a few times a second (see L{asynqueue.web.server}).
"""

from __future__ import annotations

import heapq
import math
import reprlib
import socket
import traceback
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from asynqueue.tasks import TaskRecord
from asynqueue.web.taps import EndTap, slotStates

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


class _WorkerTally:
    """What the view adds up of one worker from the events."""

    __slots__ = ("firstSeen", "busy", "running")

    def __init__(self, now: float) -> None:
        self.firstSeen = now
        self.busy = 0.0
        self.running: dict[int, TaskRecord] = {}


class QueueView:
    """
    A queue as the dashboard shows it, kept up to date by the queue's events.

    @param queue: The L{asynqueue.TaskQueue} to watch.
    @param clock: The queue's clock (its records' times are in it).
    @param window: Seconds of task bars the task stream shows.
    @param keep: How many ended records the stream keeps at most.
    @param onChange: Called (with no argument) after each event; the
        server coalesces what it does then.
    """

    def __init__(
        self,
        queue: Any,
        clock: IReactorTime,
        window: float = 60.0,
        keep: int = 2000,
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
        self._pending: dict[int, TaskRecord] = {}
        self.pendingBy: dict[str, dict[str, int]] = {
            "priority": {},
            "series": {},
            "lane": {},
        }
        self._workers: dict[str, _WorkerTally] = {}
        #: The worker each running task runs on, by record ID.
        self._where: dict[int, str] = {}
        self.recent: deque[TaskRecord] = deque(maxlen=keep)
        #: Records ended since the server last took them (for its deltas).
        self.fresh: deque[TaskRecord] = deque(maxlen=keep)
        self.failures: deque[dict[str, Any]] = deque(maxlen=20)
        self._slowest: list[tuple[float, int, dict[str, Any]]] = []
        self._rates: deque[tuple[float, int]] = deque(maxlen=64)
        self._tap: EndTap | None = None
        self._stop: Callable[[], None] | None = None

    # ------------------------------------------------------------------
    # Attaching

    def attach(self) -> None:
        """Start observing the queue (what is pending or running now is counted)."""
        if self._stop is not None:
            return
        self._tap = EndTap(self.queue)
        self._stop = self.queue.observe(self.observe)
        for name in self._workerNames():
            self._tally(name)
        # What was submitted before: once, from the records the queue keeps.
        for record in self.queue.records():
            if record.state == "pending":
                self.observe("submitted", record)
            elif record.state == "running":
                if record.started is None:
                    self.observe("submitted", record)
                else:
                    self.observe("started", record)

    def detach(self) -> None:
        """Stop observing the queue."""
        if self._stop is not None:
            self._stop()
            self._stop = None
        if self._tap is not None:
            self._tap.remove()
            self._tap = None

    def expect(self, total: int) -> None:
        """C{total} tasks are to end from now: the headline shows an ETA."""
        self.expected = int(total)
        self._endedAtExpect = self.ended

    # ------------------------------------------------------------------
    # Events: O(1) each

    def observe(self, event: str, record: TaskRecord) -> None:
        """The queue's observer: C{submitted}, C{started} or C{ended}."""
        if event == "submitted":
            self._pending[record.id] = record
            self._countPending(record, 1)
        elif event == "started":
            if self._pending.pop(record.id, None) is not None:
                self._countPending(record, -1)
            worker = record.worker
            if worker is not None:
                before = self._where.get(record.id)
                if before is not None and before != worker:
                    # Run again elsewhere (its worker crashed): not there any more.
                    self._tally(before).running.pop(record.id, None)
                self._where[record.id] = worker
                self._tally(worker).running[record.id] = record
        elif event == "ended":
            self._ended(record)
        if self.onChange is not None:
            self.onChange()

    def _tally(self, worker: str) -> _WorkerTally:
        tally = self._workers.get(worker)
        if tally is None:
            tally = self._workers[worker] = _WorkerTally(self.clock.seconds())
        return tally

    def _countPending(self, record: TaskRecord, n: int) -> None:
        by = self.pendingBy
        _count(by["priority"], priorityBand(record.priority), n)
        if record.series is not None:
            _count(by["series"], _label(record.series), n)
        if record.lane is not None:
            _count(by["lane"], _label(record.lane), n)

    def _ended(self, record: TaskRecord) -> None:
        self.ended += 1
        if self._pending.pop(record.id, None) is not None:
            self._countPending(record, -1)
        worker = self._where.pop(record.id, record.worker)
        if worker is not None:
            tally = self._workers.get(worker)
            if tally is not None:
                tally.running.pop(record.id, None)
                runTime = record.runTime
                if runTime is not None:
                    tally.busy += runTime
        if record.started is not None:
            self.recent.append(record)
            self.fresh.append(record)
        tap = self._tap
        task = tap.task if tap is not None else None
        if task is None or task.record is not record:
            task = None
        if record.state in ("failed", "timedOut"):
            self._noteFailure(
                record, tap.result if tap is not None and task is not None else None
            )
        runTime = record.runTime
        if runTime is not None and (
            len(self._slowest) < 10 or runTime > self._slowest[0][0]
        ):
            self._noteSlow(record, runTime, task)

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

    def _noteSlow(self, record: TaskRecord, runTime: float, task: Any) -> None:
        call = (
            shortCall(record.name, task.args, task.kwargs)
            if task is not None
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

    # ------------------------------------------------------------------
    # What the page is sent

    def _workerNames(self) -> list[str]:
        return [w.name for w in self.queue.workers()]

    def rates(self, now: float) -> tuple[float, float]:
        """Tasks ended per second lately (over about 5 s) and since attached."""
        samples = self._rates
        samples.append((now, self.ended))
        while len(samples) > 2 and samples[1][0] <= now - RATE_SPAN:
            samples.popleft()
        then, endedThen = samples[0]
        rateNow = (self.ended - endedThen) / (now - then) if now > then else 0.0
        span = now - self.started
        average = self.ended / span if span > 0 else 0.0
        return rateNow, average

    def headline(self, now: float) -> tuple[dict[str, Any], dict[str, Any]]:
        """The counts, rates and ETA at the top of the page; and C{queue.stats()}."""
        stats = self.queue.stats()
        rateNow, average = self.rates(now)
        eta = None
        progress = None
        if self.expected is not None:
            progress = self.ended - self._endedAtExpect
            left = max(0, self.expected - progress)
            rate = rateNow or average
            eta = 0.0 if left == 0 else (left / rate if rate > 0 else None)
        return {
            "pending": stats["pending"],
            "running": stats["running"],
            "done": stats["done"],
            "failed": stats["failed"],
            "cancelled": stats["cancelled"],
            "pendingBy": {k: dict(v) for k, v in self.pendingBy.items()},
            "rateNow": rateNow,
            "rateAverage": average,
            "expected": self.expected,
            "progress": progress,
            "eta": eta,
        }, stats

    def workers(self, now: float, stats: dict[str, Any]) -> list[dict[str, Any]]:
        """One row per attached worker."""
        rows = []
        special = slotStates(self.queue)
        for worker in self.queue.workers():
            name = worker.name
            info = stats["workers"].get(name, {})
            tally = self._tally(name)
            capacity = max(1, int(info.get("capacity", 1) or 1))
            busy = tally.busy + sum(
                now - r.started for r in tally.running.values() if r.started is not None
            )
            wall = (now - tally.firstSeen) * capacity
            restarts = int(info.get("replaced", 0) or 0)
            state = special.get(name)
            if state is None:
                if info.get("connected") is False:
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
                        {
                            "id": r.id,
                            "name": r.name,
                            "started": r.started,
                        }
                        for r in list(tally.running.values())[:8]
                    ],
                }
            )
        # Workers gone for good are forgotten, so that their tallies do not pile up.
        names = {row["name"] for row in rows}
        for name in [n for n in self._workers if n not in names]:
            if not self._workers[name].running:
                del self._workers[name]
        return rows

    def pendingTasks(self, limit: int = 10) -> list[dict[str, Any]]:
        """The oldest pending tasks (at most C{limit})."""
        out = []
        for record in self._pending.values():
            out.append(
                {
                    "id": record.id,
                    "name": record.name,
                    "priority": priorityBand(record.priority),
                    "submitted": record.submitted,
                }
            )
            if len(out) >= limit:
                break
        return out

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
        headline, stats = self.headline(now)
        running = [
            self.bar(r)
            for tally in self._workers.values()
            for r in tally.running.values()
        ]
        return {
            "queue": str(self.queue.name),
            "open": bool(self.queue.isRunning()),
            "now": now,
            "window": self.window,
            "headline": headline,
            "workers": self.workers(now, stats),
            "pendingTasks": self.pendingTasks(),
            "stream": {
                "full": full,
                "ended": self.bars(now, fresh=not full),
                "running": running,
            },
            "failures": list(self.failures),
            "slowest": [e for _, _, e in sorted(self._slowest, reverse=True)],
        }
