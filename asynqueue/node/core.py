"""
The node's side of the wire without I/O (nor Twisted): L{NodeCore} reads
the boxes fed to it, hands tasks, cancels and iterator pulls to its
runner, answers the commands that ask, writes the runner's results, and
cuts off a peer that sends garbage, an unknown command or a box over its
size cap. L{asynqueue.node.protocol.NodeProtocol} hosts it on a Twisted
connection (a network node); a queue's child hosts it on its pipes with
a loop of the standard library (L{asynqueue.node.child}).

Its boxes are AMP's, answers and errors included, so the parent's side
is plain AMP.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from asynqueue.wire.boxes import (
    ANSWER,
    ASK,
    BATCH_BYTES,
    CANCEL_TASK,
    CLOSE_ITERATOR,
    COMMAND,
    DEFINE_FUNCTION,
    ERROR,
    ERROR_CODE,
    ERROR_DESCRIPTION,
    NEXT_ITEMS,
    NODE_INFO,
    RUN_TASKS,
    STOP,
    Pairs,
    readBatch,
    readCancelTask,
    readDefineFunction,
    taskResultBox,
    taskResultsBox,
)
from asynqueue.wire.framing import BoxReader, Value
from asynqueue.wire.functions import FunctionStore
from asynqueue.wire.pickling import dumps, loadsPlain

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


#: A peer sending a box larger than this (bytes) is cut off.
MAX_BOX_BYTES = 1 << 30

#: AMP's code and description of an error a responder did not declare.
_UNKNOWN_ERROR = (b"UNKNOWN", b"Unknown Error")


class NodeCore:
    """
    The node's side of the wire, as boxes in (L{feed}) and boxes out.

    C{write(pairs)} sends one box (dropping it if the connection is going);
    C{abort(why)} cuts the peer off, saying why, as does a box that cannot
    be written (the peer then sees its calls lost, instead of waiting for
    their results); C{stopSoon()} ends the node once the answer to L{Stop}
    is out, and C{logError(why)} reports a failure no answer can carry.
    The runner, made by C{makeRunner(send)}, runs the
    tasks and sends their results through C{send}.
    """

    def __init__(
        self,
        makeRunner: Callable[[Callable[..., object]], Any],
        write: Callable[[Pairs], object],
        abort: Callable[[str], object],
        stopSoon: Callable[[], object],
        logError: Callable[[str], object],
        maxBoxBytes: int | None = None,
    ) -> None:
        self._write = write
        self._abort = abort
        self._stopSoon = stopSoon
        self._logError = logError
        self.runner = makeRunner(self.sendResults)
        # AMP caps each value, not a box: a box of endless keys is cut off.
        self.reader = BoxReader(self.boxReceived, self.malformed, maxBoxBytes)
        self._inputRead = getattr(self.runner, "inputRead", None)
        #: The functions this peer sent, which its calls name by key.
        self.functions = FunctionStore()
        self._answerers: dict[bytes, Callable[[dict[bytes, Value]], Any]] = {
            NEXT_ITEMS: self._nextItems,
            CLOSE_ITERATOR: self._closeIterator,
            STOP: self._stop,
            NODE_INFO: self._nodeInfo,
            RUN_TASKS: self._runTasks,
            CANCEL_TASK: self._cancelTask,
            DEFINE_FUNCTION: self._defineFunction,
        }

    def feed(self, data: Value) -> None:
        """Take bytes read off the wire; then the runner may start tasks."""
        inputRead = self._inputRead
        if inputRead is None:
            self.reader.feed(data)
            return
        runner = self.runner
        runner.reading = True
        try:
            self.reader.feed(data)
        finally:
            runner.reading = False
        # Every box of this read is in: tasks may start now.
        inputRead()

    def malformed(self, why: str) -> None:
        """A peer that sends garbage loses its connection, and only that."""
        self.reader.stop()
        self._abort(f"it sent {why}")

    def _send(self, pairs: Pairs) -> None:
        """Write one box; if that fails, end the connection rather than lose it."""
        try:
            self._write(pairs)
        except Exception as e:
            self._cannotSend(e)

    def _cannotSend(self, e: Exception) -> None:
        # The reader goes on: this may run in a child's held-results thread
        # while its main thread reads, and the connection drops anyway.
        why = f"a box could not be made or written ({e!r})"
        self._logError(why)
        self._abort(why)

    def boxReceived(self, box: dict[bytes, Value]) -> None:
        command = box.get(COMMAND)
        # Tasks and cancels, the frequent boxes, go straight to the runner.
        if command == RUN_TASKS and ASK not in box:
            self._runTasks(box)
            return
        if command == CANCEL_TASK and ASK not in box:
            self._cancelTask(box)
            return
        if command is None:
            # An answer: the node asks nothing, so there is none to wait for.
            return
        answerer = self._answerers.get(bytes(command))
        if answerer is None:
            self.malformed(f"an unknown command {bytes(command)[:40]!r}")
            return
        try:
            result = answerer(box)
        except (KeyError, ValueError) as e:
            self.malformed(f"a malformed {bytes(command).decode()} ({e!r})")
            return
        ask = box.get(ASK)
        if ask is None or result is None or self.reader.stopped:
            # No answer asked, or none yet (L{_stop} answers when idle).
            return
        ask = bytes(ask)
        if hasattr(result, "addCallbacks"):
            # Answered later (a network node's pool, or a Stop).
            result.addCallbacks(
                lambda fields: self._answer(ask, fields),
                lambda failure: self._fail(ask, failure.getTraceback()),
            )
        else:
            self._answer(ask, result)

    def _answer(self, ask: bytes, fields: dict[str, Any]) -> None:
        pairs: Pairs = [(ANSWER, ask)]
        for name, value in sorted(fields.items()):
            if value is None:
                # An optional value, absent.
                continue
            if type(value) is bool:
                value = b"True" if value else b"False"
            elif type(value) is int:
                value = b"%d" % value
            pairs.append((name.encode(), value))
        self._send(pairs)

    def _fail(self, ask: bytes, why: str) -> None:
        self._logError(why)
        code, description = _UNKNOWN_ERROR
        self._send([(ERROR, ask), (ERROR_CODE, code), (ERROR_DESCRIPTION, description)])

    def sendResults(self, batch: list[tuple[int, str, bytes, float]]) -> None:
        """Send results (the runner's C{send}): one box however many."""
        try:
            if len(batch) == 1 and len(batch[0][2]) > BATCH_BYTES:
                # Alone, a large result travels without being pickled twice.
                pairs = taskResultBox(*batch[0])
            else:
                pairs = taskResultsBox(dumps(batch))
        except Exception as e:
            self._cannotSend(e)
            return
        self._send(pairs)

    def _runTasks(self, box: dict[bytes, Value]) -> dict[str, Any]:
        # Only IDs and pickled calls: read as plain data, so nothing in the
        # batch itself runs here (the calls run in the children, if anywhere).
        try:
            tasks = loadsPlain(readBatch(box))
        except Exception as e:
            self.malformed(f"a batch that is not plain data ({e})")
            return {}
        self.runner.add(self.functions.link(tasks))
        return {}

    def _cancelTask(self, box: dict[bytes, Value]) -> dict[str, Any]:
        try:
            taskID = readCancelTask(box)
        except (KeyError, ValueError):
            self.malformed("a malformed CancelTask")
            return {}
        self.runner.cancel(taskID)
        return {}

    def _defineFunction(self, box: dict[bytes, Value]) -> dict[str, Any]:
        self.functions.define(*readDefineFunction(box))
        return {}

    def _nextItems(self, box: dict[bytes, Value]) -> Any:
        return self.runner.nextItems(
            int(bytes(box[b"iteratorID"])), int(bytes(box[b"maxItems"]))
        )

    def _closeIterator(self, box: dict[bytes, Value]) -> dict[str, Any]:
        self.runner.closeIterator(int(bytes(box[b"iteratorID"])))
        return {}

    def _stop(self, box: dict[bytes, Value]) -> Any:
        runner = self.runner
        callWhenIdle = getattr(runner, "callWhenIdle", None)
        if callWhenIdle is None:
            return runner.whenIdle().addCallback(self._stopped)
        ask = box.get(ASK)

        def idle() -> None:
            if ask is not None:
                self._answer(bytes(ask), {})
            self._stopSoon()

        callWhenIdle(idle)
        return None

    def _stopped(self, _: object) -> dict[str, Any]:
        self._stopSoon()
        return {}

    def _nodeInfo(self, box: dict[bytes, Value]) -> dict[str, Any]:
        runner = self.runner
        return {
            "pid": os.getpid(),
            "rss": _rss(),
            "capacity": runner.capacity,
            "done": runner.done,
            "processes": getattr(runner, "processes", 1),
        }

    def lost(self) -> None:
        """The connection is gone: so is every task not started."""
        self.reader.stop()
        lost = getattr(self.runner, "connectionLost", None)
        if lost is not None:
            lost()


def _rss() -> int:
    """This process's resident memory in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
