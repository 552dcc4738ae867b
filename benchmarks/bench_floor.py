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

    .venv/bin/python benchmarks/bench_floor.py [--trips N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from common import machineHeader

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trips", type=int, default=2000)
    args = parser.parse_args()
    print(machineHeader())
    print(f"\n1. Round trip of 40 bytes between two processes ({args.trips} trips, us)")
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
    print("\n2. Making a 1 MiB bytes result (us per MiB)")
    for name, micros in freshMemory().items():
        print(f"  {name:42} {micros:8.1f}")
    print(
        "\n3. 20,000 Deferreds made at once, gathered with gatherResults, fired"
        " (us per call, each of 5 rounds)"
    )
    rows = gatheredDeferreds()
    print("  CPU       " + " ".join(f"{cpu:6.2f}" for cpu, _ in rows))
    print("  collector " + " ".join(f"{gc:6.2f}" for _, gc in rows))
    import gc

    tracked = len(gc.get_objects())
    print(f"  (objects the collector tracks in this process: {tracked:,})")


if __name__ == "__main__":
    main()
