"""
Two of AsynQueue's small helpers, kept for its users (L{asynqueue.util}
re-exports them): L{callAfterDeferred}, and L{LockContext}, the context of
a L{asynqueue.util.DeferredLock} for C{with} (AsynQueue's way, under
C{inlineCallbacks}) and for C{async with}.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, maybeDeferred

__all__ = ["LockContext", "callAfterDeferred"]


def callAfterDeferred(
    namespace: object, dName: str, f: Callable[..., Any], *args: Any, **kw: Any
) -> Deferred[Any]:
    """
    Call C{f(*args, **kw)} once the Deferred C{getattr(namespace, dName)} has
    fired (at once if there is none); return a Deferred of the call's result.

    That Deferred's own result is swallowed, and the attribute removed: it
    only signals readiness.
    """

    def call(_: object) -> Deferred[Any]:
        if getattr(namespace, dName, None) is d:
            delattr(namespace, dName)
        return maybeDeferred(f, *args, **kw)

    d = getattr(namespace, dName, None)
    if d is None:
        return maybeDeferred(f, *args, **kw)
    if not isinstance(d, Deferred):
        raise TypeError(f"{namespace!r}.{dName} is not a Deferred: {d!r}")
    if d.called:
        return call(None)
    d2: Deferred[Any] = Deferred()
    d2.addCallback(call)
    d.chainDeferred(d2)
    return d2


class LockContext:
    """
    Hold a lock for a block: C{async with lock.context() as lock: ...}, or,
    as in AsynQueue, under C{inlineCallbacks}::

        with lock.context() as d:
            yield d         # the lock is ours from here
            ...
        # released here

    Leaving a C{with} block whose Deferred has not fired withdraws the
    request instead.
    """

    def __init__(self, lock: Any, vip: bool = False) -> None:
        self._lock = lock
        self._vip = vip
        self._d: Deferred[Any] | None = None
        self._held = False

    def _got(self, lock: Any) -> Any:
        self._held = True
        return lock

    def __enter__(self) -> Deferred[Any]:
        self._d = self._lock.acquire(self._vip).addCallback(self._got)
        return self._d

    def __exit__(self, *excInfo: object) -> None:
        if self._held:
            self._held = False
            self._lock.release()
        elif self._d is not None and not self._d.called:
            self._d.cancel()

    async def __aenter__(self) -> Any:
        lock = await self._lock.acquire(self._vip)
        self._held = True
        return lock

    async def __aexit__(self, *excInfo: object) -> None:
        self._held = False
        self._lock.release()
