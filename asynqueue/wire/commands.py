"""
The wire's commands as AMP command classes, on the names, statuses and
limits of L{asynqueue.wire.boxes} (re-exported here), and L{BigBytes},
AMP's argument for values of any size. The busy path writes and reads
boxes by hand (see L{asynqueue.wire.boxes}), as a child does everything.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.protocols import amp

from asynqueue.wire.boxes import (
    ASK,
    BATCH_BYTES,
    CANCEL_TASK,
    CLOSE_ITERATOR,
    COMMAND,
    DEFINE_FUNCTION,
    NEXT_ITEMS,
    NODE_INFO,
    RESULT_DELAY,
    RESULT_WINDOW,
    RUN_TASKS,
    STOP,
    TASK_RESULT,
    TASK_RESULTS,
    Pairs,
    Status,
    cancelTaskBox,
    readBatch,
    readCancelTask,
    readTaskResult,
    runTasksBox,
    runTasksFrame,
    taskResultBox,
    taskResultsBox,
)
from asynqueue.wire.framing import MAX_VALUE_LENGTH

__all__ = [
    "ASK",
    "BATCH_BYTES",
    "BigBytes",
    "CANCEL_TASK",
    "COMMAND",
    "DEFINE_FUNCTION",
    "NODE_COMMANDS",
    "PARENT_COMMANDS",
    "RESULT_DELAY",
    "RESULT_WINDOW",
    "RUN_TASKS",
    "TASK_RESULT",
    "TASK_RESULTS",
    "CancelTask",
    "CloseIterator",
    "DefineFunction",
    "NextItems",
    "NodeInfo",
    "Pairs",
    "RunTasks",
    "Status",
    "Stop",
    "TaskResult",
    "TaskResults",
    "cancelTaskBox",
    "readBatch",
    "readCancelTask",
    "readTaskResult",
    "runTasksBox",
    "runTasksFrame",
    "taskResultBox",
    "taskResultsBox",
]


class BigBytes(amp.Argument):
    """
    A bytes value of any size: chunks of at most 65,535 bytes under the keys
    C{name}, C{name.1}, C{name.2}, ... of one box.
    """

    def toBox(
        self,
        name: bytes,
        strings: dict[bytes, Any],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        value = objects[amp._wireNameToPythonIdentifier(name)]
        if self.optional and value is None:
            return
        view = memoryview(value).cast("B")
        strings[name] = view[:MAX_VALUE_LENGTH]
        for i, start in enumerate(
            range(MAX_VALUE_LENGTH, len(view), MAX_VALUE_LENGTH), 1
        ):
            strings[b"%s.%d" % (name, i)] = view[start : start + MAX_VALUE_LENGTH]

    def fromBox(
        self,
        name: bytes,
        strings: dict[bytes, Any],
        objects: dict[str, Any],
        proto: Any,
    ) -> None:
        key = amp._wireNameToPythonIdentifier(name)
        first = strings.get(name)
        if first is None:
            if not self.optional:
                raise KeyError(name)
            objects[key] = None
            return
        chunks = [first]
        i = 1
        while (chunk := strings.get(b"%s.%d" % (name, i))) is not None:
            chunks.append(chunk)
            i += 1
        objects[key] = chunks[0] if i == 1 else b"".join(chunks)


class RunTasks(amp.Command):
    """
    Queue calls on the node, to run in the order sent.

    C{batch} is a pickled list of C{(taskID, call)}, C{call} being a
    pickled C{(f, args, kwargs)} (see L{dumpCall}). The results come back as
    L{TaskResult}s or L{TaskResults}, in the order the tasks ran.
    """

    commandName = RUN_TASKS

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

    commandName = TASK_RESULT

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

    commandName = TASK_RESULTS

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class NextItems(amp.Command):
    """Take up to C{maxItems} next items of an iterator kept on the node."""

    commandName = NEXT_ITEMS

    arguments = [(b"iteratorID", amp.Integer()), (b"maxItems", amp.Integer())]
    response = [
        (b"items", BigBytes()),
        (b"exhausted", amp.Boolean()),
        (b"error", BigBytes(optional=True)),
    ]


class CloseIterator(amp.Command):
    """Close and forget an iterator kept on the node."""

    commandName = CLOSE_ITERATOR

    arguments = [(b"iteratorID", amp.Integer())]
    requiresAnswer = False


class CancelTask(amp.Command):
    """Drop a queued task that has not started; a running one is not touched."""

    commandName = CANCEL_TASK

    arguments = [(b"taskID", amp.Integer())]
    requiresAnswer = False


class Stop(amp.Command):
    """Finish the queued tasks, answer, and end."""

    commandName = STOP

    arguments: ClassVar[list[Any]] = []
    response: ClassVar[list[Any]] = []


class DefineFunction(amp.Command):
    """
    A function pickled by value, which calls after this name by C{key}
    (the digest of C{function}; see L{asynqueue.wire.functions}). The node
    drops the functions listed in C{forget} (their keys, end to end).
    """

    commandName = DEFINE_FUNCTION

    arguments = [
        (b"key", amp.String()),
        (b"function", BigBytes()),
        (b"forget", amp.String()),
    ]
    requiresAnswer = False


class NodeInfo(amp.Command):
    """What the node is: its process ID, memory, capacity and tasks done."""

    commandName = NODE_INFO

    arguments: ClassVar[list[Any]] = []
    response = [
        (b"pid", amp.Integer()),
        (b"rss", amp.Integer()),
        (b"capacity", amp.Integer()),
        (b"done", amp.Integer()),
        (b"processes", amp.Integer(optional=True)),
    ]


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
