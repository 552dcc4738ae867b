"""
The wire's vocabulary without AMP: the command names and keys, the
statuses of a task's result, the batching limits both sides keep to, and
the busy path's boxes, written and read by hand. Each is defined here
once; L{asynqueue.wire.commands} builds AMP's command classes on these
names, and a child reads and writes its boxes with these alone, without
importing Twisted.
"""

from __future__ import annotations

import enum

from asynqueue.wire.framing import MAX_VALUE_LENGTH, Value, bigValue

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from asynqueue.wire.functions import Definition

#: A node runs at most this many tasks between two sends of results, so if
#: it dies, only that many of the oldest unanswered tasks can have run. One
#: more than a process worker has out at most (its C{maxCapacity}, 64): the
#: task still running when the others are held counts too, so a full batch
#: of short calls comes back in one box (with 64, in two: 63 and 1).
RESULT_WINDOW = 65

#: Calls and results at most this big (bytes) travel together in one box;
#: larger ones travel alone, without being pickled twice.
BATCH_BYTES = 1 << 16

#: No result waits longer than this (seconds) to be sent.
RESULT_DELAY = 0.001


class Status(enum.StrEnum):
    """
    What the payload of a task's result is (the C{status} of C{TaskResult}).

    One letter on the wire. A member compares equal to its letter, and the
    letters travel as plain C{str} (C{Status.ERROR.value}): pickled
    batches are read as plain data, where no class may appear.
    """

    #: The pickled value the call returned.
    RESULT = "r"
    #: A large C{bytes} value the call returned, as it is (not pickled).
    BYTES = "b"
    #: The call's exception, encoded (see L{asynqueue.wire.pickling.encodeError}).
    ERROR = "e"
    #: The pickled ID of an iterator the call returned, kept on the node
    #: (its items come through C{NextItems}).
    ITERATOR = "i"
    #: Where a large C{bytes} value waits in the L{asynqueue.wire.ring.ResultRing}
    #: a child shares with its parent; never sent further than that parent.
    RING = "m"


#: AMP's keys: a box's command name, a request's number, an answer's and
#: an error's request number, and an error's code and description.
COMMAND, ASK, ANSWER = b"_command", b"_ask", b"_answer"
ERROR, ERROR_CODE, ERROR_DESCRIPTION = b"_error", b"_error_code", b"_error_description"
#: The code of an error a responder did not declare (AMP's).
UNHANDLED_ERROR_CODE = b"UNHANDLED"

#: The commands' names (each command class's C{commandName}).
RUN_TASKS = b"RunTasks"
TASK_RESULT = b"TaskResult"
TASK_RESULTS = b"TaskResults"
NEXT_ITEMS = b"NextItems"
CLOSE_ITERATOR = b"CloseIterator"
CANCEL_TASK = b"CancelTask"
STOP = b"Stop"
DEFINE_FUNCTION = b"DefineFunction"
NODE_INFO = b"NodeInfo"

Pairs = list[tuple[bytes, Value]]

#: The bytes of a function's key (see L{asynqueue.wire.functions}).
KEY_BYTES = 16


def runTasksBox(batch: Value) -> Pairs:
    """The pairs of a C{RunTasks} box, for L{asynqueue.wire.framing.writeBox}."""
    return [(COMMAND, RUN_TASKS), (b"batch", batch)]


def _pairHead(key: bytes) -> bytes:
    return len(key).to_bytes(2, "big") + key


_RUN_TASKS_HEAD = _pairHead(COMMAND) + _pairHead(RUN_TASKS) + _pairHead(b"batch")


def runTasksFrame(batch: bytes) -> bytes | None:
    """
    The bytes of a whole C{RunTasks} box, as L{writeBox} writes
    L{runTasksBox}, for a C{batch} that fits one value (else C{None}): the
    box an idle child's call goes in, made in one step.
    """
    if len(batch) > MAX_VALUE_LENGTH:
        return None
    return b"".join(
        (_RUN_TASKS_HEAD, len(batch).to_bytes(2, "big"), batch, b"\x00\x00")
    )


def cancelTaskBox(taskID: int) -> Pairs:
    """The pairs of a C{CancelTask} box."""
    return [(COMMAND, CANCEL_TASK), (b"taskID", b"%d" % taskID)]


def taskResultsBox(batch: Value) -> Pairs:
    """The pairs of a C{TaskResults} box (C{batch} pickled)."""
    return [(COMMAND, TASK_RESULTS), (b"batch", batch)]


def taskResultBox(taskID: int, status: str, payload: Value, seconds: float) -> Pairs:
    """The pairs of a C{TaskResult} box, in AMP's order of keys."""
    return [
        (COMMAND, TASK_RESULT),
        (b"payload", payload),
        (b"seconds", repr(float(seconds)).encode()),
        (b"status", status.encode()),
        (b"taskID", b"%d" % taskID),
    ]


def readBatch(box: dict[bytes, Value]) -> Value:
    """The C{batch} of a C{RunTasks} or C{TaskResults} box read off the wire."""
    return bigValue(box, b"batch") or b""


def readCancelTask(box: dict[bytes, Value]) -> int:
    """The task ID of a C{CancelTask} box; KeyError or ValueError if malformed."""
    return int(bytes(box[b"taskID"]))


def readTaskResult(box: dict[bytes, Value]) -> tuple[int, str, bytes, float]:
    """
    C{(taskID, status, payload, seconds)} of a C{TaskResult} box; KeyError or
    ValueError if malformed. The payload is its own C{bytes} (it may be kept
    past this read).
    """
    return (
        int(bytes(box[b"taskID"])),
        bytes(box[b"status"]).decode(),
        bytes(bigValue(box, b"payload") or b""),
        float(bytes(box[b"seconds"])),
    )


def defineFunctionBox(definition: Definition, forget: list[bytes]) -> Pairs:
    """The pairs of a L{DefineFunction} box."""
    return [
        (COMMAND, DEFINE_FUNCTION),
        (b"forget", b"".join(forget)),
        (b"function", definition.data),
        (b"key", definition.key),
    ]


def readDefineFunction(box: dict[bytes, Value]) -> tuple[bytes, bytes, list[bytes]]:
    """C{(key, data, forget)} of a L{DefineFunction} box; ValueError if malformed."""
    key = bytes(box[b"key"])
    data = bigValue(box, b"function")
    forget = bytes(box[b"forget"])
    if len(key) != KEY_BYTES or data is None or len(forget) % KEY_BYTES:
        raise ValueError("a malformed DefineFunction")
    keys = [forget[i : i + KEY_BYTES] for i in range(0, len(forget), KEY_BYTES)]
    return key, bytes(data), keys
