"""
The child runtime: what runs in a queue's child process. L{childMain}
serves the node's side of the wire (L{NodeCore}) over the pipes it was
given, with a loop of the standard library
(L{asynqueue.node.loop.ChildLoop}), and
L{LocalRunner} runs the calls one at a time, notes each start in shared
memory, and sends results in batches never held longer than a
millisecond; a task reaches its process's L{context} (what the
initializer returned).

None of this imports Twisted, so a child (and the zygote that forks it)
starts in a few milliseconds. A call that returns a Deferred or another
awaitable needs a reactor: the child then imports Twisted and hands its
pipes to the reactor, which serves from then on.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from time import perf_counter
from types import CoroutineType, GeneratorType

from asynqueue.node.core import MAX_BOX_BYTES, NodeCore
from asynqueue.node.loop import ChildLoop
from asynqueue.plain import isPlainIterator, takeItems
from asynqueue.wire.boxes import (
    BATCH_BYTES,
    RESULT_DELAY,
    RESULT_WINDOW,
    Status,
)
from asynqueue.wire.framing import BlockingPipeWriter, writeBox
from asynqueue.wire.functions import loadCall
from asynqueue.wire.pickling import dumps, encodeError
from asynqueue.wire.ring import RING_MINIMUM, ResultRing
from asynqueue.wire.startnote import StartNote

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Protocol

    from twisted.internet.defer import Deferred

    class Scheduler(Protocol):
        """What a L{LocalRunner} runs its slices on: a reactor, a Clock, a loop."""

        def callLater(
            self, delay: float, callable: Callable[..., object], /, *args: Any
        ) -> Any: ...


# Plain letters (not members): results travel in batches read as plain data.
_RESULT, _BYTES, _ERROR = Status.RESULT.value, Status.BYTES.value, Status.ERROR.value
_ITERATOR, _RING = Status.ITERATOR.value, Status.RING.value

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


def _streams(result: object) -> bool:
    """Whether a result is an iterator whose items stream (see C{isIterator})."""
    if not isPlainIterator(result):
        return False
    # Only a process that imported it can have made a Deferator.
    iteration = sys.modules.get("asynqueue.iteration")
    return iteration is None or bool(iteration.isIterator(result))


def _isAwaitable(result: object) -> bool:
    """C{inspect.isawaitable} (a Deferred is one), without importing C{inspect}."""
    return (
        isinstance(result, (CoroutineType, Awaitable))
        # A generator-based coroutine (types.coroutine).
        or isinstance(result, GeneratorType)
        and bool(result.gi_code.co_flags & _CO_ITERABLE_COROUTINE)
    )


_CO_ITERABLE_COROUTINE = 0x100

#: Results of these types are never awaitable nor iterators: pickled at once.
_PLAIN = frozenset({type(None), bool, int, float, complex, str, list, tuple, dict})


def _checkSetup() -> None:
    if _setupError is not None:
        from asynqueue.errors import WorkerError

        raise WorkerError(
            f"this worker's initializer failed: {type(_setupError).__name__}: "
            f"{_setupError}"
        )


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
        reactor: Scheduler,
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
        self._stopWaiters: list[Callable[[], object]] = []
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
            for waiter in waiters:
                waiter()

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
            held = self._heldResults
            if self._unsent and held is not None and not held.is_set():
                # Results wait while this call runs: the thread sends them if
                # it runs long. Woken only then, not after every result (an
                # idle child's wake of it cost a round trip some 10 us).
                held.set()
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
            if _setupError is not None:
                _checkSetup()
            f, args, kwargs = loadCall(call)
            result = f(*args, **kwargs)
        except BaseException as e:
            self._reply(taskID, _ERROR, encodeError(e), began)
            return
        if type(result) in _PLAIN:
            # Neither awaitable nor an iterator: spared the checks for those.
            self._pickle(taskID, result, began)
            return
        # A Deferred is awaitable too.
        if _isAwaitable(result):
            self._await(taskID, result, began)
            return
        self._deliver(taskID, result, began)

    def _await(self, taskID: int, result: Any, began: float) -> None:
        """Hold the line until an awaitable's outcome is in; then deliver it."""
        from twisted.internet.defer import Deferred
        from twisted.python.failure import Failure

        from asynqueue.util import deferredFromAwaitable

        self._waiting = True
        d = result if isinstance(result, Deferred) else deferredFromAwaitable(result)

        def settled(outcome: object) -> None:
            self._waiting = False
            if isinstance(outcome, Failure):
                error = outcome.value or Exception(outcome.getErrorMessage())
                self._reply(taskID, _ERROR, encodeError(error), began)
            else:
                self._deliver(taskID, outcome, began)
            self.flush()
            self._schedule()

        d.addBoth(settled)
        needReactor = getattr(self._reactor, "needReactor", None)
        if self._waiting and needReactor is not None:
            # Only a reactor can settle it.
            needReactor()

    def _deliver(self, taskID: int, result: object, began: float) -> None:
        if _streams(result):
            iteratorID = next(self._iteratorIDs)
            self._iterators[iteratorID] = result  # type: ignore[assignment]
            self._reply(taskID, _ITERATOR, dumps(iteratorID), began)
            return
        if type(result) is bytes and len(result) > BATCH_BYTES:
            # Large bytes go through the memory shared with the parent, or
            # else through the pipe as they are: no pickle, no copy.
            ring = self._ring
            reference = (
                ring.put(result)
                if ring is not None and len(result) >= RING_MINIMUM
                else None
            )
            if reference is not None:
                self._reply(taskID, _RING, reference, began)
            else:
                self._reply(taskID, _BYTES, result, began)
            return
        self._pickle(taskID, result, began)

    def _pickle(self, taskID: int, result: object, began: float) -> None:
        try:
            payload = dumps(result)
        except Exception as e:
            from asynqueue.errors import UnpicklableError

            error = UnpicklableError(
                f"the result ({type(result).__qualname__}) cannot be pickled: "
                f"{type(e).__name__}: {e}"
            )
            self._reply(taskID, _ERROR, encodeError(error), began)
            return
        self._reply(taskID, _RESULT, payload, began)

    def _reply(self, taskID: int, status: str, payload: bytes, began: float) -> None:
        self.done += 1
        now = perf_counter()
        with self._resultsLock:
            if not self._unsent:
                self._unsentSince = now
            self._unsent.append((taskID, status, payload, now - began))
        self._lastRunTime = now - began
        self._averageRunTime = 0.9 * self._averageRunTime + 0.1 * self._lastRunTime
        if len(payload) > BATCH_BYTES:
            self.flush()

    def nextItems(self, iteratorID: int, maxItems: int) -> dict[str, Any]:
        answer = self._nextItems(iteratorID, maxItems)
        try:
            answer["items"] = dumps(answer["items"])
        except Exception as e:
            from asynqueue.errors import UnpicklableError

            self._iterators.pop(iteratorID, None)
            error = UnpicklableError(
                f"an item of the iterator cannot be pickled: {type(e).__name__}: {e}"
            )
            return {"items": dumps([]), "exhausted": True, "error": encodeError(error)}
        return answer

    def _nextItems(self, iteratorID: int, maxItems: int) -> dict[str, Any]:
        iterator = self._iterators.get(iteratorID)
        if iterator is None:
            return {"items": [], "exhausted": True, "error": None}
        items, exhausted, error = takeItems(iterator, maxItems)
        if exhausted:
            del self._iterators[iteratorID]
        return {
            "items": items,
            "exhausted": exhausted,
            "error": None if error is None else encodeError(error),
        }

    def closeIterator(self, iteratorID: int) -> None:
        iterator = self._iterators.pop(iteratorID, None)
        close = getattr(iterator, "close", None)
        if close is not None:
            close()

    def callWhenIdle(self, f: Callable[[], object]) -> None:
        """Call C{f} once no task is queued or running."""
        self._stopWaiters.append(f)
        self._schedule()

    def whenIdle(self) -> Deferred[None]:
        """A Deferred that fires once no task is queued or running."""
        from twisted.internet.defer import Deferred

        d: Deferred[None] = Deferred()
        self.callWhenIdle(lambda: d.callback(None))
        return d


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
    started = StartNote(startedFD)
    os.close(startedFD)
    try:
        ring: ResultRing | None = ResultRing.attach(ringFD)
    except (OSError, ValueError):
        ring = None
    loop = ChildLoop(readFD)
    writer = BlockingPipeWriter(writeFD)
    stopping = False

    def write(pairs: Any) -> None:
        if not writer.disconnecting:
            writeBox(writer, pairs)

    def abort(why: str) -> None:
        sys.stderr.write(f"child {os.getpid()}: dropping its parent: {why}\n")
        writer.loseConnection()
        loop.stop()

    def stopSoon() -> None:
        nonlocal stopping
        if not stopping:
            stopping = True
            loop.callLater(0, loop.stop)

    def logError(why: str) -> None:
        sys.stderr.write(why if why.endswith("\n") else why + "\n")

    core = NodeCore(
        lambda send: LocalRunner(loop, send, started, ring),
        write,
        abort,
        stopSoon,
        logError,
        MAX_BOX_BYTES,
    )
    runner: LocalRunner = core.runner
    loop.feed = core.feed

    def lost() -> None:
        core.lost()
        loop.stop()

    loop.lost = lost
    runner.readInput = loop.readNow
    runner.holdResultsAtMost(RESULT_DELAY)
    if loop.run():
        from twisted.internet import reactor

        reader = loop.handToReactor()
        runner.readInput = reader.readNow
        reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]
