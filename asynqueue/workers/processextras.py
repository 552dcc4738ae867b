"""
AsynQueue's extras of the process workers: L{ProcessBase}, a worker's
L{ProcessWorkerExtras.memUsage}, a queue's C{callStats}, C{stats()} of
AsynQueue's shape and L{ProcessQueueExtras.crashWorkers}, and C{cores()};
and L{preloadFor}, the module a zygote imports for an initializer.
"""

from __future__ import annotations

import os
import re
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

from twisted.internet.defer import Deferred, gatherResults, succeed

from asynqueue.queue.core import TaskQueue
from asynqueue.tasks import IN_THE_PICKLE, RawCall, Task, TaskRecord
from asynqueue.wire.pickling import CallPickler, callArguments, dumpCall

__all__ = ["ProcessBase", "ProcessQueueExtras", "ProcessWorkerExtras"]

_VM_SIZE = re.compile(r"VmSize:\s+([0-9]+)")


class ProcessBase:
    """
    A base for objects passed to a process queue, whose L{data} is per process.

    A copy of the object unpickled in each child sees only the data set in
    that process; attributes not otherwise found are looked up there.
    """

    _pb_data: ClassVar[dict[int, dict[str, Any]]] = {}

    @property
    def pid(self) -> int:
        """The id of the process I am in."""
        return os.getpid()

    @property
    def data(self) -> dict[str, Any]:
        """A dict of my own in this process, shared by no other process."""
        return self._pb_data.setdefault(self.pid, {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            # Not pickle's or copy's probes: those must not find the data.
            raise AttributeError(name)
        data = self.data
        if name not in data:
            raise AttributeError(name)
        return data[name]


class ProcessWorkerExtras(CallPickler):
    """What a L{asynqueue.workers.process.ProcessWorker} keeps of AsynQueue's."""

    #: The series every process worker runs (AsynQueue's class qualifications).
    cQualified: ClassVar[list[Any]] = ["process", "local"]

    #: Whether I keep call statistics (C{ProcessWorker(callStats=True)}).
    callStats = False

    reactor: Any

    @staticmethod
    def cores() -> int:
        """The number of CPU cores (AsynQueue's; C{os.cpu_count()})."""
        return os.cpu_count() or 1

    def info(self) -> dict[str, Any]:
        """My child's pid and more (the worker defines it)."""
        raise NotImplementedError

    def _keepAsynQueueOptions(self, raw: bool, useReactor: bool) -> None:
        #: AsynQueue's C{raw}: iterators come back as they are (they must
        #: pickle). C{useReactor} is accepted: a child always waits for a
        #: Deferred or coroutine its call returns, with or without it.
        self.raw = bool(raw)
        self.useReactor = bool(useReactor)

    def _rawCall(self, task: Task) -> bytes:
        """The call of C{task} pickled to come back raw (L{RawCall})."""
        f = task.f if type(task.f) is RawCall else RawCall(task.f)
        if task.args is IN_THE_PICKLE and task.pickled is not None:
            return dumpCall(f, *callArguments(task.pickled))
        return dumpCall(f, task.args, task.kwargs)

    def _keepCallStats(self, callStats: bool) -> None:
        self.callStats = bool(callStats)
        self.callTimes: list[tuple[float, float]] = []
        # When each call not yet answered was sent: a child answers its
        # calls in the order they were sent.
        self._sentAt: deque[float] = deque()

    def _noteSent(self) -> None:
        if self.callStats:
            self._sentAt.append(self.reactor.seconds())

    def _noteRan(self, times: list[float]) -> None:
        now = self.reactor.seconds()
        for seconds in times:
            if self.callStats and self._sentAt:
                sentAt = self._sentAt.popleft()
                self.callTimes.append((now - sentAt, seconds))

    def _forgetSent(self) -> None:
        # A dead child's calls are sent again (and noted again) or lost.
        self._sentAt.clear()

    def stats(self) -> Deferred[list[tuple[float, float]]]:
        """
        AsynQueue's call statistics: a Deferred of a list of C{(seconds from
        sending the call until its result came, seconds it ran in the
        child)}, one per call, for a worker made with C{callStats=True}.
        """
        if not self.callStats:
            raise ValueError("make the worker with callStats=True to have stats()")
        return succeed(list(self.callTimes))

    def memUsage(self) -> int | None:
        """
        The virtual memory size of my child process in kilobytes (its
        C{VmSize}), or C{None} if it is not running or the system has no
        C{/proc}.
        """
        if os.name != "posix":
            raise RuntimeError("Memory usage checking only supported under POSIX")
        pid = self.info().get("pid")
        if not pid:
            return None
        try:
            with open(os.path.join("/proc", str(pid), "status")) as fh:
                for line in fh:
                    match = _VM_SIZE.match(line)
                    if match:
                        return int(match.group(1))
        except OSError:
            return None
        return None


class ProcessQueueExtras(TaskQueue):
    """AsynQueue's call statistics and crashing of a process queue's workers."""

    _callStats = False

    @staticmethod
    def cores() -> int:
        """The number of CPU cores (AsynQueue's; C{os.cpu_count()})."""
        return os.cpu_count() or 1

    def stats(self) -> Any:
        """
        With C{callStats=True}, AsynQueue's statistics: a Deferred of the
        lists of L{ProcessWorkerExtras.stats} of all my workers, joined.
        Otherwise L{TaskQueue.stats}.
        """
        if not self._callStats:
            return super().stats()
        workers = [
            w
            for w in self.workers()
            if isinstance(w, ProcessWorkerExtras) and w.callStats
        ]

        def joined(lists: list[list[tuple[float, float]]]) -> list[tuple[float, float]]:
            return [times for one in lists for times in one]

        return gatherResults([w.stats() for w in workers]).addCallback(joined)

    def crashWorkers(self) -> Deferred[list[TaskRecord]]:
        """
        Detach and kill all my process workers at once.

        The tasks they had fail with L{asynqueue.errors.WorkerCrashed}; the
        Deferred fires with their records once the workers are gone.
        """
        workers = [w for w in self.workers() if isinstance(w, ProcessWorkerExtras)]
        names = {getattr(w, "name", None) for w in workers}
        cut: list[TaskRecord] = []

        def note(event: str, record: TaskRecord) -> None:
            if event == "ended" and record.worker in names and record.state == "failed":
                cut.append(record)

        stop = self.observe(note)
        try:
            ds = [self.detachWorker(w, reassign=False, crash=True) for w in workers]
        finally:
            stop()
        return gatherResults(ds).addCallback(lambda _: cut)


def preloadFor(initializer: Callable[..., Any] | None) -> tuple[str, ...]:
    """The module of C{initializer}, if a zygote can import it."""
    module = getattr(initializer, "__module__", None)
    if isinstance(module, str) and module != "__main__":
        return (module,)
    return ()
