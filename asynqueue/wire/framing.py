"""
AMP framing without AMP (nor Twisted): L{BoxReader} reads boxes straight
off the wire (values as zero-copy slices, boxes size-capped), L{writeBox}
writes them, values over AMP's 64 KiB limit spread over keys in chunks
as C{BigBytes} does, without a copy per chunk; and L{BlockingPipeWriter},
a child's way back to its parent.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


#: AMP's limits: the longest key and value of a box.
MAX_KEY_LENGTH = 0xFF
MAX_VALUE_LENGTH = 0xFFFF

_CHUNK = MAX_VALUE_LENGTH
#: The most bytes one key-value pair of a box takes on the wire.
_MAX_PAIR = 2 + MAX_KEY_LENGTH + 2 + MAX_VALUE_LENGTH
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)

Value = bytes | memoryview


class BoxReader:
    """
    Reads AMP boxes from a stream of bytes, as Twisted's AMP does, only
    with less work per box: each key and value is a slice of the data read
    (no copy), and whole boxes go to C{boxReceived} as dicts of C{bytes}
    keys to C{bytes} or C{memoryview} values.

    Only one unfinished key-value pair (at most 64 KiB) is ever kept
    between reads, so a large box arriving in many reads costs no repeated
    joining. The data fed may be a view of a buffer its reader reuses:
    whatever is kept beyond a L{feed} (the tail, the values of a box not
    complete yet) is copied first. A box larger than C{maxBoxBytes}, or a
    malformed key, calls C{malformed(why)}, after which nothing more is
    read.
    """

    __slots__ = (
        "_boxReceived",
        "_malformed",
        "_maxBoxBytes",
        "_box",
        "_tail",
        "_size",
        "_fresh",
        "stopped",
    )

    def __init__(
        self,
        boxReceived: Callable[[dict[bytes, Value]], object],
        malformed: Callable[[str], object],
        maxBoxBytes: int | None = None,
    ) -> None:
        self._boxReceived = boxReceived
        self._malformed = malformed
        self._maxBoxBytes = maxBoxBytes
        self._box: dict[bytes, Value] = {}
        self._tail = b""
        self._size = 0
        self._fresh: list[bytes] = []
        #: True once a malformed box was seen, or L{stop} was called.
        self.stopped = False

    def feed(self, data: Value) -> None:
        """Take the bytes read; deliver every box they complete."""
        if self.stopped:
            return
        start = 0
        tail = self._tail
        if tail:
            # Finish the pair left unfinished with just what it can need of
            # the new data; then go on in the new data, where that ended.
            joined = tail + data[:_MAX_PAIR]
            used = self._parse(joined, 0)
            if used < 0:
                return
            if used < len(tail) or len(joined) - len(tail) == len(data):
                self._tail = joined[used:]
                return
            start = used - len(tail)
            self._tail = b""
        end = self._parse(data, start)
        if end >= 0:
            self._tail = bytes(data[end:])
            # The unfinished box keeps copies of what this read gave it.
            box, fresh = self._box, self._fresh
            for key in fresh:
                value = box[key]
                if type(value) is memoryview:
                    box[key] = bytes(value)
            fresh.clear()

    def _parse(self, data: Value, pos: int) -> int:
        """Take pairs from C{pos} on; return where the unfinished rest begins."""
        n = len(data)
        view = memoryview(data)
        box = self._box
        while pos + 2 <= n:
            keyLength = data[pos] << 8 | data[pos + 1]
            if keyLength == 0:
                pos += 2
                self._box, self._size = {}, 0
                self._fresh.clear()
                self._boxReceived(box)
                if self.stopped:
                    return -1
                box = self._box
                continue
            if keyLength > MAX_KEY_LENGTH:
                self._stop(f"a key of {keyLength} bytes")
                return -1
            valueAt = pos + 2 + keyLength
            if valueAt + 2 > n:
                break
            end = valueAt + 2 + (data[valueAt] << 8 | data[valueAt + 1])
            if end > n:
                break
            key = bytes(view[pos + 2 : valueAt])
            box[key] = view[valueAt + 2 : end]
            self._fresh.append(key)
            self._size += end - pos
            pos = end
            if self._maxBoxBytes is not None and self._size > self._maxBoxBytes:
                self._stop(f"a box of over {self._maxBoxBytes} bytes")
                return -1
        return pos

    def _stop(self, why: str) -> None:
        self.stop()
        self._malformed(why)

    def stop(self) -> None:
        """Read nothing more (the connection is being dropped)."""
        self.stopped = True
        self._box, self._tail, self._fresh = {}, b"", []


def bigValue(box: dict[bytes, Value], name: bytes) -> Value | None:
    """A value that L{BigBytes} (or L{boxPieces}) spread over keys, whole again."""
    first = box.get(name)
    if first is None:
        return None
    second = box.get(name + b".1")
    if second is None:
        return first
    chunks = [first, second]
    i = 2
    while (chunk := box.get(b"%s.%d" % (name, i))) is not None:
        chunks.append(chunk)
        i += 1
    return b"".join(chunks)


def boxPieces(pairs: list[tuple[bytes, Value]]) -> list[Value]:
    """
    One AMP box, as the pieces to write in order (joining none of them):
    values over 64 KiB are spread over keys as L{BigBytes} does.
    """
    pieces: list[Value] = []
    add = pieces.append
    for key, value in pairs:
        size = len(value)
        if size <= _CHUNK:
            add(len(key).to_bytes(2, "big") + key + size.to_bytes(2, "big"))
            add(value)
            continue
        view = memoryview(value).cast("B")
        for i, at in enumerate(range(0, size, _CHUNK)):
            chunk = view[at : at + _CHUNK]
            name = key if i == 0 else b"%s.%d" % (key, i)
            add(len(name).to_bytes(2, "big") + name + len(chunk).to_bytes(2, "big"))
            add(chunk)
    add(b"\x00\x00")
    return pieces


def writeBox(transport: Any, pairs: list[tuple[bytes, Value]]) -> None:
    """Write one AMP box of C{pairs}; a large one without joining its pieces."""
    pieces = boxPieces(pairs)
    # More pieces than two a pair: a value was cut in chunks, so it is large.
    # Only our pipe writers take the chunks as views (Twisted's TCP and Unix
    # transports take nothing but bytes; its TLS joins them anyway).
    if len(pieces) > 2 * len(pairs) + 1 and getattr(transport, "takesViews", False):
        transport.writeSequence(pieces)
    else:
        transport.write(b"".join(pieces))


class ReadBuffer:
    """
    One buffer every read of a pipe lands in, so a stream of large values
    costs no fresh memory per read (in a virtual machine, touching new
    pages costs more than copying them). It starts small, since a fresh
    megabyte costs a process's start a millisecond, and grows to
    C{maxSize} once a read fills it.
    """

    __slots__ = ("_buffer", "_view", "maxSize")

    def __init__(self, size: int = 1 << 16, maxSize: int = 1 << 20) -> None:
        self._buffer = bytearray(size)
        self._view = memoryview(self._buffer)
        self.maxSize = maxSize

    def readFrom(self, fd: int) -> memoryview:
        """
        What one read of C{fd} gives (empty at the end of input), valid only
        until the next read; C{OSError} as C{os.readv} raises it.
        """
        buffer = self._buffer
        size = os.readv(fd, (buffer,))
        view = self._view[:size]
        if size == len(buffer) and size < self.maxSize:
            # The view keeps the small buffer for as long as it is read.
            self._buffer = bytearray(self.maxSize)
            self._view = memoryview(self._buffer)
        return view


def pieceViews(pieces: list[Any]) -> list[memoryview]:
    """Byte views of the non-empty C{pieces}, for C{os.writev}."""
    return [memoryview(piece).cast("B") for piece in pieces if len(piece)]


def advanceViews(views: list[memoryview], written: int) -> None:
    """Drop from C{views} the C{written} bytes at their front."""
    done = 0
    while done < len(views) and written >= len(views[done]):
        written -= len(views[done])
        done += 1
    del views[:done]
    if written:
        views[0] = views[0][written:]


class BlockingPipeWriter:
    """
    A child's way back to its parent: every write is in the pipe when it returns.

    So a result is in the pipe before the next task starts, and survives
    the child's death.
    """

    disconnecting = False

    #: L{writeBox} may hand L{writeSequence} views, not only bytes.
    takesViews = True

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
        views = pieceViews(data)
        with self._lock:
            while views:
                advanceViews(views, os.writev(self.fd, views[:_IOV_MAX]))

    def loseConnection(self) -> None:
        self.disconnecting = True

    def getPeer(self) -> str:
        return "parent"

    def getHost(self) -> str:
        return f"pid {os.getpid()}"
