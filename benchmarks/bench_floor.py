"""
What this machine allows at best, whatever the library: the floor under
bench_process.py's latency and large-result figures.

1. Round trip: two Python processes bounce 40 bytes over a pair of pipes,
   doing nothing else; median of C{--trips} round trips. Once with
   blocking reads on both sides, once with a Twisted reactor on both sides
   (as every Twisted process pool has), and once with both processes
   pinned to one CPU (no wake-up of another CPU: not how a pool runs, but
   it shows what cross-CPU wake-ups cost here).
2. Fresh memory: the cost of making a 1 MiB C{bytes} result that is kept
   (so its pages are new to the process), against making one in memory
   used before; and of reading 1 MiB from a pipe into a kept C{bytes}.
3. The caller's own Deferreds, the user's way: 20,000 Deferreds made at
   once and gathered with C{gatherResults}, then fired, for 5 rounds in
   one process; CPU per call, and how much of it the cyclic garbage
   collector takes (its full passes walk every outstanding Deferred and
   its callbacks). No pool can spend less in the caller's thread.
4. The least a thread pool that returns a Deferred per call can cost, the
   user's way (C{--calls} calls of a function defined in this script,
   gathered with C{gatherResults}, one pool kept for C{--rounds} rounds,
   the contenders taking turns in each round): the leanest such pool
   (C{peers/leanpools.py}: two threads, a plain queue in, results posted
   back in batches) against C{deferToThread} and asynqueue's
   C{ThreadQueue(2)}; rates, the reactor thread's CPU a call and the
   collector's part of it, and the ratios round by round.
5. The same for processes: the leanest Twisted process pool (two stdlib
   children, length-prefixed pickles on pipes, the script's function sent
   to each child once by value with cloudpickle) against
   C{multiprocessing.Pool(2).imap(chunksize=1)} (forkserver: its children
   import this script, so it pickles the function by reference) and
   asynqueue's C{ProcessQueue(2)}; the parent's CPU a call (all its
   threads, as Pool's parent works in three) and the collector's part.

    .venv/bin/python benchmarks/bench_floor.py [--trips N] [--only ITEMS]
        [--calls N] [--rounds N] [--window N]

C{--only} takes a comma-separated list of trip, memory, deferreds,
threads, processes (default all).
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from common import gitRevision, machineHeader, printTable
from peers.leanpools import LeanProcessPool, LeanThreadPool
from twisted.internet.defer import Deferred, gatherResults

WORKERS = 2

_ECHO_BLOCKING = """
import os, sys
r, w = int(sys.argv[1]), int(sys.argv[2])
while True:
    data = os.read(r, 65536)
    if not data:
        break
    os.write(w, data)
"""

_ECHO_REACTOR = """
import os, sys
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
r, w = int(sys.argv[1]), int(sys.argv[2])
class Echo(FileDescriptor):
    def fileno(self):
        return r
    def doRead(self):
        data = os.read(r, 65536)
        if not data:
            reactor.stop()
            return
        os.write(w, data)
reactor.addReader(Echo(reactor))
reactor.run()
"""

MESSAGE = b"x" * 40


def _child(code: str, pin: bool) -> tuple[subprocess.Popen[bytes], int, int]:
    toChildRead, toChildWrite = os.pipe()
    fromChildRead, fromChildWrite = os.pipe()
    command = [sys.executable, "-c", code, str(toChildRead), str(fromChildWrite)]
    if pin:
        command = ["taskset", "-c", "0", *command]
    child = subprocess.Popen(command, pass_fds=(toChildRead, fromChildWrite))
    os.close(toChildRead)
    os.close(fromChildWrite)
    return child, toChildWrite, fromChildRead


def blockingTrips(trips: int, pin: bool = False) -> list[float]:
    """Round trips with blocking reads on both sides (seconds each)."""
    if pin:
        os.sched_setaffinity(0, {0})
    child, write, read = _child(_ECHO_BLOCKING, pin)
    times = []
    try:
        for _ in range(trips + 200):
            start = time.perf_counter()
            os.write(write, MESSAGE)
            os.read(read, 65536)
            times.append(time.perf_counter() - start)
    finally:
        child.kill()
        child.wait()
        os.close(write)
        os.close(read)
        if pin:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    return times[200:]


def reactorTrips(trips: int) -> list[float]:
    """Round trips with a Twisted reactor on both sides, in a fresh process."""
    code = f"""
import os, sys, time, json
sys.path.insert(0, {os.path.dirname(__file__)!r})
from bench_floor import _child, _ECHO_REACTOR, MESSAGE
from twisted.internet import reactor
from twisted.internet.abstract import FileDescriptor
child, write, read = _child(_ECHO_REACTOR, False)
trips, times, state = {trips}, [], {{"start": 0.0}}
class Reader(FileDescriptor):
    def fileno(self):
        return read
    def doRead(self):
        os.read(read, 65536)
        times.append(time.perf_counter() - state["start"])
        if len(times) >= trips + 200:
            reactor.stop()
            return
        state["start"] = time.perf_counter()
        os.write(write, MESSAGE)
def go():
    state["start"] = time.perf_counter()
    os.write(write, MESSAGE)
reactor.addReader(Reader(reactor))
reactor.callWhenRunning(go)
reactor.run()
child.kill()
child.wait()
print(json.dumps(times[200:]))
"""
    import json

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, timeout=120
    )
    return list(json.loads(out.stdout))


def freshMemory(rounds: int = 100) -> dict[str, float]:
    """Microseconds per MiB: kept (fresh) against reused (warm) memory."""
    source = os.urandom(1 << 20)
    pieces = [memoryview(source)[i : i + 65535] for i in range(0, 1 << 20, 65535)]
    kept = []
    start = time.perf_counter()
    for _ in range(rounds):
        kept.append(b"".join(pieces))
    fresh = (time.perf_counter() - start) / rounds
    kept.clear()
    start = time.perf_counter()
    for _ in range(rounds):
        made = b"".join(pieces)
        del made
    warm = (time.perf_counter() - start) / rounds
    read, write = os.pipe()
    try:
        import fcntl

        fcntl.fcntl(write, getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
    except (ImportError, OSError):
        pass
    reads = 0.0
    for _ in range(rounds):
        os.write(write, source)
        start = time.perf_counter()
        kept.append(os.read(read, 1 << 20))
        reads += time.perf_counter() - start
    os.close(read)
    os.close(write)
    return {
        "join into fresh memory (kept)": fresh * 1e6,
        "join into warm memory (dropped)": warm * 1e6,
        "os.read of a full pipe into fresh memory": reads / rounds * 1e6,
    }


def gatheredDeferreds(
    calls: int = 20_000, rounds: int = 5
) -> list[tuple[float, float]]:
    """
    Per round: CPU us per call, and the collector's us of it, in a process
    that has imported a process queue's modules (as a user's has: every
    full pass of the collector walks what they made too).
    """
    import gc

    from twisted.internet.defer import Deferred, gatherResults

    import asynqueue.workers.process  # noqa: F401

    spent = [0.0, 0.0]

    def timeCollector(phase: str, info: dict[str, int]) -> None:
        now = time.thread_time()
        if phase == "start":
            spent[1] = now
        else:
            spent[0] += now - spent[1]

    gc.callbacks.append(timeCollector)
    rows = []
    try:
        for _ in range(rounds):
            gc.collect()
            spent[0] = 0.0
            start = time.thread_time()
            ds: list[Deferred[int]] = [Deferred() for _ in range(calls)]
            results: list[list[int]] = []
            gatherResults(ds).addCallback(results.append)
            for i, d in enumerate(ds):
                d.callback(i)
            cpu = time.thread_time() - start
            assert results and len(results[0]) == calls
            rows.append((cpu / calls * 1e6, spent[0] / calls * 1e6))
            del ds, results
    finally:
        gc.callbacks.remove(timeCollector)
    return rows


# ---------------------------------------------------------------------------
# 4 and 5: the least a pool that returns one Deferred per call can cost.


def trivialHere(x: int) -> int:
    """The user's call, defined in the script: returns its argument."""
    return x


class CollectorClock:
    """CPU seconds the cyclic collector spends, in every thread (gc.callbacks)."""

    def __init__(self) -> None:
        self.spentBy: dict[int, float] = {}  # thread id: seconds
        self._started: dict[int, float] = {}

    def __enter__(self) -> CollectorClock:
        gc.callbacks.append(self._note)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._note)

    def _note(self, phase: str, info: dict[str, int]) -> None:
        # A collection starts and stops in one thread, under the GIL.
        now, thread = time.thread_time(), threading.get_ident()
        if phase == "start":
            self._started[thread] = now
        else:
            spent = now - self._started.pop(thread, now)
            self.spentBy[thread] = self.spentBy.get(thread, 0.0) + spent


@dataclass
class Sample:
    """One contender's round: wall and CPU seconds, the collector's seconds."""

    wall: float
    cpu: float  # the reactor (calling) thread
    processCpu: float  # every thread of this process
    gcHere: float  # the collector, in the calling thread
    gcAll: float  # the collector, in every thread


Run = Callable[[list[int]], Any]  # the round's calls: a Deferred or a list


async def timed(run: Run, xs: list[int]) -> Sample:
    """Time C{run(xs)} (may return a Deferred); check it gave C{xs} back."""
    gc.collect()
    with CollectorClock() as collector:
        here = threading.get_ident()
        wall, cpu = time.perf_counter(), time.thread_time()
        processCpu = time.process_time()
        results = run(xs)
        if isinstance(results, Deferred):
            results = await results
        sample = Sample(
            time.perf_counter() - wall,
            time.thread_time() - cpu,
            time.process_time() - processCpu,
            collector.spentBy.get(here, 0.0),
            sum(collector.spentBy.values()),
        )
    if results != xs:
        raise AssertionError("a contender returned wrong results")
    return sample


async def alternate(
    contenders: dict[str, Run], calls: int, rounds: int
) -> dict[str, list[Sample]]:
    """C{rounds} rounds, every contender in each, the order turning by one."""
    xs = list(range(calls))
    samples: dict[str, list[Sample]] = {name: [] for name in contenders}
    names = list(contenders)
    for i in range(rounds):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            samples[name].append(await timed(contenders[name], xs))
    return samples


def gathered(call: Callable[..., Deferred[Any]]) -> Run:
    """The user's way: a call per item, gathered with C{gatherResults}."""
    f = trivialHere
    return lambda xs: gatherResults([call(f, x) for x in xs])


def report(
    title: str,
    samples: dict[str, list[Sample]],
    calls: int,
    ratios: list[tuple[str, str, float]],
    processCpu: bool = False,
) -> None:
    """The contenders' rates and CPU a call; the ratios judged round by round."""

    def us(values: list[float]) -> str:
        return f"{1e6 * statistics.median(values) / calls:.2f}"

    rows = []
    for name, got in samples.items():
        rates = [calls / s.wall for s in got]
        spread = 100 * (max(rates) - min(rates)) / statistics.median(rates)
        row = [
            name,
            f"{statistics.median(rates):,.0f} [{max(rates):,.0f}-{min(rates):,.0f}]",
            f"{spread:.0f}%",
            " ".join(f"{r / 1000:.1f}k" for r in rates),
            us([s.cpu for s in got]),
            us([s.gcHere for s in got]),
        ]
        if processCpu:
            row += [us([s.processCpu for s in got]), us([s.gcAll for s in got])]
        rows.append(row)
    headers = ["contender", "calls/s median [best-worst]", "spread", "each round"]
    headers += ["CPU us/call", "of it gc"]
    if processCpu:
        headers += ["process CPU us/call", "gc, all threads"]
    printTable(title, headers, rows)
    print(
        "  CPU: the reactor thread's (thread_time), median over rounds; gc: the "
        "collector's part (gc.callbacks)"
    )
    for a, b, target in ratios:
        each = [y.wall / x.wall for x, y in zip(samples[a], samples[b], strict=True)]
        med = statistics.median(each)
        print(
            f"  {a} / {b}: {med:.2f}x median [{min(each):.2f}-{max(each):.2f}x over "
            f"rounds: {' '.join(f'{r:.2f}' for r in each)}]"
            + (f"  (issue 14's target {target:g}x)" if target else "")
        )


async def threadFloor(reactor: Any, calls: int, rounds: int) -> None:
    """
    Item 4: the lean thread pool against deferToThread and ThreadQueue(2);
    and a TaskQueue whose worker runs each call in the reactor thread (no
    hand-off at all): what asynqueue's queue costs with any thread worker.
    """
    from twisted.internet.threads import deferToThread

    from asynqueue import AsyncWorker, TaskQueue, ThreadQueue

    lean = LeanThreadPool(reactor)
    tq = ThreadQueue(WORKERS, name="bench-floor")
    inline = TaskQueue(AsyncWorker(), name="bench-floor-inline")
    LEAN, DTT, TQ = "lean pool (floor)", "deferToThread", f"ThreadQueue({WORKERS})"
    INLINE = "TaskQueue(AsyncWorker()), no thread"
    contenders = {
        LEAN: gathered(lean.call),
        DTT: gathered(deferToThread),
        TQ: gathered(tq.call),
        INLINE: gathered(inline.call),
    }
    try:
        for run in contenders.values():
            await run(list(range(1000)))
        samples = await alternate(contenders, calls, rounds)
    finally:
        lean.close()
        await tq.shutdown()
        await inline.shutdown()
    report(
        f"4. Threads, the user's way: {calls:,} calls of a script function, "
        f"gatherResults, one pool kept for {rounds} rounds",
        samples,
        calls,
        [(LEAN, DTT, 3.0), (TQ, DTT, 3.0), (INLINE, DTT, 3.0), (TQ, LEAN, 0.0)],
        processCpu=True,
    )


async def processFloor(reactor: Any, calls: int, rounds: int, window: int) -> None:
    """Item 5: the lean process pool against Pool(2).imap and ProcessQueue(2)."""
    import multiprocessing

    from asynqueue import ProcessQueue

    lean, leanAll = LeanProcessPool(reactor, window), LeanProcessPool(reactor, None)
    pq = ProcessQueue(WORKERS)
    # forkserver, as bench_process.py: forking a process whose reactor runs
    # is unsafe. Its children import this script, so Pool pickles the
    # script's function by reference.
    pool = multiprocessing.get_context("forkserver").Pool(WORKERS)
    POOL, PQ = f"Pool({WORKERS}).imap(chunksize=1)", f"ProcessQueue({WORKERS})"
    LEAN, LEAN_ALL = f"lean pool, window {window}", "lean pool, all calls sent at once"
    contenders: dict[str, Run] = {
        LEAN: gathered(lean.call),
        LEAN_ALL: gathered(leanAll.call),
        POOL: lambda xs: list(pool.imap(trivialHere, xs, chunksize=1)),
        PQ: gathered(pq.call),
    }
    try:
        for run in contenders.values():
            warm = run(list(range(200)))
            if isinstance(warm, Deferred):
                await warm
        samples = await alternate(contenders, calls, rounds)
    finally:
        pool.close()
        pool.join()
        await pq.shutdown()
        await lean.close()
        await leanAll.close()
    report(
        f"5. Processes, the user's way: {calls:,} calls of a script function, "
        f"gatherResults (Pool: imap), one pool kept for {rounds} rounds",
        samples,
        calls,
        [
            (LEAN, POOL, 1.5),
            (LEAN_ALL, POOL, 1.5),
            (PQ, POOL, 1.5),
            (PQ, LEAN, 0.0),
        ],
        processCpu=True,
    )


def loadAverage() -> str:
    """The 1, 5 and 15-minute load averages: other work skews the figures."""
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


ITEMS = ("trip", "memory", "deferreds", "threads", "processes")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trips", type=int, default=2000)
    parser.add_argument(
        "--only",
        default=",".join(ITEMS),
        help=f"which items, comma-separated, of {','.join(ITEMS)} (default all)",
    )
    parser.add_argument("--calls", type=int, default=20_000, help="items 4 and 5")
    parser.add_argument("--rounds", type=int, default=5, help="items 4 and 5")
    parser.add_argument(
        "--window",
        type=int,
        default=256,
        help="item 5: calls in flight per child of the lean pool",
    )
    args = parser.parse_args()
    only = {item.strip() for item in args.only.split(",") if item.strip()}
    if only - set(ITEMS):
        parser.error(f"unknown items: {', '.join(sorted(only - set(ITEMS)))}")
    import asynqueue

    where = os.path.dirname(os.path.dirname(os.path.abspath(asynqueue.__file__)))
    print(machineHeader(asynqueue=f"{where} (git {gitRevision(where)})"))
    print(f"load average at start: {loadAverage()}")
    if "trip" in only:
        trips = args.trips
        print(f"\n1. Round trip of 40 bytes between two processes ({trips} trips, us)")
        rows = [
            ("blocking reads, any CPUs", blockingTrips(args.trips)),
            ("Twisted reactors, any CPUs", reactorTrips(args.trips)),
            ("blocking reads, both on CPU 0", blockingTrips(args.trips, pin=True)),
        ]
        for name, times in rows:
            print(
                f"  {name:34} median {statistics.median(times) * 1e6:7.1f}"
                f"  min {min(times) * 1e6:7.1f}"
            )
    if "memory" in only:
        print("\n2. Making a 1 MiB bytes result (us per MiB)")
        for name, micros in freshMemory().items():
            print(f"  {name:42} {micros:8.1f}")
    if "deferreds" in only:
        print(
            "\n3. 20,000 Deferreds made at once, gathered with gatherResults, fired"
            " (us per call, each of 5 rounds)"
        )
        deferredRows = gatheredDeferreds()
        print("  CPU       " + " ".join(f"{cpu:6.2f}" for cpu, _ in deferredRows))
        print("  collector " + " ".join(f"{spent:6.2f}" for _, spent in deferredRows))
        tracked = len(gc.get_objects())
        print(f"  (objects the collector tracks in this process: {tracked:,})")
    if only & {"threads", "processes"}:
        from twisted.internet.task import react

        async def pools(reactor: Any) -> None:
            if "threads" in only:
                await threadFloor(reactor, args.calls, args.rounds)
            if "processes" in only:
                await processFloor(reactor, args.calls, args.rounds, args.window)
            print(f"\nload average at end: {loadAverage()}")

        react(lambda reactor: Deferred.fromCoroutine(pools(reactor)))


if __name__ == "__main__":
    main()
