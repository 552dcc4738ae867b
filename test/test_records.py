"""Tests of asynqueue.records: the CSV log and the row and dict helpers."""

from __future__ import annotations

import csv
import io
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure

from asynqueue import MemoryWorker, Task, TaskRecord
from asynqueue.records import (
    EZPQ_FIELDS,
    RECORD_FIELDS,
    CSVRecordLog,
    openRecordLog,
    recordsToDicts,
    recordsToRows,
    recordToDict,
    writeCSV,
)
from helpers import failureOf


def readCSV(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def cell(value: Any) -> str:
    """What the csv module writes for a value."""
    return "" if value is None else str(value)


def expectedRow(
    record: TaskRecord, fields: tuple[str, ...] = RECORD_FIELDS
) -> list[str]:
    return [cell(getattr(record, name)) for name in fields]


def begin(w: MemoryWorker) -> Task:
    """Start the worker's next task, which must be there."""
    task = w.startNext()
    assert task is not None, "no task to start"
    return task


def double(x: int) -> int:
    return 2 * x


def runScenario(clock: Any, q: Any, w: MemoryWorker) -> list[Any]:
    """
    Three tasks on a one-slot worker, with known times.

    0: submitted 0, started 1, ends 4 with a result.
    1: submitted 0, started 4, fails at 6 with ValueError.
    2: submitted 0, cancelled at 6 while pending.
    """
    ds = [
        q.call(double, 1, lane="A", priority=1),
        q.call(double, 2, lane="B", name="second"),
        q.call(double, 3),
    ]
    clock.advance(1)
    t0 = begin(w)
    clock.advance(3)
    w.finish(t0, 2)
    t1 = begin(w)
    clock.advance(2)
    w.finish(t1, Failure(ValueError("no")))
    ds[2].cancel()
    failureOf(ds[1])
    failureOf(ds[2])
    return ds


def test_csvRowsMatchRecords(tmp_path: Path, makeQueue: Any, clock: Any) -> None:
    path = tmp_path / "log.csv"
    w = MemoryWorker()
    q = makeQueue(w)
    log = CSVRecordLog(path)
    log.attachTo(q)
    runScenario(clock, q, w)
    log.close()
    rows = readCSV(path)
    assert rows[0] == list(RECORD_FIELDS)
    records = q.records()
    # Rows come in the order the tasks ended.
    assert rows[1:] == [expectedRow(r) for r in records]
    byId = {row[0]: dict(zip(rows[0], row, strict=True)) for row in rows[1:]}
    assert byId["0"]["runTime"] == "3.0"
    assert byId["0"]["waitTime"] == "1.0"
    assert byId["0"]["lane"] == "A"
    assert byId["0"]["priority"] == "1.0"
    assert byId["1"]["outcome"] == "ValueError"
    assert byId["1"]["state"] == "failed"
    assert byId["1"]["name"] == "second"
    assert byId["2"]["state"] == "cancelled"
    assert byId["2"]["started"] == ""
    assert byId["2"]["runTime"] == ""


def test_csvWrittenWhileTheQueueRuns(
    tmp_path: Path, makeQueue: Any, clock: Any
) -> None:
    path = tmp_path / "log.csv"
    w = MemoryWorker()
    q = makeQueue(w)
    stop = openRecordLog(q, path)
    assert readCSV(path) == [list(RECORD_FIELDS)]
    q.call(double, 1)
    q.call(double, 2)
    clock.advance(1)
    t0 = begin(w)
    assert len(readCSV(path)) == 1, "a row before the task ended"
    clock.advance(1)
    w.finish(t0, 2)
    rows = readCSV(path)
    assert rows[1:] == [expectedRow(q.records()[0])]
    t1 = begin(w)
    clock.advance(1)
    w.finish(t1, 4)
    assert len(readCSV(path)) == 3
    stop()
    q.call(double, 3)
    w.runNext()
    assert len(readCSV(path)) == 3, "a row after the log was stopped"


def test_csvHeaderOnlyOnce(tmp_path: Path, makeQueue: Any) -> None:
    path = tmp_path / "log.csv"
    w = MemoryWorker()
    q = makeQueue(w)
    for x in range(2):
        stop = openRecordLog(q, path, fields=["id", "state"])
        q.call(double, x)
        w.runNext()
        stop()
    assert readCSV(path) == [["id", "state"], ["0", "done"], ["1", "done"]]


def test_csvFieldsChosen(tmp_path: Path, makeQueue: Any, clock: Any) -> None:
    path = tmp_path / "log.csv"
    w = MemoryWorker()
    q = makeQueue(w)
    fields = ("name", "runTime", "outcome")
    stop = openRecordLog(q, path, fields=fields)
    runScenario(clock, q, w)
    stop()
    assert readCSV(path) == [list(fields)] + [
        expectedRow(r, fields) for r in q.records()
    ]


def test_csvUnknownFieldRefused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'duration'"):
        CSVRecordLog(tmp_path / "log.csv", fields=["id", "duration"])
    assert not (tmp_path / "log.csv").exists()


def test_csvToOpenFileLeftOpen(makeQueue: Any) -> None:
    out = io.StringIO()
    w = MemoryWorker()
    q = makeQueue(w)
    log = CSVRecordLog(out, fields=["id", "outcome"])
    stop = log.attachTo(q)
    q.call(double, 1)
    w.runNext()
    stop()
    q.call(double, 2)
    w.runNext()
    log.close()
    assert not out.closed
    assert out.getvalue().splitlines() == ["id,outcome", "0,result"]


def test_closeStopsObserving(tmp_path: Path, makeQueue: Any) -> None:
    path = tmp_path / "log.csv"
    w = MemoryWorker()
    q = makeQueue(w)
    log = CSVRecordLog(path)
    log.attachTo(q)
    log.close()
    log.close()
    q.call(double, 1)
    w.runNext()
    assert readCSV(path) == [list(RECORD_FIELDS)]
    assert log.rowsWritten == 0


def test_writeCSV(tmp_path: Path, makeQueue: Any, clock: Any) -> None:
    path = tmp_path / "all.csv"
    w = MemoryWorker()
    q = makeQueue(w)
    runScenario(clock, q, w)
    assert writeCSV(q.records(), path) == 3
    assert readCSV(path)[1:] == [expectedRow(r) for r in q.records()]


def test_rowsAndDicts(makeQueue: Any, clock: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    runScenario(clock, q, w)
    records = q.records()
    rows = recordsToRows(records)
    assert rows[0] == (
        0,
        "double",
        "double",
        1.0,
        None,
        "A",
        0.0,
        1.0,
        4.0,
        w.name,
        "done",
        "result",
        1,
        1.0,
        3.0,
    )
    assert len(rows) == 3 and all(len(r) == len(RECORD_FIELDS) for r in rows)
    assert recordsToRows(records, ["id", "state"]) == [
        (0, "done"),
        (1, "failed"),
        (2, "cancelled"),
    ]
    dicts = recordsToDicts(records)
    assert dicts == [dict(zip(RECORD_FIELDS, row, strict=True)) for row in rows]
    assert recordToDict(records[1], ["runTime"]) == {"runTime": 2.0}


def test_ezpqDicts(makeQueue: Any, clock: Any) -> None:
    w = MemoryWorker()
    q = makeQueue(w)
    runScenario(clock, q, w)
    done, failed, cancelled = recordsToDicts(q.records(), "ezpq", qid="q1")
    assert list(done) == list(EZPQ_FIELDS)
    assert done["qid"] == "q1"
    assert done["runtime"] == 3.0
    assert done["exitcode"] == 0
    assert done["cancelled"] is False
    assert done["exception"] is None
    assert done["processed"] == done["ended"] == 4.0
    assert failed["exitcode"] == 1
    assert failed["exception"] == "ValueError"
    assert cancelled["cancelled"] is True
    assert cancelled["exitcode"] == 1
    assert cancelled["runtime"] is None
    withTimes = recordsToDicts(q.records(), "ezpq", datetimes=True)
    assert withTimes[0]["started"] == datetime.fromtimestamp(1.0)
    assert withTimes[2]["started"] is None


def test_ezpqExitcodeOfUnfinished(makeQueue: Any) -> None:
    q = makeQueue(MemoryWorker())
    q.call(double, 1).addErrback(lambda f: None)
    (pending,) = recordsToDicts(q.records(), "ezpq")
    assert pending["exitcode"] is None
    assert pending["ended"] is None


def test_unknownStyleRefused() -> None:
    with pytest.raises(ValueError, match="style"):
        recordsToDicts([], "pandas")  # type: ignore[arg-type]
