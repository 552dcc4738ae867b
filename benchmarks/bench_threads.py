"""
Threads: asynqueue's ThreadQueue against Twisted's deferToThread and a
ThreadPoolExecutor, in one run, on the default reactor.

The headline is the user's way: a function defined in this script,
results gathered with C{gatherResults}, one ThreadQueue kept for
C{--user-rounds} (5) rounds against Twisted's C{deferToThread}, the
spread between rounds reported. Each contender runs in a process of its
own, their rounds taken in turns (see C{lockstep.py}: raced in one
process, each round pays for what the other left on the heap); the same
rounds raced in this one process are shown beside it.

Then the earlier measurements. Throughput: C{--calls} trivial calls
submitted at once, every result collected in the reactor thread; best of
C{--reps} rounds (the contenders take turns within a round, each round
on a fresh, warmed-up queue or pool so that no contender pays for what
another left on the heap). Each round runs once as Python normally runs
(cyclic garbage collector on: the headline figures) and once with the
collector off, which shows the CPU each contender itself spends in the
reactor thread. Latency: sequential calls on a warm, idle queue, each
awaited before the next. The plain C{ThreadPoolExecutor.map}, without a
reactor, is the ceiling.

    .venv/bin/python benchmarks/bench_threads.py [--calls N] [--quick]
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from common import (
    Stopwatch,
    gitRevision,
    machineHeader,
    median,
    now,
    percentile,
    printRatio,
    printTable,
)
from lockstep import Lockstep, serveRounds
from twisted.internet import threads as twistedThreads
from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.task import react
from twisted.python.failure import Failure

import asynqueue
import twisted
from asynqueue import AsyncWorker, TaskQueue, ThreadQueue

TRIVIAL = int  # the call every contender runs: int() -> 0
WORKERS = 2
WARMUP = 1000


def trivialHere(x: int) -> int:
    """The user's call, defined in the script: returns its argument."""
    return x


Submit = Callable[[], Deferred[Any]]
Close = Callable[[], Any]  # may return a Deferred


@dataclass
class Contender:
    name: str
    open: Callable[[], tuple[Submit, Close]]


def allFired(ds: list[Deferred[Any]]) -> Deferred[None]:
    """
    Fire once every Deferred in C{ds} has fired; fail if any failed.

    Lighter than C{gatherResults}, so collecting costs every contender the
    same little.
    """
    done: Deferred[None] = Deferred()
    left = [len(ds)]
    failures: list[Failure] = []

    def one(result: object) -> None:
        if isinstance(result, Failure):
            failures.append(result)
        left[0] -= 1
        if left[0] == 0:
            if failures:
                done.errback(failures[0])
            else:
                done.callback(None)

    for d in ds:
        d.addBoth(one)
    return done


def contenders(reactor: Any) -> list[Contender]:
    def threadQueue() -> tuple[Submit, Close]:
        q = ThreadQueue(WORKERS, name="bench-ThreadQueue")
        return (lambda: q.call(TRIVIAL)), q.shutdown

    def asyncWorker() -> tuple[Submit, Close]:
        q = TaskQueue(AsyncWorker(), name="bench-AsyncWorker")
        return (lambda: q.call(TRIVIAL)), q.shutdown

    def deferToThread() -> tuple[Submit, Close]:
        # The reactor's own pool lives as long as the reactor.
        return (lambda: twistedThreads.deferToThread(TRIVIAL)), lambda: None

    def bridgedExecutor() -> tuple[Submit, Close]:
        executor = ThreadPoolExecutor(WORKERS)

        def settle(d: Deferred[Any], future: Future[Any]) -> None:
            error = future.exception()
            if error is not None:
                d.errback(Failure(error))
            else:
                d.callback(future.result())

        def submit() -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            future = executor.submit(TRIVIAL)
            future.add_done_callback(lambda f: reactor.callFromThread(settle, d, f))
            return d

        return submit, lambda: executor.shutdown(wait=True)

    return [
        Contender(f"asynqueue ThreadQueue({WORKERS})", threadQueue),
        Contender("asynqueue TaskQueue(AsyncWorker())", asyncWorker),
        Contender("twisted deferToThread (default pool)", deferToThread),
        Contender(f"ThreadPoolExecutor({WORKERS}) -> callFromThread", bridgedExecutor),
    ]


MAP = f"ThreadPoolExecutor({WORKERS}).map, no reactor"


@dataclass
class Rounds:
    """Wall and calling-thread CPU seconds of each throughput round."""

    wall: list[float]
    cpu: list[float]
    wallGcOff: list[float]
    cpuGcOff: list[float]

    @classmethod
    def empty(cls) -> Rounds:
        return cls([], [], [], [])

    def add(self, watch: Stopwatch) -> None:
        if watch.gcOff:
            self.wallGcOff.append(watch.wall)
            self.cpuGcOff.append(watch.cpu)
        else:
            self.wall.append(watch.wall)
            self.cpu.append(watch.cpu)


async def throughputRound(contender: Contender, calls: int, gcOff: bool) -> Stopwatch:
    """Time C{calls} calls on a fresh, warmed-up instance of the contender."""
    submit, close = contender.open()
    try:
        await allFired([submit() for _ in range(min(WARMUP, calls))])
        with Stopwatch(gcOff) as watch:
            await allFired([submit() for _ in range(calls)])
    finally:
        await maybeDeferred(close)
    return watch


async def latencies(contender: Contender, calls: int, warmup: int = 50) -> list[float]:
    """Round trips in seconds of C{calls} sequential calls, after a warm-up."""
    submit, close = contender.open()
    times = []
    try:
        for _ in range(warmup):
            await submit()
        gc.collect()
        for _ in range(calls):
            start = now()
            await submit()
            times.append(now() - start)
    finally:
        await maybeDeferred(close)
    return times


def executorMapCeiling(calls: int, reps: int) -> Rounds:
    """Rounds of C{ThreadPoolExecutor.map}, no reactor involved."""
    rounds = Rounds.empty()
    for _ in range(reps):
        for gcOff in (False, True):
            with ThreadPoolExecutor(WORKERS) as executor:
                list(executor.map(TRIVIAL, range(min(WARMUP, calls))))
                with Stopwatch(gcOff) as watch:
                    for _ in executor.map(TRIVIAL, range(calls)):
                        pass
            rounds.add(watch)
    return rounds


USER_TQ, USER_DTT = f"ThreadQueue({WORKERS}), one queue", "deferToThread"


async def contenderRounds(args: argparse.Namespace) -> None:
    """
    One contender of the headline in a process of its own (C{--contender}):
    the script's function, C{gatherResults}, one queue for every round.
    """
    f, xs = trivialHere, list(range(args.calls))
    q = ThreadQueue(WORKERS, name="bench-user") if args.contender == "tq" else None

    def call(x: int) -> Deferred[Any]:
        if q is None:
            return twistedThreads.deferToThread(f, x)
        return q.call(f, x)

    async def oneRound() -> float:
        gc.collect()
        with Stopwatch() as watch:
            results = await gatherResults([call(x) for x in xs])
        assert results == xs
        return watch.wall

    try:
        await gatherResults([call(x) for x in range(WARMUP)])
        await serveRounds(oneRound)
    finally:
        if q is not None:
            await q.shutdown()


def userWayApart(args: argparse.Namespace) -> bool:
    """The headline: each contender in its own process, rounds in turns."""
    command = [sys.executable, __file__, "--calls", str(args.calls), "--contender"]
    names = {"tq": USER_TQ, "dtt": USER_DTT}
    seconds: dict[str, list[float]] = {USER_TQ: [], USER_DTT: []}
    with Lockstep({name: [*command, key] for key, name in names.items()}) as race:
        for _ in range(args.userRounds):
            for name, wall in race.round().items():
                seconds[name].append(wall)
    return reportUserWay(args, seconds, "each in a process of its own")


async def userWay(args: argparse.Namespace) -> bool:
    """
    Beside the headline: the same rounds, both contenders in this process,
    taking turns.
    """
    TQ, DTT = USER_TQ, USER_DTT
    q = ThreadQueue(WORKERS, name="bench-user")
    f, xs = trivialHere, list(range(args.calls))
    seconds: dict[str, list[float]] = {TQ: [], DTT: []}
    try:
        await gatherResults([q.call(f, x) for x in range(WARMUP)])
        await gatherResults([twistedThreads.deferToThread(f, x) for x in range(WARMUP)])
        for _ in range(args.userRounds):
            # Each contender starts from a collected heap (as bench_process's
            # rounds do): deferToThread leaves some 12,000 objects of cyclic
            # garbage a round, which the next round's collections would
            # otherwise find and free on the other contender's time.
            gc.collect()
            with Stopwatch() as watch:
                results = await gatherResults([q.call(f, x) for x in xs])
            seconds[TQ].append(watch.wall)
            assert results == xs
            gc.collect()
            with Stopwatch() as watch:
                results = await gatherResults(
                    [twistedThreads.deferToThread(f, x) for x in xs]
                )
            seconds[DTT].append(watch.wall)
            assert results == xs
    finally:
        await q.shutdown()
    return reportUserWay(args, seconds, "both in this one process")


def reportUserWay(
    args: argparse.Namespace, seconds: dict[str, list[float]], where: str
) -> bool:
    """Print the rounds of the user's way and their ratio; whether 3x is met."""
    TQ, DTT = USER_TQ, USER_DTT
    rows = []
    for name, walls in seconds.items():
        rates = [args.calls / s for s in walls]
        spread = 100 * (max(rates) - min(rates)) / median(rates)
        rows.append(
            [
                name,
                max(rates),
                median(rates),
                min(rates),
                f"{spread:.0f}%",
                " ".join(f"{r / 1000:.1f}k" for r in rates),
            ]
        )
    printTable(
        f"The user's way: {args.calls:,} calls of a function defined in the "
        f"script, gatherResults, one queue for {args.userRounds} rounds, {where} "
        "(calls/s)",
        ["contender", "best", "median", "worst", "spread", "each round"],
        rows,
    )
    ratios = [b / a for a, b in zip(seconds[TQ], seconds[DTT], strict=True)]
    met = median(ratios) >= 3.0
    print(
        f"  {TQ} / {DTT}: {median(ratios):.2f}x median "
        f"[{min(ratios):.2f}-{max(ratios):.2f}x over rounds]  "
        f"(target >= 3x: {'met' if met else 'NOT met'})"
    )
    return met


async def main(reactor: Any, args: argparse.Namespace, userMet: bool | None) -> None:
    print(f"reactor: {type(reactor).__module__}.{type(reactor).__name__}")
    if args.userRounds:
        await userWay(args)
    everyone = contenders(reactor)
    TQ, AW, DTT, TPE = (c.name for c in everyone)

    rounds = {c.name: Rounds.empty() for c in everyone}
    for _ in range(args.reps):
        for gcOff in (False, True):
            for c in everyone:
                rounds[c.name].add(await throughputRound(c, args.calls, gcOff))
    rounds[MAP] = args.mapRounds

    def rate(seconds: float) -> float:
        return args.calls / seconds

    best = {name: rate(min(r.wall)) for name, r in rounds.items()}
    bestGcOff = {name: rate(min(r.wallGcOff)) for name, r in rounds.items()}
    printTable(
        f"Throughput: {args.calls:,} trivial calls submitted at once, results in "
        f"the reactor thread; {args.reps} round(s) each",
        [
            "contender",
            "best/s",
            "median/s",
            "worst/s",
            "best/s gc off",
            "CPU us/call gc off",
        ],
        [
            [
                name,
                best[name],
                rate(median(r.wall)),
                rate(max(r.wall)),
                bestGcOff[name],
                1e6 * min(r.cpuGcOff) / args.calls,
            ]
            for name, r in rounds.items()
        ],
    )
    print(
        "  CPU us/call: CPU time of the reactor thread (for the .map ceiling: "
        "the calling thread) per call,\n  best round with the collector off."
    )

    lat = {c.name: await latencies(c, args.latencyCalls) for c in everyone}
    printTable(
        f"Latency: {args.latencyCalls} sequential calls on a warm idle queue "
        "(round trip, us)",
        ["contender", "median", "p90", "min"],
        [
            [
                name,
                1e6 * median(times),
                1e6 * percentile(times, 90),
                1e6 * min(times),
            ]
            for name, times in lat.items()
        ],
    )

    print("\nRatios of best throughput (higher is better for asynqueue)")
    met = printRatio(f"{TQ} / {DTT}", best[TQ], best[DTT], target=2.0)
    printRatio("  the same, gc off", bestGcOff[TQ], bestGcOff[DTT], target=2.0)
    printRatio(f"{TQ} / {TPE}", best[TQ], best[TPE])
    printRatio("  the same, gc off", bestGcOff[TQ], bestGcOff[TPE])
    printRatio(f"{TQ} / {MAP}", best[TQ], best[MAP])
    printRatio(f"{AW} / {DTT}", best[AW], best[DTT])
    print("Ratios of median latency (lower is better for asynqueue)")
    for other in (DTT, TPE):
        printRatio(f"{TQ} / {other}", median(lat[TQ]), median(lat[other]))
    print(
        f"\nTarget ThreadQueue >= 2x deferToThread throughput: "
        f"{'MET' if met else 'NOT MET'}"
    )
    if userMet is not None:
        print(
            "Target, the user's way (each in its own process): "
            "ThreadQueue(2) >= 3x deferToThread: "
            f"{'MET' if userMet else 'NOT MET'}"
        )


def parseArgs() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument(
        "--calls", type=int, help="calls per throughput round (default 20000)"
    )
    parser.add_argument("--reps", type=int, help="throughput rounds (default 3)")
    parser.add_argument(
        "--user-rounds",
        dest="userRounds",
        type=int,
        default=5,
        help="rounds of the user's way, one queue for all (default 5; 0: none)",
    )
    parser.add_argument(
        "--latency-calls",
        dest="latencyCalls",
        type=int,
        help="sequential calls for latency (default 200)",
    )
    parser.add_argument("--contender", choices=("tq", "dtt"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2000 calls, 1 round, 50 latency calls",
    )
    args = parser.parse_args()
    quick = {"calls": 2000, "reps": 1, "latencyCalls": 50}
    full = {"calls": 20_000, "reps": 3, "latencyCalls": 200}
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def run() -> None:
    args = parseArgs()
    if args.contender:
        react(lambda reactor: Deferred.fromCoroutine(contenderRounds(args)))
        return
    print(
        machineHeader(
            Twisted=twisted.__version__,
            asynqueue=f"{asynqueue.__version__} (git {gitRevision()})",
        )
    )
    start = now()
    userMet = userWayApart(args) if args.userRounds else None
    args.mapRounds = executorMapCeiling(args.calls, args.reps)
    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor, args, userMet)))
    finally:
        print(f"(whole run: {now() - start:.1f} s)")


if __name__ == "__main__":
    run()
