"""
QuasiQueue's hello world, fed to an asynqueue ThreadQueue.

The writer and the reader are QuasiQueue's, unchanged. The writer gives
``0 .. desired-1`` on every ask, so after the first answer the feeder drops
what it gives as duplicates until ``preventRequeueTime`` has passed (300 s
by default; 0.5 s here, so that the numbers come round again while this
runs). QuasiQueue's example runs until it is interrupted; this one stops
after a second and a quarter.

Run it with ``.venv/bin/python doc/examples/quasiqueue_hello.py``; settings
can come from the environment too (``HELLO_WORLD_BLOCK_SIZE=5``, say).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater, react

from asynqueue import ThreadQueue
from asynqueue.feed import feed


async def writer(desired: int) -> AsyncIterator[int]:
    """Feeds data to the Queue when it is low."""
    for x in range(0, desired):
        yield x


async def reader(identifier: int | str) -> None:
    """Receives individual items from the queue.

    Args:
        identifier (int | str): Comes from the output of the Writer function
    """
    print(f"{identifier}", flush=True)


async def main(reactor: Any) -> None:
    # One thread keeps the printed numbers in order.
    queue = ThreadQueue(1, name="hello_world")
    feeder = feed(queue, writer, reader, emptySleep=0.1, preventRequeueTime=0.5)
    await deferLater(reactor, 1.25, lambda: None)
    await feeder.stop()
    await queue.shutdown()
    stats = feeder.stats()
    print(
        f"fed {stats.fed} items in {stats.asks} asks; "
        f"dropped {stats.duplicates} repeats"
    )


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
