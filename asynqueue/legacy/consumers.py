"""
L{ListConsumer}: AsynQueue's bare-bones C{IConsumer} that collects what a
push producer writes into a list, in order.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from zope.interface import implementer

__all__ = ["ListConsumer"]


@implementer(IConsumer)
class ListConsumer:
    """
    Collect the items a push producer writes, each run through
    L{processItem} (which may return a Deferred), in the order written.

    Call me for a Deferred of the list, which fires once the producer has
    unregistered and every item is processed (or fails with the first
    error of L{processItem}). Keywords become my attributes.
    """

    def __init__(self, **kw: Any) -> None:
        self.x: dict[int, Any] = {}
        self.count = 0
        self.dPending: list[Deferred[Any]] = []
        self.dp: Deferred[None] = Deferred()
        self.producer: Any = None
        self.failure: Failure | None = None
        for name, value in kw.items():
            setattr(self, name, value)

    def __call__(self) -> Deferred[list[Any]]:
        """A Deferred of the list of (processed) items."""
        waits = [d for d in self.dPending if not d.called]
        waits.append(self.dp)

        def done(_: object) -> list[Any] | Failure:
            if self.failure is not None:
                return self.failure
            return [self.x[key] for key in sorted(self.x)]

        return gatherResults(waits).addCallback(done)

    def registerProducer(self, producer: Any, streaming: bool) -> None:
        """C{IConsumer}: take a push producer (only)."""
        if self.producer is not None:
            raise RuntimeError(f"{self!r} has a producer already")
        if not streaming:
            raise TypeError("I only work with push producers")
        self.producer = producer

    def unregisterProducer(self) -> None:
        """C{IConsumer}: the producer is done."""
        self.producer = None
        if not self.dp.called:
            self.dp.callback(None)

    def write(self, data: Any) -> None:
        """C{IConsumer}: process an item; hold the producer meanwhile."""
        self.count += 1
        k = self.count
        if self.producer is not None:
            self.producer.pauseProducing()
        d = maybeDeferred(self.processItem, data)
        self.dPending.append(d)

        def processed(result: Any) -> Any:
            self.x[k] = result
            return result

        def resume(result: Any) -> Any:
            if d in self.dPending:
                self.dPending.remove(d)
            if isinstance(result, Failure) and self.failure is None:
                # Kept for __call__, which fails with it.
                self.failure = result
            if self.producer is not None:
                self.producer.resumeProducing()
            return None

        d.addCallback(processed).addBoth(resume)

    def processItem(self, item: Any) -> Any:
        """Override to process each item; return what to keep (or a Deferred)."""
        return item
