"""
The leanest pools for a Twisted reactor that return one Deferred per call,
for C{bench_floor.py}: what no such pool can spend less than.

L{LeanThreadPool} is two threads, a plain queue in, results posted back in
batches. L{LeanProcessPool} is two standard-library children on pipes,
length-prefixed pickles both ways. Both do what a real pool must for
correctness (each result reaches its own Deferred, exceptions travel, a
child's death fails its calls) and nothing more: no priorities, records,
timeouts, respawn or cancelling.
"""

from __future__ import annotations

import os
import pickle
import queue
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

WORKERS = 2


class _Raised:
    """What a call raised: a result that the caller gets as a failure."""

    def __init__(self, exception: BaseException | Failure) -> None:
        self.exception = exception


class LeanThreadPool:
    """
    The leanest thread pool for the reactor that returns a Deferred per call:
    a plain queue in, results posted back in batches (one C{callFromThread}
    when the outbox was empty), each Deferred fired in the reactor thread.

    A waiting call is one tuple, C{(d, f, *args)}, and a result waiting for
    the reactor is an item in each of two lists: every object alive per
    call is one more for each full pass of the collector to walk.
    """

    def __init__(self, reactor: Any, threads: int = WORKERS) -> None:
        self._callFromThread = reactor.callFromThread
        self._inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._done: list[Deferred[Any]] = []
        self._results: list[Any] = []
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._work, daemon=True) for _ in range(threads)
        ]
        for thread in self._threads:
            thread.start()

    def call(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self._inbox.put((d, f, *args))
        return d

    def _work(self) -> None:
        get, lock, done, results = (
            self._inbox.get,
            self._lock,
            self._done,
            self._results,
        )
        post, deliver = self._callFromThread, self._deliver
        while (item := get()) is not None:
            try:
                result = item[1](*item[2:])
            except BaseException:
                result = _Raised(Failure())
            with lock:
                done.append(item[0])
                results.append(result)
                first = len(done) == 1
            if first:  # else a delivery is already on its way
                post(deliver)

    def _deliver(self) -> None:
        with self._lock:
            done, results = self._done[:], self._results[:]
            self._done.clear()
            self._results.clear()
        for d, result in zip(done, results, strict=True):
            if type(result) is _Raised:
                d.errback(result.exception)
            else:
                d.callback(result)

    def close(self) -> None:
        for _ in self._threads:
            self._inbox.put(None)
        for thread in self._threads:
            thread.join()


# The child of the lean process pool: the standard library only. It reads
# length-prefixed pickles, (function id, args), or (None, (id, definition));
# runs each call as it comes; writes the results of what one read brought
# in one write (sooner if a call ran long 1 ms), each a pickle of the value
# or of the exception raised, prefixed by its length << 1 | raised. Results
# go back in the order the calls came, so the parent needs no call id.
_LEAN_CHILD = r"""
import os, pickle, struct, time
loads, dumps, clock = pickle.loads, pickle.dumps, time.perf_counter
size = struct.Struct("<I")
unpack, pack = size.unpack_from, size.pack
functions = {}
buffer = bytearray()

def send(out):
    view = memoryview(b"".join(out))
    while view:
        view = view[os.write(1, view):]
    out.clear()

while data := os.read(0, 1 << 18):
    buffer += data
    out, pos, end, began = [], 0, len(buffer), clock()
    view = memoryview(buffer)
    while end - pos >= 4:
        n = unpack(view, pos)[0]
        if end - pos - 4 < n:
            break
        fid, args = loads(view[pos + 4 : pos + 4 + n])
        pos += 4 + n
        if fid is None:
            functions[args[0]] = loads(args[1])
            continue
        try:
            result = dumps(functions[fid](*args), 5)
            failed = 0
        except BaseException as e:
            failed = 1
            try:
                result = dumps(e, 5)
            except BaseException:
                result = dumps(RuntimeError(repr(e)), 5)
        out += (pack(len(result) << 1 | failed), result)
        if clock() - began > 0.001:
            send(out)
            began = clock()
    view.release()
    del buffer[:pos]
    if out:
        send(out)
"""

_SIZE = struct.Struct("<I")
_pack, _dumps = _SIZE.pack, pickle.dumps


class _LeanChild(ProcessProtocol):
    """One child: the Deferreds of its calls in flight, in the order sent."""

    def __init__(self, pool: LeanProcessPool) -> None:
        self.pool = pool
        self.inflight: deque[Deferred[Any]] = deque()
        self.buffer = bytearray()
        self.ended: Deferred[None] = Deferred()
        self.process: Any = None  # its IProcessTransport, once spawned

    def outReceived(self, data: bytes) -> None:
        self.pool._received(self, data)

    def processEnded(self, reason: Failure) -> None:
        self.pool._lost(self, reason)
        self.ended.callback(None)


class LeanProcessPool:
    """
    The leanest process pool for the reactor that returns a Deferred per
    call: two stdlib children on pipes, each call pickled on its own and
    sent to the child with fewer calls in flight, each script function sent
    to every child once, by value with cloudpickle, and named by a number
    after. With a C{window}, at most that many calls are in flight per
    child and the rest wait here, so that a long call holds up no more than
    its child's window (as a pool that balances its children must); with
    none, every call goes out at once (the cheapest, but a long call holds
    up everything queued behind it on its child).
    """

    def __init__(self, reactor: Any, window: int | None = 256) -> None:
        self.window = window or sys.maxsize
        self.children = [_LeanChild(self) for _ in range(WORKERS)]
        self._ids: dict[Callable[..., Any], int] = {}
        self._definitions: list[bytes] = []
        # Two deques, not one of pairs: a pair per waiting call would be
        # 20,000 more objects for every pass of the collector to walk.
        self._waiting: deque[Deferred[Any]] = deque()
        self._frames: deque[bytes] = deque()
        for child in self.children:
            child.process = reactor.spawnProcess(
                child,
                sys.executable,
                [sys.executable, "-c", _LEAN_CHILD],
                env=os.environ,
                childFDs={0: "w", 1: "r", 2: 2},
            )

    @staticmethod
    def _frame(message: object) -> bytes:
        body = _dumps(message, 5)
        return _pack(len(body)) + body

    def call(self, f: Callable[..., Any], *args: Any) -> Deferred[Any]:
        fid = self._ids.get(f)
        if fid is None:
            fid = self._define(f)
        d: Deferred[Any] = Deferred()
        body = _dumps((fid, args), 5)
        frame = _pack(len(body)) + body
        a, b = self.children  # the child with fewer calls in flight
        child = a if len(a.inflight) <= len(b.inflight) else b
        if len(child.inflight) < self.window:
            child.inflight.append(d)
            child.process.write(frame)
        else:
            self._waiting.append(d)
            self._frames.append(frame)
        return d

    def _define(self, f: Callable[..., Any]) -> int:
        import cloudpickle

        fid = self._ids[f] = len(self._definitions)  # the pool keeps f alive
        definition = self._frame((None, (fid, cloudpickle.dumps(f, 5))))
        self._definitions.append(definition)
        for child in self.children:
            child.process.write(definition)
        return fid

    def _received(self, child: _LeanChild, data: bytes) -> None:
        buffer, inflight, unpack = child.buffer, child.inflight, _SIZE.unpack_from
        buffer += data
        pos, end, loads = 0, len(buffer), pickle.loads
        view = memoryview(buffer)
        fired, values = [], []
        while end - pos >= 4:
            header = unpack(view, pos)[0]  # length << 1 | failed
            n = header >> 1
            if end - pos - 4 < n:
                break
            fired.append(inflight.popleft())
            values.append(loads(view[pos + 4 : pos + 4 + n]))
            if header & 1:
                values[-1] = _Raised(values[-1])
            pos += 4 + n
        view.release()
        del buffer[:pos]
        # Refill the child's window before firing, so it works meanwhile.
        if waiting := self._waiting:
            frames, take = self._frames.popleft, waiting.popleft
            count = min(len(fired), len(waiting))
            inflight.extend([take() for _ in range(count)])
            child.process.write(b"".join([frames() for _ in range(count)]))
        for d, value in zip(fired, values, strict=True):
            if type(value) is _Raised:
                d.errback(value.exception)
            else:
                d.callback(value)

    def _lost(self, child: _LeanChild, reason: Failure) -> None:
        while child.inflight:
            child.inflight.popleft().errback(reason)

    def close(self) -> Deferred[Any]:
        for child in self.children:
            child.process.closeStdin()
        return gatherResults([child.ended for child in self.children])
