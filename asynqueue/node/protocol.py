"""
L{NodeProtocol}: the node's side of the wire, the same for a queue's child
process and for a network node. It takes tasks and cancels straight off
the wire, sends results, serves iterators, and cuts off a peer that sends
garbage, an unknown command or a box over its size cap.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from asynqueue.wire.commands import (
    ASK,
    BATCH_BYTES,
    CANCEL_TASK,
    COMMAND,
    DEFINE_FUNCTION,
    NODE_COMMANDS,
    RUN_TASKS,
    CancelTask,
    CloseIterator,
    DefineFunction,
    NextItems,
    NodeInfo,
    RunTasks,
    Stop,
    readBatch,
    readCancelTask,
    taskResultBox,
    taskResultsBox,
)
from asynqueue.wire.framing import BoxReader, writeBox
from asynqueue.wire.functions import FunctionStore, readDefineFunction
from asynqueue.wire.pickling import dumps, loadsPlain
from asynqueue.wire.pipes import _CONNECTION_DONE

log = Logger()


class NodeProtocol(amp.AMP):
    """
    The node's side of the wire: takes tasks, sends results, serves iterators.

    C{onStop} is called once the node has answered L{Stop} or lost its
    connection.
    """

    #: A peer sending a box larger than this (bytes) is cut off.
    maxBoxBytes = 1 << 30

    def __init__(
        self,
        makeRunner: Callable[[Callable[..., object]], Any],
        onStop: Callable[[], object] | None = None,
    ) -> None:
        super().__init__()
        self.runner = makeRunner(self._sendResults)
        self._onStop = onStop
        # AMP caps each value, not a box: a box of endless keys is cut off.
        self._reader = BoxReader(self._boxReceived, self._abort, self.maxBoxBytes)
        self._inputRead = getattr(self.runner, "inputRead", None)
        #: The functions this peer sent, which its calls name by key.
        self.functions = FunctionStore()

    def dataReceived(self, data: bytes) -> None:
        inputRead = self._inputRead
        if inputRead is None:
            self._reader.feed(data)
            return
        runner = self.runner
        runner.reading = True
        try:
            self._reader.feed(data)
        finally:
            runner.reading = False
        # Every box of this read is in: tasks may start now.
        inputRead()

    def _boxReceived(self, box: dict[bytes, Any]) -> None:
        # Tasks and cancels, the frequent boxes, go straight to the runner.
        command = box.get(COMMAND)
        if command == RUN_TASKS and ASK not in box:
            self.runTasks(readBatch(box))
        elif command == CANCEL_TASK and ASK not in box:
            try:
                taskID = readCancelTask(box)
            except (KeyError, ValueError):
                self._abort("a malformed CancelTask")
                return
            self.runner.cancel(taskID)
        elif command == DEFINE_FUNCTION and ASK not in box:
            try:
                key, data, forget = readDefineFunction(box)
                self.functions.define(key, data, forget)
            except (KeyError, ValueError) as e:
                self._abort(f"a malformed DefineFunction ({e})")
        else:
            self.ampBoxReceived(amp.AmpBox((k, bytes(v)) for k, v in box.items()))

    def ampBoxReceived(self, box: Any) -> None:
        command = box.get(COMMAND)
        if command is not None and command not in _NODE_COMMANDS:
            self._abort(f"an unknown command {command[:40]!r}")
            return
        super().ampBoxReceived(box)

    def _abort(self, why: str) -> None:
        """A peer that sends garbage loses its connection, and only that."""
        self._reader.stop()
        log.warn("Dropping {peer}: it sent {why}", peer=self.transport, why=why)
        transport = self.transport
        if transport is not None:
            abort = getattr(transport, "abortConnection", transport.loseConnection)
            abort()

    def dispatchCommand(self, box: Any) -> Any:
        try:
            return super().dispatchCommand(box)
        except Exception as e:
            self._abort(f"a box that failed: {e!r}")
            raise

    def sendBox(self, box: Any) -> None:
        # A big value's chunks go out as they are, without a joined copy.
        transport = self.transport
        if transport is None:
            super().sendBox(box)
            return
        for key, value in box.items():
            if len(key) > amp.MAX_KEY_LENGTH or len(value) > amp.MAX_VALUE_LENGTH:
                raise amp.TooLong(False, True, value, key)
        writeBox(transport, sorted(box.items()))

    def _sendResults(self, batch: list[tuple[int, str, bytes, float]]) -> None:
        transport = self.transport
        if transport is None or getattr(transport, "disconnecting", False):
            return
        if len(batch) == 1 and len(batch[0][2]) > BATCH_BYTES:
            # Alone, a large result travels without being pickled twice.
            writeBox(transport, taskResultBox(*batch[0]))
        else:
            writeBox(transport, taskResultsBox(dumps(batch)))

    @RunTasks.responder
    def runTasks(self, batch: bytes | memoryview) -> dict[str, Any]:
        # Only IDs and pickled calls: read as plain data, so nothing in the
        # batch itself runs here (the calls run in the children, if anywhere).
        try:
            tasks = loadsPlain(batch)
        except Exception as e:
            self._abort(f"a batch that is not plain data ({e})")
            return {}
        self.runner.add(self.functions.link(tasks))
        return {}

    @DefineFunction.responder
    def defineFunction(
        self, key: bytes, function: bytes | memoryview, forget: bytes
    ) -> dict[str, Any]:
        box = {b"key": key, b"function": function, b"forget": forget}
        try:
            self.functions.define(*readDefineFunction(box))
        except ValueError as e:
            self._abort(f"a malformed DefineFunction ({e})")
        return {}

    @NextItems.responder
    def nextItems(self, iteratorID: int, maxItems: int) -> dict[str, Any]:
        result: dict[str, Any] = self.runner.nextItems(iteratorID, maxItems)
        return result

    @CloseIterator.responder
    def closeIterator(self, iteratorID: int) -> dict[str, Any]:
        self.runner.closeIterator(iteratorID)
        return {}

    @CancelTask.responder
    def cancelTask(self, taskID: int) -> dict[str, Any]:
        self.runner.cancel(taskID)
        return {}

    @Stop.responder
    def stop(self) -> Deferred[dict[str, Any]]:
        def stopped(_: object) -> dict[str, Any]:
            if self._onStop is not None:
                self._reactor().callLater(0, self._onStop)
            return {}

        result: Deferred[dict[str, Any]] = self.runner.whenIdle().addCallback(stopped)
        return result

    def _reactor(self) -> Any:
        from twisted.internet import reactor

        return reactor

    @NodeInfo.responder
    def nodeInfo(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "rss": _rss(),
            "capacity": self.runner.capacity,
            "done": self.runner.done,
            "processes": getattr(self.runner, "processes", 1),
        }

    def connectionLost(self, reason: Failure = _CONNECTION_DONE) -> None:
        super().connectionLost(reason)
        lost = getattr(self.runner, "connectionLost", None)
        if lost is not None:
            lost()
        if self._onStop is not None:
            self._onStop()
            self._onStop = None


_NODE_COMMANDS = frozenset(c.commandName for c in NODE_COMMANDS)


def _rss() -> int:
    """This process's resident memory in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
