"""
L{View}: which part of the complex plane, at what size, to how many iterations.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["BLOCK_PIXELS", "DEFAULT_VIEW", "View", "BlockArgs", "WINDOW_BYTES"]

#: The arguments of L{mcmandelbrot.kernel.renderRows} for one block of rows.
BlockArgs = tuple[float, float, float, int, int, int, int, int]

#: The most pixels in one block of rows. Larger blocks cost less (each
#: iteration of the kernel costs some 10 µs of numpy calls per block) up to
#: a few hundred thousand pixels, past which they no longer fit the CPU's
#: caches; this size also keeps the blocks of a wide image small.
BLOCK_PIXELS = 1 << 17
#: The bytes of blocks in flight or waiting to be written, with at least
#: two blocks per worker (and at most eight) allowed whatever their size.
WINDOW_BYTES = 3 << 20


@dataclass(frozen=True)
class View:
    """
    An image of C{nx} pixels across, centred on C{cr + ci·j}.

    It spans C{cr ± crPM} across and C{ci ± ciPM} up and down (C{ciPM}
    defaults to C{crPM}), with square pixels, so it is C{ny} rows high;
    the top row comes first. Points escaping within C{maxIter} iterations
    are coloured.
    """

    nx: int
    cr: float
    ci: float
    crPM: float
    ciPM: float | None = None
    maxIter: int = 1000

    def __post_init__(self) -> None:
        if self.nx < 1:
            raise ValueError(f"the image must be at least 1 pixel wide, not {self.nx}")
        if self.maxIter < 1:
            raise ValueError(f"maxIter must be at least 1, not {self.maxIter}")
        for name in ("cr", "ci", "crPM", "ciPM"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value}")
        if not self.crPM > 0 or (self.ciPM is not None and not self.ciPM > 0):
            raise ValueError("the half-width and half-height must be positive")

    @property
    def halfHeight(self) -> float:
        """C{ciPM}, or C{crPM} when it was not given."""
        return self.crPM if self.ciPM is None else self.ciPM

    @property
    def ny(self) -> int:
        """The number of rows (square pixels)."""
        return max(1, round(self.nx * self.halfHeight / self.crPM))

    @property
    def pixelSize(self) -> float:
        """The width (and height) of one pixel in the complex plane."""
        return 2.0 * self.crPM / self.nx

    @property
    def pixels(self) -> int:
        return self.nx * self.ny

    def rowsPerBlock(self, workers: int) -> int:
        """
        Rows per task, but for the last ones (see L{blocksFor}): at most
        L{BLOCK_PIXELS} (at least one row), and some 4 blocks per worker or
        more.
        """
        byWorkers = self.ny // (4 * max(1, workers))
        bySize = BLOCK_PIXELS // self.nx
        return max(1, min(byWorkers, bySize))

    def blocksInFlight(self, workers: int) -> int:
        """How many blocks may be in flight or waiting to be written."""
        blockBytes = 3 * self.nx * self.rowsPerBlock(workers)
        return max(2 * workers + 2, min(8 * workers, WINDOW_BYTES // blockBytes))

    def blocks(
        self, rowsPerBlock: int, end: int | None = None
    ) -> Iterator[tuple[int, int]]:
        """C{(firstRow, rowCount)} of each block, top to bottom (to C{end})."""
        end = self.ny if end is None else end
        for start in range(0, end, rowsPerBlock):
            yield start, min(rowsPerBlock, end - start)

    def blocksFor(self, workers: int) -> Iterator[tuple[int, int]]:
        """
        C{(firstRow, rowCount)} of each block of a render on C{workers},
        top to bottom: blocks of L{rowsPerBlock} rows, then smaller ones.

        Every block costs the kernel a few milliseconds besides its pixels,
        so most are large; the last rows, some two blocks per worker, go in
        blocks of shrinking size (a share of what is left), so that the
        workers finish together.
        """
        big = self.rowsPerBlock(workers)
        if workers <= 1:
            return self.blocks(big)
        start = self._tailStart(workers, big)
        return itertools.chain(self.blocks(big, start), self._tail(start, workers, big))

    def blockCount(self, workers: int) -> int:
        """How many blocks L{blocksFor} gives (counted, not listed)."""
        big = self.rowsPerBlock(workers)
        if workers <= 1:
            return -(-self.ny // big)
        start = self._tailStart(workers, big)
        tail = sum(1 for _ in self._tail(start, workers, big))
        return start // big + tail

    def _tailStart(self, workers: int, big: int) -> int:
        """The first row of the shrinking blocks: a multiple of C{big}."""
        return max(0, (self.ny - 2 * workers * big) // big) * big

    def _tail(self, start: int, workers: int, big: int) -> Iterator[tuple[int, int]]:
        small = max(1, big // 4)
        while start < self.ny:
            left = self.ny - start
            count = min(left, big, max(small, -(-left // (2 * workers))))
            yield start, count
            start += count

    @property
    def corner(self) -> tuple[float, float]:
        """The top left corner of the image: C{(x0, y0)}."""
        return self.cr - self.crPM, self.ci + 0.5 * self.ny * self.pixelSize

    def blockArgs(self, firstRow: int, rowCount: int) -> BlockArgs:
        """The arguments of C{renderRows} for C{rowCount} rows from C{firstRow}."""
        x0, y0 = self.corner
        return (x0, y0, self.pixelSize, 0, self.nx, firstRow, rowCount, self.maxIter)

    def describe(self) -> str:
        """The arguments that make this view again on the command line."""
        text = f"-N {self.maxIter} {self.nx} {self.cr!r} {self.ci!r} {self.crPM!r}"
        return text if self.ciPM is None else f"{text} {self.ciPM!r}"


#: What C{mcm} draws with no arguments: seahorse valley, quickly.
DEFAULT_VIEW = View(
    nx=1200, cr=-0.7453, ci=0.1127, crPM=0.0065, ciPM=0.0045, maxIter=600
)
