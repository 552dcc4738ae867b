"""
Rendering a L{View} on a queue, streamed into a PNG file.

The blocks of rows go to the queue through an L{OrderedQueue}, whose
window bounds how many are in flight or waiting to be written; a thread
pulls them out in order and feeds them to pypng's writer, which
compresses and writes as it goes. So the parent holds a few blocks, never
the image, and a slow output (a pipe) never stalls the reactor.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread, deferToThread

from asynqueue import TaskQueue
from asynqueue.ordered import OrderedQueue
from asynqueue.progress import ProgressBar
from mcmandelbrot.calls import renderRows
from mcmandelbrot.view import View

__all__ = [
    "RenderResult",
    "availableMemory",
    "checkSize",
    "memoryNeeded",
    "pngWriter",
    "render",
    "renderPlain",
]


@dataclass(frozen=True)
class RenderResult:
    """What one render did: how many pixels, in how long, on how many workers."""

    pixels: int
    seconds: float
    workers: int

    @property
    def pixelsPerSecond(self) -> float:
        return self.pixels / self.seconds if self.seconds > 0 else float("inf")


def pngWriter(view: View) -> Any:
    """A pypng writer for the view's RGB rows."""
    import png

    # The parent compresses every row while the workers compute: zlib's
    # fastest level halves that serial work (files grow by 5-25%). A smaller
    # chunk than pypng's 1 MiB default: less held before compressing.
    return png.Writer(
        view.nx,
        view.ny,
        greyscale=False,
        bitdepth=8,
        compression=1,
        chunk_limit=1 << 18,
    )


def _rowsOf(block: bytes, nx: int) -> Iterator[memoryview]:
    stride = 3 * nx
    data = memoryview(block)
    for start in range(0, len(data), stride):
        yield data[start : start + stride]


async def render(
    view: View,
    queue: TaskQueue,
    out: IO[bytes],
    progress: ProgressBar | None = None,
    workers: int | None = None,
    bufferSize: int | None = None,
) -> RenderResult:
    """
    Render C{view} on C{queue} and write it to C{out} as a PNG file.

    @param progress: A bar that expects one step per block and advances as
        each block is written.
    @param workers: How many tasks run at once (default: the number of the
        queue's workers); sets the size of the blocks and of the window.
    @param bufferSize: How many blocks may be in flight or waiting to be
        written (default: C{view.blocksInFlight(workers)}, 3 MiB of them).
    """
    from twisted.internet import reactor as _reactor

    reactor = cast(IReactorFromThreads, _reactor)
    if workers is None:
        workers = max(1, len(queue.workers()))
    # Counted, not listed: a tall image has millions of blocks.
    blockCount = view.blockCount(workers)
    if bufferSize is None:
        bufferSize = view.blocksInFlight(workers)
    ordered = OrderedQueue(queue, bufferSize=bufferSize)
    if progress is not None:
        progress.expect(blockCount)
    began = time.perf_counter()
    # The block the writer's thread waits for; None once the reactor stops.
    waiting: list[Deferred[bytes] | None] = [None]
    stopping = False

    async def feed() -> None:
        for first, count in view.blocksFor(workers):
            await ordered.put(renderRows, *view.blockArgs(first, count))
        ordered.stop()

    def nextBlock() -> Deferred[bytes]:
        if stopping:
            return fail(CancelledError("the reactor is stopping"))
        d = waiting[0] = ordered.get()
        if progress is not None:
            d.addCallback(_advancing, progress)
        return d

    def rows() -> Iterator[memoryview]:
        # In the writer's thread: each block is waited for in the reactor.
        for _ in range(blockCount):
            # (mypy cannot pick between the two signatures of the callable)
            block: bytes = blockingCallFromThread(
                reactor, cast(Callable[[], Any], nextBlock)
            )
            yield from _rowsOf(block, view.nx)

    feeding = Deferred.fromCoroutine(feed())
    writing = deferToThread(pngWriter(view).write, out, rows())
    written: Deferred[None] = Deferred()
    writing.addBoth(_passingOn, written)

    def stopWriting() -> Deferred[None]:
        # The reactor joins its threads as it stops: the writer's thread must
        # not be left waiting for a block the reactor will never deliver.
        nonlocal stopping
        stopping = True
        d = waiting[0]
        if d is not None and not d.called:
            d.cancel()
        return written

    trigger = reactor.addSystemEventTrigger(  # type: ignore[attr-defined]
        "before", "shutdown", stopWriting
    )
    try:
        await writing
    except BaseException:
        # Blocks still running end in the window, unread.
        ordered.stop()
        feeding.cancel()
        feeding.addErrback(lambda _: None)
        raise
    finally:
        if not stopping:
            reactor.removeSystemEventTrigger(trigger)  # type: ignore[attr-defined]
    await feeding
    return RenderResult(view.pixels, time.perf_counter() - began, workers)


def _passingOn(result: object, d: Deferred[None]) -> object:
    """Fire C{d} when the writer is done, whatever its result."""
    d.callback(None)
    return result


#: Bytes a worker holds per pixel of the block it computes (a dozen numpy
#: arrays of float64 in L{mcmandelbrot.kernel.escapeValues}, and colouring).
KERNEL_BYTES_PER_PIXEL = 160
#: The largest width or height of a PNG image.
PNG_MAX_SIDE = 2**31 - 1


def memoryNeeded(view: View, workers: int, localWorkers: int) -> int:
    """
    About how many bytes a render of C{view} on C{workers} holds here at
    once: the blocks in the window and the writer's copies in this process,
    and what each of the C{localWorkers} worker processes computes with.

    Bounded whatever the image's height, but not its width: a block holds
    at least one row.
    """
    blockPixels = view.nx * view.rowsPerBlock(workers)
    # Each block is also pickled on the way, and the writer packs its rows.
    parent = 2 * (view.blocksInFlight(workers) + 4) * 3 * blockPixels
    return parent + localWorkers * KERNEL_BYTES_PER_PIXEL * blockPixels


def availableMemory() -> int | None:
    """The bytes of memory free for new work here (C{None}: unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def checkSize(
    view: View, workers: int, localWorkers: int, available: int | None = None
) -> None:
    """
    Refuse a view that cannot be rendered here: too large for a PNG, or
    needing more memory than is C{available} (default: L{availableMemory}).

    @raise ValueError: In one line, saying why.
    """
    if max(view.nx, view.ny) > PNG_MAX_SIDE:
        raise ValueError(
            f"a {view.nx:,}x{view.ny:,} image is too large for a PNG file "
            f"(at most {PNG_MAX_SIDE:,} pixels a side)"
        )
    if available is None:
        available = availableMemory()
    needed = memoryNeeded(view, workers, localWorkers)
    if available is not None and needed > available:
        rowBytes = 3 * view.nx
        raise ValueError(
            f"a {view.nx:,}x{view.ny:,} image needs some {_size(needed)} of "
            f"memory at once (each row is {_size(rowBytes)}), and "
            f"{_size(available)} is available: make it narrower"
        )


def _size(n: float) -> str:
    for unit in ("bytes", "kB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def _advancing(block: bytes, progress: ProgressBar) -> bytes:
    progress.advance()
    return block


def renderPlain(view: View, out: IO[bytes]) -> RenderResult:
    """
    Render C{view} in this process with a plain loop, no queue: the baseline.

    The blocks are those of a render on one worker.
    """
    began = time.perf_counter()

    def rows() -> Iterator[memoryview]:
        for first, count in view.blocks(view.rowsPerBlock(1)):
            yield from _rowsOf(renderRows(*view.blockArgs(first, count)), view.nx)

    pngWriter(view).write(out, rows())
    return RenderResult(view.pixels, time.perf_counter() - began, 1)
