"""
mcm: a 2000×2000, 2000-iteration render on one and on two worker processes,
and the same render as a plain single-process numpy loop, in one run.

Every contender computes the same blocks with the same numpy kernel
(C{mcmandelbrot.kernel.renderRows}) and streams them into the same pypng
writer; the PNG files are checked to be identical. The queue contenders
render through C{mcmandelbrot.render.render}, as C{mcm} does: blocks go out
through an C{OrderedQueue} and come back in order. Their processes are
started and warmed up before the clock starts. The contenders take turns
within a round; the best of C{--reps} rounds counts.

Targets: two workers at least 1.85x as fast as one, and one worker within
10% of the plain loop.

    .venv/bin/python benchmarks/bench_mcm.py [--reps N] [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import time
from collections.abc import Callable
from typing import Any

import numpy
from common import gitRevision, machineHeader, median, now, printRatio, printTable
from twisted.internet.defer import Deferred
from twisted.internet.task import react

import twisted
from asynqueue import ProcessQueue
from mcmandelbrot import render
from mcmandelbrot.kernel import warmUp
from mcmandelbrot.view import View

#: Seahorse valley, as `mcm` draws by default, but square.
FULL = View(2000, -0.7453, 0.1127, 0.0065, 0.0065, maxIter=2000)
QUICK = View(500, -0.7453, 0.1127, 0.0065, 0.0065, maxIter=500)


class HashingSink:
    """A binary file that keeps only the SHA-256 of what is written to it."""

    def __init__(self) -> None:
        self.hash = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.hash.update(data)
        self.size += len(data)
        return len(data)


class Timing:
    def __init__(self, name: str) -> None:
        self.name = name
        self.wall: list[float] = []
        self.parentCPU: list[float] = []
        self.workerCPU: list[float] = []
        self.digests: set[str] = set()


def childrenCPU() -> float:
    """CPU seconds of the child processes that have ended (and been waited for)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


async def timeQueue(view: View, workers: int, timing: Timing) -> None:
    # The workers' CPU time, start-up and warm-up included, is known once
    # their processes have ended.
    before = childrenCPU()
    queue = ProcessQueue(workers, shutdownWithReactor=False)
    try:
        await queue.update(warmUp, ephemeral=True)
        sink = HashingSink()
        cpu, wall = time.process_time(), now()
        await render.render(view, queue, sink, workers=workers)  # type: ignore[arg-type]
        timing.wall.append(now() - wall)
        timing.parentCPU.append(time.process_time() - cpu)
        timing.digests.add(sink.hash.hexdigest())
    finally:
        await queue.shutdown()
    timing.workerCPU.append(childrenCPU() - before)


def timePlain(view: View, timing: Timing) -> None:
    sink = HashingSink()
    cpu, wall = time.process_time(), now()
    render.renderPlain(view, sink)  # type: ignore[arg-type]
    timing.wall.append(now() - wall)
    timing.parentCPU.append(time.process_time() - cpu)
    timing.workerCPU.append(0.0)
    timing.digests.add(sink.hash.hexdigest())


async def main(reactor: Any, options: argparse.Namespace) -> None:
    view = QUICK if options.quick else FULL
    load = os.getloadavg()[0]
    print(machineHeader(twisted=twisted.__version__, numpy=numpy.__version__))
    print(f"asynqueue at {gitRevision()}")
    print(
        f"mcm render: {view.nx}x{view.ny} pixels, {view.maxIter} iterations, "
        f"{view.describe()}; best of {options.reps} rounds"
    )
    plain = Timing("plain numpy loop, one process")
    one = Timing("mcm, ProcessQueue(1)")
    two = Timing("mcm, ProcessQueue(2)")
    steps: list[tuple[Timing, Callable[[], Any]]] = [
        (plain, lambda: timePlain(view, plain)),
        (one, lambda: timeQueue(view, 1, one)),
        (two, lambda: timeQueue(view, 2, two)),
    ]
    for round in range(options.reps):
        for timing, step in steps:
            outcome = step()
            if isinstance(outcome, Deferred) or hasattr(outcome, "__await__"):
                await outcome
            print(f"  round {round + 1}: {timing.name}: {timing.wall[-1]:.2f} s")
    digests = plain.digests | one.digests | two.digests
    assert len(digests) == 1, "the contenders wrote different images"
    printTable(
        "Render time (s) and rate",
        [
            "contender",
            "best s",
            "median s",
            "Mpixel/s (best)",
            "parent CPU s",
            "workers CPU s",
        ],
        [
            (
                t.name,
                f"{min(t.wall):.2f}",
                f"{median(t.wall):.2f}",
                f"{view.pixels / min(t.wall) / 1e6:.2f}",
                f"{median(t.parentCPU):.2f}",
                f"{median(t.workerCPU):.2f}",
            )
            for t in (plain, one, two)
        ],
    )
    print(
        "(CPU: medians; the workers' includes their start-up. Load average "
        f"now {os.getloadavg()[0]:.2f}, at the start {load:.2f})"
    )
    print("\nRatios (best times):")
    printRatio("two workers over one", min(one.wall), min(two.wall), 1.85)
    printRatio(
        "one worker's speed relative to the plain loop",
        min(plain.wall),
        min(one.wall),
        0.9,
    )
    printRatio("two workers over the plain loop", min(plain.wall), min(two.wall))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--quick", action="store_true", help="a 500x500, 500-iteration smoke run"
    )
    options = parser.parse_args()
    if options.quick:
        options.reps = 1
    return options


if __name__ == "__main__":
    options = parse()
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
