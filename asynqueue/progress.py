"""
Progress bars driven by a queue's events: tqdm, else rich, else nothing.

A L{ProgressBar} advances when a task ends and, with no C{total} given,
grows its total when a task is submitted; it hangs on C{queue.observe}, so
nothing polls. It draws with tqdm if that is installed, else with rich,
else not at all (C{pip install asynqueue[progress]} brings both). Bars
write to stderr unless given a C{file}.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import IO, TYPE_CHECKING, Any, Protocol

from asynqueue.tasks import TaskRecord

if TYPE_CHECKING:
    from asynqueue.queue.core import TaskQueue

__all__ = [
    "ProgressBackend",
    "BackendFactory",
    "ProgressBar",
    "progressFor",
    "defaultBackend",
    "tqdmBackend",
    "richBackend",
    "plainBackend",
]


class ProgressBackend(Protocol):
    """What draws a bar: told of progress, never asked."""

    def advance(self, n: int) -> None:
        """C{n} more steps are done."""

    def setTotal(self, total: int | None) -> None:
        """The number of steps is now C{total} (C{None}: unknown)."""

    def close(self) -> None:
        """Draw the final state and let go of the output."""


#: Makes a backend from C{(total, description, file)}; C{file=None} is stderr.
BackendFactory = Callable[[int | None, str, IO[str] | None], ProgressBackend]


class _TqdmBar:
    """A tqdm bar; a new total is drawn at most ten times a second."""

    interval = 0.1

    def __init__(
        self, total: int | None, description: str, file: IO[str] | None
    ) -> None:
        from tqdm import tqdm

        self.bar = tqdm(
            total=total,
            desc=description or None,
            file=file if file is not None else sys.stderr,
            unit="task",
            dynamic_ncols=True,
        )
        self.lastDrawn = 0.0

    def advance(self, n: int) -> None:
        self.bar.update(n)

    def setTotal(self, total: int | None) -> None:
        self.bar.total = total
        # tqdm throttles its own updates, not a change of total.
        now = time.monotonic()
        if now - self.lastDrawn >= self.interval:
            self.lastDrawn = now
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


class _RichBar:
    """A rich bar; redrawn on events, at most ten times a second."""

    interval = 0.1

    def __init__(
        self, total: int | None, description: str, file: IO[str] | None
    ) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        console = Console(file=file if file is not None else sys.stderr)
        # No refresh thread: the queue's events redraw the bar.
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            auto_refresh=False,
        )
        self.taskID = self.progress.add_task(description, total=total)
        self.progress.start()
        self.lastDrawn = 0.0
        self._draw(force=True)

    def _draw(self, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.lastDrawn >= self.interval:
            self.lastDrawn = now
            self.progress.refresh()

    def advance(self, n: int) -> None:
        self.progress.update(self.taskID, advance=n)
        task = self.progress.tasks[0]
        self._draw(force=task.total is not None and task.completed >= task.total)

    def setTotal(self, total: int | None) -> None:
        self.progress.update(self.taskID, total=total)
        self._draw()

    def close(self) -> None:
        self.progress.refresh()
        self.progress.stop()


class _PlainBar:
    """
    Plain lines, for a file that is not a terminal: one when the first step
    is done, then at most one every C{interval} seconds, and the last on close.
    """

    interval = 10.0

    def __init__(
        self,
        total: int | None,
        description: str,
        file: IO[str] | None,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self.file = file
        self.total = total
        self.description = description
        self.done = 0
        self.now = now
        self.began = now()
        self.lastDrawn: float | None = None

    def _line(self) -> None:
        self.lastDrawn = self.now()
        text = f"{self.done}/{self.total}" if self.total else f"{self.done}"
        if self.total:
            text += f" ({100 * self.done // self.total}%)"
        prefix = f"{self.description}: " if self.description else ""
        out = self.file if self.file is not None else sys.stderr
        out.write(f"{prefix}{text} tasks in {self.lastDrawn - self.began:.0f} s\n")
        out.flush()

    def advance(self, n: int) -> None:
        self.done += n
        if self.lastDrawn is None or self.now() - self.lastDrawn >= self.interval:
            self._line()

    def setTotal(self, total: int | None) -> None:
        self.total = total

    def close(self) -> None:
        self._line()


def _isTerminal(file: IO[str] | None) -> bool:
    out = file if file is not None else sys.stderr
    isatty = getattr(out, "isatty", None)
    try:
        return bool(isatty()) if isatty is not None else False
    except ValueError:
        # A closed file.
        return False


def plainBackend(
    total: int | None, description: str, file: IO[str] | None
) -> ProgressBackend:
    """Plain lines now and then, no terminal codes: for a log file or a pipe."""
    return _PlainBar(total, description, file)


def tqdmBackend(
    total: int | None, description: str, file: IO[str] | None
) -> ProgressBackend:
    """A tqdm bar (raises C{ImportError} without tqdm)."""
    return _TqdmBar(total, description, file)


def richBackend(
    total: int | None, description: str, file: IO[str] | None
) -> ProgressBackend:
    """A rich bar (raises C{ImportError} without rich)."""
    return _RichBar(total, description, file)


def defaultBackend() -> BackendFactory | None:
    """tqdm's bar if tqdm is importable, else rich's if rich is, else C{None}."""
    try:
        import tqdm  # noqa: F401
    except ImportError:
        pass
    else:
        return tqdmBackend
    try:
        import rich.progress  # noqa: F401
    except ImportError:
        return None
    return richBackend


class ProgressBar:
    """
    A progress bar of tasks done, moved by a queue's events or by hand.

    C{attachTo(queue)} advances the bar as the queue's tasks end. With
    C{total=None} the total is what the queue has outstanding when attached
    and grows with each task submitted after; with a C{total} it stays put.
    L{advance} and L{expect} move it by hand (for counting items rather than
    tasks). Without tqdm or rich (and no C{backend} given) the bar is a
    silent no-op: C{backend} is C{None} and nothing is written.

    @param file: Where to draw (default: stderr).
    @param backend: What draws it: a L{BackendFactory} such as
        L{tqdmBackend} or L{richBackend}; default: what L{defaultBackend}
        returns, or L{plainBackend} when C{file} (stderr) is not a terminal.
    """

    def __init__(
        self,
        total: int | None = None,
        description: str = "",
        *,
        file: IO[str] | None = None,
        backend: BackendFactory | None = None,
    ) -> None:
        self.total = total
        self.description = description
        self.done = 0
        self.closed = False
        self._grows = total is None
        self._stops: list[Callable[[], None]] = []
        factory = backend if backend is not None else defaultBackend()
        if backend is None and factory is not None and not _isTerminal(file):
            # A bar redraws itself with terminal codes: garbage in a file.
            factory = plainBackend
        self.backend: ProgressBackend | None = (
            None if factory is None else factory(total, description, file)
        )

    def advance(self, n: int = 1) -> None:
        """C{n} more are done."""
        if self.closed:
            return
        self.done += n
        if self.backend is not None:
            self.backend.advance(n)

    def expect(self, n: int = 1) -> None:
        """C{n} more are to be done: grow the total."""
        if self.closed:
            return
        self.total = (self.total or 0) + n
        if self.backend is not None:
            self.backend.setTotal(self.total)

    def _observe(self, event: str, record: TaskRecord) -> None:
        if event == "ended":
            self.advance()
        elif event == "submitted" and self._grows:
            self.expect()

    def attachTo(self, queue: TaskQueue) -> Callable[[], None]:
        """
        Advance as C{queue}'s tasks end; return a function that stops.

        A no-op bar does not observe at all.
        """
        if self.backend is None or self.closed:
            return _nothing
        if self._grows:
            outstanding = queue.size(waiting=True, working=True)
            if outstanding or self.total is None:
                self.expect(outstanding)
        stop = queue.observe(self._observe)
        self._stops.append(stop)
        return stop

    def close(self) -> None:
        """Stop observing, draw the final state and release the output."""
        if self.closed:
            return
        self.closed = True
        stops, self._stops = self._stops, []
        for stop in stops:
            stop()
        if self.backend is not None:
            self.backend.close()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _nothing() -> None:
    pass


def progressFor(
    queue: TaskQueue,
    total: int | None = None,
    description: str = "",
    *,
    file: IO[str] | None = None,
    backend: BackendFactory | None = None,
) -> Callable[[], None]:
    """
    Show a bar of C{queue}'s tasks as they end; return a function that
    closes it.

    With C{total=None} the bar counts what is outstanding now plus what is
    submitted until it is closed: what C{queue.wait(progress=True)} shows.
    Silent when neither tqdm nor rich is installed.
    """
    bar = ProgressBar(total, description, file=file, backend=backend)
    bar.attachTo(queue)
    return bar.close
