"""
L{StartNote}: a few bytes of memory a child process shares with its parent,
where the child notes each task as it starts it.

The note is how the parent knows, exactly and whatever the batching of
results does, which of the calls it sent the child has started: the child
writes a call's ID there just before running it (IDs grow in the order
sent). After a crash the calls up to that ID ran or were running, the rest
never started; a cancel of a call up to it must kill the child, a cancel of
a later one only withdraws it.

Withdrawing races with the child starting the call. So the parent also
counts the cancels it sent, and the child, having noted a start, looks at
that count; if it moved, the child reads its pipe (where the cancel already
is) before running the call. Each side stores, fences, then loads, so at
least one of them sees the other's store (Dekker's argument): either the
parent sees the start and kills, or the child sees the cancel and skips.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading

__all__ = ["StartNote", "sharedMemory"]

_ID = struct.Struct("<q")
_SIZE = 2 * _ID.size
#: Where the child's last started ID is, and where the parent's cancel count is.
_STARTED_AT, _CANCELS_AT = 0, _ID.size

_fenceLock = threading.Lock()


def _fence() -> None:
    """A full memory fence: taking a lock is an atomic read-modify-write."""
    _fenceLock.acquire()
    _fenceLock.release()


def sharedMemory(name: str, size: int) -> int:
    """A descriptor of C{size} zeroed bytes a child can map (closed by the caller)."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create(name)
    else:  # pragma: no cover - not Linux
        import tempfile

        with tempfile.TemporaryFile() as f:
            fd = os.dup(f.fileno())
    try:
        os.ftruncate(fd, size)
    except BaseException:
        os.close(fd)
        raise
    return fd


class StartNote:
    """
    The shared note of which call a child started last.

    The parent makes one with L{create} and hands L{create}'s descriptor
    to the child, which maps it with C{StartNote(fd)}. Mapping keeps no
    descriptor of the caller's open; L{close} unmaps.
    """

    def __init__(self, fd: int) -> None:
        self._memory: mmap.mmap | None = mmap.mmap(fd, _SIZE)
        self._cancelsSeen = 0

    @classmethod
    def create(cls) -> tuple[StartNote, int]:
        """A new note and the descriptor to give the child (close it after)."""
        fd = sharedMemory("asynqueue-started", _SIZE)
        try:
            return cls(fd), fd
        except BaseException:
            os.close(fd)
            raise

    # -- the child's side ----------------------------------------------------

    def noteStarted(self, taskID: int) -> bool:
        """
        Note that the call C{taskID} starts now.

        Returns whether the parent sent a cancel since the last look: the
        caller must then read its input before running the call.
        """
        memory = self._memory
        assert memory is not None
        _ID.pack_into(memory, _STARTED_AT, taskID)
        _fence()
        cancels = _ID.unpack_from(memory, _CANCELS_AT)[0]
        if cancels == self._cancelsSeen:
            return False
        self._cancelsSeen = cancels
        return True

    # -- the parent's side ---------------------------------------------------

    def lastStarted(self) -> int:
        """The ID of the last call the child started (0 before the first)."""
        memory = self._memory
        if memory is None:
            return 0
        return int(_ID.unpack_from(memory, _STARTED_AT)[0])

    def noteCancelSent(self) -> int:
        """
        Count a cancel just written to the child; return L{lastStarted} after.

        If the returned ID reaches the cancelled call, the child may have
        started it without seeing the cancel.
        """
        memory = self._memory
        if memory is None:
            return 0
        count = _ID.unpack_from(memory, _CANCELS_AT)[0]
        _ID.pack_into(memory, _CANCELS_AT, count + 1)
        _fence()
        return int(_ID.unpack_from(memory, _STARTED_AT)[0])

    def close(self) -> None:
        """Unmap the note; L{lastStarted} reads 0 from then on."""
        memory, self._memory = self._memory, None
        if memory is not None:
            memory.close()
