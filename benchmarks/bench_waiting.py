"""
Memory of calls that wait: C{--calls} calls, each given its own 1 MiB
argument that the caller does not keep, submitted at once to two processes
that are busy; how much the parent's resident memory grew by the time all
were submitted, per waiting call (MiB), and the peers in the same run.

A queue of process workers pickles each call as it is made; since this
session it lets the arguments go once pickled, so a waiting call holds its
argument once (in the pickle), not twice. The row with an end observer
keeps the arguments (an observer is given them), as every call did before.

Each contender runs in a child of this script of its own, so that memory
one freed (and the allocator kept) does not flatter the next.

  python benchmarks/bench_waiting.py [--calls 300] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

MiB = 1 << 20
CONTENDERS = [
    "ProcessQueue(2)",
    "ProcessQueue(2), an end observer (arguments kept)",
    "Pool(2).apply_async",
    "ProcessPoolExecutor(2).submit",
]


def held(data: bytes) -> int:
    """The call that waits: it only measures its argument."""
    return len(data)


def busy(seconds: float) -> float:
    """What keeps both processes busy while the calls are submitted."""
    time.sleep(seconds)
    return seconds


def resident() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _pool(calls: int) -> float:
    import multiprocessing

    with multiprocessing.get_context("forkserver").Pool(2) as pool:
        pool.map(held, [b""] * 20)
        blockers = [pool.apply_async(busy, (1.0,)) for _ in range(2)]
        before = resident()
        waiting = [pool.apply_async(held, (b"x" * MiB,)) for _ in range(calls)]
        grown = (resident() - before) / MiB / calls
        assert [w.get() for w in waiting] == [MiB] * calls
        for b in blockers:
            b.get()
    return grown


def _executor(calls: int) -> float:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(2, mp_context=context) as executor:
        list(executor.map(held, [b""] * 20))
        blockers = [executor.submit(busy, 1.0) for _ in range(2)]
        before = resident()
        waiting = [executor.submit(held, b"x" * MiB) for _ in range(calls)]
        grown = (resident() - before) / MiB / calls
        assert [w.result() for w in waiting] == [MiB] * calls
        for b in blockers:
            b.result()
    return grown


def child(name: str, calls: int) -> None:
    """Measure one contender here and print its figure as JSON."""
    if name.startswith("ProcessQueue"):
        # The reactor's run ends the process: print from inside it.
        import atexit

        figures: list[float] = []
        atexit.register(lambda: print(json.dumps(figures)))
        from twisted.internet import defer, task

        import asynqueue

        async def run(reactor: Any) -> None:
            q = asynqueue.ProcessQueue(2, capacity=1)
            await defer.gatherResults([q.call(held, b"") for _ in range(20)])
            if "observer" in name:
                q.observeEnds(lambda record, args, kwargs, outcome: None)
            blockers = [q.call(busy, 1.0) for _ in range(2)]
            before = resident()
            ds = [q.call(held, b"x" * MiB) for _ in range(calls)]
            figures.append((resident() - before) / MiB / calls)
            results = await defer.gatherResults(blockers + ds)
            assert results[2:] == [MiB] * calls
            await q.shutdown()

        task.react(lambda reactor: defer.ensureDeferred(run(reactor)))
    grown = _pool(calls) if name.startswith("Pool") else _executor(calls)
    print(json.dumps([grown]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.calls)
        return
    figures: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for turn in range(args.rounds):
        shift = turn % len(CONTENDERS)
        for name in CONTENDERS[shift:] + CONTENDERS[:shift]:
            out = subprocess.run(
                [sys.executable, __file__, "--child", name, "--calls", str(args.calls)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            figures[name].extend(json.loads(out.strip().splitlines()[-1]))
    print(
        f"{args.calls} calls waiting, each with its own 1 MiB argument; parent's "
        f"resident memory grown per waiting call (MiB), {args.rounds} rounds"
    )
    width = max(map(len, CONTENDERS))
    for name in CONTENDERS:
        values = figures[name]
        each = " ".join(f"{v:.2f}" for v in values)
        print(f"  {name:<{width}}  median {statistics.median(values):.2f}  [{each}]")


if __name__ == "__main__":
    main()
