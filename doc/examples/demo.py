"""
A tour of asynqueue in a few seconds: priorities, a lane, a timeout, an
iterator streamed from a worker thread, and a DeferredTracker.

Run it with ``make tour`` (or ``.venv/bin/python doc/examples/demo.py``).
"""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import gatherResults
from twisted.internet.task import react

import asynqueue
from asynqueue import DeferredTracker, ThreadQueue, TimeoutError

T0 = time.monotonic()
TTY = sys.stdout.isatty()


def now() -> float:
    return time.monotonic() - T0


def say(message: str) -> None:
    print(f"{now():6.2f}s  {message}", flush=True)


def heading(title: str) -> None:
    print()
    print(f"\033[1m{title}\033[0m" if TTY else title)


def work(label: str, seconds: float) -> tuple[str, float, float, str]:
    """Blocking work, in a worker thread: when it ran, and where."""
    start = now()
    time.sleep(seconds)
    return label, start, now(), threading.current_thread().name


def primes(limit: int) -> Iterator[int]:
    """A generator that runs in a worker thread, one batch at a time."""
    found: list[int] = []
    for n in range(2, limit):
        if all(n % p for p in _upTo(found, n)):
            found.append(n)
            yield n


def _upTo(found: list[int], n: int) -> Iterator[int]:
    for p in found:
        if p * p > n:
            return
        yield p


async def priorities(q: ThreadQueue) -> None:
    heading("1. Priorities: 4 threads busy, 8 jobs wait; lower priority runs first")
    busy = [q.call(work, f"busy-{i}", 0.3) for i in range(4)]
    jobs = [
        # name= is an option: the name of the task's record.
        q.call(work, label, 0.1, priority=priority, name=label)
        for label, priority in [
            ("thumbnail", 5),
            ("index", 2),
            ("backup", 9),
            ("email", 1),
            ("report", 3),
            ("cleanup", 8),
            ("invoice", 1),
            ("archive", 7),
        ]
    ]
    say("queued 8 jobs with priorities behind 4 busy threads")
    await gatherResults(busy)
    # The queue hands out the most urgent job whenever a thread frees up:
    # show the jobs in waves, by when they started.
    records = {r.name: r for r in q.records()}
    waves: list[list[tuple[str, float]]] = []
    for name, start, _end, _thread in sorted(
        await gatherResults(jobs), key=lambda job: job[1]
    ):
        if not waves or start - waves[-1][0][1] > 0.05:
            waves.append([])
        waves[-1].append((name, start))
    for wave in waves:
        wave.sort(key=lambda job: (records[job[0]].priority, records[job[0]].id))
        names = ", ".join(f"{name} ({records[name].priority:g})" for name, _ in wave)
        print(f"{wave[0][1]:6.2f}s  started {names}")


async def lane(q: ThreadQueue) -> None:
    heading("2. A lane: three writes to one file, one at a time, in order")
    writes = []
    for i in range(3):
        d = q.call(work, f"write {i}", 0.1, lane="log.txt")
        d.addCallback(
            lambda r: say(f"{r[0]} ran from {r[1]:.2f}s to {r[2]:.2f}s on {r[3]}")
        )
        writes.append(d)
    await gatherResults(writes)


async def timeout(q: ThreadQueue) -> None:
    heading("3. A timeout: a call that would take 2 s gets 0.3 s")
    started = now()
    try:
        await q.call(time.sleep, 2, timeout=0.3)
    except TimeoutError as e:
        say(f"TimeoutError after {now() - started:.2f}s: {e}")
        say("its thread was abandoned; a fresh one serves that worker now")


async def stream(q: ThreadQueue) -> None:
    heading("4. A Deferator: primes made in a worker thread, streamed in batches")
    deferator = await q.call(primes, 60_000)
    say("got a Deferator; the generator waits in its thread for the next fetch")
    count, last = 0, 0
    async for p in deferator:
        count, last = count + 1, p
        if count % 1000 == 0:
            say(f"{count:>5} primes so far, the latest {p}")
    say(f"{count} primes below 60000; the largest is {last}")


async def tracker(q: ThreadQueue) -> None:
    heading("5. A DeferredTracker: at most 3 in flight, then wait for all")
    t = DeferredTracker()
    for i, seconds in enumerate([0.2, 0.1, 0.3, 0.1, 0.2, 0.1]):
        if not await t.deferUntilFewer(3, timeout=10):
            raise RuntimeError("nothing finished within 10 s")
        d = q.call(work, f"download {i}", seconds)
        t.put(d).addCallback(lambda r: say(f"{r[0]} done"))
        say(f"download {i} started ({len(t)} in flight)")
    allDone = await t.deferToAll(timeout=10)
    say(f"all done: {allDone}")


async def main(reactor: Any) -> None:
    print(
        f"asynqueue {asynqueue.__version__} demo: ThreadQueue(4, capacity=1) "
        f"on the {type(reactor).__name__}"
    )
    async with ThreadQueue(4, capacity=1, name="demo") as q:
        await priorities(q)
        await lane(q)
        await timeout(q)
        await stream(q)
        await tracker(q)
        stats = q.stats()
    heading("Shut down")
    say(
        f"{stats['done']} tasks done, {stats['failed']} failed (the timeout), "
        f"{stats['cancelled']} cancelled; the queue is shut down"
    )


if __name__ == "__main__":
    react(main)
