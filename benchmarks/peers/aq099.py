"""
Time AsynQueue 0.9.9's ProcessQueue and print the figures as one JSON line.

Runs in a virtualenv of its own with C{AsynQueue==0.9.9} installed (it
cannot share an interpreter with this repository's asynqueue, which has
the same import name), so it imports nothing from the repository. Run it
isolated (C{python -I}), so that neither the working directory nor
C{PYTHONPATH} puts the new asynqueue ahead of the old one::

    /tmp/aq099/bin/python -I benchmarks/peers/aq099.py trivial --calls 20000

With more calls in flight than a few hundred, 0.9.9 overflows the
recursion limit (its DeferredLock hands the pipe from one waiting task to
the next inside a chain of callbacks) and then never answers: the
C{--recursion-limit} option raises the limit (give the process a large
stack too), and a C{RecursionError} that reaches Twisted's log ends the
run at once with C{"ok": false}.

Modes (each prints C{{"ok": true, ...}} or C{{"ok": false, "error": ...}}):

  - C{trivial}: C{--calls} calls of C{trivial(x)} submitted at once, best
    of C{--reps} rounds, each on a fresh queue: C{"seconds": [...]}.
  - C{bytes}: C{--calls} calls that each return C{--size} bytes, best of
    C{--reps}: C{"seconds": [...]}.
  - C{latency}: C{--calls} sequential calls on a warm idle queue:
    C{"seconds": [...]} (one round trip each).

The caller gives it a hard time limit: 0.9.9 has hung in earlier runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
import traceback


def trivial(x):
    return x


def payload(size):
    return b"x" * size


def emit(out):
    print(json.dumps(out), flush=True)


def giveUpOnRecursion(event):
    """A log observer: a RecursionError means 0.9.9 will never answer."""
    failure = event.get("log_failure")
    if failure is None or not failure.check(RecursionError):
        return
    import multiprocessing
    import os

    emit(
        {
            "ok": False,
            "error": "RecursionError in 0.9.9's callback chain "
            f"(recursion limit {sys.getrecursionlimit()}); it would hang",
        }
    )
    for child in multiprocessing.active_children():
        child.kill()
    os._exit(3)


def main(reactor, args):
    from twisted.internet import defer
    from twisted.logger import globalLogPublisher

    globalLogPublisher.addObserver(giveUpOnRecursion)

    import asynqueue
    from asynqueue import ProcessQueue

    now = time.perf_counter

    @defer.inlineCallbacks
    def rounds():
        seconds = []
        for _ in range(args.reps):
            q = ProcessQueue(args.workers)
            try:
                # Warm up: the children start and import what they need.
                yield defer.gatherResults([q.call(trivial, i) for i in range(20)])
                gc.collect()
                start = now()
                if args.mode == "trivial":
                    ds = [q.call(trivial, i) for i in range(args.calls)]
                else:
                    ds = [q.call(payload, args.size) for _ in range(args.calls)]
                results = yield defer.gatherResults(ds)
                seconds.append(now() - start)
                check(results)
            finally:
                yield q.shutdown()
        return seconds

    def check(results):
        if len(results) != args.calls:
            raise AssertionError(f"{len(results)} results for {args.calls} calls")
        if args.mode == "trivial":
            if results[-1] != args.calls - 1:
                raise AssertionError(f"wrong result {results[-1]!r}")
        elif not isinstance(results[0], bytes) or len(results[0]) != args.size:
            raise AssertionError(f"wrong result {type(results[0])}")

    @defer.inlineCallbacks
    def latency():
        q = ProcessQueue(args.workers)
        seconds = []
        try:
            for i in range(50):
                yield q.call(trivial, i)
            gc.collect()
            for i in range(args.calls):
                start = now()
                yield q.call(trivial, i)
                seconds.append(now() - start)
        finally:
            yield q.shutdown()
        return seconds

    @defer.inlineCallbacks
    def run():
        try:
            seconds = yield (latency() if args.mode == "latency" else rounds())
            out = {"ok": True, "seconds": seconds}
        except Exception as e:
            out = {
                "ok": False,
                "error": f"{type(e).__name__}: {e}",
                "traceback": traceback.format_exc(),
            }
        out["version"] = getattr(asynqueue, "__version__", "0.9.9")
        out["python"] = sys.version.split()[0]
        out["recursionLimit"] = sys.getrecursionlimit()
        emit(out)

    return run()


def parseArgs():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["trivial", "bytes", "latency"])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=int, default=1 << 20)
    parser.add_argument(
        "--recursion-limit",
        dest="recursionLimit",
        type=int,
        default=0,
        help="sys.setrecursionlimit() first (0: leave it)",
    )
    return parser.parse_args()


if __name__ == "__main__":
    arguments = parseArgs()
    if arguments.recursionLimit:
        sys.setrecursionlimit(arguments.recursionLimit)
    from twisted.internet.task import react

    react(main, [arguments])
