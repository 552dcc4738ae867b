"""
Taking items from a feeder's writer: whatever the writer answers (a list,
an iterator, an async iterator, a Deferred or coroutine of one, or None),
taken a block at a time, with an unfinished iterator kept for the next ask.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure

from asynqueue.util import deferredFromAwaitable

if TYPE_CHECKING:
    from asynqueue.feed import Feeder

__all__ = ["Answer", "WriterTaker", "isExhaustion", "closeSource"]

# How an answer of the writer ended.
MORE, NONE, EXHAUSTED = "more", "none", "exhausted"


@dataclass
class Answer:
    """Items taken from the writer in one ask, and how the taking ended."""

    items: list[Any]
    end: str
    error: Failure | None = field(default=None)


class WriterTaker:
    """Takes items from a L{Feeder}'s writer, a block at a time."""

    def __init__(self, writer: Callable[[int], Any], feeder: Feeder) -> None:
        self.writer = writer
        self.feeder = feeder
        #: How many times the writer was asked.
        self.asks = 0
        #: What is left of an iterator the writer gave, for the next pull.
        self.source: Iterator[Any] | AsyncIterator[Any] | None = None

    def close(self) -> None:
        """Close what is left of the writer's last iterator."""
        source, self.source = self.source, None
        if source is not None:
            closeSource(source)

    def pull(self, desired: int) -> Deferred[Answer]:
        """Take up to C{desired} items: from an unfinished answer, else the writer."""
        source = self.source
        if source is None:
            return self._askWriter(desired)

        def orWriter(answer: Answer) -> Answer | Deferred[Answer]:
            if answer.items or answer.end != MORE or answer.error is not None:
                return answer
            return self._askWriter(desired)

        return self._take(source, desired, fresh=False).addCallback(orWriter)

    def _askWriter(self, desired: int) -> Deferred[Answer]:
        self.asks += 1
        try:
            answer = self.writer(desired)
        except BaseException:
            return fail()
        if isinstance(answer, Deferred):
            d: Deferred[Any] = answer
        elif inspect.isawaitable(answer):
            d = deferredFromAwaitable(answer)
        else:
            d = succeed(answer)
        return d.addCallback(self._takeAnswer, desired)

    def _takeAnswer(self, answer: object, desired: int) -> Answer | Deferred[Answer]:
        if answer is None:
            return Answer([], NONE)
        if isinstance(answer, str | bytes | bytearray):
            raise TypeError(
                f"the writer of {self.feeder.name} returned {answer!r}; "
                "give an iterable of items (a list of strings, say), or None"
            )
        if isinstance(answer, AsyncIterator):
            return self._take(answer, desired, fresh=True)
        if isinstance(answer, AsyncIterable):
            return self._take(aiter(answer), desired, fresh=True)
        if isinstance(answer, Iterator):
            return self._take(answer, desired, fresh=True)
        if isinstance(answer, Iterable):
            items = list(answer)
            if not items:
                return Answer([], EXHAUSTED)
            for i, item in enumerate(items):
                if item is None:
                    return Answer(items[:i], NONE)
            return Answer(items, MORE)
        raise TypeError(
            f"the writer of {self.feeder.name} returned {answer!r}, "
            "which is neither an iterable of items nor None"
        )

    def _take(
        self, source: Iterator[Any] | AsyncIterator[Any], desired: int, fresh: bool
    ) -> Deferred[Answer]:
        # One coroutine for both kinds: from a plain iterator it never
        # awaits, so the Deferred has fired when it comes back.
        return Deferred.fromCoroutine(self._takeItems(source, desired, fresh))

    async def _takeItems(
        self, source: Iterator[Any] | AsyncIterator[Any], desired: int, fresh: bool
    ) -> Answer:
        items: list[Any] = []
        self.source = None
        plain = source if isinstance(source, Iterator) else None
        try:
            while len(items) < desired:
                try:
                    if plain is not None:
                        item = next(plain)
                    else:
                        item = await cast(AsyncIterator[Any], source).__anext__()
                except (StopIteration, StopAsyncIteration):
                    end = EXHAUSTED if fresh and not items else MORE
                    return Answer(items, end)
                if item is None:
                    closeSource(source)
                    return Answer(items, NONE)
                items.append(item)
        except Exception:
            return Answer(items, MORE, Failure())
        self.source = source
        return Answer(items, MORE)


def isExhaustion(failure: Failure) -> bool:
    """StopIteration or StopAsyncIteration, raised or turned into RuntimeError."""
    if failure.check(StopIteration, StopAsyncIteration):
        return True
    cause = getattr(failure.value, "__cause__", None)
    return isinstance(failure.value, RuntimeError) and isinstance(
        cause, StopIteration | StopAsyncIteration
    )


def closeSource(source: Iterator[Any] | AsyncIterator[Any]) -> None:
    """Close a generator (sync or async) the feeder will not resume."""
    close = getattr(source, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass
        return
    aclose = getattr(source, "aclose", None)
    if aclose is not None:
        try:
            d = deferredFromAwaitable(aclose())
        except Exception:
            return
        d.addErrback(lambda _: None)
