"""
The worker node: runs the tasks that arrive over the wire.

One node implementation serves two transports. In a child process of a
L{asynqueue.process.ProcessQueue} the node talks AMP over two pipes
(descriptors 3 and 4, so that a task's C{print} never corrupts the
protocol; descriptor 5 is the memory where it notes each task it starts,
and descriptor 6 the L{asynqueue.ring.ResultRing} large results go through)
and runs each task itself, one at a time: L{childMain}, which a
C{ProcessWorker} spawns. On the network, L{NodeService} runs the same
protocol over mutual TLS and hands the tasks, still pickled, to its own
pool of children (L{NodePool}); C{python -m asynqueue.node}, the
C{asynqueue-node} command and C{twist asynqueue-node} start one.
"""

from __future__ import annotations

import errno
import itertools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from inspect import isawaitable
from time import perf_counter
from typing import Any, cast

from twisted.application.service import Service
from twisted.internet import abstract
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python import usage
from twisted.python.failure import Failure

from asynqueue.errors import UnpicklableError
from asynqueue.guard import ConnectionGuard
from asynqueue.iteration import isIterator
from asynqueue.ring import RING_MINIMUM, ResultRing
from asynqueue.startnote import StartNote
from asynqueue.wire import (
    RESULT_DELAY,
    RESULT_WINDOW,
    BoxReader,
    CancelTask,
    CloseIterator,
    NextItems,
    NodeInfo,
    RunTasks,
    Stop,
    WireWorkerUniverse,
    bigValue,
    callUniverse,
    dumps,
    encodeError,
    loads,
    loadsPlain,
    makeUniverse,
    writeBox,
)

__all__ = [
    "NodeProtocol",
    "LocalRunner",
    "PipeReader",
    "PipeWriter",
    "context",
    "childMain",
    "NodePool",
    "PoolRunner",
    "NodeFactory",
    "NodeService",
    "NodeOptions",
    "WireServer",
    "nodeEndpoint",
    "makeNodeService",
    "main",
]

log = Logger()
_READ_SIZE = 1 << 20
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)
_BATCH_BYTES = 1 << 16
_CONNECTION_DONE = Failure(CONNECTION_DONE)
_context: Any = None
_setupError: BaseException | None = None


def context() -> Any:
    """
    What the queue's C{initializer} returned, in this worker process.

    A task reaches its process's context (a model, a connection, a cache)
    through this; it is C{None} outside a worker or without an initializer.
    """
    return _context


def _initialize(initializer: Callable[..., Any], initargs: tuple[Any, ...]) -> None:
    """Run the queue's initializer in this process and keep what it returns."""
    global _context, _setupError
    try:
        _context = initializer(*initargs)
    except BaseException as e:
        # No task may run without the context it was promised.
        _setupError = e
        raise


def _checkSetup() -> None:
    if _setupError is not None:
        from asynqueue.errors import WorkerError

        raise WorkerError(
            f"this worker's initializer failed: {type(_setupError).__name__}: "
            f"{_setupError}"
        )


def _views(pieces: list[Any]) -> list[memoryview]:
    return [memoryview(piece).cast("B") for piece in pieces if len(piece)]


def _advance(views: list[memoryview], written: int) -> None:
    """Drop from C{views} the C{written} bytes at their front."""
    done = 0
    while done < len(views) and written >= len(views[done]):
        written -= len(views[done])
        done += 1
    del views[:done]
    if written:
        views[0] = views[0][written:]


class _Pipe(abstract.FileDescriptor):
    """One end of a pipe, non-blocking, in the reactor; closed when lost."""

    def __init__(self, fd: int, reactor: Any = None) -> None:
        super().__init__(reactor)
        self.fd = fd
        os.set_blocking(fd, False)

    def fileno(self) -> int:
        return self.fd

    def getPeer(self) -> str:
        return f"pipe {self.fd}"

    def getHost(self) -> str:
        return f"pid {os.getpid()}"

    def close(self) -> None:
        """Let go of the pipe now, whatever is still waiting to be written."""
        self.connectionLost(_CONNECTION_DONE)

    def connectionLost(self, reason: Failure) -> None:
        # Once only: a second close could hit a descriptor reused since.
        if self.fd < 0:
            return
        super().connectionLost(reason)
        fd, self.fd = self.fd, -1
        try:
            os.close(fd)
        except OSError:
            pass


class PipeReader(_Pipe):
    """
    Reads a pipe in large pieces and feeds a protocol.

    Every read lands in the same buffer, so a stream of large values costs
    no fresh memory per read (in a virtual machine, touching new pages
    costs more than copying them); the protocol gets a C{memoryview} of
    what was read, valid only until it returns (L{BoxReader} keeps copies
    of what it needs beyond that).
    """

    def __init__(self, fd: int, protocol: Any, reactor: Any = None) -> None:
        super().__init__(fd, reactor)
        self.protocol = protocol
        self._buffer = bytearray(_READ_SIZE)
        self._view = memoryview(self._buffer)
        self.startReading()

    def readNow(self) -> None:
        """Read what has come, if anything, without waiting for the reactor."""
        # At the end of input, the reactor's own next read sees it too.
        self.doRead()

    def doRead(self) -> object:
        try:
            size = os.readv(self.fd, (self._buffer,))
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return None
            return CONNECTION_LOST
        if not size:
            return CONNECTION_DONE
        self.protocol.dataReceived(self._view[:size])
        return None

    def connectionLost(self, reason: Failure) -> None:
        if self.fd >= 0:
            super().connectionLost(reason)
            self.protocol.connectionLost(reason)


class PipeWriter(_Pipe):
    """Writes to a pipe without blocking, buffering what does not fit yet."""

    def __init__(self, fd: int, reactor: Any = None) -> None:
        super().__init__(fd, reactor)
        self.connected = 1

    def write(self, data: bytes) -> None:
        # With nothing waiting, write now: a reactor turn later is latency.
        if not self.dataBuffer and not self._tempDataBuffer and not self.disconnecting:
            try:
                written = os.write(self.fd, data)
            except BlockingIOError:
                written = 0
            except OSError:
                written = 0
            if written == len(data):
                return
            data = data[written:]
        super().write(data)

    def writeSequence(self, data: Any) -> None:
        # As write: at once if nothing waits, and without joining the pieces.
        if self.dataBuffer or self._tempDataBuffer or self.disconnecting:
            super().writeSequence(data)
            return
        views = _views(data)
        try:
            written = os.writev(self.fd, views[:_IOV_MAX])
        except OSError:
            written = 0
        _advance(views, written)
        if views:
            super().write(b"".join(views))

    def writeSomeData(self, data: bytes) -> int | BaseException:
        try:
            return os.write(self.fd, data)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EINTR):
                return 0
            return CONNECTION_LOST


class _BlockingPipeTransport:
    """
    A child's way back to its parent: every write is in the pipe when it returns.

    So a result is in the pipe before the next task starts, and survives
    the child's death.
    """

    disconnecting = False

    def __init__(self, fd: int) -> None:
        self.fd = fd
        # Results held back may be sent from another thread (see
        # LocalRunner.holdResultsAtMost): one write at a time, whole.
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        with self._lock:
            while view:
                view = view[os.write(self.fd, view) :]

    def writeSequence(self, data: list[Any]) -> None:
        """Write the pieces with as few calls as the system allows, joining none."""
        views = _views(data)
        with self._lock:
            while views:
                _advance(views, os.writev(self.fd, views[:_IOV_MAX]))

    def loseConnection(self) -> None:
        self.disconnecting = True

    def getPeer(self) -> str:
        return "parent"

    def getHost(self) -> str:
        return f"pid {os.getpid()}"


class LocalRunner:
    """
    Runs a node's tasks in this process, one at a time, in the order sent.

    Tasks run in short slices of reactor time, so that incoming boxes
    (cancels, iterator pulls) are read between tasks. A task that returns a
    Deferred or coroutine holds the line until it is done.

    Results of short tasks travel together: never more than
    L{RESULT_WINDOW} of them, and none held longer than about
    L{RESULT_DELAY} seconds, even while a slow task runs (see
    L{holdResultsAtMost}); after tasks slower than that, each goes before
    the next task starts. Each task's ID is noted in shared memory
    (L{StartNote}) as it starts, so the parent knows exactly which ran.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        send: Callable[..., object],
        started: StartNote | None = None,
        ring: ResultRing | None = None,
    ) -> None:
        self._started = started
        #: The task about to start (a cancel read at that moment skips it).
        self._starting = 0
        # Taken to add or send results: another thread may send those held.
        self._resultsLock = threading.Lock()
        self._heldResults: threading.Event | None = None
        self._ring = ring
        self._reactor = reactor
        self._send = send
        self._backlog: deque[tuple[int, bytes]] = deque()
        self._cancelled: set[int] = set()
        self._iterators: dict[int, Iterator[Any]] = {}
        self._iteratorIDs = itertools.count(1)
        self._scheduled: Any = None
        self._waiting = False
        self._stopWaiters: list[Deferred[None]] = []
        self.capacity = 1
        self._unsent: list[tuple[int, str, bytes, float]] = []
        self._unsentSince = 0.0
        self._averageRunTime = RESULT_DELAY
        self._lastRunTime = 0.0
        self._slicing = False
        #: Reads input that came while a task ran (set by the child's main).
        self.readInput: Callable[[], object] | None = None
        #: True while the protocol reads boxes; it calls inputRead after.
        self.reading = False
        self.done = 0

    def add(self, tasks: list[tuple[int, bytes]]) -> None:
        self._backlog.extend(tasks)
        # Not at once: the rest of what was read (a cancel, say) comes first,
        # and then inputRead starts them (or, failing that, the reactor).
        if not self._slicing and not self.reading:
            self._schedule()

    def inputRead(self) -> None:
        """All that was read is in: start the tasks now, not a reactor turn later."""
        if self._slicing:
            return
        scheduled = self._scheduled
        if scheduled is not None:
            scheduled.cancel()
            self._scheduled = None
        if self._backlog and not self._waiting:
            self._runSome()
        else:
            self._schedule()

    def cancel(self, taskID: int) -> None:
        if taskID == self._starting or any(t[0] == taskID for t in self._backlog):
            self._cancelled.add(taskID)

    def holdResultsAtMost(self, seconds: float = RESULT_DELAY) -> None:
        """
        Never hold a result back for batching much longer than C{seconds}.

        A task cannot be interrupted to send the results held before it,
        so a thread of the runner's own sends them once they are that old
        (a slow task after fast ones would otherwise hold them, and the
        parent's note of which task runs, for as long as it runs).
        """
        if self._heldResults is None:
            self._heldResults = threading.Event()
            threading.Thread(
                target=self._sendHeldResults,
                args=(self._heldResults, seconds),
                name="asynqueue-held-results",
                daemon=True,
            ).start()

    def _sendHeldResults(self, held: threading.Event, seconds: float) -> None:
        """The held-results thread: wait for results to be held, send them when due."""
        while True:
            held.wait()
            held.clear()
            while True:
                with self._resultsLock:
                    if not self._unsent:
                        break
                    wait = self._unsentSince + seconds - perf_counter()
                    if wait <= 0:
                        batch, self._unsent = self._unsent, []
                        self._send(batch)
                        break
                time.sleep(wait)

    def _schedule(self) -> None:
        if self._scheduled is None and not self._waiting and self._backlog:
            self._scheduled = self._reactor.callLater(0, self._runSome)
        elif not self._backlog and not self._waiting and self._stopWaiters:
            waiters, self._stopWaiters = self._stopWaiters, []
            for d in waiters:
                d.callback(None)

    def _runSome(self) -> None:
        self._scheduled = None
        try:
            self._runSlice()
        except BaseException:
            # The node's own machinery failed (not a task): a node that cannot
            # report results must end, so that its parent sees a crash.
            import traceback

            traceback.print_exc()
            sys.stderr.flush()
            os._exit(70)

    def _runSlice(self) -> None:
        self._slicing = True
        deadline = perf_counter() + 0.005
        try:
            while self._runTasks(deadline) > 1 and perf_counter() < deadline:
                # Busy: more calls may have come while these ran. Their
                # results then travel with these, in fewer, larger boxes.
                if (
                    self.readInput is None
                    or self._waiting
                    or len(self._unsent) >= RESULT_WINDOW - 1
                ):
                    break
                self.readInput()
                if not self._backlog:
                    break
        finally:
            self._slicing = False
        self.flush()
        self._schedule()

    def _runTasks(self, deadline: float) -> int:
        ran = 0
        while self._backlog and not self._waiting:
            if self._lastRunTime > RESULT_DELAY and self.readInput is not None:
                # After a long task, read what came meanwhile (a cancel of
                # the next task, say) before starting another.
                self._lastRunTime = 0.0
                self.readInput()
                if not self._backlog:
                    break
            now = perf_counter()
            taskID, call = self._backlog.popleft()
            if taskID in self._cancelled:
                self._cancelled.discard(taskID)
                continue
            unsent = self._unsent
            if unsent and (
                len(unsent) >= RESULT_WINDOW - 1
                or now - self._unsentSince > RESULT_DELAY
                # Batching pays only for short tasks; after slower ones,
                # results go before the next task can hold them up.
                or self._averageRunTime > RESULT_DELAY / 10
            ):
                self.flush()
            started = self._started
            # Noted before the call: if this process dies in it, the parent
            # knows it started (and that nothing after it did).
            if started is not None and started.noteStarted(taskID):
                # The parent sent a cancel: it may be this call's.
                if self.readInput is not None:
                    self._starting = taskID
                    self.readInput()
                    self._starting = 0
                if taskID in self._cancelled:
                    self._cancelled.discard(taskID)
                    continue
            self._runOne(taskID, call)
            ran += 1
            if perf_counter() > deadline:
                break
        return ran

    def flush(self) -> None:
        """Send the results not sent yet."""
        if self._unsent:
            with self._resultsLock:
                batch, self._unsent = self._unsent, []
                if batch:
                    self._send(batch)

    def _runOne(self, taskID: int, call: bytes) -> None:
        began = perf_counter()
        try:
            _checkSetup()
            f, args, kwargs = loads(call)
            result = f(*args, **kwargs)
        except BaseException as e:
            self._reply(taskID, "e", encodeError(e), began)
            return
        if isinstance(result, Deferred) or isawaitable(result):
            self._waiting = True
            d = (
                result
                if isinstance(result, Deferred)
                else Deferred.fromCoroutine(_await(result))
            )

            def settled(outcome: object) -> None:
                self._waiting = False
                if isinstance(outcome, Failure):
                    error = outcome.value or Exception(outcome.getErrorMessage())
                    self._reply(taskID, "e", encodeError(error), began)
                else:
                    self._deliver(taskID, outcome, began)
                self.flush()
                self._schedule()

            d.addBoth(settled)
            return
        self._deliver(taskID, result, began)

    def _deliver(self, taskID: int, result: object, began: float) -> None:
        if isIterator(result):
            iteratorID = next(self._iteratorIDs)
            self._iterators[iteratorID] = result  # type: ignore[assignment]
            self._reply(taskID, "i", dumps(iteratorID), began)
            return
        if type(result) is bytes and len(result) > _BATCH_BYTES:
            # Large bytes go through the memory shared with the parent, or
            # else through the pipe as they are: no pickle, no copy.
            ring = self._ring
            reference = (
                ring.put(result)
                if ring is not None and len(result) >= RING_MINIMUM
                else None
            )
            if reference is not None:
                self._reply(taskID, "m", reference, began)
            else:
                self._reply(taskID, "b", result, began)
            return
        try:
            payload = dumps(result)
        except Exception as e:
            error = UnpicklableError(
                f"the result ({type(result).__qualname__}) cannot be pickled: "
                f"{type(e).__name__}: {e}"
            )
            self._reply(taskID, "e", encodeError(error), began)
            return
        self._reply(taskID, "r", payload, began)

    def _reply(self, taskID: int, status: str, payload: bytes, began: float) -> None:
        self.done += 1
        now = perf_counter()
        with self._resultsLock:
            held = not self._unsent
            if held:
                self._unsentSince = now
            self._unsent.append((taskID, status, payload, now - began))
        if held and self._heldResults is not None:
            self._heldResults.set()
        self._lastRunTime = now - began
        self._averageRunTime = 0.9 * self._averageRunTime + 0.1 * self._lastRunTime
        if len(payload) > _BATCH_BYTES:
            self.flush()

    def nextItems(self, iteratorID: int, maxItems: int) -> dict[str, Any]:
        answer = self._nextItems(iteratorID, maxItems)
        try:
            answer["items"] = dumps(answer["items"])
        except Exception as e:
            self._iterators.pop(iteratorID, None)
            error = UnpicklableError(
                f"an item of the iterator cannot be pickled: {type(e).__name__}: {e}"
            )
            return {"items": dumps([]), "exhausted": True, "error": encodeError(error)}
        return answer

    def _nextItems(self, iteratorID: int, maxItems: int) -> dict[str, Any]:
        iterator = self._iterators.get(iteratorID)
        items: list[Any] = []
        if iterator is None:
            return {"items": items, "exhausted": True, "error": None}
        try:
            for item in iterator:
                items.append(item)
                if len(items) >= maxItems:
                    return {"items": items, "exhausted": False, "error": None}
        except BaseException as e:
            del self._iterators[iteratorID]
            return {"items": items, "exhausted": True, "error": encodeError(e)}
        del self._iterators[iteratorID]
        return {"items": items, "exhausted": True, "error": None}

    def closeIterator(self, iteratorID: int) -> None:
        iterator = self._iterators.pop(iteratorID, None)
        close = getattr(iterator, "close", None)
        if close is not None:
            close()

    def whenIdle(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._stopWaiters.append(d)
        self._schedule()
        return d


async def _await(awaitable: Any) -> Any:
    return await awaitable


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
        command = box.get(b"_command")
        if command == b"RunTasks" and b"_ask" not in box:
            self.runTasks(bigValue(box, b"batch") or b"")
        elif command == b"CancelTask" and b"_ask" not in box:
            try:
                taskID = int(bytes(box[b"taskID"]))
            except (KeyError, ValueError):
                self._abort("a malformed CancelTask")
                return
            self.runner.cancel(taskID)
        else:
            self.ampBoxReceived(amp.AmpBox((k, bytes(v)) for k, v in box.items()))

    def ampBoxReceived(self, box: Any) -> None:
        command = box.get(b"_command")
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
        if len(batch) == 1 and len(batch[0][2]) > _BATCH_BYTES:
            # Alone, a large result travels without being pickled twice.
            taskID, status, payload, seconds = batch[0]
            pairs: list[tuple[bytes, Any]] = [
                (b"_command", b"TaskResult"),
                (b"payload", payload),
                (b"seconds", repr(float(seconds)).encode()),
                (b"status", status.encode()),
                (b"taskID", b"%d" % taskID),
            ]
        else:
            pairs = [(b"_command", b"TaskResults"), (b"batch", dumps(batch))]
        writeBox(transport, pairs)

    @RunTasks.responder
    def runTasks(self, batch: bytes | memoryview) -> dict[str, Any]:
        # Only IDs and pickled calls: read as plain data, so nothing in the
        # batch itself runs here (the calls run in the children, if anywhere).
        try:
            tasks = loadsPlain(batch)
        except Exception as e:
            self._abort(f"a batch that is not plain data ({e})")
            return {}
        self.runner.add(tasks)
        return {}

    @NextItems.responder
    def nextItems(self, iteratorID: int, maxItems: int) -> dict[str, Any]:
        return self.runner.nextItems(iteratorID, maxItems)

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

        return self.runner.whenIdle().addCallback(stopped)

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


_NODE_COMMANDS = frozenset(
    c.commandName
    for c in (RunTasks, NextItems, CloseIterator, CancelTask, Stop, NodeInfo)
)


def _rss() -> int:
    """This process's resident memory in bytes (0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _dieWithParent() -> None:
    """On Linux, have the kernel kill this child if its parent dies."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def childMain(
    readFD: int = 3, writeFD: int = 4, startedFD: int = 5, ringFD: int = 6
) -> None:
    """
    Be a child worker node: AMP in on C{readFD}, out on C{writeFD}, the ID
    of each call noted in the shared memory of C{startedFD} as it starts,
    and large results put in the L{ResultRing} of C{ringFD}.
    """
    import signal

    # Ctrl-C reaches the whole process group; the parent decides what stops.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _dieWithParent()
    from twisted.internet import reactor

    def stop() -> None:
        if reactor.running:
            reactor.stop()

    started = StartNote(startedFD)
    os.close(startedFD)
    try:
        ring: ResultRing | None = ResultRing.attach(ringFD)
    except (OSError, ValueError):
        ring = None
    protocol = NodeProtocol(
        lambda send: LocalRunner(reactor, send, started, ring), onStop=stop
    )
    protocol.makeConnection(_BlockingPipeTransport(writeFD))
    reader = PipeReader(readFD, protocol, reactor)
    protocol.runner.readInput = reader.readNow
    protocol.runner.holdResultsAtMost(RESULT_DELAY)
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]


# ----------------------------------------------------------------------
# The network node: the same protocol, tasks run on a pool of children


class NodePool:
    """
    A node's child processes, shared by all its connections.

    Calls go to the child with the fewest outstanding; they are never
    unpickled in the node itself, only in the children.
    """

    def __init__(
        self,
        processes: int,
        perProcess: int = 16,
        universe: str | None = None,
        **workerOptions: Any,
    ) -> None:
        from asynqueue.process import ProcessWorker

        self.universe = universe
        self.universeClass: type | None = None
        if universe is not None:
            import importlib

            module, _, name = universe.rpartition(".")
            self.universeClass = getattr(importlib.import_module(module), name)
            if not (
                isinstance(self.universeClass, type)
                and issubclass(self.universeClass, WireWorkerUniverse)
            ):
                raise TypeError(f"{universe} is not a WireWorkerUniverse subclass")
            workerOptions.update(initializer=makeUniverse, initargs=(universe,))
        if processes < 1:
            raise ValueError(f"a node needs at least one process, not {processes}")
        self.workers = [
            ProcessWorker(
                name=f"node-{i + 1}",
                capacity=perProcess,
                # A node serves for as long as it runs: its workers never
                # give up starting children, however long that takes.
                maxStartFailures=None,
                **workerOptions,
            )
            for i in range(processes)
        ]
        self.capacity = processes * perProcess

    def admit(self, call: bytes) -> bytes:
        """
        The call to send on: as it came, or, for a universe node, checked.

        A universe node reads C{(methodName, args, kwargs)} as plain data
        (no class or function may be in it) and runs only its universe's
        public methods.
        """
        if self.universe is None:
            return call
        name, args, kwargs = loadsPlain(call)
        if (
            not isinstance(name, str)
            or name.startswith("_")
            or not callable(getattr(self.universeClass, name, None))
        ):
            raise AttributeError(f"this node's universe has no method {name!r}")
        return dumps((callUniverse, (name, tuple(args), dict(kwargs)), {}))

    def runPickled(self, call: bytes) -> Deferred[tuple[str, bytes, float, Any]]:
        worker = min(self.workers, key=lambda w: w.outstanding)
        return worker.runPickled(call)

    def stop(self) -> Deferred[None]:
        from twisted.internet.defer import DeferredList

        return DeferredList([w.stop() for w in self.workers]).addCallback(
            lambda _: None
        )


class PoolRunner:
    """
    Runs one connection's tasks on the node's L{NodePool}.

    Results and iterator items pass through as the children pickled them.
    When the connection is lost, its tasks still running are cancelled,
    which ends the children running them.
    """

    def __init__(self, pool: NodePool, send: Callable[..., object]) -> None:
        self._pool = pool
        self._send = send
        self._running: dict[int, Deferred[Any]] = {}
        self._iterators: dict[int, tuple[Any, int]] = {}
        self._iteratorIDs = itertools.count(1)
        self._idleWaiters: list[Deferred[None]] = []
        self._unsent: list[tuple[int, str, bytes, float]] = []
        self._flushCall: Any = None
        self.capacity = pool.capacity
        self.processes = len(pool.workers)
        self.done = 0

    def _reply(self, result: tuple[int, str, bytes, float]) -> None:
        # Results that arrive in the same reactor turn travel together.
        self._unsent.append(result)
        if self._flushCall is None:
            from twisted.internet import reactor

            self._flushCall = reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flushCall = None
        batch, self._unsent = self._unsent, []
        if batch:
            self._send(batch)

    def add(self, tasks: list[tuple[int, bytes]]) -> None:
        for taskID, call in tasks:
            try:
                call = self._pool.admit(call)
            except Exception as e:
                self._reply((taskID, "e", encodeError(e), 0.0))
                continue
            d = self._pool.runPickled(call)
            self._running[taskID] = d
            d.addBoth(self._ran, taskID, perf_counter())

    def _ran(self, result: object, taskID: int, began: float) -> None:
        if self._running.pop(taskID, None) is None:
            return
        self.done += 1
        if isinstance(result, Failure):
            if result.check(CancelledError):
                return
            error = result.value or Exception(result.getErrorMessage())
            self._reply((taskID, "e", encodeError(error), perf_counter() - began))
        else:
            status, payload, seconds, child = cast(
                tuple[str, bytes, float, Any], result
            )
            if status == "i":
                iteratorID = next(self._iteratorIDs)
                self._iterators[iteratorID] = (child, loadsPlain(payload))
                payload = dumps(iteratorID)
            self._reply((taskID, status, payload, seconds))
        self._checkIdle()

    def cancel(self, taskID: int) -> None:
        d = self._running.pop(taskID, None)
        if d is not None:
            d.cancel()
            self._checkIdle()

    def nextItems(self, iteratorID: int, maxItems: int) -> Any:
        entry = self._iterators.get(iteratorID)
        if entry is None or entry[0].dead:
            self._iterators.pop(iteratorID, None)
            return {"items": dumps([]), "exhausted": True, "error": None}
        child, childID = entry

        def answered(answer: dict[str, Any]) -> dict[str, Any]:
            if answer["exhausted"]:
                self._iterators.pop(iteratorID, None)
            return answer

        return child.amp.callRemote(
            NextItems, iteratorID=childID, maxItems=maxItems
        ).addCallback(answered)

    def closeIterator(self, iteratorID: int) -> None:
        entry = self._iterators.pop(iteratorID, None)
        if entry is not None and not entry[0].dead:
            entry[0].amp.callRemote(CloseIterator, iteratorID=entry[1])

    def whenIdle(self) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self._idleWaiters.append(d)
        self._checkIdle()
        return d

    def _checkIdle(self) -> None:
        if not self._running and self._idleWaiters:
            waiters, self._idleWaiters = self._idleWaiters, []
            for d in waiters:
                d.callback(None)

    def connectionLost(self) -> None:
        for d in list(self._running.values()):
            d.cancel()
        for iteratorID in list(self._iterators):
            self.closeIterator(iteratorID)


class NodeFactory(Factory):
    """Makes a L{NodeProtocol} per connection, each running on the shared pool."""

    def __init__(self, pool: NodePool) -> None:
        self.pool = pool

    def buildProtocol(self, addr: Any) -> NodeProtocol:
        protocol: NodeProtocol

        def closeConnection() -> None:
            if protocol.transport is not None:
                protocol.transport.loseConnection()

        protocol = NodeProtocol(
            lambda send: PoolRunner(self.pool, send), closeConnection
        )
        protocol.factory = self
        return protocol


_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def nodeEndpoint(
    reactor: Any,
    description: str,
    ca: str | None = None,
    insecurePlaintext: bool = False,
) -> Any:
    """
    The endpoint a node listens on, from an endpoint string.

    C{ssl:port=N:privateKey=KEY:certKey=CERT[:interface=ADDR]} listens with
    mutual TLS: only clients whose certificate chains to the CA in C{ca}
    get through the handshake, so no byte of an unknown peer is ever read.
    The interface defaults to loopback. A plaintext C{tcp:} (loopback only)
    or C{unix:} listener needs C{insecurePlaintext=True}.
    """
    from twisted.internet import endpoints, ssl

    kind, _, rest = description.partition(":")
    options = _endpointOptions(rest)
    if kind == "ssl":
        if ca is None:
            raise ValueError("a TLS node needs the CA that signs its clients (--ca)")
        key = options.get("privateKey")
        if key is None:
            raise ValueError("an ssl: listen string needs privateKey= (and certKey=)")
        cert = options.get("certKey", key)
        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        tlsOptions = ssl.CertificateOptions(
            # Twisted takes cryptography's objects (its hints say pyOpenSSL's).
            privateKey=cast(Any, serialization.load_pem_private_key(_read(key), None)),
            certificate=cast(Any, x509.load_pem_x509_certificate(_read(cert))),
            verify=True,
            caCerts=[ssl.Certificate.loadPEM(_read(ca)).original],
            requireCertificate=True,
        )
        return endpoints.SSL4ServerEndpoint(
            reactor,
            int(options["port"]),
            tlsOptions,
            interface=options.get("interface", "127.0.0.1"),
        )
    if not insecurePlaintext:
        raise ValueError(
            f"refusing to listen without TLS on {description!r}: pickles are code; "
            "use ssl: with --ca, or say --insecure-plaintext (loopback or unix only)"
        )
    if kind == "tcp":
        interface = options.get("interface", "127.0.0.1")
        if interface not in _LOOPBACK:
            raise ValueError(
                f"a plaintext node listens on loopback only, not {interface}"
            )
        return endpoints.TCP4ServerEndpoint(
            reactor, int(options["port"]), interface=interface
        )
    if kind == "unix":
        if "mode" not in options:
            # Only this user may connect: whoever can, can run code as it.
            description += ":mode=600"
        return endpoints.serverFromString(reactor, description)
    raise ValueError(f"a node listens on ssl:, tcp: or unix:, not {kind}:")


def _endpointOptions(rest: str) -> dict[str, str]:
    """Parse C{a=1:b=2} (with C{\\:} escapes); a bare first value is the port."""
    parts, current, escaped = [], "", False
    for char in rest:
        if escaped:
            current += char
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            parts.append(current)
            current = ""
        else:
            current += char
    parts.append(current)
    options: dict[str, str] = {}
    for i, part in enumerate(p for p in parts if p):
        name, equals, value = part.partition("=")
        if equals:
            options[name] = value
        elif i == 0:
            options["port"] = name
        else:
            raise ValueError(f"cannot read {part!r} in an endpoint string")
    return options


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


class NodeService(Service):
    """
    A worker node as a Twisted service: a pool of processes and a listener.

    What C{twist asynqueue-node} and C{asynqueue-node} run.

    Peers that connect and then do nothing cannot hold the node's
    descriptors (see L{asynqueue.guard.ConnectionGuard}). A new connection
    has C{handshakeTimeout} seconds (10) to authenticate, or it is dropped:
    on a TLS node, to complete the handshake, which a client with a
    certificate the node trusts does in milliseconds; on a plaintext node,
    to send its first AMP box, which a L{RemoteWorker} does as soon as it
    connects. An authenticated client may then stay idle as long as it
    likes. At most C{maxUnauthenticated} connections (64) wait to
    authenticate at once, and at most C{maxConnections} are open (256, or
    half the descriptor limit if that is less, so that the cap comes before
    the limit). At a cap, a new connection evicts the one that has waited
    longest to authenticate, so idle peers cannot lock a real client out;
    it is refused only when every open connection has authenticated.
    C{clock} times the deadlines (the reactor if not given).
    """

    def __init__(
        self,
        listen: str = (
            "ssl:port=8789:interface=127.0.0.1:privateKey=node.key:certKey=node.crt"
        ),
        ca: str | None = None,
        processes: int | None = None,
        insecurePlaintext: bool = False,
        reactor: Any = None,
        universe: str | None = None,
        handshakeTimeout: float = 10.0,
        maxUnauthenticated: int = 64,
        maxConnections: int | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.universe = universe
        self.listen = listen
        self.ca = ca
        self.processes = processes or os.cpu_count() or 1
        self.insecurePlaintext = insecurePlaintext
        self.pool: NodePool | None = None
        self.port: Any = None
        self.guard: ConnectionGuard | None = None
        # Checked now, so that a bad option fails before anything starts.
        self.endpoint = nodeEndpoint(reactor, listen, ca, insecurePlaintext)
        self.handshakeTimeout = handshakeTimeout
        self.maxUnauthenticated = maxUnauthenticated
        self.maxConnections = maxConnections
        self.clock = clock if clock is not None else reactor
        self._guarded(Factory())  # checks the numbers

    def _guarded(self, factory: Factory) -> ConnectionGuard:
        return ConnectionGuard(
            factory,
            proof="tls" if self.listen.partition(":")[0] == "ssl" else "box",
            handshakeTimeout=self.handshakeTimeout,
            maxUnauthenticated=self.maxUnauthenticated,
            maxConnections=self.maxConnections,
            clock=self.clock,
        )

    def startService(self) -> Deferred[Any]:
        super().startService()
        self.pool = NodePool(self.processes, universe=self.universe)
        self.guard = self._guarded(NodeFactory(self.pool))
        d = self.endpoint.listen(self.guard)

        def listening(port: Any) -> Any:
            self.port = port
            log.info("asynqueue node listening on {address}", address=port.getHost())
            return port

        return d.addCallback(listening)

    def stopService(self) -> Deferred[None]:
        super().stopService()
        d = self.port.stopListening() if self.port is not None else succeed(None)
        if self.pool is not None:
            pool = self.pool
            d.addCallback(lambda _: pool.stop())
        return d


class NodeOptions(usage.Options):
    """The options of C{twist asynqueue-node} and C{asynqueue-node}."""

    optParameters = [
        [
            "listen",
            "l",
            "ssl:port=8789:interface=127.0.0.1:privateKey=node.key:certKey=node.crt",
            "Endpoint string to listen on (ssl: for mutual TLS; loopback by default).",
        ],
        [
            "ca",
            None,
            None,
            "CA certificate (PEM) that signs the clients' certificates.",
        ],
        ["processes", "p", None, "How many worker processes (default: one per core)."],
        [
            "universe",
            None,
            None,
            "module.Class of a WireWorkerUniverse: run only its methods, no code.",
        ],
        [
            "handshake-timeout",
            None,
            "10",
            "Seconds a new connection has to authenticate (complete TLS, or "
            "send its first box in plaintext) before it is dropped.",
        ],
        [
            "max-unauthenticated",
            None,
            "64",
            "How many connections may wait to authenticate at once; at the cap "
            "a new one evicts the oldest waiting.",
        ],
        [
            "max-connections",
            None,
            None,
            "How many connections may be open at once "
            "(default: 256, or half the descriptor limit if less).",
        ],
    ]
    optFlags = [
        [
            "insecure-plaintext",
            None,
            "Listen without TLS (tcp: on loopback or unix: only). "
            "Anyone who can connect can run code as this user.",
        ]
    ]

    def postOptions(self) -> None:
        for name in ("processes", "max-unauthenticated", "max-connections"):
            if self[name] is not None:
                self[name] = _positive(name, self[name], int)
        self["handshake-timeout"] = _positive(
            "handshake-timeout", self["handshake-timeout"], float
        )


def _positive(name: str, text: str, kind: type[int] | type[float]) -> Any:
    """C{text} as a number over 0, or a one-line L{usage.UsageError}."""
    what = "a whole number" if kind is int else "a number of seconds"
    try:
        value = kind(text)
    except ValueError:
        value = 0
    if not value > 0 or value == float("inf"):
        raise usage.UsageError(f"--{name} must be {what} over 0, not {text!r}")
    return value


def makeNodeService(options: NodeOptions) -> NodeService:
    """A L{NodeService} configured by parsed L{NodeOptions}."""
    return NodeService(
        listen=options["listen"],
        ca=options["ca"],
        processes=options["processes"],
        insecurePlaintext=bool(options["insecure-plaintext"]),
        universe=options["universe"],
        handshakeTimeout=options["handshake-timeout"],
        maxUnauthenticated=options["max-unauthenticated"],
        maxConnections=options["max-connections"],
    )


def main(argv: list[str] | None = None) -> None:
    """The C{asynqueue-node} command: run a worker node until told to stop."""
    from twisted.internet.task import react

    options = NodeOptions()
    try:
        options.parseOptions(sys.argv[1:] if argv is None else argv)
        service = makeNodeService(options)
    except (usage.UsageError, ValueError, OSError) as e:
        sys.exit(f"asynqueue-node: {e}")

    def run(reactor: Any) -> Deferred[None]:
        from twisted.logger import globalLogBeginner, textFileLogObserver

        globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)])
        reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
        service.startService()
        return Deferred()  # runs until a signal stops the reactor

    react(run)


class WireServer(NodeService):
    """
    AsynQueue's name for a node that serves a L{WireWorkerUniverse}.

    C{WireServer("module.MyUniverse", listen=..., ca=...)}: a L{NodeService}
    that runs only the universe's methods (see L{WireWorkerUniverse}).
    """

    def __init__(self, universe: str, **kwargs: Any) -> None:
        super().__init__(universe=universe, **kwargs)


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        childMain()
    else:
        main()
