"""
The user's way, for C{bench_process.py}: functions defined in the
benchmark script (so pickled by value by asynqueue, as C{__main__.f}),
results gathered with C{gatherResults}, and one queue or pool kept for all
the rounds, as a program keeps it for its life. The spread between rounds
is reported, and every ratio is taken within one round as well as over
the medians.

The script passes its own functions in (L{Calls}); this module holds only
the machinery, so that the functions stay the script's.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from common import median, now, printTable
from twisted.internet.defer import gatherResults

import asynqueue

WORKERS = 2
MiB = 1 << 20
WARMUP = 200
JOB_TIMEOUT = 120.0

PQ = f"ProcessQueue({WORKERS}), script function, one queue"
PQ_FRESH = f"ProcessQueue({WORKERS}), module function, fresh queue"
POOL = f"Pool({WORKERS}).imap(chunksize=1), script function, one pool"
PPE = f"ProcessPoolExecutor({WORKERS}), script function, one pool"
#: A second ProcessPoolExecutor, for the CPU-bound job only: the same pool
#: twice shows how far apart two equals come out in one run here.
PPE_AGAIN = f"ProcessPoolExecutor({WORKERS}), a second one (yardstick)"
SERIAL = "serial, in this process"
ORDER = [SERIAL, PQ, PQ_FRESH, POOL, PPE, PPE_AGAIN]


@dataclass
class Calls:
    """The calls of each job: the script's own, and the module's (by reference)."""

    trivial: Callable[[Any], Any]
    spin: Callable[[Any], Any]
    payload: Callable[[Any], Any]
    moduleTrivial: Callable[[Any], Any]
    moduleSpin: Callable[[Any], Any]
    modulePayload: Callable[[Any], Any]

    def of(self, job: str, module: bool = False) -> Callable[[Any], Any]:
        name = {"trivial": "trivial", "cpu": "spin", "bytes": "payload"}[job]
        if module:
            name = "module" + name[0].upper() + name[1:]
        f: Callable[[Any], Any] = getattr(self, name)
        return f


@dataclass
class Figures:
    """Wall seconds of each round (for latency: each call's round trip)."""

    wall: list[float] = field(default_factory=list)
    error: str | None = None


def _check(job: str, results: list[Any], count: int) -> None:
    if job == "trivial" and results != list(range(count)):
        raise AssertionError("trivial calls returned wrong results")
    if job == "bytes" and any(len(r) != MiB for r in results):
        raise AssertionError("a payload came back wrong")


class UserWay:
    """
    Every contender, kept open across the rounds (but the fresh queue).

    C{counts} gives the calls of each job in one round.
    """

    def __init__(self, calls: Calls, counts: dict[str, int], spinSteps: int) -> None:
        self.calls = calls
        self.counts = counts
        self.spinSteps = spinSteps
        self.figures: dict[str, dict[str, Figures]] = {
            job: {} for job in ("trivial", "cpu", "bytes", "latency")
        }
        self.latencyAll: dict[str, list[float]] = {}

    def arg(self, job: str, i: int) -> Any:
        return {"trivial": i, "cpu": self.spinSteps, "bytes": MiB}[job]

    def note(self, job: str, name: str, seconds: float) -> None:
        self.figures[job].setdefault(name, Figures()).wall.append(seconds)

    async def open(self, context: Any) -> None:
        from concurrent.futures import ProcessPoolExecutor

        self.queue = asynqueue.ProcessQueue(WORKERS)
        self.pool = context.Pool(WORKERS)
        self.executor = ProcessPoolExecutor(WORKERS, mp_context=context)
        self.executorAgain = ProcessPoolExecutor(WORKERS, mp_context=context)
        warm = list(range(WARMUP))
        f = self.calls.trivial
        await gatherResults([self.queue.call(f, x) for x in warm])
        list(self.pool.imap(f, warm, chunksize=1))
        list(self.executor.map(f, warm))
        list(self.executorAgain.map(f, warm))
        # One untimed round of large results for each as well. The first
        # touch of memory that a fresh virtual machine hands out costs about
        # 11 us a page here, against about 4 us for memory touched before
        # (see README): whichever contender went first in round 1 would pay
        # for the others' memory too. It also fills each one's own buffers.
        big = [MiB] * self.counts["bytes"]
        g = self.calls.payload
        await gatherResults([self.queue.call(g, x) for x in big])
        list(self.pool.imap(g, big, chunksize=1))
        list(self.executor.map(g, big))
        list(self.executorAgain.map(g, big))

    async def close(self) -> None:
        await self.queue.shutdown()
        self.pool.close()
        self.pool.join()
        self.executor.shutdown(wait=True)
        self.executorAgain.shutdown(wait=True)

    async def round(self, turn: int = 0) -> None:
        """
        One round of every job, the contenders taking turns within each.

        The turns rotate with C{turn} (the round's number): each contender
        runs first in some rounds and after each other one in others, so
        that none always follows the serial run, a fresh queue's shutdown
        or the same neighbour (which this machine's noise could favour).
        """
        for job in ("trivial", "cpu", "bytes"):
            count = self.counts[job]
            xs = [self.arg(job, i) for i in range(count)]
            f = self.calls.of(job)
            if job == "cpu":
                gc.collect()
                start = now()
                for x in xs:
                    f(x)
                self.note(job, SERIAL, now() - start)
            contenders = [self._kept, self._fresh, self._pool, self._executor]
            if job == "cpu":
                contenders.append(self._executorAgain)
            shift = turn % len(contenders)
            for contender in contenders[shift:] + contenders[:shift]:
                await contender(job, f, xs)
        await self.latency()

    async def _kept(self, job: str, f: Callable[[Any], Any], xs: list[Any]) -> None:
        """The queue kept for the program's life, the user's function."""
        gc.collect()
        start = now()
        results = await gatherResults([self.queue.call(f, x) for x in xs])
        self.note(job, PQ, now() - start)
        _check(job, results, len(xs))

    async def _fresh(self, job: str, f: Callable[[Any], Any], xs: list[Any]) -> None:
        """Today's figure: a fresh queue, a module's function."""
        fresh = asynqueue.ProcessQueue(WORKERS)
        try:
            g = self.calls.of(job, module=True)
            warm = self.calls.moduleTrivial
            await gatherResults([fresh.call(warm, x) for x in range(WARMUP)])
            gc.collect()
            start = now()
            results = await gatherResults([fresh.call(g, x) for x in xs])
            self.note(job, PQ_FRESH, now() - start)
            _check(job, results, len(xs))
        finally:
            await fresh.shutdown()

    async def _pool(self, job: str, f: Callable[[Any], Any], xs: list[Any]) -> None:
        self._mapped(job, POOL, lambda: self.pool.imap(f, xs, chunksize=1), len(xs))

    async def _executor(self, job: str, f: Callable[[Any], Any], xs: list[Any]) -> None:
        self._mapped(job, PPE, lambda: self.executor.map(f, xs), len(xs))

    async def _executorAgain(
        self, job: str, f: Callable[[Any], Any], xs: list[Any]
    ) -> None:
        self._mapped(job, PPE_AGAIN, lambda: self.executorAgain.map(f, xs), len(xs))

    def _mapped(
        self, job: str, name: str, results: Callable[[], Iterable[Any]], count: int
    ) -> None:
        """Time a plain pool's round: C{results()} taken to the last one."""
        gc.collect()
        start = now()
        got = list(results())
        self.note(job, name, now() - start)
        _check(job, got, count)

    async def latency(self) -> None:
        """Sequential calls, each awaited before the next: the median of this round."""
        f, n = self.calls.trivial, self.counts["latency"]
        gc.collect()
        times = []
        for i in range(n):
            start = now()
            await self.queue.call(f, i)
            times.append(now() - start)
        self._latency(PQ, times)
        times = []
        for i in range(n):
            start = now()
            self.executor.submit(f, i).result()
            times.append(now() - start)
        self._latency(PPE, times)
        times = []
        for i in range(n):
            start = now()
            self.pool.apply(f, (i,))
            times.append(now() - start)
        self._latency(POOL, times)

    def _latency(self, name: str, times: list[float]) -> None:
        self.note("latency", name, median(times))
        self.latencyAll.setdefault(name, []).extend(times)


def _spread(values: list[float]) -> str:
    """How far the rounds lie apart: (worst - best) / median, in per cent."""
    if len(values) < 2:
        return "-"
    return f"{100 * (max(values) - min(values)) / statistics.median(values):.0f}%"


def report(way: UserWay, rounds: int) -> list[tuple[str, bool | None, str]]:
    """Print the tables and ratios; return the targets as (label, met, figure)."""
    counts = way.counts
    targets: list[tuple[str, bool | None, str]] = []

    def rates(job: str, name: str) -> list[float]:
        out = way.figures[job].get(name)
        if out is None:
            return []
        if job in ("trivial", "bytes"):
            return [counts[job] / s for s in out.wall]
        if job == "latency":
            return [1e6 * s for s in out.wall]
        return list(out.wall)

    titles = {
        "trivial": f"{counts['trivial']:,} trivial calls submitted at once (calls/s)",
        "cpu": f"{counts['cpu']} CPU-bound calls of about 7 ms, all at once "
        "(wall seconds; speedup over serial in the same round)",
        "bytes": f"{counts['bytes']} calls returning 1 MiB bytes, all at once (MiB/s)",
        "latency": f"{counts['latency']} sequential calls on a warm idle queue, "
        "median round trip of each round (us)",
    }
    for number, job in enumerate(("trivial", "cpu", "bytes", "latency"), 1):
        rows = []
        for name in ORDER:
            values = rates(job, name)
            if not values:
                continue
            perRound = " ".join(_short(v) for v in values)
            if job == "cpu" and name != SERIAL:
                serial = way.figures["cpu"][SERIAL].wall
                speedups = [a / b for a, b in zip(serial, values, strict=False)]
                perRound = " ".join(f"{s:.2f}x" for s in speedups)
            rows.append(
                [
                    name,
                    max(values) if job in ("trivial", "bytes") else min(values),
                    statistics.median(values),
                    min(values) if job in ("trivial", "bytes") else max(values),
                    _spread(values),
                    perRound,
                ]
            )
        printTable(
            f"U{number}. The user's way: {titles[job]}; {rounds} rounds",
            ["contender", "best", "median", "worst", "spread", "each round"],
            rows,
        )
    print(
        "  spread: (worst - best) / median over the rounds; a fresh queue is "
        "started for each\n  round of the 'module function, fresh queue' row "
        "(its start-up is not timed)."
    )

    def perRound(job: str, a: str, b: str, invert: bool = False) -> list[float]:
        x, y = way.figures[job].get(a), way.figures[job].get(b)
        if x is None or y is None:
            return []
        pairs = zip(x.wall, y.wall, strict=False)
        # Seconds: the ratio of rates is the inverse ratio of times.
        return [(a / b) if invert else (b / a) for a, b in pairs]

    def line(label: str, ratios: list[float], target: float, atLeast: bool) -> None:
        if not ratios:
            print(f"  {label}: n/a")
            targets.append((label, None, "n/a"))
            return
        med = statistics.median(ratios)
        worst = min(ratios) if atLeast else max(ratios)
        judged = worst if "every round" in label else med
        met = judged >= target if atLeast else judged <= target
        figure = f"{med:.2f}x median [{min(ratios):.2f}-{max(ratios):.2f}x over rounds]"
        sign = ">=" if atLeast else "<="
        print(
            f"  {label}: {figure}  (target {sign} {target:g}x: "
            f"{'met' if met else 'NOT met'})"
        )
        targets.append((f"{label} {sign} {target:g}x", met, figure))

    print(f"\nRatios in each round ({PQ} first)")
    line(
        "trivial calls / Pool.imap(chunksize=1)",
        perRound("trivial", PQ, POOL),
        1.5,
        True,
    )
    line("trivial calls / ProcessPoolExecutor", perRound("trivial", PQ, PPE), 5.0, True)
    beside = perRound("trivial", PQ, PQ_FRESH)
    if beside:
        print(
            "  trivial calls / module function, fresh queue (no target): "
            f"{statistics.median(beside):.2f}x median "
            f"[{min(beside):.2f}-{max(beside):.2f}x over rounds]"
        )
    line(
        "CPU-bound speedup / ProcessPoolExecutor's",
        perRound("cpu", PQ, PPE),
        1.0,
        True,
    )
    yardstick = perRound("cpu", PPE_AGAIN, PPE)
    if yardstick:
        print(
            "  CPU-bound speedup, a second ProcessPoolExecutor / the first "
            f"(the yardstick, no target): {statistics.median(yardstick):.2f}x "
            f"median [{min(yardstick):.2f}-{max(yardstick):.2f}x over rounds]"
        )
    line(
        "1 MiB results / ProcessPoolExecutor, every round",
        perRound("bytes", PQ, PPE),
        2.0,
        True,
    )
    line(
        "idle round trip / ProcessPoolExecutor submit().result()",
        perRound("latency", PQ, PPE, invert=True),
        0.4,
        False,
    )
    return targets


def _short(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:.1f}k"
    if v >= 10:
        return f"{v:.0f}"
    return f"{v:.3f}"


async def run(
    context: Any, calls: Calls, counts: dict[str, int], spinSteps: int, rounds: int
) -> list[tuple[str, bool | None, str]]:
    """Open every contender once, run C{rounds} rounds, close, report."""
    way = UserWay(calls, counts, spinSteps)
    began = time.perf_counter()
    await way.open(context)
    try:
        for i in range(rounds):
            start = now()
            await way.round(i)
            print(f"(the user's way, round {i + 1}: {now() - start:.1f} s)")
    finally:
        await way.close()
    print(f"(the user's way: {time.perf_counter() - began:.1f} s in all)")
    return report(way, rounds)
