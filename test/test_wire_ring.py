"""
Tests for L{asynqueue.ring}: the shared memory large results travel through.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import gatherResults

from asynqueue.wire.ring import KEEP_FREED, RING_MINIMUM, ResultRing, keepFreedMemory


@pytest.fixture
def rings() -> Any:
    """A parent's ring and the child's view of the same memory."""
    parent = ResultRing.create(size=1 << 16)
    child = ResultRing.attach(os.dup(parent.fd))
    yield parent, child
    child.close()
    parent.close()


def test_putThenTakeGivesTheBytesBack(rings: Any) -> None:
    parent, child = rings
    data = os.urandom(10_000)
    reference = child.put(data)
    assert reference is not None and len(reference) == 16
    taken = parent.take(reference)
    assert taken == data and type(taken) is bytes


def test_resultsComeBackInOrderAcrossManyLaps(rings: Any) -> None:
    parent, child = rings
    for i in range(200):
        data = bytes([i % 256]) * (1000 + 97 * i % 20_000)
        reference = child.put(data)
        assert reference is not None, i
        assert parent.take(reference) == data


def test_fullRingRefusesUntilTheParentTakes(rings: Any) -> None:
    parent, child = rings
    block = b"x" * 20_000
    references = [child.put(block) for _ in range(3)]
    assert all(r is not None for r in references)
    # 60,000 of 65,536 bytes are waiting: a fourth does not fit.
    assert child.put(block) is None
    assert parent.take(references[0]) == block
    fourth = child.put(block)
    assert fourth is not None
    for reference in [*references[1:], fourth]:
        assert parent.take(reference) == block


def test_wrappingLeavesTheEndUnused(rings: Any) -> None:
    parent, child = rings
    for _ in range(2):
        first = child.put(b"a" * 20_000)
        assert first is not None and parent.take(first) == b"a" * 20_000
    # 25,536 bytes are left before the end: 30,000 go to the start instead.
    second = child.put(b"b" * 30_000)
    assert second is not None
    start, end = (
        int.from_bytes(second[:8], "little"),
        int.from_bytes(second[8:], "little"),
    )
    assert start % (1 << 16) == 0 and end - start == 30_000
    assert parent.take(second) == b"b" * 30_000


def test_resultOverHalfTheRingGoesAnotherWay(rings: Any) -> None:
    _, child = rings
    assert child.put(b"y" * ((1 << 15) + 1)) is None
    assert child.put(b"y" * (1 << 15)) is not None


def test_releaseFreesWithoutCopying(rings: Any) -> None:
    parent, child = rings
    references = [child.put(b"z" * 30_000) for _ in range(2)]
    assert child.put(b"z" * 30_000) is None
    parent.release(references[0])
    parent.release(references[1])
    third = child.put(b"w" * 30_000)
    assert third is not None and parent.take(third) == b"w" * 30_000


def test_closeDescriptorKeepsTheMemory() -> None:
    parent = ResultRing.create(size=1 << 16)
    child = ResultRing.attach(os.dup(parent.fd))
    parent.closeDescriptor()
    assert parent.fd == -1
    reference = child.put(b"still here" * 1000)
    assert reference is not None and parent.take(reference) == b"still here" * 1000
    child.close()
    parent.close()


def _sized(size: int, fill: int) -> bytes:
    return bytes([fill]) * size


@pytest_twisted.ensureDeferred
async def test_processResultsTravelThroughTheRing() -> None:
    from asynqueue import ProcessQueue

    q = ProcessQueue(2)
    try:
        sizes = [RING_MINIMUM + 1 + 37_000 * i for i in range(40)]
        results = await gatherResults(
            [q.call(_sized, size, i) for i, size in enumerate(sizes)]
        )
        assert [len(r) for r in results] == sizes
        assert all(r == bytes([i]) * len(r) for i, r in enumerate(results))
        assert all(type(r) is bytes for r in results)
        # They came through shared memory: each child's ring was written to.
        rings = [w._child.ring for w in q.workers()]  # type: ignore[attr-defined]
        assert sum(r._taken() for r in rings) >= sum(sizes)
        # One too large for the ring still comes, through the pipe.
        big = await q.call(_sized, 20 << 20, 7)
        assert len(big) == 20 << 20 and big[:3] == b"\x07\x07\x07"
    finally:
        await q.shutdown()


def test_keepFreedMemoryIsBoundedAndCanBeRefused(monkeypatch: Any) -> None:
    from asynqueue.wire import ring

    monkeypatch.setattr(ring, "_kept", None)
    monkeypatch.setenv("ASYNQUEUE_KEEP_FREED_MIB", "0")
    assert keepFreedMemory() == 0
    # Asked once per process: later rings leave it as it is.
    monkeypatch.setenv("ASYNQUEUE_KEEP_FREED_MIB", "64")
    assert keepFreedMemory() == 0
    monkeypatch.setattr(ring, "_kept", None)
    kept = keepFreedMemory()
    if kept == 0:
        pytest.skip("this allocator cannot be told (not glibc)")
    assert kept == 64
    monkeypatch.setattr(ring, "_kept", None)
    assert keepFreedMemory(KEEP_FREED) == KEEP_FREED


def test_freedResultsAreReusedWithoutFaultingPagesIn() -> None:
    """What a burst of large results took, the next burst reuses."""
    import resource

    if keepFreedMemory(KEEP_FREED) == 0:
        pytest.skip("this allocator cannot be told (not glibc)")
    source = memoryview(os.urandom(1 << 20))

    def burst() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        results = [bytes(source) for _ in range(32)]
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
        del results
        return faults

    burst()
    # 32 MiB is 8,192 pages: far fewer faults means the memory was reused.
    assert min(burst() for _ in range(3)) < 1000
