"""Small helpers shared by the test modules."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure


def result(d: Deferred[Any]) -> Any:
    """The result a fired Deferred holds (raising its failure)."""
    assert d.called, "the Deferred has not fired"
    out: list[Any] = []
    d.addBoth(out.append)
    if isinstance(out[0], Failure):
        out[0].raiseException()
    return out[0]


def failureOf(d: Deferred[Any]) -> Failure:
    """The failure a fired Deferred holds (asserting it failed)."""
    assert d.called, "the Deferred has not fired"
    out: list[Any] = []
    d.addBoth(out.append)
    assert isinstance(out[0], Failure), f"expected a failure, got {out[0]!r}"
    return out[0]


@contextmanager
def capturedLog(namespace: str) -> Iterator[list[dict[str, Any]]]:
    """The log events of C{namespace} while the block runs."""
    events: list[dict[str, Any]] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("log_namespace") == namespace:
            events.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)
