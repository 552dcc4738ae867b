"""
parallel-queue's README scenario on asynqueue: a producer puts batches of
documents to index, with a C{BatchDone} marker after each batch; a consumer
logs each batch once all of its documents are indexed. The documents are
indexed in parallel in two child processes, and one slow document does not
keep the next batches from being indexed meanwhile: it only holds the log
back, since the results leave in the order the documents went in.

Run it with ``.venv/bin/python doc/examples/parallel_queue_batches.py``.
"""

from __future__ import annotations

import time
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import react

from asynqueue import ProcessQueue
from asynqueue.ordered import OrderedQueue

T0 = time.time()


class BatchDone(int):
    """Marker for the end of a batch: the number of documents in it."""


def indexDocument(document: str) -> tuple[str, float]:
    """Index a document (in a child process): its name and when it was done."""
    time.sleep(0.5 if document.endswith("slow") else 0.02)
    return document, time.time() - T0


def documentBatches() -> list[list[str]]:
    return [
        ["doc-1-1", "doc-1-2-slow", "doc-1-3", "doc-1-4"],
        ["doc-2-1", "doc-2-2", "doc-2-3"],
        ["doc-3-1", "doc-3-2", "doc-3-3", "doc-3-4", "doc-3-5"],
    ]


async def producer(queue: OrderedQueue) -> None:
    for batch in documentBatches():
        for document in batch:
            # Callables get called on the arguments you give; waiting for
            # put() is the back-pressure when the buffer is full.
            await queue.put(indexDocument, document)
        # Non-callables pass through, in order.
        await queue.put(BatchDone(len(batch)))
    queue.stop()


async def consumer(queue: OrderedQueue) -> None:
    number, indexedBy = 0, 0.0
    documents: list[str] = []
    async for resultOrBatchDone in queue:
        if isinstance(resultOrBatchDone, BatchDone):
            number += 1
            print(
                f"batch {number} done: {int(resultOrBatchDone)} documents "
                f"({documents[0]} to {documents[-1]}), indexed by "
                f"{indexedBy:.2f}s, logged at {time.time() - T0:.2f}s",
                flush=True,
            )
            documents, indexedBy = [], 0.0
        else:
            document, doneAt = resultOrBatchDone
            documents.append(document)
            indexedBy = max(indexedBy, doneAt)


async def main(reactor: Any) -> None:
    # capacity=1: a child takes one document at a time, so the other child
    # indexes the next batches while one works on the slow document.
    processes = ProcessQueue(2, capacity=1)
    try:
        queue = OrderedQueue(processes)
        await gatherResults(
            [
                Deferred.fromCoroutine(producer(queue)),
                Deferred.fromCoroutine(consumer(queue)),
            ]
        )
        await queue.join(timeout=2)
        if queue.isAlive():
            raise Exception("join() must have timed out!")
    finally:
        await processes.shutdown()


if __name__ == "__main__":
    react(lambda reactor: Deferred.fromCoroutine(main(reactor)))
