"""
L{NodeClient}: the parent's side of the wire to a node, one class for a
child process (over its pipes) and for a network node (over a connection):
the calls it has out there (L{SentCall}s), sending them in batches,
withdrawing them, and reading their results back.
"""

from __future__ import annotations

import pickle
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.protocols import amp
from twisted.python.failure import Failure

from asynqueue.errors import WorkerError
from asynqueue.wire.commands import (
    ASK,
    BATCH_BYTES,
    COMMAND,
    TASK_RESULT,
    TASK_RESULTS,
    Pairs,
    Status,
    cancelTaskBox,
    readBatch,
    readTaskResult,
    runTasksBox,
    runTasksFrame,
)
from asynqueue.wire.framing import BoxReader, Value, writeBox
from asynqueue.wire.functions import FunctionLedger
from asynqueue.wire.pickling import PROTOCOL, loads
from asynqueue.wire.results import Peer, deliverResult, reportResult, unloadable

if TYPE_CHECKING:
    from asynqueue.tasks import Task

_RESULT = Status.RESULT.value

#: A task's outcome as it comes off the wire: C{(taskID, status, payload, seconds)}.
Result = tuple[int, str, Value, float]


@dataclass(eq=False, slots=True)
class SentCall:
    """
    A call handed to a node and not yet answered: a task's run (whose
    outcome is reported to the task), or a call with a Deferred (a
    replayed update, a node's still-pickled call).

    @ivar raw: The Deferred wants the result as it came off the wire,
        C{(status, payload, seconds, peer)}, undecoded (a node passing a
        child's result on).
    @ivar attempt: The task's run this is (L{Task.attempt} when sent).
    @ivar started: The node is known to have begun it.
    @ivar settled: A task's outcome was reported.
    """

    taskID: int
    call: bytes
    task: Task | None
    deferred: Deferred[Any] | None
    started: bool = False
    raw: bool = False
    attempt: int = 0
    settled: bool = False

    @property
    def open(self) -> bool:
        """Whether nobody has been told the outcome yet."""
        if self.deferred is not None:
            return not self.deferred.called
        return not self.settled

    def fail(self, error: BaseException) -> None:
        """End the call with C{error}, unless it has ended already."""
        if self.deferred is not None:
            if not self.deferred.called:
                self.deferred.errback(error)
        elif not self.settled and self.task is not None:
            self.settled = True
            self.task.finished(Failure(error), self.attempt)

    def answer(self, status: str, payload: Value, seconds: float, peer: Peer) -> None:
        """The node's answer came: tell whoever waits for it, once."""
        deferred = self.deferred
        if deferred is None:
            task = self.task
            if self.settled or task is None:
                return
            self.settled = True
            if not self.started and self.attempt == task.runs:
                # It ran and ended between two reads: it began this long ago.
                self.started = True
                task.markStarted(seconds)
            if status == _RESULT:
                # The usual answer, without the calls that decode the others.
                try:
                    outcome = loads(payload)
                except Exception as e:
                    outcome = unloadable(e)
                task.finished(outcome, self.attempt)
            else:
                reportResult(task, self.attempt, status, payload, peer)
        elif deferred.called:
            return
        elif self.raw:
            deferred.callback((status, payload, seconds, peer))
        else:
            deliverResult(deferred, status, payload, peer)


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
        #: The calls out at the node, by task ID, oldest first.
        self.inFlight: OrderedDict[int, SentCall] = OrderedDict()
        #: Calls waiting for this reactor turn's box, as C{(taskID, call)}.
        self.outgoing: list[tuple[int, bytes]] = []
        self.flushCall: IDelayedCall | None = None
        #: The functions the node holds, which calls may name by key.
        self.functions = FunctionLedger()

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

    # -- the calls out -------------------------------------------------------

    def queueCall(self, sent: SentCall, clock: Any, now: bool = False) -> None:
        """
        Send C{sent}: with the other calls of this reactor turn, in one box,
        or C{now} (a large call goes on its own at once, after those before).
        """
        self.inFlight[sent.taskID] = sent
        if now or len(sent.call) > BATCH_BYTES:
            if self.outgoing or self.flushCall is not None:
                self.flush()
            self._writeOrFail([(sent.taskID, sent.call)])
        else:
            self.outgoing.append((sent.taskID, sent.call))
            if self.flushCall is None:
                self.flushCall = clock.callLater(0, self.flush)

    def flush(self) -> None:
        """Send the calls collected for this reactor turn, if the node can take them."""
        flushCall, self.flushCall = self.flushCall, None
        if flushCall is not None and flushCall.active():
            flushCall.cancel()
        if self.outgoing and self.canSend():
            batch, self.outgoing = self.outgoing, []
            self._writeOrFail(batch)

    def _writeOrFail(self, batch: list[tuple[int, bytes]]) -> None:
        """
        L{writeCalls}; should writing raise, fail the batch's calls with
        that error, rather than leave them waiting for answers that cannot
        come.
        """
        try:
            self.writeCalls(batch)
        except Exception as e:
            error = WorkerError(
                f"a call could not be sent to its node: {type(e).__name__}: {e}"
            )
            for taskID, _ in batch:
                sent = self.inFlight.pop(taskID, None)
                if sent is not None:
                    sent.fail(error)

    def writeCalls(self, batch: list[tuple[int, bytes]]) -> None:
        """Write C{batch} in one L{RunTasks} box (a subclass notes more)."""
        self.sendTasks(batch)

    def canSend(self) -> bool:
        """Whether what is sent now reaches the node."""
        transport = self.transport
        return transport is not None and not getattr(transport, "disconnecting", False)

    def withdraw(self, taskID: int) -> tuple[SentCall | None, bool]:
        """
        Take back call C{taskID}: return it (C{None} if it is not out) and
        whether it was written to the node already.
        """
        sent = self.inFlight.pop(taskID, None)
        if sent is None:
            return None, False
        for i, (queued, _) in enumerate(self.outgoing):
            if queued == taskID:
                del self.outgoing[i]
                return sent, False
        return sent, True

    def takeUnsent(self) -> list[SentCall]:
        """Withdraw the calls not yet written to the node: the caller's again."""
        unsent = [self.inFlight.pop(taskID) for taskID, _ in self.outgoing]
        self.outgoing = []
        return unsent

    def stopSending(self) -> None:
        """Send nothing more: the node is gone."""
        flushCall, self.flushCall = self.flushCall, None
        if flushCall is not None and flushCall.active():
            flushCall.cancel()

    # -- sending -----------------------------------------------------------

    def sendPairs(self, pairs: Pairs) -> None:
        """Send a box that wants no answer, without AMP's machinery."""
        if self.transport is not None:
            writeBox(self.transport, pairs)

    def sendTasks(self, batch: list[tuple[int, bytes]]) -> None:
        """
        Send calls to run, as C{(taskID, pickled call)}, in one L{RunTasks},
        after the functions they name that the node does not hold yet.
        """
        batch = self.functions.prepare(batch, self.sendPairs)
        # Task IDs and bytes: plain pickle always takes them.
        data = pickle.dumps(batch, PROTOCOL)
        frame = runTasksFrame(data)
        if frame is None:
            self.sendPairs(runTasksBox(data))
        elif self.transport is not None:
            self.transport.write(frame)

    def sendCancel(self, taskID: int) -> None:
        """Withdraw a call the node has not started (L{CancelTask})."""
        self.sendPairs(cancelTaskBox(taskID))
