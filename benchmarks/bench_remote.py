"""
Remote nodes: a worker node on loopback (mutual TLS) against local process
workers, in one run.

Throughput: C{--calls} trivial calls submitted at once, all results
collected, through C{ProcessQueue(2)} and through a C{RemoteWorker} to a
node with 2 processes on this machine. Latency: sequential calls on a warm,
idle queue. Big values: 50 results of 1 MiB each.

    .venv/bin/python benchmarks/bench_remote.py [--calls N] [--quick]
"""

from __future__ import annotations

import argparse
import tempfile
from typing import Any

from common import (
    gitRevision,
    machineHeader,
    median,
    now,
    percentile,
    printRatio,
    printTable,
)
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react

import asynqueue
from asynqueue import ProcessQueue, RemoteWorker, TaskQueue
from asynqueue.node.certs import makeCluster
from asynqueue.node.service import NodeService


def trivial(x: int) -> int:
    return x


def mebibyte(_: int) -> bytes:
    return b"\x5a" * (1 << 20)


async def throughput(q: TaskQueue, calls: int, reps: int) -> float:
    await gatherResults([q.call(trivial, i) for i in range(200)])
    best = 0.0
    for _ in range(reps):
        t = now()
        await gatherResults([q.call(trivial, i) for i in range(calls)])
        best = max(best, calls / (now() - t))
    return best


async def latency(q: TaskQueue, calls: int) -> list[float]:
    times = []
    for i in range(calls):
        t = now()
        await q.call(trivial, i)
        times.append((now() - t) * 1e6)
    return times


async def bigValues(q: TaskQueue, count: int) -> float:
    t = now()
    results = await gatherResults([q.call(mebibyte, i) for i in range(count)])
    assert all(len(r) == 1 << 20 for r in results)
    return count / (now() - t)


async def main(reactor: Any, args: argparse.Namespace) -> None:
    import twisted

    print(
        machineHeader(
            twisted=twisted.__version__,
            asynqueue=f"{asynqueue.__version__} ({gitRevision()})",
        )
    )
    certs = makeCluster(tempfile.mkdtemp(), ["localhost"], ["bench"])
    node = NodeService(
        f"ssl:port=0:privateKey={certs}/localhost.key:certKey={certs}/localhost.crt",
        ca=str(certs / "ca.crt"),
        processes=2,
    )
    await node.startService()
    worker = RemoteWorker(
        f"tls:localhost:{node.port.getHost().port}",
        certificate=str(certs / "bench.pem"),
        ca=str(certs / "ca.crt"),
    )
    await worker.whenConnected()
    queues = {
        "ProcessQueue(2)": ProcessQueue(2, shutdownWithReactor=False),
        "RemoteWorker -> node(2 processes), TLS": TaskQueue(
            worker, shutdownWithReactor=False
        ),
    }
    rows = []
    figures: dict[str, tuple[float, float, float]] = {}
    for name, q in queues.items():
        rate = await throughput(q, args.calls, args.reps)
        lat = await latency(q, args.latency)
        mib = await bigValues(q, args.big)
        figures[name] = (rate, median(lat), mib)
        rows.append((name, rate, median(lat), percentile(lat, 90), mib))
    printTable(
        f"{args.calls} trivial calls (best of {args.reps}); {args.latency} sequential "
        f"calls; {args.big} results of 1 MiB",
        ["contender", "calls/s", "median µs", "p90 µs", "MiB/s"],
        rows,
    )
    local, remote = figures.values()
    print()
    printRatio("remote / local throughput", remote[0], local[0])
    printRatio("remote / local median latency", remote[1], local[1])
    printRatio("remote / local MiB/s", remote[2], local[2])
    for q in queues.values():
        await q.shutdown()
    await node.stopService()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--latency", type=int, default=200)
    parser.add_argument("--big", type=int, default=50)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.calls, args.reps, args.latency, args.big = 2000, 1, 50, 10
    return args


if __name__ == "__main__":
    arguments = parse()
    react(lambda reactor: Deferred.fromCoroutine(main(reactor, arguments)))
