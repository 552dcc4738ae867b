"""
Gantt charts of task records: when each task waited and when it ran.

C{gantt(q.records(), "tasks.png")} draws one row per task: a thin grey bar
from submission to start (waiting) and a thick bar from start to end
(running), coloured by lane, priority, worker or outcome, or split into one
subplot per value: ezpq's C{Plot}, with matplotlib (C{pip install
asynqueue[plot]}). Nothing here needs a display; figures draw with Agg.
"""

from __future__ import annotations

import math
import numbers
import os
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from asynqueue.tasks import TaskRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["gantt", "PLOT_FIELDS", "WAIT_COLOR", "PALETTE"]

#: The record fields that C{colorBy} and C{facetBy} may name.
PLOT_FIELDS: frozenset[str] = frozenset(
    {"lane", "priority", "worker", "outcome", "state", "series", "name", "function"}
)

#: The colour of the waiting bars.
WAIT_COLOR = "#b4b4b4"

#: The colours given to values in their sorted order (matplotlib's tab10).
PALETTE: tuple[str, ...] = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)

RUN_HEIGHT = 0.8
WAIT_HEIGHT = 0.3
#: The narrowest a running bar is drawn, in pixels: a task shorter than a
#: pixel (a failure in microseconds) still shows, in its colour.
MIN_BAR_PIXELS = 3.0


def _sortKey(value: Any) -> tuple[int, float, str]:
    """Numbers in order, then everything else by its text, then None."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, str(value))


def _label(value: Any) -> str:
    return "none" if value is None else str(value)


def _checkField(name: str | None, argument: str) -> None:
    if name is not None and name not in PLOT_FIELDS:
        raise ValueError(
            f"{argument} must be one of {', '.join(sorted(PLOT_FIELDS))} or None, "
            f"not {name!r}"
        )


def _colorsFor(
    values: Sequence[Hashable], palette: Mapping[Any, str] | Sequence[str] | None
) -> dict[Hashable, str]:
    if isinstance(palette, Mapping):
        missing = [v for v in values if v not in palette]
        if missing:
            raise ValueError(f"the palette has no colour for {missing!r}")
        return {v: palette[v] for v in values}
    colors = list(palette) if palette is not None else list(PALETTE)
    if not colors:
        raise ValueError("the palette has no colours")
    return {v: colors[i % len(colors)] for i, v in enumerate(values)}


def gantt(
    records: Iterable[TaskRecord],
    path: str | os.PathLike[str] | None = None,
    colorBy: str | None = "lane",
    facetBy: str | None = None,
    title: str | None = None,
    *,
    palette: Mapping[Any, str] | Sequence[str] | None = None,
    legend: bool = True,
    xlim: tuple[float, float] | None = None,
    figsize: tuple[float, float] | None = None,
    dpi: float = 100,
) -> Figure:
    """
    Draw a Gantt chart of task records and return the matplotlib C{Figure}.

    One row per task, in submission order from the top, labelled with its
    id. The x axis is seconds since the first submission. A task still
    waiting or running has its bar drawn to the latest time in the records.

    @param path: Also save the chart there as a PNG.
    @param colorBy: The record field that colours the running bars (one of
        L{PLOT_FIELDS}; C{None}: one colour, no legend).
    @param facetBy: A field to split the chart by: one subplot per value,
        stacked, sharing the time axis.
    @param palette: A C{{value: colour}} mapping, or colours given to the
        values in sorted order (default: L{PALETTE}).
    @param xlim: The time axis's limits, in seconds since the first
        submission (default: from 0 to the last time, plus a margin).
    @param figsize: Inches (default: 8 wide, taller with more tasks).
    @raise ImportError: Without matplotlib.
    @raise ValueError: With no records or an unknown field.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import FuncFormatter, MaxNLocator
    except ImportError as e:
        raise ImportError(
            "asynqueue.plot needs matplotlib: pip install 'asynqueue[plot]'"
        ) from e
    _checkField(colorBy, "colorBy")
    _checkField(facetBy, "facetBy")
    rows = sorted(records, key=lambda r: r.id)
    if not rows:
        raise ValueError("gantt() needs at least one record")

    t0 = min(r.submitted for r in rows)
    times = [
        t for r in rows for t in (r.submitted, r.started, r.ended) if t is not None
    ]
    tEnd = max(times) - t0

    colorValues = sorted(
        {getattr(r, colorBy) for r in rows} if colorBy else {None}, key=_sortKey
    )
    colors = _colorsFor(colorValues, palette)
    facets: list[tuple[Any, list[TaskRecord]]]
    if facetBy is None:
        facets = [(None, rows)]
    else:
        byValue: dict[Any, list[TaskRecord]] = {}
        for r in rows:
            byValue.setdefault(getattr(r, facetBy), []).append(r)
        facets = [(v, byValue[v]) for v in sorted(byValue, key=_sortKey)]

    if figsize is None:
        height = 1.2 + 0.25 * len(rows) + 0.5 * len(facets)
        figsize = (8.0, min(max(height, 2.5), 40.0))
    fig = Figure(figsize=figsize, dpi=dpi, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(
        len(facets),
        1,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [len(tasks) for _, tasks in facets]},
    )[:, 0]
    if xlim is None:
        margin = 0.02 * tEnd if tEnd > 0 else 1.0
        xlim = (0.0, tEnd + margin)

    runBars: list[tuple[Axes, list[Any]]] = []
    for ax, (value, tasks) in zip(axes, facets, strict=True):
        runBars.append((ax, _drawFacet(ax, tasks, t0, t0 + tEnd, colorBy, colors)))
        ax.set_xlim(*xlim)
        ax.set_ylim(len(tasks) - 0.5, -0.5)
        ids = [r.id for r in tasks]
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(len(ids), 20)))
        ax.yaxis.set_major_formatter(FuncFormatter(_idLabel(ids)))
        ax.set_ylabel("task")
        ax.set_axisbelow(True)
        ax.grid(axis="x", alpha=0.3)
        if facetBy is not None:
            ax.set_title(f"{facetBy} = {_label(value)}", fontsize="medium")
    axes[-1].set_xlabel("seconds since the first submission")
    if title:
        fig.suptitle(title)
    if legend and colorBy is not None:
        from matplotlib.patches import Patch

        handles = [Patch(color=colors[v], label=_label(v)) for v in colorValues]
        handles.append(Patch(color=WAIT_COLOR, label="waiting"))
        fig.legend(handles=handles, title=colorBy, loc="outside right upper")
    _widenThinBars(fig, runBars)
    if path is not None:
        fig.savefig(os.fspath(path), format="png", dpi=dpi)
    return fig


def _widenThinBars(fig: Figure, runBars: list[tuple[Axes, list[Any]]]) -> None:
    """
    Widen the running bars narrower than L{MIN_BAR_PIXELS} about their
    middle. How wide a pixel is in seconds is known only once the layout is
    done, so it is done first (bar widths do not change the layout).
    """
    fig.draw_without_rendering()
    for ax, bars in runBars:
        (x0, _), (x1, _) = ax.transData.transform([(0.0, 0.0), (1.0, 0.0)])
        pixelsPerSecond = abs(x1 - x0)
        if not pixelsPerSecond:
            continue
        minWidth = MIN_BAR_PIXELS / pixelsPerSecond
        for bar in bars:
            width = bar.get_width()
            if width < minWidth:
                bar.set_x(bar.get_x() + width / 2 - minWidth / 2)
                bar.set_width(minWidth)


def _idLabel(ids: list[int]) -> Any:
    def label(y: float, _: object) -> str:
        i = int(round(y))
        return str(ids[i]) if 0 <= i < len(ids) and math.isclose(y, i) else ""

    return label


def _drawFacet(
    ax: Axes,
    tasks: list[TaskRecord],
    t0: float,
    tLast: float,
    colorBy: str | None,
    colors: Mapping[Hashable, str],
) -> list[Any]:
    """
    Draw the waiting and running bars of C{tasks}, one row each; return the
    running bars (matplotlib's C{Rectangle}s).
    """
    waitY: list[int] = []
    waitLeft: list[float] = []
    waitWidth: list[float] = []
    runs: dict[Hashable, tuple[list[int], list[float], list[float]]] = {}
    for y, r in enumerate(tasks):
        waitedUntil = r.started if r.started is not None else r.ended
        if waitedUntil is None:
            waitedUntil = tLast
        if waitedUntil > r.submitted:
            waitY.append(y)
            waitLeft.append(r.submitted - t0)
            waitWidth.append(waitedUntil - r.submitted)
        if r.started is not None:
            ended = r.ended if r.ended is not None else tLast
            key = getattr(r, colorBy) if colorBy else None
            ys, lefts, widths = runs.setdefault(key, ([], [], []))
            ys.append(y)
            lefts.append(r.started - t0)
            widths.append(ended - r.started)
    if waitY:
        ax.barh(
            waitY,
            waitWidth,
            left=waitLeft,
            height=WAIT_HEIGHT,
            color=WAIT_COLOR,
            linewidth=0,
        )
    drawn: list[Any] = []
    for key, (ys, lefts, widths) in runs.items():
        drawn.extend(
            ax.barh(
                ys,
                widths,
                left=lefts,
                height=RUN_HEIGHT,
                color=colors[key],
                linewidth=0,
            )
        )
    return drawn
