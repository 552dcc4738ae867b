"""
The wire's commands (AMP command classes), the statuses of a task's
result, and the batching limits both sides of it keep to: each defined
here once. The busy path writes and reads boxes by hand (see
L{asynqueue.wire.framing}); it uses the names bound at the end of this
module, taken from the command classes themselves.
"""

from __future__ import annotations

import enum
from typing import Any, ClassVar

from twisted.protocols import amp

from asynqueue.wire.framing import BigBytes, Value, bigValue

#: A node runs at most this many tasks between two sends of results, so if
#: it dies, only that many of the oldest unanswered tasks can have run.
#: Calls and results at most this big (bytes) travel together in one box;
#: larger ones travel alone, without being pickled twice.
BATCH_BYTES = 1 << 16

RESULT_WINDOW = 16

#: No result waits longer than this (seconds) to be sent.
RESULT_DELAY = 0.001


class Status(enum.StrEnum):
    """
    What the payload of a task's result is (the C{status} of L{TaskResult}).

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
    #: (its items come through L{NextItems}).
    ITERATOR = "i"
    #: Where a large C{bytes} value waits in the L{asynqueue.wire.ring.ResultRing}
    #: a child shares with its parent; never sent further than that parent.
    RING = "m"


class RunTasks(amp.Command):
    """
    Queue calls on the node, to run in the order sent.

    C{batch} is a pickled list of C{(taskID, call)}, C{call} being a
    pickled C{(f, args, kwargs)} (see L{dumpCall}). The results come back as
    L{TaskResult}s or L{TaskResults}, in the order the tasks ran.
    """

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class TaskResult(amp.Command):
    """
    One task's outcome, sent by the node as soon as the task ends.

    C{status} (a L{Status}) says what C{payload} is. C{seconds} is how long
    the call ran.
    A node sends results in the order the tasks ran, and runs at most
    L{RESULT_WINDOW} tasks between two sends (see L{TaskResults}).
    """

    arguments = [
        (b"taskID", amp.Integer()),
        (b"status", amp.Unicode()),
        (b"payload", BigBytes()),
        (b"seconds", amp.Float()),
    ]
    requiresAnswer = False


class TaskResults(amp.Command):
    """
    Several tasks' outcomes at once: a pickled list of C{(taskID, status,
    payload, seconds)}, each as in L{TaskResult}.
    """

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class NextItems(amp.Command):
    """Take up to C{maxItems} next items of an iterator kept on the node."""

    arguments = [(b"iteratorID", amp.Integer()), (b"maxItems", amp.Integer())]
    response = [
        (b"items", BigBytes()),
        (b"exhausted", amp.Boolean()),
        (b"error", BigBytes(optional=True)),
    ]


class CloseIterator(amp.Command):
    """Close and forget an iterator kept on the node."""

    arguments = [(b"iteratorID", amp.Integer())]
    requiresAnswer = False


class CancelTask(amp.Command):
    """Drop a queued task that has not started; a running one is not touched."""

    arguments = [(b"taskID", amp.Integer())]
    requiresAnswer = False


class Stop(amp.Command):
    """Finish the queued tasks, answer, and end."""

    arguments: ClassVar[list[Any]] = []
    response: ClassVar[list[Any]] = []


class DefineFunction(amp.Command):
    """
    A function pickled by value, which calls after this name by C{key}
    (the digest of C{function}; see L{asynqueue.wire.functions}). The node
    drops the functions listed in C{forget} (their keys, end to end).
    """

    arguments = [
        (b"key", amp.String()),
        (b"function", BigBytes()),
        (b"forget", amp.String()),
    ]
    requiresAnswer = False


class NodeInfo(amp.Command):
    """What the node is: its process ID, memory, capacity and tasks done."""

    arguments: ClassVar[list[Any]] = []
    response = [
        (b"pid", amp.Integer()),
        (b"rss", amp.Integer()),
        (b"capacity", amp.Integer()),
        (b"done", amp.Integer()),
        (b"processes", amp.Integer(optional=True)),
    ]


# The busy path's boxes, written and read by hand (see
# L{asynqueue.wire.framing}); a test checks them against AMP's own.

#: The key of a box's command name, and of an answer's request number.
COMMAND, ASK = amp.COMMAND, amp.ASK
RUN_TASKS: bytes = RunTasks.commandName
TASK_RESULT: bytes = TaskResult.commandName
TASK_RESULTS: bytes = TaskResults.commandName
CANCEL_TASK: bytes = CancelTask.commandName
DEFINE_FUNCTION: bytes = DefineFunction.commandName

#: The commands a node answers, and those it sends.
NODE_COMMANDS = (
    RunTasks,
    NextItems,
    CloseIterator,
    CancelTask,
    Stop,
    NodeInfo,
    DefineFunction,
)
PARENT_COMMANDS = (TaskResult, TaskResults)

Pairs = list[tuple[bytes, Value]]


def runTasksBox(batch: Value) -> Pairs:
    """The pairs of a L{RunTasks} box, for L{asynqueue.wire.framing.writeBox}."""
    return [(COMMAND, RUN_TASKS), (b"batch", batch)]


def cancelTaskBox(taskID: int) -> Pairs:
    """The pairs of a L{CancelTask} box."""
    return [(COMMAND, CANCEL_TASK), (b"taskID", b"%d" % taskID)]


def taskResultsBox(batch: Value) -> Pairs:
    """The pairs of a L{TaskResults} box (C{batch} pickled)."""
    return [(COMMAND, TASK_RESULTS), (b"batch", batch)]


def taskResultBox(taskID: int, status: str, payload: Value, seconds: float) -> Pairs:
    """The pairs of a L{TaskResult} box, in AMP's order of keys."""
    return [
        (COMMAND, TASK_RESULT),
        (b"payload", payload),
        (b"seconds", repr(float(seconds)).encode()),
        (b"status", status.encode()),
        (b"taskID", b"%d" % taskID),
    ]


def readBatch(box: dict[bytes, Value]) -> Value:
    """The C{batch} of a L{RunTasks} or L{TaskResults} box read off the wire."""
    return bigValue(box, b"batch") or b""


def readCancelTask(box: dict[bytes, Value]) -> int:
    """The task ID of a L{CancelTask} box; KeyError or ValueError if malformed."""
    return int(bytes(box[b"taskID"]))


def readTaskResult(box: dict[bytes, Value]) -> tuple[int, str, bytes, float]:
    """
    C{(taskID, status, payload, seconds)} of a L{TaskResult} box; KeyError or
    ValueError if malformed. The payload is its own C{bytes} (it may be kept
    past this read).
    """
    return (
        int(bytes(box[b"taskID"])),
        bytes(box[b"status"]).decode(),
        bytes(bigValue(box, b"payload") or b""),
        float(bytes(box[b"seconds"])),
    )
