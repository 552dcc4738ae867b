"""
The dashboard's cost: a queue's throughput with and without a dashboard
attached and a page reading its event stream, alternated in one run.

The user's way, as in bench_threads and bench_process: a function defined
in this script, results gathered with C{gatherResults}, one queue kept for
the whole run (a ThreadQueue(2), then a ProcessQueue(2)). Rounds alternate
A B B A ...: "plain" (no dashboard) and "dashboard" (a Dashboard attached
to the same queue, and a page, C{curl -N} in a process of its own, reading
the event stream as a browser's EventSource would). The dashboard is
started and the page connected before a round's clock starts, and stopped
after it. Each round's calls per second is reported, with the median of
each mode and the median of the rounds' ratios (the issue asks for >=
0.95), and the reactor thread's CPU time a call, which a busy machine
moves less than the wall clock.

    .venv/bin/python benchmarks/bench_dashboard.py [--calls N] [--rounds R]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from common import Stopwatch, gitRevision, machineHeader, median, printTable
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react
from twisted.web.server import Request

import asynqueue
import twisted
from asynqueue import ProcessQueue, ThreadQueue
from asynqueue.web import Dashboard

WORKERS = 2


def trivialHere(x: int) -> int:
    """The user's call, defined in the script: returns its argument."""
    return x


class WatchedDashboard(Dashboard):
    """A dashboard that says when a page has opened its stream."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened: Deferred[None] = Deferred()

    def openStream(self, request: Request) -> bytes | int:
        result = super().openStream(request)
        if not self.opened.called:
            self.opened.callback(None)
        return result


async def withPage(queue: Any) -> tuple[WatchedDashboard, subprocess.Popen[bytes]]:
    """A dashboard of C{queue} and a page (curl) reading its stream."""
    dash = WatchedDashboard(queue, "tcp:0:interface=127.0.0.1")
    url = await dash.start()
    page = subprocess.Popen(
        ["curl", "-sN", url + "events"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    await dash.opened
    return dash, page


async def oneRound(queue: Any, calls: int) -> tuple[float, float]:
    """
    Calls per second of C{calls} calls gathered at once, and the reactor
    thread's CPU microseconds per call (steadier on a busy machine).
    """
    with Stopwatch() as watch:
        await gatherResults([queue.call(trivialHere, i) for i in range(calls)])
    return calls / watch.wall, watch.cpu / calls * 1e6


async def measure(
    queue: Any, calls: int, rounds: int
) -> dict[str, list[tuple[float, float]]]:
    """Alternate plain and dashboard rounds (A B B A ...) on one queue."""
    await gatherResults([queue.call(trivialHere, i) for i in range(1000)])
    rates: dict[str, list[tuple[float, float]]] = {"plain": [], "dashboard": []}
    pushes = 0
    for r in range(rounds):
        order = ("plain", "dashboard") if r % 2 == 0 else ("dashboard", "plain")
        for mode in order:
            if mode == "plain":
                rates[mode].append(await oneRound(queue, calls))
                continue
            dash, page = await withPage(queue)
            try:
                rates[mode].append(await oneRound(queue, calls))
                pushes += sum(c.sent for c in dash.clients)
            finally:
                await dash.stop()
                page.terminate()
                page.wait()
    print(f"  (the page was sent {pushes} events in {rounds} dashboard rounds)")
    return rates


def report(title: str, rates: dict[str, list[tuple[float, float]]]) -> None:
    plain, dash = rates["plain"], rates["dashboard"]
    rows: list[list[Any]] = [
        [f"round {i + 1}", p[0], d[0], f"{d[0] / p[0]:.3f}", p[1], d[1]]
        for i, (p, d) in enumerate(zip(plain, dash, strict=True))
    ]
    ratios = [d[0] / p[0] for p, d in zip(plain, dash, strict=True)]
    cpuPlain = median(p[1] for p in plain)
    cpuDash = median(d[1] for d in dash)
    rows.append(
        [
            "median",
            median(p[0] for p in plain),
            median(d[0] for d in dash),
            f"{median(ratios):.3f}",
            cpuPlain,
            cpuDash,
        ]
    )
    printTable(
        title,
        ["", "plain calls/s", "dashboard calls/s", "ratio", "plain us", "dash us"],
        rows,
    )
    ratio = median(ratios)
    print(
        f"  dashboard / plain, median of the rounds' ratios: {ratio:.3f} (target "
        f">= 0.95: {'met' if ratio >= 0.95 else 'NOT met'}); reactor CPU a call "
        f"{cpuPlain:.1f} -> {cpuDash:.1f} us ({cpuPlain / cpuDash:.3f})"
    )


async def main(reactor: Any, args: argparse.Namespace) -> None:
    print(
        machineHeader(
            asynqueue=getattr(asynqueue, "__version__", "?"),
            Twisted=twisted.__version__,
        )
    )
    print(
        f"revision {gitRevision()}; {args.calls:,} calls a round, {args.rounds} rounds"
    )
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"load average {load} (other work moves the wall figures, not the CPU ones)")
    for name, make in (
        (f"ThreadQueue({WORKERS})", lambda: ThreadQueue(WORKERS)),
        (f"ProcessQueue({WORKERS})", lambda: ProcessQueue(WORKERS)),
    ):
        queue = make()
        try:
            print(f"\n{name}")
            rates = await measure(queue, args.calls, args.rounds)
        finally:
            await queue.shutdown()
        report(f"{name}: trivial calls, gathered", rates)


def parseArgs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=6)
    return parser.parse_args(argv)


if __name__ == "__main__":
    if shutil.which("curl") is None:
        sys.exit("bench_dashboard needs curl (the page that reads the stream)")
    arguments = parseArgs()
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, arguments)))
