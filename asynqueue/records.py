"""
Task records as rows, dicts and a CSV log written while the queue runs.

L{CSVRecordLog} observes a queue (C{queue.observe}) and appends one CSV row
per task that ends, flushing each, so the file can be read (or tailed)
while the queue works: ezpq's C{log_file}. L{recordsToDicts} and
L{recordsToRows} turn C{queue.records()} into what C{pandas.DataFrame} and
the C{csv} module take; C{style="ezpq"} gives the keys of ezpq's
C{collect()}.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import IO, TYPE_CHECKING, Any, Literal

from asynqueue.tasks import TaskRecord

if TYPE_CHECKING:
    from asynqueue.queue.core import TaskQueue

__all__ = [
    "RECORD_FIELDS",
    "EZPQ_FIELDS",
    "CSVRecordLog",
    "openRecordLog",
    "recordToDict",
    "recordsToDicts",
    "recordsToRows",
    "writeCSV",
]

#: Every column a record has, in order: the L{TaskRecord} fields, then the
#: derived C{waitTime} and C{runTime}.
RECORD_FIELDS: tuple[str, ...] = (
    "id",
    "name",
    "function",
    "priority",
    "series",
    "lane",
    "submitted",
    "started",
    "ended",
    "worker",
    "state",
    "outcome",
    "attempts",
    "waitTime",
    "runTime",
)

#: The keys of an ezpq-style dict (C{style="ezpq"}), in order. ezpq's
#: C{args}, C{kwargs}, C{output}, C{callback} and C{timeout} are not kept in
#: records (results belong to the Deferreds), so they are not here.
EZPQ_FIELDS: tuple[str, ...] = (
    "id",
    "qid",
    "name",
    "function",
    "priority",
    "lane",
    "submitted",
    "started",
    "ended",
    "processed",
    "runtime",
    "exitcode",
    "cancelled",
    "exception",
    # asynqueue's own, under their own names
    "series",
    "worker",
    "state",
    "attempts",
    "waitTime",
)

Style = Literal["asynqueue", "ezpq"]


def _value(record: TaskRecord, name: str) -> Any:
    return getattr(record, name)


def _checkFields(fields: Iterable[str] | None) -> tuple[str, ...]:
    if fields is None:
        return RECORD_FIELDS
    chosen = tuple(fields)
    unknown = [f for f in chosen if f not in RECORD_FIELDS]
    if unknown:
        raise ValueError(
            f"unknown record field(s) {', '.join(map(repr, unknown))}; "
            f"choose from {', '.join(RECORD_FIELDS)}"
        )
    return chosen


def _exitCode(record: TaskRecord) -> int | None:
    if record.ended is None:
        return None
    return 0 if record.state == "done" else 1


def _ezpqDict(record: TaskRecord, qid: str | None, datetimes: bool) -> dict[str, Any]:
    def when(t: float | None) -> float | datetime | None:
        return datetime.fromtimestamp(t) if datetimes and t is not None else t

    return {
        "id": record.id,
        "qid": qid,
        "name": record.name,
        "function": record.function,
        "priority": record.priority,
        "lane": record.lane,
        "submitted": when(record.submitted),
        "started": when(record.started),
        "ended": when(record.ended),
        "processed": when(record.ended),
        "runtime": record.runTime,
        "exitcode": _exitCode(record),
        "cancelled": record.state == "cancelled",
        "exception": None if record.outcome in (None, "result") else record.outcome,
        "series": record.series,
        "worker": record.worker,
        "state": record.state,
        "attempts": record.attempts,
        "waitTime": record.waitTime,
    }


def recordToDict(
    record: TaskRecord, fields: Iterable[str] | None = None
) -> dict[str, Any]:
    """One record as a dict of C{fields} (default: L{RECORD_FIELDS})."""
    return {name: _value(record, name) for name in _checkFields(fields)}


def recordsToDicts(
    records: Iterable[TaskRecord],
    style: Style = "asynqueue",
    *,
    qid: str | None = None,
    datetimes: bool = False,
) -> list[dict[str, Any]]:
    """
    Records as dicts, ready for C{pandas.DataFrame(...)}.

    C{style="asynqueue"} keys them by L{RECORD_FIELDS}. C{style="ezpq"}
    gives the keys of ezpq's C{collect()} (L{EZPQ_FIELDS}): C{runtime} is
    C{runTime}; C{exitcode} is 0 for a task that returned, 1 for one that
    failed, timed out or was cancelled, C{None} for one not ended;
    C{cancelled} is a bool; C{exception} is the exception's type name or
    C{None}; C{processed} is C{ended}; C{qid} is what you pass (the queue's
    C{name}, say). Times are the queue clock's seconds (epoch seconds on
    the reactor); C{datetimes=True} turns them into C{datetime}s, as ezpq
    had them.
    """
    if style == "asynqueue":
        return [recordToDict(r) for r in records]
    if style == "ezpq":
        return [_ezpqDict(r, qid, datetimes) for r in records]
    raise ValueError(f"style must be 'asynqueue' or 'ezpq', not {style!r}")


def recordsToRows(
    records: Iterable[TaskRecord], fields: Iterable[str] | None = None
) -> list[tuple[Any, ...]]:
    """
    Records as tuples of C{fields} (default: L{RECORD_FIELDS}), in that order.

    No header row: the header is C{fields} itself, e.g.
    C{pandas.DataFrame(recordsToRows(q.records()), columns=RECORD_FIELDS)}.
    """
    chosen = _checkFields(fields)
    return [tuple(_value(r, name) for name in chosen) for r in records]


def _openFor(target: str | os.PathLike[str] | IO[str]) -> tuple[IO[str], bool]:
    """The file to write to, and whether it is ours to close."""
    if isinstance(target, (str, os.PathLike)):
        return open(target, "a", newline="", encoding="utf-8"), True
    return target, False


def writeCSV(
    records: Iterable[TaskRecord],
    path: str | os.PathLike[str] | IO[str],
    fields: Iterable[str] | None = None,
) -> int:
    """
    Write records to a CSV file at once (appending; the header only to an
    empty file) and return how many rows were written.
    """
    log = CSVRecordLog(path, fields)
    try:
        for record in records:
            log.write(record)
        return log.rowsWritten
    finally:
        log.close()


class CSVRecordLog:
    """
    A CSV log of task records, one row per task as it ends.

    Use it as an observer: C{log.attachTo(queue)} (or
    C{queue.observe(log)}). The file is opened for appending at once; the
    header (C{fields}) is written only if it is empty. Every row is flushed,
    so the file is readable while the queue runs. C{path} may also be an
    open text file (opened with C{newline=""}), which L{close} flushes but
    leaves open.

    Cells: C{None} is empty, numbers are written as Python writes them,
    anything else (a lane or series object) as its C{str}.

    @param fields: The columns, a subsequence of L{RECORD_FIELDS} (default:
        all of them).
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | IO[str],
        fields: Iterable[str] | None = None,
    ) -> None:
        self.fields = _checkFields(fields)
        self._file, self._owned = _openFor(path)
        self._writer = csv.writer(self._file)
        self._stops: list[Callable[[], None]] = []
        self.rowsWritten = 0
        self.closed = False
        if self._isEmpty():
            self._writer.writerow(self.fields)
            self._file.flush()

    def _isEmpty(self) -> bool:
        try:
            return self._file.tell() == 0
        except (OSError, ValueError):
            # A pipe or terminal: nothing to append to, so a header is due.
            return True

    def __call__(self, event: str, record: TaskRecord) -> None:
        """The observer: write a row when a task has ended."""
        if event == "ended":
            self.write(record)

    def write(self, record: TaskRecord) -> None:
        """Write one record's row now, and flush it."""
        if self.closed:
            return
        self._writer.writerow([_value(record, name) for name in self.fields])
        self._file.flush()
        self.rowsWritten += 1

    def attachTo(self, queue: TaskQueue) -> Callable[[], None]:
        """Log the tasks of C{queue} that end from now on; return a stop function."""
        stop = queue.observe(self)
        self._stops.append(stop)
        return stop

    def close(self) -> None:
        """Stop observing every queue and close the file (if this log opened it)."""
        if self.closed:
            return
        self.closed = True
        stops, self._stops = self._stops, []
        for stop in stops:
            stop()
        if self._owned:
            self._file.close()
        else:
            self._file.flush()


def openRecordLog(
    queue: TaskQueue,
    path: str | os.PathLike[str] | IO[str],
    fields: Iterable[str] | None = None,
) -> Callable[[], None]:
    """
    Log C{queue}'s tasks to a CSV file as they end; return a function that
    stops logging and closes the file.

    This is what C{TaskQueue(logFile=path)} does; call the returned
    function when the queue has shut down.
    """
    log = CSVRecordLog(path, fields)
    log.attachTo(queue)
    return log.close
