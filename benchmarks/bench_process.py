"""
Processes: asynqueue's ProcessQueue against multiprocessing.Pool,
ProcessPoolExecutor, ampoule and AsynQueue 0.9.9, in one run.

The headline is the user's way (see C{peers/userway.py}): the functions
defined in this script (so asynqueue pickles them by value, as
C{__main__.f}), results gathered with C{gatherResults}, one queue and one
pool of each kind kept for C{--user-rounds} (5) rounds, the spread between
rounds reported, and beside it the figure of a module's function on a fresh
queue. The targets are judged on it, ratio by ratio within each round.

Then the earlier measurements (C{--no-legacy} leaves them out), four of
them, every contender with two child processes:

  1. Throughput: C{--calls} trivial calls (C{trivial(x) -> x}) submitted
     at once, every result collected; calls/s, best of C{--reps} rounds.
  2. CPU-bound: C{--cpu-tasks} calls of about 7 ms of pure-Python work
     each (the loop count is calibrated at the start); speedup over
     running them one after another in this process.
  3. Large results: C{--bytes-tasks} calls that each return 1 MiB; MiB/s.
  4. Latency: C{--latency-calls} sequential calls on a warm, idle queue,
     each awaited before the next; median and p90 round trip.

Every round has a fresh, warmed-up pool or queue, and the contenders take
turns within a round, so that a change in the machine's load hits them
all. Everything runs under C{twisted.internet.task.react}: the plain-Python
peers (C{multiprocessing.Pool}, C{ProcessPoolExecutor}) block the reactor
thread while they run, when nothing else uses it, and start their children
with the C{forkserver} method (forking a process whose reactor runs is
unsafe). AsynQueue 0.9.9 runs in a virtualenv of its own with a hard time
limit (see C{peers/oldasynqueue.py}). The calls live in C{peers/work.py},
so that every contender pickles them by reference.

    .venv/bin/python benchmarks/bench_process.py [--quick] [--profile JOB]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import multiprocessing
import os
import pstats
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
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
from peers import oldasynqueue, userway
from peers.work import payload, spin, trivial
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.task import react
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure

import asynqueue
import twisted

WORKERS = 2
MiB = 1 << 20
TASK_SECONDS = 0.007  # one CPU-bound task, run serially in this process
WARMUP = 200
JOB_TIMEOUT = 120.0  # seconds: a contender that takes longer has hung

PQ = f"asynqueue ProcessQueue({WORKERS})"
POOL = f"multiprocessing.Pool({WORKERS})"
PPE = f"ProcessPoolExecutor({WORKERS})"
AMPOULE = f"ampoule ProcessPool({WORKERS})"
OLD = f"AsynQueue {oldasynqueue.VERSION} ProcessQueue({WORKERS})"
SERIAL = "serial, in this process"


# The user's calls: defined here, in the script, as a user defines them.


def trivialHere(x: int) -> int:
    """The trivial call, defined in the script: returns its argument."""
    return x


def spinHere(n: int) -> int:
    """Pure-Python CPU work, defined in the script: a loop of C{n} steps."""
    total = 0
    for i in range(n):
        total += i * i & 7
    return total


def payloadHere(size: int) -> bytes:
    """A result of C{size} bytes, made by a function defined in the script."""
    return bytes(size)


USER_CALLS = userway.Calls(trivialHere, spinHere, payloadHere, trivial, spin, payload)

Submit = Callable[[Callable[[Any], Any], Any], Deferred[Any]]
Close = Callable[[], Any]  # may return a Deferred
Pids = Callable[[], list[int]]


@dataclass
class Job:
    """One measurement: C{count} calls of C{f(arg(i))}, all at once or in turn."""

    name: str
    f: Callable[[Any], Any]
    count: int
    arg: Callable[[int], Any]
    check: Callable[[list[Any]], None] = lambda results: None


@dataclass
class Outcome:
    """
    Wall seconds of each round, or why there are none; and the CPU seconds
    of this process (all its threads) and of the children in each round.
    """

    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    childCpu: list[float] = field(default_factory=list)
    error: str | None = None  # why the contender was given up
    failures: list[str] = field(default_factory=list)  # rounds that failed

    def fail(self, why: str) -> None:
        self.error = why.strip().splitlines()[-1][:160] if why.strip() else "?"


def jobs(args: argparse.Namespace) -> dict[str, Job]:
    def checkTrivial(results: list[Any]) -> None:
        if results != list(range(len(results))):
            raise AssertionError("trivial calls returned wrong results")

    def checkBytes(results: list[Any]) -> None:
        if any(not isinstance(r, bytes) or len(r) != MiB for r in results):
            raise AssertionError("a payload came back wrong")

    return {
        "trivial": Job("trivial", trivial, args.calls, lambda i: i, checkTrivial),
        "cpu": Job("cpu", spin, args.cpuTasks, lambda i: args.spinSteps),
        "bytes": Job("bytes", payload, args.bytesTasks, lambda i: MiB, checkBytes),
        "latency": Job("latency", trivial, args.latencyCalls, lambda i: i),
    }


class Meter:
    """CPU seconds of this process and of the given child processes, from now."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.children = childrenCpu(pids)
        self.parent = time.process_time()

    def stop(self, out: Outcome) -> None:
        out.cpu.append(time.process_time() - self.parent)
        children = childrenCpu(self.pids)
        if children is not None and self.children is not None:
            out.childCpu.append(children - self.children)


def childrenCpu(pids: list[int]) -> float | None:
    """The CPU seconds the processes C{pids} have run, from Linux's schedstat."""
    if not pids:
        return None
    total = 0
    try:
        for pid in pids:
            with open(f"/proc/{pid}/schedstat") as f:
                total += int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return total / 1e9


def oneLine(e: BaseException | Failure) -> str:
    if isinstance(e, Failure):
        e = e.value
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}"[:160]


# ----------------------------------------------------------------------
# Contenders. Each runs a round of a job and adds its figures to an Outcome.
# They all run in the reactor thread, taking turns within a round; the
# plain-Python pools block it while they run, when nothing else uses it.


class Contender:
    name = ""
    joins = frozenset({"trivial", "cpu", "bytes", "latency"})
    #: After a failed round, try the next one (else give the contender up).
    retry = True

    async def round(self, reactor: Any, job: Job, out: Outcome) -> None:
        raise NotImplementedError

    async def latency(self, reactor: Any, job: Job, out: Outcome) -> None:
        raise NotImplementedError

    def failed(self, e: BaseException) -> str:
        return oneLine(e)


class SyncPool(Contender):
    """A pool used from plain Python: map all calls at once, or call one."""

    def __init__(self, context: Any, executor: bool) -> None:
        self.context = context
        self.executor = executor
        self.name = PPE if executor else POOL

    def open(self) -> Any:
        if self.executor:
            return ProcessPoolExecutor(WORKERS, mp_context=self.context)
        return self.context.Pool(WORKERS)

    def close(self, pool: Any) -> None:
        if self.executor:
            pool.shutdown(wait=True)
        else:
            pool.close()
            pool.join()

    def pids(self, pool: Any) -> list[int]:
        if self.executor:
            return list(pool._processes)
        return [p.pid for p in pool._pool]

    def mapAll(self, pool: Any, f: Callable[[Any], Any], xs: list[Any]) -> list[Any]:
        if self.executor:
            return list(pool.map(f, xs, chunksize=1))
        return list(pool.imap(f, xs, chunksize=1))

    def callOne(self, pool: Any, f: Callable[[Any], Any], x: Any) -> Any:
        if self.executor:
            return pool.submit(f, x).result()
        return pool.apply(f, (x,))

    async def round(self, reactor: Any, job: Job, out: Outcome) -> None:
        pool = self.open()
        try:
            self.mapAll(pool, trivial, list(range(WARMUP)))
            xs = [job.arg(i) for i in range(job.count)]
            meter = Meter(self.pids(pool))
            with Stopwatch() as watch:
                results = self.mapAll(pool, job.f, xs)
            meter.stop(out)
            job.check(results)
            out.wall.append(watch.wall)
        finally:
            self.close(pool)

    async def latency(self, reactor: Any, job: Job, out: Outcome) -> None:
        pool = self.open()
        try:
            for i in range(50):
                self.callOne(pool, trivial, i)
            gc.collect()
            meter = Meter(self.pids(pool))
            for i in range(job.count):
                start = now()
                self.callOne(pool, trivial, i)
                out.wall.append(now() - start)
            meter.stop(out)
        finally:
            self.close(pool)


class Serial(Contender):
    """The CPU-bound job run one call after another in this process."""

    name = SERIAL
    joins = frozenset({"cpu"})

    async def round(self, reactor: Any, job: Job, out: Outcome) -> None:
        xs = [job.arg(i) for i in range(job.count)]
        f = job.f
        cpu = time.process_time()
        with Stopwatch() as watch:
            for x in xs:
                f(x)
        out.cpu.append(time.process_time() - cpu)
        out.wall.append(watch.wall)


class OldAsynQueue(Contender):
    """AsynQueue 0.9.9, in its own virtualenv and process, with a time limit."""

    name = OLD
    joins = frozenset({"trivial", "bytes", "latency"})
    retry = False  # a failure is a hang or a crash: do not wait for it again

    def __init__(self, venv: str) -> None:
        self.venv = venv
        self.why: str | None = oldasynqueue.ensureVenv(venv, install=True)

    async def round(self, reactor: Any, job: Job, out: Outcome) -> None:
        if self.why is not None:
            raise RuntimeError(self.why)
        answer = oldasynqueue.run(
            job.name,
            job.count,
            reps=1,
            size=MiB,
            timeout=30 + job.count / 500,
            venv=self.venv,
        )
        if not answer.get("ok"):
            raise RuntimeError(answer.get("error", "?"))
        out.wall.extend(answer["seconds"])

    latency = round

    def failed(self, e: BaseException) -> str:
        return f"did not run: {e}"


class TwistedPool(Contender):
    """A Twisted process pool: open it, submit C{f(x)} for a Deferred, close it."""

    def open(self) -> Deferred[tuple[Submit, Close, Pids]]:
        """Fire with C{(submit, close, pids)}: pids lists the children's ids."""
        raise NotImplementedError

    async def round(self, reactor: Any, job: Job, out: Outcome) -> None:
        submit, close, pids = await self.open()
        try:
            await collect([submit(trivial, i) for i in range(WARMUP)]).addTimeout(
                JOB_TIMEOUT, reactor
            )
            xs = [job.arg(i) for i in range(job.count)]
            f = job.f
            meter = Meter(pids())
            with Stopwatch() as watch:
                results = await collect([submit(f, x) for x in xs]).addTimeout(
                    JOB_TIMEOUT, reactor
                )
            meter.stop(out)
            job.check(results)
            out.wall.append(watch.wall)
        finally:
            await ensureDeferred(_maybe(close())).addTimeout(30, reactor)

    async def latency(self, reactor: Any, job: Job, out: Outcome) -> None:
        submit, close, pids = await self.open()

        async def calls() -> None:
            for i in range(50):
                await submit(trivial, i)
            gc.collect()
            meter = Meter(pids())
            for i in range(job.count):
                start = now()
                await submit(trivial, i)
                out.wall.append(now() - start)
            meter.stop(out)

        try:
            # One time limit for the lot, so that no call pays for a timer.
            await Deferred.fromCoroutine(calls()).addTimeout(JOB_TIMEOUT, reactor)
        finally:
            await ensureDeferred(_maybe(close())).addTimeout(30, reactor)


def queuePids(q: Any) -> list[int]:
    return [w.info()["pid"] for w in q.workers()]


class AsynqueueProcessQueue(TwistedPool):
    name = PQ

    def open(self) -> Deferred[Any]:
        q = asynqueue.ProcessQueue(WORKERS)
        return succeed((q.call, q.shutdown, lambda: queuePids(q)))


class Ampoule(TwistedPool):
    """
    ampoule's ProcessPool, C{min=max=WORKERS}, with a child that has a
    command for each call.
    """

    name = AMPOULE
    joins = frozenset({"trivial", "bytes", "latency"})
    retry = False  # its failures (AMP's 64 KiB limit) are not by chance

    def open(self) -> Deferred[Any]:
        from ampoule import main as ampouleMain
        from ampoule import pool as ampoulePool
        from peers import ampoulechild as child

        here = os.path.dirname(os.path.abspath(__file__))
        starter = ampouleMain.ProcessStarter(
            env={"PYTHONPATH": here}, packages=("twisted",)
        )
        # recycleAfter=0: ampoule's default replaces each child every 500
        # calls, which would measure process start-up, not calls.
        pool = ampoulePool.ProcessPool(
            child.BenchChild, min=WORKERS, max=WORKERS, recycleAfter=0, starter=starter
        )
        commands: dict[Any, tuple[Any, str, str]] = {
            trivial: (child.Trivial, "x", "x"),
            spin: (child.Spin, "n", "total"),
            payload: (child.Payload, "size", "data"),
        }

        def submit(f: Any, x: Any) -> Deferred[Any]:
            command, argument, answer = commands[f]
            d = pool.doWork(command, **{argument: x})
            return d.addCallback(lambda response: response[answer])

        def pids() -> list[int]:
            # The parent's AMP of each child -> its AMPConnector -> the process.
            return [c.transport.transport.pid for c in pool.processes]

        return pool.start().addCallback(lambda _: (submit, pool.stop, pids))

    def failed(self, e: BaseException) -> str:
        return f"fails: {oneLine(e)}{childError()}"


def contenders(args: argparse.Namespace) -> list[Contender]:
    context = multiprocessing.get_context(args.startMethod)
    everyone: list[Contender] = [
        AsynqueueProcessQueue(),
        SyncPool(context, executor=False),
        SyncPool(context, executor=True),
        Ampoule(),
    ]
    if args.aq099:
        everyone.append(OldAsynQueue(args.aq099Venv))
    return [Serial(), *everyone]


def collect(ds: list[Deferred[Any]]) -> Deferred[list[Any]]:
    """Fire with every result, in order, once all have fired; fail on the first."""
    done: Deferred[list[Any]] = Deferred()
    results: list[Any] = [None] * len(ds)
    left = [len(ds)]

    def one(result: object, i: int) -> None:
        if done.called:
            return
        if isinstance(result, Failure):
            done.errback(result)
            return
        results[i] = result
        left[0] -= 1
        if left[0] == 0:
            done.callback(results)

    for i, d in enumerate(ds):
        d.addBoth(one, i)
    if not ds:
        done.callback(results)
    return done


_childLines: list[str] = []


def watchAmpouleChildren(event: dict[str, Any]) -> None:
    """A log observer: keep what ampoule's children wrote to their stderr."""
    if event.get("log_namespace", "").startswith("ampoule") and "l" in event:
        _childLines.append(str(event["l"]))
        del _childLines[:-200]


def childError() -> str:
    """The last exception an ampoule child reported, as ' (child: ...)'."""
    for line in reversed(_childLines):
        text = line.strip()
        if text and ("Error" in text or "Too" in text) and ":" in text:
            return f" (child: {text[:100]})"
    return ""


async def _maybe(value: Any) -> Any:
    if isinstance(value, Deferred):
        return await value
    return value


async def runAll(
    reactor: Any, args: argparse.Namespace, results: dict[str, dict[str, Outcome]]
) -> None:
    globalLogPublisher.addObserver(watchAmpouleChildren)
    everyone = contenders(args)
    for name, job in jobs(args).items():
        if name not in args.jobs:
            continue
        taking = [c for c in everyone if name in c.joins]
        for c in taking:
            results[name][c.name] = Outcome()
        spent = dict.fromkeys(results[name], 0.0)
        for _ in range(1 if name == "latency" else args.reps):
            for c in taking:
                out = results[name][c.name]
                if out.error is not None:
                    continue
                start = now()
                try:
                    if name == "latency":
                        await c.latency(reactor, job, out)
                    else:
                        await c.round(reactor, job, out)
                except Exception as e:
                    if c.retry:
                        out.failures.append(c.failed(e))
                    else:
                        out.fail(c.failed(e))
                spent[c.name] += now() - start
        print(
            f"({name}: {sum(spent.values()):.1f} s, start-ups included: "
            + ", ".join(f"{n.split('(')[0].strip()} {t:.1f}" for n, t in spent.items())
            + ")"
        )


# ----------------------------------------------------------------------
# Calibration and reports


def calibrate(seconds: float) -> int:
    """
    The loop count for which C{spin} takes about C{seconds} of CPU here.

    CPU time, not wall time, so that other work on the machine at this
    moment does not change the size of the task.
    """
    steps = 10_000
    while True:
        took = _timeSpin(steps)
        if took > 0.002:
            break
        steps *= 4
    for _ in range(3):
        steps = max(1, int(steps * seconds / took))
        took = median(_timeSpin(steps) for _ in range(5))
    return steps


def _timeSpin(steps: int) -> float:
    start = time.thread_time()
    spin(steps)
    return time.thread_time() - start


ORDER = [SERIAL, PQ, POOL, PPE, AMPOULE, OLD]


def ordered(results: dict[str, Outcome]) -> list[tuple[str, Outcome]]:
    return sorted(
        results.items(), key=lambda kv: ORDER.index(kv[0]) if kv[0] in ORDER else -1
    )


def report(args: argparse.Namespace, results: dict[str, dict[str, Outcome]]) -> None:
    targets: list[tuple[str, bool | None]] = []
    notes: list[str] = []

    def best(job: str, name: str) -> float | None:
        out = results[job].get(name)
        return min(out.wall) if out and out.wall and out.error is None else None

    def failed(name: str, out: Outcome, width: int) -> list[Any]:
        """A row for a contender without figures: the reason, cut short."""
        why = out.error or (out.failures[0] if out.failures else "no figures")
        if len(why) > 60:
            notes.append(f"  [{len(notes) + 1}] {name}: {why}")
            why = f"{why[:55]}... [{len(notes)}]"
        return [name, why] + [""] * (width - 2)

    def ratio(
        label: str, a: float | None, b: float | None, target: float | None = None
    ) -> None:
        if a is None or b is None:
            print(f"  {label}: n/a")
            if target is not None:
                targets.append((f"{label} >= {target:g}x", None))
            return
        met = printRatio(label, a, b, target)
        if target is not None:
            targets.append((f"{label} >= {target:g}x", met))

    def atMost(label: str, value: float | None, limit: float, unit: str) -> None:
        """Print a figure that should be at most C{limit} (lower is better)."""
        if value is None:
            print(f"  {label}: n/a")
            targets.append((f"{label} <= {limit:g}{unit}", None))
            return
        met = value <= limit
        print(
            f"  {label}: {value:.2f}{unit}  (target <= {limit:g}{unit}: "
            f"{'met' if met else 'NOT met'})"
        )
        targets.append((f"{label} <= {limit:g}{unit}", met))

    def rate(job: str, name: str, per: float) -> float | None:
        seconds = best(job, name)
        return per / seconds if seconds else None

    def cpuCells(out: Outcome, calls: int) -> list[str]:
        """Parent and children CPU us per call, from the round with least parent CPU."""
        if not out.cpu:
            return ["(own process)", ""]
        i = out.cpu.index(min(out.cpu))
        children = (
            f"{1e6 * out.childCpu[i] / calls:.1f}" if len(out.childCpu) > i else "?"
        )
        return [f"{1e6 * out.cpu[i] / calls:.1f}", children]

    def partly(name: str, out: Outcome) -> str:
        """The name, marked if some of its rounds failed (told in a footnote)."""
        if not out.failures:
            return name
        notes.append(
            f"  [{len(notes) + 1}] {name}: {len(out.failures)} round(s) failed, "
            f"the figures are of the others: {out.failures[0]}"
        )
        return f"{name} [{len(notes)}]"

    def footnotes() -> None:
        for note in notes:
            print(note)
        notes.clear()

    if "trivial" in results:
        n = args.calls
        rows = []
        for name, out in ordered(results["trivial"]):
            if out.error or not out.wall:
                rows.append(failed(name, out, 6))
                continue
            rows.append(
                [
                    partly(name, out),
                    n / min(out.wall),
                    n / median(out.wall),
                    n / max(out.wall),
                ]
                + cpuCells(out, n)
            )
        printTable(
            f"1. Throughput: {n:,} trivial calls submitted at once; "
            f"{args.reps} round(s) each (calls/s)",
            [
                "contender",
                "best/s",
                "median/s",
                "worst/s",
                "parent CPU us/call",
                "children CPU us/call",
            ],
            rows,
        )
        print(
            "  CPU: of this whole process (all its threads) and of the two "
            "children together,\n  per call, in the round with the least parent CPU."
        )
        footnotes()

    if "cpu" in results:
        serial = min(results["cpu"][SERIAL].wall)
        rows = [[SERIAL, f"{serial:.3f}", 1.0]]
        for name, out in ordered(results["cpu"]):
            if name == SERIAL:
                continue
            if out.error or not out.wall:
                rows.append(failed(name, out, 3))
            else:
                rows.append(
                    [partly(name, out), f"{min(out.wall):.3f}", serial / min(out.wall)]
                )
        printTable(
            f"2. CPU-bound: {args.cpuTasks} tasks of spin({args.spinSteps:,}) "
            f"({1e3 * TASK_SECONDS:.0f} ms of CPU at calibration, "
            f"{1e3 * serial / args.cpuTasks:.1f} ms wall in the best serial round), "
            f"all at once; best of {args.reps}",
            ["contender", "best s", "speedup"],
            rows,
        )
        footnotes()

    if "bytes" in results:
        k = args.bytesTasks
        rows = []
        for name, out in ordered(results["bytes"]):
            if out.error or not out.wall:
                rows.append(failed(name, out, 6))
            else:
                rows.append(
                    [
                        partly(name, out),
                        k / min(out.wall),
                        k / median(out.wall),
                        k / max(out.wall),
                    ]
                    + cpuCells(out, k)
                )
        printTable(
            f"3. Large results: {k} calls returning 1 MiB each, all at once; "
            f"{args.reps} round(s) each (MiB/s)",
            [
                "contender",
                "best MiB/s",
                "median MiB/s",
                "worst MiB/s",
                "parent CPU us/MiB",
                "children CPU us/MiB",
            ],
            rows,
        )
        footnotes()

    if "latency" in results:
        rows = []
        for name, out in ordered(results["latency"]):
            if out.error or not out.wall:
                rows.append(failed(name, out, 6))
            else:
                t = out.wall
                rows.append(
                    [
                        partly(name, out),
                        1e6 * median(t),
                        1e6 * percentile(t, 90),
                        1e6 * min(t),
                    ]
                    + cpuCells(out, len(t))
                )
        printTable(
            f"4. Latency: {args.latencyCalls} sequential calls on a warm idle "
            "queue (round trip, us)",
            [
                "contender",
                "median",
                "p90",
                "min",
                "parent CPU us/call",
                "children CPU us/call",
            ],
            rows,
        )
        footnotes()

    print(f"\nRatios, best of each ({PQ} first; higher is better unless noted)")
    if "trivial" in results:
        n = args.calls
        for other, target in ((POOL, 1.5), (PPE, 5.0), (AMPOULE, 5.0), (OLD, None)):
            ratio(
                f"throughput / {other}",
                rate("trivial", PQ, n),
                rate("trivial", other, n),
                target,
            )
    if "cpu" in results:
        serial = best("cpu", SERIAL)
        for name in (PQ, POOL, PPE):
            ratio(
                f"CPU-bound speedup over serial, {name}",
                serial,
                best("cpu", name),
                1.9 if name == PQ else None,
            )
    if "bytes" in results:
        k = args.bytesTasks
        for other, target in ((PPE, 2.5), (POOL, None), (OLD, 1.0)):
            ratio(
                f"1 MiB results / {other}",
                rate("bytes", PQ, k),
                rate("bytes", other, k),
                target,
            )
    if "latency" in results:
        lat = {
            name: median(out.wall)
            for name, out in results["latency"].items()
            if out.wall and out.error is None
        }
        mine = lat.get(PQ)
        atMost(
            "median latency, us",
            1e6 * mine if mine is not None else None,
            50.0,
            " us",
        )
        for other in (PPE, POOL, AMPOULE, OLD):
            fraction = mine / lat[other] if mine and other in lat else None
            if other == PPE:
                label = f"median latency / {other} (lower is better)"
                atMost(label, fraction, 0.25, "x")
            elif fraction is not None:
                print(f"  median latency / {other} (lower is better): {fraction:.2f}x")

    print("\nTargets")
    for label, met in targets:
        status = "n/a" if met is None else ("MET" if met else "NOT MET")
        print(f"  {status:8} {PQ}: {label}")


# ----------------------------------------------------------------------
# Profiling asynqueue's parent side


class ProfiledChildren(AsynqueueProcessQueue):
    """asynqueue's queue whose children run under cProfile (L{peers.childprofile})."""

    def __init__(self, folder: str) -> None:
        self.prefix = os.path.join(folder, "child")
        self.executable = os.path.join(folder, "python-profiled")
        with open(self.executable, "w") as f:
            # A ProcessWorker runs EXECUTABLE -c CODE: "$2" is the code.
            f.write(
                f'#!/bin/sh\nexec "{sys.executable}" -m peers.childprofile '
                f'"{self.prefix}" "$2"\n'
            )
        os.chmod(self.executable, 0o755)

    def open(self) -> Deferred[Any]:
        q = asynqueue.TaskQueue()
        for _ in range(WORKERS):
            q.attachWorker(asynqueue.ProcessWorker(executable=self.executable))
        return succeed((q.call, q.shutdown, lambda: queuePids(q)))

    def stats(self) -> pstats.Stats | None:
        folder = os.path.dirname(self.prefix)
        files = [
            os.path.join(folder, name)
            for name in sorted(os.listdir(folder))
            if name.startswith("child.")
        ]
        return pstats.Stats(*files, stream=sys.stdout) if files else None


async def profiled(reactor: Any, args: argparse.Namespace) -> None:
    """Run asynqueue's part of one job under cProfile and print the profile."""
    job = jobs(args)[args.profile]
    folder = tempfile.mkdtemp(prefix="bench-process-profile-")
    contender = ProfiledChildren(folder) if args.profileChildren else None
    queue = contender or AsynqueueProcessQueue()
    out = Outcome()
    timer = time.process_time if args.profileTimer == "cpu" else now
    profile = cProfile.Profile(timer)
    if job.name == "latency":
        profile.enable()
        await queue.latency(reactor, job, out)
        profile.disable()
    else:
        # Profile only the measured calls, not the start-up and warm-up.
        submit, close, _ = await queue.open()
        await collect([submit(trivial, i) for i in range(WARMUP)])
        xs = [job.arg(i) for i in range(job.count)]
        start = now()
        profile.enable()
        await collect([submit(job.f, x) for x in xs])
        profile.disable()
        out.wall.append(now() - start)
        await _maybe(close())
    print(f"\n{PQ}, job {job.name!r}: {job.count:,} calls in {sum(out.wall):.3f} s")
    print(f"\nThe parent ({args.profileTimer} time):")
    stats = pstats.Stats(profile, stream=sys.stdout)
    stats.sort_stats("tottime").print_stats(args.profileLines)
    stats.sort_stats("cumulative").print_stats(args.profileLines)
    if contender is not None:
        children = contender.stats()
        if children is None:
            print("The children wrote no profile.")
        else:
            print(
                "The children, both together (CPU time, their whole lives: "
                f"start-up and warm-up included; files in {folder}):"
            )
            children.sort_stats("tottime").print_stats(args.profileLines)
            children.sort_stats("cumulative").print_stats(args.profileLines)


# ----------------------------------------------------------------------


async def main(
    reactor: Any, args: argparse.Namespace, results: dict[str, dict[str, Outcome]]
) -> None:
    print(f"reactor: {type(reactor).__module__}.{type(reactor).__name__}")
    if args.profile:
        await profiled(reactor, args)
        return
    targets: list[tuple[str, bool | None, str]] = []
    if args.userRounds:
        counts = {
            "trivial": args.calls,
            "cpu": args.cpuTasks,
            "bytes": args.bytesTasks,
            "latency": args.latencyCalls,
        }
        context = multiprocessing.get_context(args.startMethod)
        targets = await userway.run(
            context, USER_CALLS, counts, args.spinSteps, args.userRounds
        )
    if args.legacy:
        print("\nThe earlier measurements: module functions, a fresh queue each round")
        await runAll(reactor, args, results)
        report(args, results)
    if targets:
        print("\nTargets, the user's way (judged within each round)")
        for label, met, figure in targets:
            status = "n/a" if met is None else ("MET" if met else "NOT MET")
            print(f"  {status:8} {label}: {figure}")


def parseArgs(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("--calls", type=int, help="trivial calls (default 20000)")
    parser.add_argument(
        "--cpu-tasks", dest="cpuTasks", type=int, help="CPU-bound tasks (default 200)"
    )
    parser.add_argument(
        "--bytes-tasks",
        dest="bytesTasks",
        type=int,
        help="calls returning 1 MiB (default 200)",
    )
    parser.add_argument(
        "--latency-calls",
        dest="latencyCalls",
        type=int,
        help="sequential calls for latency (default 200)",
    )
    parser.add_argument(
        "--reps", type=int, help="rounds of each earlier measurement (default 3)"
    )
    parser.add_argument(
        "--user-rounds",
        dest="userRounds",
        type=int,
        default=5,
        help="rounds of the user's way, one queue kept for all (default 5; 0: none)",
    )
    parser.add_argument(
        "--no-legacy",
        dest="legacy",
        action="store_false",
        help="only the user's way, not the earlier measurements",
    )
    parser.add_argument(
        "--jobs",
        default="trivial,cpu,bytes,latency",
        help="which measurements, comma-separated (default all)",
    )
    parser.add_argument(
        "--no-aq099",
        dest="aq099",
        action="store_false",
        help="leave out AsynQueue 0.9.9",
    )
    parser.add_argument(
        "--aq099-venv",
        dest="aq099Venv",
        default=oldasynqueue.DEFAULT_VENV,
        help="virtualenv with AsynQueue 0.9.9, made if missing "
        f"(default {oldasynqueue.DEFAULT_VENV}, or $AQ099_VENV)",
    )
    parser.add_argument(
        "--start-method",
        dest="startMethod",
        default="forkserver",
        choices=multiprocessing.get_all_start_methods(),
        help="multiprocessing start method of Pool and ProcessPoolExecutor "
        "(default forkserver: they start while the reactor runs)",
    )
    parser.add_argument(
        "--profile",
        choices=["trivial", "cpu", "bytes", "latency"],
        help="run only asynqueue's part of this job under cProfile (parent side)",
    )
    parser.add_argument(
        "--profile-timer",
        dest="profileTimer",
        choices=["wall", "cpu"],
        default="wall",
        help="what the profile counts: wall time (waits too) or this "
        "process's CPU time",
    )
    parser.add_argument(
        "--profile-children",
        dest="profileChildren",
        action="store_true",
        help="with --profile: run the children under cProfile too",
    )
    parser.add_argument("--profile-lines", dest="profileLines", type=int, default=30)
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a smoke run: 2000 calls, 40 CPU tasks, 40 x 1 MiB, 50 latency calls, "
        "1 round",
    )
    args = parser.parse_args(argv)
    quick = {
        "calls": 2000,
        "cpuTasks": 40,
        "bytesTasks": 40,
        "latencyCalls": 50,
        "reps": 1,
    }
    full = {
        "calls": 20_000,
        "cpuTasks": 200,
        "bytesTasks": 200,
        "latencyCalls": 200,
        "reps": 3,
    }
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.jobs = [j.strip() for j in args.jobs.split(",") if j.strip()]
    return args


def run() -> None:
    args = parseArgs()
    print(
        machineHeader(
            Twisted=twisted.__version__,
            asynqueue=f"{asynqueue.__version__} (git {gitRevision()})",
        )
    )
    print(
        f"multiprocessing start method for Pool and ProcessPoolExecutor: "
        f"{args.startMethod}"
    )
    print(f"load average at start: {loadAverage()}")
    start = now()
    args.spinSteps = calibrate(TASK_SECONDS)
    results: dict[str, dict[str, Outcome]] = {job: {} for job in args.jobs}
    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor, args, results)))
    finally:
        print(
            f"(whole run: {now() - start:.1f} s; load average at end: {loadAverage()})"
        )


def loadAverage() -> str:
    """The 1, 5 and 15-minute load averages: other work skews the figures."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


if __name__ == "__main__":
    run()
