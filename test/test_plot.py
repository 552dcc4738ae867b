"""Tests of asynqueue.plot: Gantt charts whose pixels say what the records say."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.python.failure import Failure

from asynqueue import MemoryWorker, Task, TaskRecord
from asynqueue.plot import PALETTE, WAIT_COLOR, gantt
from helpers import failureOf

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

RED = "#ff0000"
BLUE = "#0000ff"


def rgb(color: str) -> tuple[int, int, int]:
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def begin(w: MemoryWorker) -> Task:
    """Start the worker's next task, which must be there."""
    task = w.startNext()
    assert task is not None, "no task to start"
    return task


def nothing() -> None:
    return None


def laneRecords(clock: Any, makeQueue: Any) -> list[TaskRecord]:
    """
    Three tasks on a two-slot worker, all submitted at 0.

    0: lane A, runs 1-5.  1: lane A, waits for 0, runs 5-6.  2: lane B, runs 1-3.
    """
    w = MemoryWorker(capacity=2)
    q = makeQueue(w)
    q.call(nothing, lane="A")
    q.call(nothing, lane="A")
    q.call(nothing, lane="B")
    clock.advance(1)
    a0 = begin(w)
    b = begin(w)
    clock.advance(2)
    w.finish(b)
    clock.advance(2)
    w.finish(a0)
    a1 = begin(w)
    clock.advance(1)
    w.finish(a1)
    records = q.records()
    assert [(r.lane, r.submitted, r.started, r.ended) for r in records] == [
        ("A", 0, 1, 5),
        ("A", 0, 5, 6),
        ("B", 0, 1, 3),
    ]
    return records


class Picture:
    """A saved chart: its pixels, and where its axes put things."""

    def __init__(self, fig: Any, path: Path) -> None:
        self.fig = fig
        self.image = Image.open(path).convert("RGB")
        self.height = self.image.height
        assert self.image.size == (
            round(fig.get_figwidth() * fig.dpi),
            round(fig.get_figheight() * fig.dpi),
        )

    def row(self, ax: Any, y: float) -> int:
        """The pixel row of data row C{y}'s centre in C{ax}."""
        return round(self.height - ax.transData.transform((0, y))[1])

    def column(self, ax: Any, t: float) -> float:
        """The pixel column of time C{t} in C{ax}."""
        return float(ax.transData.transform((t, 0))[0])

    def runs(self, ax: Any, row: int, color: str) -> list[tuple[int, int]]:
        """The [start, end) column spans of C{color} in C{row}, inside C{ax}."""
        x0, x1 = round(ax.bbox.x0), round(ax.bbox.x1)
        target = rgb(color)
        spans: list[tuple[int, int]] = []
        start = None
        for x in range(x0, x1 + 1):
            hit = x < x1 and self.image.getpixel((x, row)) == target
            if hit and start is None:
                start = x
            elif not hit and start is not None:
                spans.append((start, x))
                start = None
        return spans

    def count(self, box: Any, color: str) -> int:
        """How many pixels of C{color} lie in display box C{box}."""
        left = max(0, round(box.x0))
        right = min(self.image.width, round(box.x1))
        top = max(0, round(self.height - box.y1))
        bottom = min(self.height, round(self.height - box.y0))
        crop = self.image.crop((left, top, right, bottom))
        colors = crop.getcolors(crop.width * crop.height) or []
        return sum(n for n, c in colors if c == rgb(color))


def near(actual: float, expected: float, tolerance: float = 2.0) -> bool:
    return abs(actual - expected) <= tolerance


def test_barsSayWhatTheRecordsSay(tmp_path: Path, clock: Any, makeQueue: Any) -> None:
    records = laneRecords(clock, makeQueue)
    path = tmp_path / "lanes.png"
    fig = gantt(
        records,
        path,
        colorBy="lane",
        palette={"A": RED, "B": BLUE},
        xlim=(-1, 8),
        title="lanes",
    )
    pic = Picture(fig, path)
    (ax,) = fig.axes
    assert ax.get_xlim() == (-1, 8)
    laneColors = {"A": RED, "B": BLUE}
    widths = {}
    for y, r in enumerate(records):
        row = pic.row(ax, y)
        assert r.started is not None and r.ended is not None
        lane = str(r.lane)
        mine, other = laneColors[lane], laneColors["B" if lane == "A" else "A"]
        (span,) = pic.runs(ax, row, mine)
        assert pic.runs(ax, row, other) == []
        assert near(span[0], pic.column(ax, r.started)), (r, span)
        assert near(span[1], pic.column(ax, r.ended)), (r, span)
        widths[r.id] = span[1] - span[0]
        (waiting,) = pic.runs(ax, row, WAIT_COLOR)
        assert near(waiting[0], pic.column(ax, r.submitted))
        assert near(waiting[1], pic.column(ax, r.started))
    # Runs of 4, 1 and 2 seconds on a 9-second axis.
    assert widths[0] > widths[2] > widths[1]
    assert near(widths[0], 2 * widths[2], 3)
    assert near(widths[2], 2 * widths[1], 3)
    # The running bar is thick and the waiting bar thin.
    x = round(pic.column(ax, 3))
    redRows = [r for r in range(pic.height) if pic.image.getpixel((x, r)) == rgb(RED)]
    greyRows = [
        r for r in range(pic.height) if pic.image.getpixel((x, r)) == rgb(WAIT_COLOR)
    ]
    assert len(redRows) > 2 * len(greyRows) > 0
    # Task 0 is on top: submission order from the top.
    assert pic.row(ax, 0) < pic.row(ax, 1) < pic.row(ax, 2)
    assert fig.texts[0].get_text() == "lanes"


def test_defaultPaletteAndLegend(tmp_path: Path, clock: Any, makeQueue: Any) -> None:
    records = laneRecords(clock, makeQueue)
    path = tmp_path / "lanes.png"
    fig = gantt(records, path)
    pic = Picture(fig, path)
    (ax,) = fig.axes
    (legend,) = fig.legends
    assert legend.get_title().get_text() == "lane"
    assert [t.get_text() for t in legend.get_texts()] == ["A", "B", "waiting"]
    # Values in sorted order take the palette's colours in order.
    assert pic.runs(ax, pic.row(ax, 0), PALETTE[0])
    assert pic.runs(ax, pic.row(ax, 2), PALETTE[1])
    assert not pic.runs(ax, pic.row(ax, 2), PALETTE[0])


def test_noLegend(clock: Any, makeQueue: Any) -> None:
    records = laneRecords(clock, makeQueue)
    assert gantt(records, legend=False).legends == []
    assert gantt(records, colorBy=None).legends == []


def test_facetsOnePerValue(tmp_path: Path, clock: Any, makeQueue: Any) -> None:
    records = laneRecords(clock, makeQueue)
    path = tmp_path / "facets.png"
    fig = gantt(
        records, path, colorBy="lane", facetBy="lane", palette={"A": RED, "B": BLUE}
    )
    pic = Picture(fig, path)
    top, bottom = fig.axes
    assert [top.get_title(), bottom.get_title()] == ["lane = A", "lane = B"]
    assert top.bbox.y0 > bottom.bbox.y1, "lane A's subplot is not above lane B's"
    # Lane A's two tasks are in the top subplot, lane B's one in the bottom.
    assert pic.count(top.bbox, RED) > 0
    assert pic.count(top.bbox, BLUE) == 0
    assert pic.count(bottom.bbox, BLUE) > 0
    assert pic.count(bottom.bbox, RED) == 0
    assert len(pic.runs(top, pic.row(top, 0), RED)) == 1
    assert len(pic.runs(top, pic.row(top, 1), RED)) == 1
    assert len(pic.runs(bottom, pic.row(bottom, 0), BLUE)) == 1
    # Shared time axis: a second is as wide in both.
    assert near(
        pic.column(top, 5) - pic.column(top, 1),
        pic.column(bottom, 5) - pic.column(bottom, 1),
        0.5,
    )


def test_facetAndColorByOtherFields(clock: Any, makeQueue: Any) -> None:
    w1, w2 = MemoryWorker(name="w1"), MemoryWorker(name="w2")
    q = makeQueue(w1, w2)
    ds = [q.call(nothing, priority=p) for p in (1, 2, 3, 4)]
    clock.advance(1)
    w1.runNext()
    w2.runNext()
    t = begin(w1)
    assert t is not None
    clock.advance(1)
    w1.finish(t, Failure(KeyError("x")))
    failureOf(ds[t.record.id])
    ds[3].cancel()
    failureOf(ds[3])
    records = q.records()
    assert len(gantt(records, facetBy="worker").axes) == 2
    assert len(gantt(records, facetBy="priority").axes) == 4
    fig = gantt(records, facetBy="outcome", colorBy="outcome")
    assert [ax.get_title() for ax in fig.axes] == [
        "outcome = CancelledError",
        "outcome = KeyError",
        "outcome = result",
    ]
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "CancelledError",
        "KeyError",
        "result",
        "waiting",
    ]
    assert len(gantt(records, facetBy="state").axes) == 3


def test_unfinishedTasksRunToTheLastTime(
    tmp_path: Path, clock: Any, makeQueue: Any
) -> None:
    w = MemoryWorker(capacity=2)
    q = makeQueue(w)
    q.call(nothing, lane="A").addErrback(lambda f: None)
    q.call(nothing, lane="B")
    clock.advance(1)
    w.startNext()
    b = begin(w)
    clock.advance(3)
    w.finish(b)
    path = tmp_path / "running.png"
    fig = gantt(q.records(), path, palette={"A": RED, "B": BLUE}, xlim=(0, 5))
    pic = Picture(fig, path)
    (ax,) = fig.axes
    (running,) = pic.runs(ax, pic.row(ax, 0), RED)
    assert near(running[1], pic.column(ax, 4))


def test_pathNoneWritesNothing(tmp_path: Path, clock: Any, makeQueue: Any) -> None:
    records = laneRecords(clock, makeQueue)
    fig = gantt(records)
    assert list(tmp_path.iterdir()) == []
    assert fig.get_dpi() == 100


def test_badArguments(clock: Any, makeQueue: Any) -> None:
    records = laneRecords(clock, makeQueue)
    with pytest.raises(ValueError, match="colorBy"):
        gantt(records, colorBy="qid")
    with pytest.raises(ValueError, match="facetBy"):
        gantt(records, facetBy="output")
    with pytest.raises(ValueError, match="no colour"):
        gantt(records, palette={"A": RED})
    with pytest.raises(ValueError, match="at least one"):
        gantt([])


def test_withoutMatplotlib(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(sys.modules):
        if name.split(".")[0] == "matplotlib":
            monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'asynqueue\[plot\]'"):
        gantt([])


def test_taskShorterThanAPixelStillHasABar(
    tmp_path: Path, clock: Any, makeQueue: Any
) -> None:
    w = MemoryWorker(capacity=2)
    q = makeQueue(w)
    q.call(nothing, lane="A").addErrback(lambda f: None)
    q.call(nothing, lane="B")
    clock.advance(1)
    short = begin(w)
    long = begin(w)
    clock.advance(63e-6)
    w.finish(short, Failure(ValueError("quick")))
    clock.advance(10)
    w.finish(long)
    path = tmp_path / "short.png"
    fig = gantt(q.records(), path, palette={"A": RED, "B": BLUE})
    pic = Picture(fig, path)
    (ax,) = fig.axes
    (span,) = pic.runs(ax, pic.row(ax, 0), RED)
    assert span[1] - span[0] >= 1
    assert near((span[0] + span[1]) / 2, pic.column(ax, 1))
    # A long bar is drawn as long as it is.
    (longSpan,) = pic.runs(ax, pic.row(ax, 1), BLUE)
    assert near(longSpan[0], pic.column(ax, 1))
    assert near(longSpan[1], pic.column(ax, 11 + 63e-6))
