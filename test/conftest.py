"""Fixtures shared by the test modules: clocks and queues that are always shut down."""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from processes import processQueues
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher

from asynqueue import ProcessQueue, TaskQueue


@pytest.fixture
def clock() -> Clock:
    """A clock the test moves by hand."""
    return Clock()


@pytest.fixture
def makeQueue(clock: Clock) -> Iterator[Callable[..., TaskQueue]]:
    """Make TaskQueues on the test's clock; each is shut down after the test."""
    queues: list[TaskQueue] = []

    def make(*workers: Any, **kwargs: Any) -> TaskQueue:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("shutdownWithReactor", False)
        q = TaskQueue(*workers, **kwargs)
        queues.append(q)
        return q

    yield make
    for q in queues:
        d = q.shutdown(timeout=0, cancelPending=True)
        d.addErrback(lambda f: None)
        clock.advance(0)
        assert d.called, f"{q.name} did not shut down"


@pytest.fixture
def startMethod() -> str | None:
    """How process workers start their children (None: the default)."""
    return None


@pytest.fixture
def makeProcessQueue(
    clock: Clock, startMethod: str | None
) -> Iterator[Callable[..., ProcessQueue]]:
    """Make ProcessQueues; each is shut down after the test and leaves no child."""
    yield from processQueues(clock, startMethod)


@pytest.fixture
def loggedErrors() -> Iterator[list[dict[str, Any]]]:
    """Collect the critical/error log events (such as 'Unhandled error in Deferred')."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("isError") or event.get("log_failure") is not None:
            events.append(event)

    # Garbage of earlier tests (their unhandled failures) is not this test's.
    gc.collect()
    globalLogPublisher.addObserver(observer)
    try:
        yield events
        gc.collect()
    finally:
        globalLogPublisher.removeObserver(observer)
