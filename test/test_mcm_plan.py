"""
Tests of how `mcm` cuts its work: the blocks of a render (large ones, then
shrinking ones) and the kernel's functions sent by name from a parent that
never imports numpy.
"""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import pytest_twisted

from asynqueue import ProcessQueue
from mcmandelbrot import calls, kernel
from mcmandelbrot.view import BLOCK_PIXELS, View

VIEWS = [
    View(1600, -0.75, 0.1, 0.05, maxIter=2000),
    View(160, -0.75, 0.1, 1.4, 1.0),
    View(50, -0.5, 0.0, 1.5),
    View(3, 0.0, 0.0, 1.0),
    View(20000, -0.75, 0.0, 1.5, 0.027),
]


@pytest.mark.parametrize("workers", [1, 2, 3, 8])
@pytest.mark.parametrize("view", VIEWS, ids=lambda v: f"{v.nx}x{v.ny}")
def test_theBlocksCoverEveryRowOnceInOrder(view: View, workers: int) -> None:
    blocks = list(view.blocksFor(workers))
    rows = [row for first, count in blocks for row in range(first, first + count)]
    assert rows == list(range(view.ny))
    assert all(count >= 1 for _, count in blocks)
    assert view.blockCount(workers) == len(blocks)
    big = view.rowsPerBlock(workers)
    assert max(count for _, count in blocks) == big
    assert view.nx * big <= max(BLOCK_PIXELS, view.nx)


def test_oneWorkerGetsLargeBlocksOnly() -> None:
    view = View(1600, -0.75, 0.1, 0.05)
    assert [count for _, count in view.blocksFor(1)] == [81] * 19 + [61]


def test_theLastBlocksShrink() -> None:
    """Two workers: blocks of 81 rows, then a share of what is left."""
    view = View(1600, -0.75, 0.1, 0.05)
    counts = [count for _, count in view.blocksFor(2)]
    assert counts[:16] == [81] * 16
    tail = counts[16:]
    assert tail == sorted(tail, reverse=True)
    assert tail[-1] < 81 // 4 <= min(tail[:-1])
    assert len(counts) < 32


def test_kernelFunctionsTravelByName() -> None:
    """Pickled, a kernel function is the kernel's; called here, it runs."""
    for name in ("renderRows", "renderTile", "warmUp"):
        proxy = getattr(calls, name)
        assert pickle.loads(pickle.dumps(proxy)) is getattr(kernel, name)
        assert proxy.__module__ == "mcmandelbrot.kernel"
        assert proxy.__name__ == proxy.__qualname__ == name
    args = (-2.0, 1.0, 0.5, 0, 3, 0, 2, 10)
    assert calls.renderRows(*args) == kernel.renderRows(*args)


def test_theParentDoesNotImportNumpy() -> None:
    code = (
        "import sys, mcmandelbrot.main, mcmandelbrot.web; print('numpy' in sys.modules)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.stdout == "False\n", done.stderr


@pytest_twisted.ensureDeferred
async def test_aProcessQueueRunsTheKernelByName() -> None:
    queue = ProcessQueue(1, initializer=calls.warmUp, shutdownWithReactor=False)
    try:
        args = (-2.0, 1.0, 0.5, 0, 3, 0, 2, 10)
        assert await queue.call(calls.renderRows, *args) == kernel.renderRows(*args)
    finally:
        await queue.shutdown()
