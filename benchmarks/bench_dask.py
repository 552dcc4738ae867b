"""
Dask: asynqueue's C{TaskQueue(DaskWorker(cluster))} against bare Dask
(C{Client.map}/C{submit} and C{gather}) on the same C{LocalCluster}, and
against asynqueue's C{ProcessQueue} on the same cores, in one run.

Three measurements, each taken C{--rounds} times (3) with the contenders
taking turns within a round, so that a change in the machine's load hits
them all, and half a second between turns, so that what one left to do
(Dask letting go of its finished calls) is not timed as the next one's; the
best round is reported with the spread between rounds:

  1. Throughput: 2,000 and 20,000 trivial calls submitted at once, every
     result collected; calls/s.
  2. Round trip: C{--latency-calls} (200) sequential calls on an idle
     cluster, each awaited before the next; median and p90.
  3. CPU-bound: 200 calls of about C{--cpu-ms} (20) ms of pure-Python work
     each; speedup over running them one after another in this process,
     and the CPU time each used a call, in this process (client, queue,
     scheduler) and in all.

Targets (issue 12): our throughput at least 0.9x bare Dask's, our round
trip within 1.2x bare Dask's, our CPU-bound speedup within 5 % of bare
Dask's. The cluster has one single-threaded worker process per core. Bare
Dask uses a synchronous client, which blocks the reactor thread while it
runs (nothing else uses it then). The calls live in C{peers/work.py}, so
that every contender pickles them by reference.

    .venv/bin/python benchmarks/bench_dask.py [--quick] [--reactor asyncio]
        [--jobs throughput,trip,cpu]

C{--jobs} runs only the measurements named (all three by default).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
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

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from peers.work import spin, trivial  # noqa: E402


def calibrate(ms: float) -> int:
    """The loop count of C{spin} that takes about C{ms} milliseconds here."""
    n = 10_000
    while True:
        t = now()
        spin(n)
        took = now() - t
        if took > 0.05:
            return max(1, int(n * ms / 1000 / took))
        n *= 2


def cpuSeconds() -> tuple[float, float]:
    """
    CPU seconds used so far by this process (our client and queue, bare
    Dask's client, the scheduler) and by it with its live descendants (the
    Dask workers, ProcessQueue's children); psutil comes with distributed.
    """
    import psutil

    me = psutil.Process()
    own = me.cpu_times()
    total = own.user + own.system
    for child in me.children(recursive=True):
        try:
            times = child.cpu_times()
        except psutil.Error:
            continue
        total += times.user + times.system
    return own.user + own.system, total


async def settle() -> None:
    """
    Let what a contender left behind (Dask letting go of its finished calls,
    on the scheduler and the workers) end before the next one's clock starts.
    """
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    await deferLater(reactor, 0.5, lambda: None)


def spread(values: list[float]) -> str:
    """The spread between rounds, as a percentage of the best."""
    best = max(values)
    return f"{(best - min(values)) / best * 100:.0f} %"


async def run(reactor: Any, options: argparse.Namespace) -> None:
    import dask
    import distributed
    from twisted.internet.defer import gatherResults

    from asynqueue import ProcessQueue, TaskQueue
    from asynqueue.workers.dask import DaskWorker

    cores = os.cpu_count() or 1
    print(
        machineHeader(dask=dask.__version__, distributed=distributed.__version__),
        f"| asynqueue {gitRevision()} | reactor {type(reactor).__name__}",
    )
    cluster = distributed.LocalCluster(
        n_workers=cores,
        threads_per_worker=1,
        processes=True,
        dashboard_address=":0",
        worker_dashboard_address=":0",
    )
    bare = distributed.Client(cluster, set_as_default=False)
    worker = DaskWorker(cluster)
    ours = TaskQueue(worker, shutdownWithReactor=False)
    processes = ProcessQueue(cores, shutdownWithReactor=False)
    await worker.whenConnected()
    # Warm every contender up: imports, connections, children.
    await gatherResults([ours.call(trivial, i) for i in range(200)])
    await gatherResults([processes.call(trivial, i) for i in range(200)])
    bare.gather(bare.map(trivial, range(200), pure=False))

    def bareMany(n: int) -> None:
        futures = bare.map(trivial, range(n), pure=False)
        bare.gather(futures)
        del futures

    async def queueMany(q: Any, n: int) -> None:
        await gatherResults([q.call(trivial, i) for i in range(n)])

    met: list[bool] = []
    if "throughput" in options.jobs:
        met += await measureThroughput(ours, processes, bareMany, queueMany, options)
    if "trip" in options.jobs:
        met.append(await measureTrip(ours, processes, bare, options))
    if "cpu" in options.jobs:
        met.append(await measureCpu(ours, processes, bare, cores, options))
    print("\nTargets:", "all met" if all(met) else "NOT all met")
    await ours.shutdown()
    await processes.shutdown()
    bare.close()
    cluster.close()


async def measureThroughput(
    ours: Any,
    processes: Any,
    bareMany: Callable[[int], None],
    queueMany: Callable[[Any, int], Any],
    options: argparse.Namespace,
) -> list[bool]:
    """Trivial calls submitted at once: whether each count met its target."""
    throughput: dict[tuple[str, int], list[float]] = {}
    counts = [2_000] if options.quick else [2_000, 20_000]
    for _ in range(options.rounds):
        for n in counts:
            for name, go in (
                ("asynqueue on Dask", lambda n=n: queueMany(ours, n)),
                ("bare Dask", None),
                ("ProcessQueue", lambda n=n: queueMany(processes, n)),
            ):
                with Stopwatch() as s:
                    if go is None:
                        bareMany(n)
                    else:
                        await go()
                throughput.setdefault((name, n), []).append(n / s.wall)
                await settle()
    printTable(
        "Throughput: trivial calls submitted at once (calls/s, best round)",
        ["contender", "calls", "calls/s", "spread"],
        [
            (name, n, max(rates), spread(rates))
            for (name, n), rates in throughput.items()
        ],
    )
    met = []
    for n in counts:
        met.append(
            printRatio(
                f"asynqueue on Dask / bare Dask, {n:,} calls",
                max(throughput[("asynqueue on Dask", n)]),
                max(throughput[("bare Dask", n)]),
                0.9,
            )
        )
    return met


async def measureTrip(
    ours: Any, processes: Any, bare: Any, options: argparse.Namespace
) -> bool:
    """Sequential calls on an idle cluster: whether the target was met."""
    trips: dict[str, list[list[float]]] = {}
    for _ in range(options.rounds):
        for name in ("asynqueue on Dask", "bare Dask", "ProcessQueue"):
            times = []
            for i in range(options.latency_calls):
                t = now()
                if name == "bare Dask":
                    bare.submit(trivial, i, pure=False).result()
                else:
                    q = ours if name == "asynqueue on Dask" else processes
                    await q.call(trivial, i)
                times.append(now() - t)
            trips.setdefault(name, []).append(times)
            await settle()
    rows = []
    medians: dict[str, float] = {}
    for name, rounds in trips.items():
        perRound = [median(r) * 1000 for r in rounds]
        best = min(range(len(rounds)), key=lambda k: perRound[k])
        medians[name] = perRound[best]
        rows.append(
            (
                name,
                f"{perRound[best]:.2f}",
                f"{percentile(rounds[best], 90) * 1000:.2f}",
                f"{(max(perRound) - min(perRound)) / min(perRound) * 100:.0f} %",
            )
        )
    printTable(
        f"Round trip: {options.latency_calls} sequential calls (ms, best round)",
        ["contender", "median", "p90", "spread"],
        rows,
    )
    ratio = medians["asynqueue on Dask"] / medians["bare Dask"]
    tripMet = ratio <= 1.2
    print(
        f"  asynqueue on Dask / bare Dask, median round trip: {ratio:.2f}x"
        f"  (target <= 1.2x: {'met' if tripMet else 'NOT met'})"
    )
    return tripMet


async def measureCpu(
    ours: Any, processes: Any, bare: Any, cores: int, options: argparse.Namespace
) -> bool:
    """
    CPU-bound calls: whether the target was met. Also the CPU time this
    process (our client and queue, bare Dask's client, the scheduler) and
    all processes used in each contender's best round, what it left to do
    after its clock stopped included: what the calls themselves need is the
    serial time.
    """
    from twisted.internet.defer import gatherResults

    loops = calibrate(options.cpu_ms)
    tasks = 20 if options.quick else 200
    with Stopwatch() as s:
        for _ in range(20):
            spin(loops)
    serial = s.wall / 20 * tasks
    speedups: dict[str, list[float]] = {}
    cpu: dict[str, list[tuple[float, float]]] = {}
    for _ in range(options.rounds):
        for name in ("asynqueue on Dask", "bare Dask", "ProcessQueue"):
            before = cpuSeconds()
            with Stopwatch() as s:
                if name == "bare Dask":
                    bare.gather(bare.map(spin, [loops] * tasks, pure=False))
                else:
                    q = ours if name == "asynqueue on Dask" else processes
                    await gatherResults([q.call(spin, loops) for _ in range(tasks)])
            # Its CPU with what it left to do after its clock stopped.
            await settle()
            after = cpuSeconds()
            speedups.setdefault(name, []).append(serial / s.wall)
            cpu.setdefault(name, []).append(
                (after[0] - before[0], after[1] - before[1])
            )
    rows = []
    for name, v in speedups.items():
        best = max(range(len(v)), key=v.__getitem__)
        rows.append(
            (
                name,
                f"{v[best]:.2f}",
                spread(v),
                f"{cpu[name][best][0] / tasks * 1000:.2f}",
                f"{cpu[name][best][1] / tasks * 1000:.2f}",
            )
        )
    printTable(
        f"CPU-bound: {tasks} calls of {options.cpu_ms:g} ms, serially "
        f"{serial / tasks * 1000:.2f} ms a call "
        f"(speedup over serial, {cores} cores, best round)",
        ["contender", "speedup", "spread", "CPU ms a call: here", "all"],
        rows,
    )
    cpuRatio = max(speedups["asynqueue on Dask"]) / max(speedups["bare Dask"])
    cpuMet = cpuRatio >= 0.95
    print(
        f"  asynqueue on Dask / bare Dask, speedup: {cpuRatio:.2f}x"
        f"  (target >= 0.95x: {'met' if cpuMet else 'NOT met'})"
    )
    return cpuMet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-calls", type=int, default=200)
    parser.add_argument("--cpu-ms", type=float, default=20.0)
    parser.add_argument("--reactor", choices=["default", "asyncio"], default="default")
    parser.add_argument(
        "--jobs",
        default="throughput,trip,cpu",
        help="the measurements to run, of throughput, trip and cpu (all)",
    )
    options = parser.parse_args(argv)
    options.jobs = set(options.jobs.split(","))
    unknown = options.jobs - {"throughput", "trip", "cpu"}
    if unknown:
        parser.error(f"unknown jobs: {', '.join(sorted(unknown))}")
    if options.quick:
        options.rounds = min(options.rounds, 2)
        options.latency_calls = min(options.latency_calls, 50)
    if options.reactor == "asyncio":
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    go: Callable[[Any], Any] = lambda reactor: ensureDeferred(run(reactor, options))  # noqa: E731
    react(go)


if __name__ == "__main__":
    main()
