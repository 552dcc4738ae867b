"""
Starting children: how soon a fresh process pool gives results, how soon a
killed child is replaced, what timeouts cost, and `mcm` end to end, in one
run.

1. Time to the first result (and to the first result from each of two
   children) of a fresh `ProcessQueue(2)` (children forked by a zygote, or
   spawned), against `multiprocessing.Pool(2)` and
   `ProcessPoolExecutor(2)`. Each measurement runs in a fresh interpreter
   (so the zygote is cold, as in a short script); a second queue in the
   same program, whose zygote is warm, is measured too.
2. Median time from SIGKILL of a child to the first result from its
   replacement.
3. Throughput of calls of which every tenth times out (its child is
   killed and replaced).
4. `mcm -w 2` against `mcm -w 1`, end to end (the whole command, start-up
   included) on `mcm -N 2000 1600 -0.75 0.1 0.05`.

Targets (issue 16): first result within 3x Pool's; respawn median at most
50 ms; `mcm -w 2` at least 1.8x as fast as `mcm -w 1`.

The package's bytecode is compiled first, as an installed package's is.

    .venv/bin/python benchmarks/bench_start.py [--reps N] [--quick]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import gitRevision, machineHeader, median, now, printRatio, printTable

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


# -- one measurement of a fresh pool, in a fresh interpreter -------------------


def sleepThenPid() -> int:
    """A call that takes a little while, so that both children get some."""
    time.sleep(0.005)
    return os.getpid()


def _firstResults(contender: str) -> dict[str, float]:
    """Seconds from making the pool to its first result and to one from each child."""
    if contender in ("Pool(2)", "ProcessPoolExecutor(2)"):
        if contender == "Pool(2)":
            from multiprocessing import Pool

            t0 = now()
            pool: Any = Pool(2)
            submit = pool.apply_async
        else:
            from concurrent.futures import ProcessPoolExecutor

            t0 = now()
            pool = ProcessPoolExecutor(2)
            submit = pool.submit
        first = submit(sleepThenPid)
        (first.get() if hasattr(first, "get") else first.result())
        t1 = now()
        pids: set[int] = set()
        while len(pids) < 2:
            # Calls that sleep a little, so that both children take some.
            futures = [submit(sleepThenPid) for _ in range(4)]
            pids |= {f.get() if hasattr(f, "get") else f.result() for f in futures}
        t2 = now()
        if hasattr(pool, "terminate"):
            pool.terminate()
        else:
            pool.shutdown()
        return {"first": t1 - t0, "both": t2 - t0}

    from twisted.internet.defer import ensureDeferred, gatherResults
    from twisted.internet.task import react

    from asynqueue import ProcessQueue

    out: dict[str, float] = {}

    async def main(reactor: Any) -> None:
        start = "spawn" if "spawn" in contender else "fork"
        if "warm" in contender:
            # Another queue of the program keeps the zygote running.
            other = ProcessQueue(1, start=start, shutdownWithReactor=False)
            await other.call(os.getpid)
        t0 = now()
        q = ProcessQueue(2, start=start, capacity=1, shutdownWithReactor=False)
        out["construct"] = now() - t0
        ds = [q.call(sleepThenPid) for _ in range(2)]
        ds[0].addCallback(lambda _: out.setdefault("first", now() - t0))
        pids = set(await gatherResults(ds))
        while len(pids) < 2:
            pids |= set(await gatherResults([q.call(sleepThenPid) for _ in range(4)]))
        out["both"] = now() - t0
        await q.shutdown()
        if "warm" in contender:
            await other.shutdown()

    try:
        react(lambda reactor: ensureDeferred(main(reactor)))
    except SystemExit:
        pass
    return out


def firstResults(contender: str, reps: int) -> dict[str, list[float]]:
    """Run C{contender} C{reps} times, each in a fresh interpreter."""
    runs: dict[str, list[float]] = {}
    for _ in range(reps):
        done = subprocess.run(
            [sys.executable, __file__, "--one", contender],
            capture_output=True,
            text=True,
            check=True,
            cwd=ROOT,
        )
        for key, value in json.loads(done.stdout.splitlines()[-1]).items():
            runs.setdefault(key, []).append(value)
    return runs


# -- respawns and timeouts, in this process ------------------------------------


async def respawnTimes(reactor: Any, start: str, kills: int) -> list[float]:
    """Seconds from each SIGKILL of the child to a result from its replacement."""
    from asynqueue import ProcessQueue

    q = ProcessQueue(1, start=start, shutdownWithReactor=False)
    times = []
    try:
        old = await q.call(os.getpid)
        for _ in range(kills):
            t0 = now()
            os.kill(old, signal.SIGKILL)
            new = old
            while new == old:
                new = await q.call(os.getpid, retries=5)
            times.append(now() - t0)
            old = new
    finally:
        await q.shutdown()
    return times


def sleepFor(seconds: float) -> None:
    time.sleep(seconds)


async def timeoutThroughput(reactor: Any, start: str, calls: int) -> tuple[float, int]:
    """Calls per second when every tenth call times out (50 ms); how many did."""
    from twisted.internet.defer import DeferredList

    from asynqueue import ProcessQueue, TimeoutError

    q = ProcessQueue(2, start=start, shutdownWithReactor=False)
    try:
        await q.update(int)
        t0 = now()
        ds = [
            q.call(sleepFor, 10, timeout=0.05) if i % 10 == 9 else q.call(int, i)
            for i in range(calls)
        ]
        results = await DeferredList(ds, consumeErrors=True)
        elapsed = now() - t0
        timedOut = sum(
            1 for ok, r in results if not ok and r.check(TimeoutError) is not None
        )
    finally:
        await q.shutdown()
    return calls / elapsed, timedOut


# -- mcm end to end --------------------------------------------------------------


def mcmSeconds(workers: int, quick: bool, tiny: bool = False) -> float:
    """Seconds of a whole C{mcm} command; C{tiny}: a 40-pixel image (fixed costs)."""
    view = ["-N", "2000", "1600", "-0.75", "0.1", "0.05"]
    if quick:
        view = ["-N", "200", "400", "-0.75", "0.1", "0.05"]
    if tiny:
        view = ["-N", "200", "40", "-0.75", "0.1", "0.05"]
    mcm = Path(sys.executable).with_name("mcm")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = now()
        subprocess.run(
            [str(mcm), "-q", "-w", str(workers), "-o", f"{tmp}/m.png", *view],
            check=True,
            capture_output=True,
        )
        return now() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--kills", type=int, default=30)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.one:
        print(json.dumps(_firstResults(options.one)))
        return
    if options.quick:
        options.reps, options.kills, options.calls = 1, 3, 100

    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import react

    import twisted

    # An installed package has its bytecode compiled; a checkout run with
    # PYTHONDONTWRITEBYTECODE would compile the child runtime anew in each
    # zygote, a cost no user pays.
    compileall.compile_dir(ROOT / "asynqueue", quiet=1)
    print(machineHeader(Twisted=twisted.__version__, asynqueue=gitRevision(ROOT)))

    contenders = [
        "ProcessQueue(2) fork",
        "ProcessQueue(2) fork, warm zygote",
        "ProcessQueue(2) spawn",
        "Pool(2)",
        "ProcessPoolExecutor(2)",
    ]
    firsts = {c: firstResults(c, options.reps) for c in contenders}
    printTable(
        f"Fresh pool of 2, median of {options.reps} runs (ms)",
        ["contender", "first result", "one from each child"],
        [
            (c, median(r["first"]) * 1000, median(r["both"]) * 1000)
            for c, r in firsts.items()
        ],
    )
    pool = median(firsts["Pool(2)"]["first"])
    for c in contenders[:3]:
        ours = median(firsts[c]["first"])
        print(
            f"  {c}: first result {ours / pool:.1f}x Pool(2)'s "
            f"(target <= 3x: {'met' if ours <= 3 * pool else 'NOT met'})"
        )

    figures: dict[str, Any] = {}

    async def inReactor(reactor: Any) -> None:
        for start in ("fork", "spawn"):
            figures[f"respawn {start}"] = await respawnTimes(
                reactor, start, options.kills
            )
            figures[f"timeouts {start}"] = await timeoutThroughput(
                reactor, start, options.calls
            )

    try:
        react(lambda reactor: ensureDeferred(inReactor(reactor)))
    except SystemExit as e:
        if e.code:
            raise
    printTable(
        f"Respawn after SIGKILL, {options.kills} kills (ms)",
        ["start", "median", "max"],
        [
            (
                s,
                median(figures[f"respawn {s}"]) * 1000,
                max(figures[f"respawn {s}"]) * 1000,
            )
            for s in ("fork", "spawn")
        ],
    )
    respawn = median(figures["respawn fork"])
    print(
        f"  fork: median {respawn * 1000:.0f} ms "
        f"(target <= 50 ms: {'met' if respawn <= 0.05 else 'NOT met'})"
    )
    printTable(
        f"{options.calls} calls, every tenth timing out after 50 ms, ProcessQueue(2)",
        ["start", "calls/s", "timed out"],
        [(s, *figures[f"timeouts {s}"]) for s in ("fork", "spawn")],
    )
    one, two, fixed1, fixed2 = [], [], [], []
    for _ in range(options.reps):
        # Taking turns, so that a busy moment does not fall on one alone.
        one.append(mcmSeconds(1, options.quick))
        two.append(mcmSeconds(2, options.quick))
        fixed1.append(mcmSeconds(1, options.quick, tiny=True))
        fixed2.append(mcmSeconds(2, options.quick, tiny=True))
    printTable(
        "mcm -N 2000 1600 -0.75 0.1 0.05, end to end (s); "
        "fixed: the same command on a 40-pixel image",
        ["workers", "median", "best", "fixed (median)"],
        [
            (1, median(one), min(one), median(fixed1)),
            (2, median(two), min(two), median(fixed2)),
        ],
    )
    printRatio("mcm -w 2 against -w 1 (medians)", median(one), median(two), 1.8)
    printRatio("mcm -w 2 against -w 1 (bests)", min(one), min(two), 1.8)
    printRatio(
        "mcm -w 2 against -w 1, fixed costs taken off (medians)",
        median(one) - median(fixed1),
        median(two) - median(fixed2),
    )


if __name__ == "__main__":
    main()
