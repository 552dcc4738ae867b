"""
A TaskQueue on a Dask cluster: squares, most urgent first, and a stream of
primes whose items stay on the Dask worker until asked for.

Run it with ``.venv/bin/python doc/examples/dask_cluster.py``; it starts a
small LocalCluster of its own. To use a running cluster, give its
scheduler's address: ``dask_cluster.py tcp://scheduler:8786``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

from twisted.internet.defer import ensureDeferred, gatherResults
from twisted.internet.task import react

from asynqueue import TaskQueue
from asynqueue.workers.dask import DaskWorker


def square(x: int) -> int:
    return x * x


def primes(limit: int) -> Iterator[int]:
    """The primes below C{limit}, one at a time: an iterator result."""
    for n in range(2, limit):
        if all(n % p for p in range(2, int(n**0.5) + 1)):
            yield n


async def main(reactor: Any, address: str | None = None) -> None:
    cluster = None
    if address is None:
        import distributed

        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=False,
            dashboard_address=":0",
            worker_dashboard_address=":0",
        )
        address = cluster.scheduler_address
    worker = DaskWorker(address)
    queue = TaskQueue(worker, shutdownWithReactor=False)
    try:
        await worker.whenConnected()
        print(f"Dask threads: {worker.threads}")
        squares = [queue.call(square, x, priority=-x) for x in range(6)]
        print(f"squares: {await gatherResults(squares)}")
        stream = await queue.call(primes, 40)
        print(f"primes: {await stream.toList()}")
        hosts = queue.stats()["workers"][worker.name]["hosts"]
        print(f"calls run: {sum(hosts.values())}")
    finally:
        await queue.shutdown()
        if cluster is not None:
            cluster.close()


if __name__ == "__main__":
    react(lambda reactor: ensureDeferred(main(reactor, *sys.argv[1:2])))
