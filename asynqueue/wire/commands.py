"""
The wire's commands (AMP command classes) and the batching limits both
sides of it keep to.
"""

from __future__ import annotations

from typing import Any, ClassVar

from twisted.protocols import amp

from asynqueue.wire.framing import BigBytes

#: A node runs at most this many tasks between two sends of results, so if
#: it dies, only that many of the oldest unanswered tasks can have run.
#: Calls and results at most this big (bytes) travel together in one box;
#: larger ones travel alone, without being pickled twice.
BATCH_BYTES = 1 << 16

RESULT_WINDOW = 16

#: No result waits longer than this (seconds) to be sent.
RESULT_DELAY = 0.001


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

    C{status} is C{"r"} (payload: the pickled result), C{"b"} (payload: a
    large C{bytes} result as it is), C{"m"} (payload: where a large C{bytes}
    result waits in the L{asynqueue.wire.ring.ResultRing} a child shares with its
    parent; never sent further), C{"e"} (payload: an encoded error, see
    L{encodeError}) or C{"i"} (payload: the pickled ID of an iterator kept
    on the node). C{seconds} is how long the call ran.
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
