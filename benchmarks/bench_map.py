"""
map: C{ProcessQueue(2).map} against C{multiprocessing.Pool(2).imap}, in one run.

C{--items} trivial items (1,000,000 by default) through each; items/s, and
the parent's peak traced memory (tracemalloc, in separate runs: it slows
every allocation) for two item counts, to show that it does not grow with
the number of items. The Pool runs first,
before the reactor starts (forking a process that runs a reactor is unsafe).

    .venv/bin/python benchmarks/bench_map.py [--items N] [--quick]
"""

from __future__ import annotations

import argparse
import multiprocessing
import tracemalloc
from operator import neg
from typing import Any

from common import gitRevision, machineHeader, now, printRatio, printTable
from twisted.internet.defer import Deferred
from twisted.internet.task import react

import asynqueue
from asynqueue import ProcessQueue


def poolRun(items: int, chunksize: int, trace: bool) -> tuple[float, int]:
    with multiprocessing.get_context("spawn").Pool(2) as pool:
        list(pool.imap(neg, range(1000), chunksize=100))
        if trace:
            tracemalloc.start()
        t = now()
        count = sum(1 for _ in pool.imap(neg, range(items), chunksize=chunksize))
        elapsed = now() - t
        peak = tracemalloc.get_traced_memory()[1] if trace else 0
        tracemalloc.stop()
    assert count == items
    return items / elapsed, peak


async def queueRun(q: ProcessQueue, items: int, trace: bool) -> tuple[float, int]:
    if trace:
        tracemalloc.start()
    t = now()
    count = 0
    async for _ in q.map(neg, range(items)):
        count += 1
    elapsed = now() - t
    peak = tracemalloc.get_traced_memory()[1] if trace else 0
    tracemalloc.stop()
    assert count == items
    return items / elapsed, peak


async def main(reactor: Any, args: argparse.Namespace, pool: list[Any]) -> None:
    q = ProcessQueue(2, shutdownWithReactor=False)
    async for _ in q.map(neg, range(10_000)):
        pass
    # Speed untraced (tracemalloc slows every allocation); memory traced.
    speed = (await queueRun(q, args.items, False))[0]
    small = await queueRun(q, args.items // 10, True)
    large = (speed, (await queueRun(q, args.items, True))[1])
    await q.shutdown()
    (poolSmall, poolLarge) = pool
    printTable(
        f"map of trivial items ({args.items:,} and {args.items // 10:,})",
        ["contender", "items/s", "peak KiB (1/10)", "peak KiB (all)"],
        [
            (
                "ProcessQueue(2).map",
                large[0],
                small[1] / 1024,
                large[1] / 1024,
            ),
            (
                f"Pool(2).imap(chunksize={args.chunksize})",
                poolLarge[0],
                poolSmall[1] / 1024,
                poolLarge[1] / 1024,
            ),
        ],
    )
    print()
    printRatio("asynqueue / Pool items/s", large[0], poolLarge[0], target=0.5)
    printRatio("asynqueue peak memory, all / a tenth of the items", large[1], small[1])


if __name__ == "__main__":
    import twisted

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--chunksize", type=int, default=500)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.items = 100_000
    print(
        machineHeader(
            twisted=twisted.__version__,
            asynqueue=f"{asynqueue.__version__} ({gitRevision()})",
        )
    )
    pool = [
        poolRun(args.items // 10, args.chunksize, True),
        (
            poolRun(args.items, args.chunksize, False)[0],
            poolRun(args.items, args.chunksize, True)[1],
        ),
    ]
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, args, pool)))
