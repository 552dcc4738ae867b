"""
Tests of asynqueue.queue.kept: the records of ended tasks are kept packed,
the newest C{maxRecords}, and come back as they were.
"""

from __future__ import annotations

import gc

import pytest

from asynqueue.queue.kept import CHUNK, KeptRecords
from asynqueue.tasks import TaskRecord, recordRow


def record(i: int, series: object = None) -> TaskRecord:
    r = TaskRecord(i, f"task{i}", "f", -i / 2, series, None, float(i))
    r.started, r.ended, r.worker = i + 0.25, i + 0.5, "w"
    r.state, r.outcome, r.attempts = "done", "result", 1
    return r


def test_rowsComeBackAsTheyWereOldestFirst() -> None:
    kept = KeptRecords(None)
    made = [record(i) for i in range(CHUNK * 2 + 5)]
    for r in made:
        kept.add(recordRow(r))
    assert len(kept) == len(made)
    assert kept.rows() == [recordRow(r) for r in made]
    again = TaskRecord.fromRow(kept.rows()[7])
    assert (again.id, again.name, again.runTime) == (7, "task7", 0.25)


def test_theCollectorSeesChunksNotRows() -> None:
    kept = KeptRecords(None)
    for i in range(CHUNK * 3):
        kept.add(recordRow(record(i)))
    gc.collect()
    # Everything kept is reachable through fewer objects than a chunk of rows.
    assert len(gc.get_referents(kept._packed)) == 3
    assert all(type(data) is bytes for _, data in kept._packed)
    assert kept._fresh == []


def test_theNewestMaxRecordsAreKept() -> None:
    kept = KeptRecords(CHUNK + 10)
    for i in range(CHUNK * 4 + 3):
        kept.add(recordRow(record(i)))
    rows = kept.rows()
    assert len(rows) == len(kept) == CHUNK + 10
    assert [row[0] for row in rows] == list(range(CHUNK * 3 - 7, CHUNK * 4 + 3))
    # Never more than a chunk beyond the limit is held.
    assert kept._packedRows + len(kept._fresh) <= 2 * CHUNK + 10


@pytest.mark.parametrize("limit", [0, 3])
def test_smallLimits(limit: int) -> None:
    kept = KeptRecords(limit)
    for i in range(CHUNK + 1):
        kept.add(recordRow(record(i)))
    assert [row[0] for row in kept.rows()] == list(range(CHUNK + 1 - limit, CHUNK + 1))


def test_aSeriesThatIsNotPlainDataIsKeptAsItIs() -> None:
    class Gpu:
        pass

    gpu = Gpu()
    kept = KeptRecords(None)
    for i in range(CHUNK):
        kept.add(recordRow(record(i, gpu if i == 5 else "cpu")))
    assert kept.rows()[5][4] is gpu and kept.rows()[6][4] == "cpu"
