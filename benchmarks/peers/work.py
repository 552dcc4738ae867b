"""
The calls every contender runs, in a module that child processes import.

They live here rather than in the benchmark script so that every
contender pickles them the same way, by reference (C{peers.work.trivial}):
a function defined in C{__main__} would be pickled by value by cloudpickle
(asynqueue) and by reference by the standard pickle (multiprocessing).
"""

from __future__ import annotations


def trivial(x: int) -> int:
    """The trivial call: returns its argument."""
    return x


def spin(n: int) -> int:
    """Pure-Python CPU work: a loop of C{n} steps."""
    total = 0
    for i in range(n):
        total += i * i & 7
    return total


def payload(size: int) -> bytes:
    """A result of C{size} bytes."""
    return bytes(size)
