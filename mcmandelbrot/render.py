"""
Rendering a L{View} on a queue, streamed into a PNG file.

The blocks of rows go to the queue through an L{OrderedQueue}, whose
window bounds how many are in flight or waiting to be written; a thread
pulls them out in order and feeds them to pypng's writer, which
compresses and writes as it goes. So the parent holds a few blocks, never
the image, and a slow output (a pipe) never stalls the reactor.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import blockingCallFromThread, deferToThread

from asynqueue import TaskQueue
from asynqueue.ordered import OrderedQueue
from asynqueue.progress import ProgressBar
from mcmandelbrot.kernel import renderRows
from mcmandelbrot.view import View

__all__ = ["RenderResult", "pngWriter", "render", "renderPlain"]


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
    blocks = list(view.blocks(view.rowsPerBlock(workers)))
    if bufferSize is None:
        bufferSize = view.blocksInFlight(workers)
    ordered = OrderedQueue(queue, bufferSize=bufferSize)
    if progress is not None:
        progress.expect(len(blocks))
    began = time.perf_counter()

    async def feed() -> None:
        for first, count in blocks:
            await ordered.put(renderRows, *view.blockArgs(first, count))
        ordered.stop()

    def nextBlock() -> Deferred[bytes]:
        d = ordered.get()
        if progress is not None:
            d.addCallback(_advancing, progress)
        return d

    def rows() -> Iterator[memoryview]:
        # In the writer's thread: each block is waited for in the reactor.
        for _ in blocks:
            # (mypy cannot pick between the two signatures of the callable)
            block: bytes = blockingCallFromThread(
                reactor, cast(Callable[[], Any], nextBlock)
            )
            yield from _rowsOf(block, view.nx)

    feeding = Deferred.fromCoroutine(feed())
    try:
        await deferToThread(pngWriter(view).write, out, rows())
    except BaseException:
        # Blocks still running end in the window, unread.
        ordered.stop()
        feeding.cancel()
        feeding.addErrback(lambda _: None)
        raise
    await feeding
    return RenderResult(view.pixels, time.perf_counter() - began, workers)


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
