"""
L{NodeClient}: the parent's side of the wire to a node, one class for a
child process (over its pipes) and for a network node (over a connection).
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.protocols import amp

from asynqueue.wire.commands import (
    ASK,
    COMMAND,
    TASK_RESULT,
    TASK_RESULTS,
    Pairs,
    cancelTaskBox,
    readBatch,
    readTaskResult,
    runTasksBox,
)
from asynqueue.wire.framing import BoxReader, Value, writeBox
from asynqueue.wire.pickling import dumps, loads

#: A task's outcome as it comes off the wire: C{(taskID, status, payload, seconds)}.
Result = tuple[int, str, Value, float]


class NodeClient(amp.AMP):
    """
    The parent's side of the wire to one node: calls out, results back.

    Results, by far the most frequent boxes, are read straight off the
    wire (L{BoxReader}) and handed to L{resultsReceived} in the order the
    node ran their tasks; every other box (answers to L{NextItems},
    L{NodeInfo}, L{Stop}) goes through AMP as usual. Calls and cancels go
    out as hand-written boxes (L{sendTasks}, L{sendCancel}).

    A subclass says what results mean (L{resultsReceived}), what to do with
    a peer that sends garbage (L{malformed}), how far to trust the batches
    of results (L{loadBatch}) and how large a box may be (L{maxBoxBytes}).
    """

    #: A box larger than this (bytes) is malformed; None: no cap.
    maxBoxBytes: ClassVar[int | None] = None

    def __init__(self) -> None:
        super().__init__()
        self._reader = BoxReader(self._boxReceived, self.malformed, self.maxBoxBytes)

    def dataReceived(self, data: bytes) -> None:
        self._reader.feed(data)

    def _boxReceived(self, box: dict[bytes, Any]) -> None:
        command = box.get(COMMAND)
        if command == TASK_RESULTS and ASK not in box:
            self.resultsReceived(self.loadBatch(readBatch(box)))
        elif command == TASK_RESULT and ASK not in box:
            try:
                result = readTaskResult(box)
            except (KeyError, ValueError):
                self.malformed("a malformed TaskResult")
                return
            self.resultsReceived([result])
        else:
            self.ampBoxReceived(amp.AmpBox((k, bytes(v)) for k, v in box.items()))

    def loadBatch(self, batch: Value) -> list[Result]:
        """Unpickle a L{TaskResults} batch (a list of L{Result}s)."""
        result: list[tuple[int, str, bytes | memoryview, float]] = loads(batch)
        return result

    def stopReading(self) -> None:
        """Read nothing more from the node (its connection is being dropped)."""
        self._reader.stop()

    def resultsReceived(self, batch: list[Result]) -> None:
        """Results from the node, in the order its tasks ran."""
        raise NotImplementedError

    def malformed(self, why: str) -> None:
        """The node sent something that is not our wire (C{why}, in words)."""
        raise NotImplementedError

    # -- sending -----------------------------------------------------------

    def sendPairs(self, pairs: Pairs) -> None:
        """Send a box that wants no answer, without AMP's machinery."""
        if self.transport is not None:
            writeBox(self.transport, pairs)

    def sendTasks(self, batch: list[tuple[int, bytes]]) -> None:
        """Send calls to run, as C{(taskID, pickled call)}, in one L{RunTasks}."""
        self.sendPairs(runTasksBox(dumps(batch)))

    def sendCancel(self, taskID: int) -> None:
        """Withdraw a call the node has not started (L{CancelTask})."""
        self.sendPairs(cancelTaskBox(taskID))
