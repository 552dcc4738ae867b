"""
The records a queue keeps of the tasks that ended: packed, so that keeping
100,000 of them costs the rest of the program nothing.

Each full pass of the cyclic garbage collector touches every object a
container refers to: 100,000 record objects (or tuples of their fields) in
a deque cost each pass some 20 ms here, three passes a round of 20,000
calls gathered at once. Packed in chunks of C{marshal}led rows, they are a
few hundred C{bytes} objects the collector does not look into (and a third
of the memory).
"""

from __future__ import annotations

import marshal
from collections import deque
from typing import Any

__all__ = ["KeptRecords"]

#: Rows packed together: the collector walks the last chunk's rows only.
CHUNK = 1024


class KeptRecords:
    """
    The rows (L{asynqueue.tasks.recordRow}) of up to C{maxRecords} ended
    tasks, the newest.
    """

    def __init__(self, maxRecords: int | None) -> None:
        self.maxRecords = maxRecords
        #: The rows not packed yet.
        self._fresh: list[tuple[Any, ...]] = []
        #: Older rows: how many, and their marshalled list (or the list itself,
        #: when a series or lane is not plain data).
        self._packed: deque[tuple[int, bytes | list[tuple[Any, ...]]]] = deque()
        self._packedRows = 0

    def __len__(self) -> int:
        count = self._packedRows + len(self._fresh)
        limit = self.maxRecords
        return count if limit is None else min(count, limit)

    def add(self, row: tuple[Any, ...]) -> None:
        """Keep C{row}, a record's fields (L{recordRow})."""
        if self.maxRecords == 0:
            return
        fresh = self._fresh
        fresh.append(row)
        if len(fresh) < CHUNK:
            return
        self._fresh = []
        try:
            packed: bytes | list[tuple[Any, ...]] = marshal.dumps(fresh)
        except ValueError:
            packed = fresh
        self._packed.append((len(fresh), packed))
        self._packedRows += len(fresh)
        limit = self.maxRecords
        while limit is not None and self._packedRows - self._packed[0][0] >= limit:
            self._packedRows -= self._packed.popleft()[0]

    def rows(self) -> list[tuple[Any, ...]]:
        """The rows kept, oldest first, at most C{maxRecords}."""
        rows: list[tuple[Any, ...]] = []
        for _, packed in self._packed:
            rows += marshal.loads(packed) if isinstance(packed, bytes) else packed
        rows += self._fresh
        limit = self.maxRecords
        if limit is not None and len(rows) > limit:
            del rows[: len(rows) - limit]
        return rows
