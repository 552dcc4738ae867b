"""
L{ResultRing}: memory a worker process shares with its parent, through
which large results travel instead of through the pipe.

A pipe copies every byte twice (into the kernel and out again), and the
parent must then join the pieces it read into the result. Through the ring,
the child copies a result once, into memory that stays mapped (so after the
first lap it costs no fresh pages), and the parent copies it once, into the
result it hands on. The message on the pipe only says where the bytes are.

The child writes each result at its head; the parent, which takes results
in the order they were sent, notes how far it has read in the ring's
header, and the child never writes over what the parent has not taken. A
result that does not fit (the parent is behind, or the result is larger than
half the ring) simply goes through the pipe: nobody ever waits for the ring.

The parent publishes how far it has read with a plain store after its copy,
and the child reads it with a plain load: no memory fence, which Python does
not offer. That is sound where stores are not made visible before earlier
loads (x86-64, where this was measured); on weakly ordered CPUs it relies on
the child's next write into a freed region coming long after the parent's
copy of it ended, as it does in practice (a pipe message and a whole task
lie between them).

The parent copies each result into a fresh C{bytes}: memory that the
allocator takes from the system, and by default gives back as soon as the
results are dropped, only to take it again (a page fault for every 4 KiB)
for the next ones. That cost the parent more than the copy itself, and
made the throughput of one long-lived queue swing from round to round, so
L{keepFreedMemory} has the parent's allocator keep freed memory for reuse,
up to a bound (see L{KEEP_FREED}).
"""

from __future__ import annotations

import mmap
import os
import struct

from asynqueue.wire.startnote import sharedMemory

__all__ = ["ResultRing", "RING_SIZE", "RING_MINIMUM", "keepFreedMemory"]

#: The ring's size: virtual memory, backed only as far as it is used.
RING_SIZE = 32 << 20

#: Results smaller than this (bytes) are not worth the ring.
RING_MINIMUM = 1 << 16

#: How much freed memory (MiB) the parent's allocator keeps for the next
#: results, by default; C{ASYNQUEUE_KEEP_FREED_MIB} in the environment
#: says otherwise (0: leave the allocator as it is).
KEEP_FREED = 256

#: glibc's own ceiling for its adaptive threshold (64-bit): blocks smaller
#: than this come from the heap, where freed memory can be reused.
_MMAP_THRESHOLD = 32 << 20

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_kept: int | None = None


def keepFreedMemory(megabytes: int | None = None) -> int:
    """
    Have this process's allocator (glibc) keep up to C{megabytes} of freed
    memory for reuse instead of giving it back at once; return what is now
    kept (MiB; 0 where the allocator cannot be told, or was told 0).

    glibc gives a freed block of 1 MiB back to the system, or trims the
    heap, once more than about twice the largest freed block is free; the
    next results then fault their pages in again. The change is for the
    whole process, made once (the first ring made in it), and costs at most
    that much resident memory after a burst of large results.
    """
    global _kept
    if _kept is not None and megabytes is None:
        return _kept
    if megabytes is None:
        try:
            megabytes = int(os.environ.get("ASYNQUEUE_KEEP_FREED_MIB", KEEP_FREED))
        except ValueError:
            megabytes = KEEP_FREED
    _kept = 0
    if megabytes <= 0:
        return 0
    try:
        import ctypes

        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return 0
    # Setting either ends glibc's adaptive thresholds: set both.
    if mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD) and mallopt(
        _M_TRIM_THRESHOLD, megabytes << 20
    ):
        _kept = megabytes
    return _kept


_HEADER = 64
_TAKEN = struct.Struct("<Q")
_REFERENCE = struct.Struct("<QQ")


class ResultRing:
    """
    A ring of shared memory for large results, between a child and its parent.

    Make one with L{create} in the parent and hand its C{fd} to the child,
    which calls L{attach}. The child calls L{put}; the parent calls L{take}
    with what L{put} returned, in the same order.
    """

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size
        self._memory = mmap.mmap(fd, _HEADER + size)
        self._view = memoryview(self._memory)
        #: How far the child has written (a count of bytes, never wrapping).
        self._head = 0

    @classmethod
    def create(cls, size: int = RING_SIZE) -> ResultRing:
        """
        A new ring, in memory a child can map through C{fd}; the parent
        keeps freed memory for the results it will copy (L{keepFreedMemory}).
        """
        keepFreedMemory()
        fd = sharedMemory("asynqueue-results", _HEADER + size)
        try:
            return cls(fd, size)
        except BaseException:
            os.close(fd)
            raise

    @classmethod
    def attach(cls, fd: int) -> ResultRing:
        """The ring whose memory is C{fd}, as the child sees it."""
        return cls(fd, os.fstat(fd).st_size - _HEADER)

    def _taken(self) -> int:
        return int(_TAKEN.unpack_from(self._memory, 0)[0])

    def put(self, data: bytes) -> bytes | None:
        """
        Copy C{data} into the ring, in the child; return the reference to
        send the parent, or C{None} if it does not fit now (send it
        another way then).
        """
        size = len(data)
        if size > self.size // 2:
            return None
        start = self._head
        offset = start % self.size
        if offset + size > self.size:
            # It does not fit before the end: it goes at the start, and the
            # end is left unused this lap.
            start += self.size - offset
            offset = 0
        end = start + size
        if end - self._taken() > self.size:
            return None
        self._view[_HEADER + offset : _HEADER + offset + size] = data
        self._head = end
        return _REFERENCE.pack(start, end)

    def take(self, reference: bytes | memoryview) -> bytes:
        """
        The bytes a reference from L{put} stands for, in the parent; the
        child may write over them from now on.
        """
        start, end = _REFERENCE.unpack(reference)
        offset = _HEADER + start % self.size
        data = bytes(self._view[offset : offset + end - start])
        # Only once the copy is made may the child write there again.
        _TAKEN.pack_into(self._memory, 0, end)
        return data

    def release(self, reference: bytes | memoryview) -> None:
        """Let the child write over a result the parent will not take."""
        _TAKEN.pack_into(self._memory, 0, _REFERENCE.unpack(reference)[1])

    def closeDescriptor(self) -> None:
        """Close the descriptor (once the child has it); the memory stays mapped."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def close(self) -> None:
        """Let go of the memory and the descriptor."""
        self.closeDescriptor()
        self._view.release()
        self._memory.close()
