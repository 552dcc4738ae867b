"""
L{DeferredTracker}, L{DeferredLock} and small helpers the other modules share.

L{DeferredTracker} lets you wait for Deferreds you were handed without
touching their callback chains. L{DeferredLock} is Twisted's lock with a VIP
line and an orderly shutdown. L{callableName} gives any callable a readable
name for logs and records. AsynQueue's L{o2p}, L{p2o} and L{killProcess}
are here too.

Everything here is meant to be used from the reactor thread.
"""

from __future__ import annotations

import functools
import inspect
import pickle
import types
from collections.abc import Callable
from typing import Any, ClassVar, Self, TypeVar, cast

from twisted.internet import defer
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from asynqueue.errors import QueueRunError
from asynqueue.legacy.deferreds import LockContext, callAfterDeferred
from asynqueue.legacy.kill import killProcess

__all__ = [
    "DeferredTracker",
    "DeferredLock",
    "LockContext",
    "callAfterDeferred",
    "callableName",
    "killProcess",
    "o2p",
    "p2o",
]

_T = TypeVar("_T")

# A stopper call: the callable, its positional and its keyword arguments.
_Stopper = tuple[Callable[..., object], tuple[Any, ...], dict[str, Any]]

_log = Logger()


class _TrackedDeferred(Deferred[Any]):
    """
    What a L{Deferred} becomes while at least one L{DeferredTracker} watches it.

    L{DeferredTracker.put} swaps the class of the Deferred it is given to this
    one (or to a subclass made for the Deferred's own class, see
    L{_trackedClass}) instead of adding a callback. The owner's callback
    chain, its order and every result it passes along stay exactly as the
    owner built them; a paused Deferred is noticed as soon as it is called,
    not when it is unpaused. Once fired, the Deferred gets its own class
    back, so nothing of the tracker is left on it.

    The hook is L{Deferred._startRunCallbacks} rather than the public
    C{callback} and C{errback}: those are often bound before the Deferred
    is tracked (C{clock.callLater(n, d.callback, x)}, C{deferLater},
    C{chainDeferred}), and a bound method keeps calling the old class's
    function. Every way of firing, C{cancel()} included, looks
    C{_startRunCallbacks} up on the instance when it runs.
    """

    # An empty __slots__ keeps the instance layout identical to the
    # original class, which is what allows assigning __class__.
    __slots__ = ()

    _untrackedClass: ClassVar[type[Deferred[Any]]] = Deferred
    _asynqueueTrackers: list[DeferredTracker]

    def _startRunCallbacks(self, result: object) -> None:
        try:
            super()._startRunCallbacks(result)
        finally:
            # A callback on this very Deferred may call it again (and get
            # AlreadyCalledError); whichever frame gets here first with
            # the Deferred called notifies, the others find nothing to do.
            if self.called:
                _trackedFired(self)


# Each Deferred subclass gets its own tracked twin so that its overrides
# (DeferredList.cancel, say) keep working while it is tracked.
_trackedClasses: dict[type[Deferred[Any]], type[_TrackedDeferred]] = {
    Deferred: _TrackedDeferred
}


def _trackedClass(cls: type[Deferred[Any]]) -> type[_TrackedDeferred]:
    """
    Return the tracked twin of Deferred class C{cls}, making it once.
    """
    tracked = _trackedClasses.get(cls)
    if tracked is None:

        def body(namespace: dict[str, Any]) -> None:
            namespace["__slots__"] = ()
            namespace["_untrackedClass"] = cls
            namespace["__module__"] = __name__

        # new_class rather than type(): Deferred's metaclass is ABCMeta.
        tracked = cast(
            type[_TrackedDeferred],
            types.new_class(
                f"_Tracked{cls.__name__}", (_TrackedDeferred, cls), exec_body=body
            ),
        )
        _trackedClasses[cls] = tracked
    return tracked


def _trackedFired(d: Deferred[Any]) -> None:
    """
    Give fired Deferred C{d} its own class back and tell its trackers.
    """
    trackers: list[DeferredTracker] | None = vars(d).pop("_asynqueueTrackers", None)
    if trackers is None:
        return
    d.__class__ = cast(type[_TrackedDeferred], type(d))._untrackedClass
    for tracker in trackers:
        tracker._deferredFired(d)


class _Waiter:
    """
    One Deferred returned by a L{DeferredTracker} wait, and what it waits for.
    """

    __slots__ = ("deferred", "fewerThan", "watched", "watchesManual", "timeoutCall")

    def __init__(
        self, fewerThan: int | None, watched: frozenset[int], watchesManual: bool
    ) -> None:
        self.deferred: Deferred[bool] | None = None
        self.fewerThan = fewerThan
        self.watched = watched
        self.watchesManual = watchesManual
        self.timeoutCall: IDelayedCall | None = None


class DeferredTracker:
    """
    I track Deferreds without touching their callback chains, and let you wait
    for them.

    Give me Deferreds with L{put}, and manual wait conditions with
    L{addWait} and L{removeWait}; each counts as pending until it fires
    (C{callback}, C{errback} or C{cancel} was called on it) or is removed.
    L{deferToAll}, L{deferToAny} and L{deferUntilFewer} return Deferreds
    that fire with C{True} when their condition holds, or with C{False}
    when their C{timeout} (in seconds, on C{clock}) runs out first. They
    are notified when a count changes; nothing polls. Cancelling one of
    them removes it and its timeout.

    @param clock: What times the C{timeout}s; the global reactor (imported
        only when a first timeout is asked for) if L{None}.
    @param interval: AsynQueue's polling interval: accepted and ignored.
    @param backoff: AsynQueue's polling back-off: accepted and ignored.
    """

    def __init__(
        self,
        clock: IReactorTime | float | None = None,
        interval: float | None = None,
        backoff: float | None = None,
    ) -> None:
        # AsynQueue's interval and backoff set its polling; nothing polls now.
        if isinstance(clock, (int, float)):
            clock = None
        self._clock = clock
        # id -> Deferred: Deferred subclasses may define __eq__/__hash__.
        self._pending: dict[int, Deferred[Any]] = {}
        self._manual = 0
        self._quitting = False
        # An ordered set: waiters satisfied together fire in the order
        # they were made.
        self._waiters: dict[_Waiter, None] = {}

    def __len__(self) -> int:
        """
        How many Deferreds and manual waits are pending.
        """
        return len(self._pending) + self._manual

    def __bool__(self) -> bool:
        # A tracker is a thing, not a container: "tracker or
        # DeferredTracker()" must not replace an idle one.
        return True

    def put(self, d: Deferred[_T]) -> Deferred[_T]:
        """
        Track Deferred C{d} until it fires, and return it.

        Nothing is added to C{d}'s callback chain: its callbacks see exactly
        the results they would have seen untracked, and a failure nobody
        handles is still reported as unhandled. C{d} stays an instance of
        L{Deferred} (its class is swapped for a private subclass until it
        fires) and can still be awaited. A C{d} that was already called is
        not pending; putting the same C{d} twice tracks it once. Any number
        of trackers may track one Deferred.

        @raise TypeError: If C{d} is not a L{Deferred}.
        """
        if not isinstance(d, Deferred):
            raise TypeError(f"{d!r} is not a Deferred")
        key = id(d)
        if d.called or key in self._pending:
            return d
        if isinstance(d, _TrackedDeferred):
            d._asynqueueTrackers.append(self)
        else:
            d.__class__ = _trackedClass(type(d))
            cast(_TrackedDeferred, d)._asynqueueTrackers = [self]
        self._pending[key] = d
        return d

    def addWait(self) -> None:
        """
        Add a manual wait condition, pending until a matching L{removeWait}.
        """
        self._manual += 1

    def removeWait(self) -> None:
        """
        Remove a wait condition added with L{addWait}.

        @raise ValueError: If there is none to remove.
        """
        if not self._manual:
            raise ValueError("removeWait() without a matching addWait()")
        self._manual -= 1
        self._countDropped(None)

    def quitWaiting(self) -> None:
        """
        Fire every waiting Deferred with C{True} now, and every later one at once.

        Only for aborting: what is pending stays pending and is still counted.
        """
        self._quitting = True
        self._fire(list(self._waiters))

    def notWaiting(self) -> bool:
        """
        Whether nothing is pending (or L{quitWaiting} was called).
        """
        return self._quitting or not len(self)

    def deferToAll(self, timeout: float | None = None) -> Deferred[bool]:
        """
        Fire with C{True} once nothing is pending, C{False} if C{timeout} passes first.

        Deferreds put while waiting must fire too.
        """
        return self.deferUntilFewer(1, timeout)

    def deferToAny(self, timeout: float | None = None) -> Deferred[bool]:
        """
        Fire with C{True} when one of the things pending now fires.

        Only what is pending at the time of this call counts: a Deferred put
        later does not, and a L{removeWait} does only if a manual wait was
        pending. Fires C{True} at once if nothing is pending, C{False} if
        C{timeout} passes first.
        """
        if self._quitting or not len(self):
            return succeed(True)
        return self._wait(None, frozenset(self._pending), self._manual > 0, timeout)

    def deferUntilFewer(self, N: int, timeout: float | None = None) -> Deferred[bool]:
        """
        Fire with C{True} as soon as fewer than C{N} things are pending.

        Fires at once if that is already so, C{False} if C{timeout} passes
        first. Deferreds put while waiting count.

        @raise ValueError: If C{N} is less than 1 (never satisfiable).
        """
        if N < 1:
            raise ValueError(f"fewer than {N} can never be pending")
        if self._quitting or len(self) < N:
            return succeed(True)
        return self._wait(N, frozenset(), False, timeout)

    def _getClock(self) -> IReactorTime:
        if self._clock is None:
            # Imported late so that merely making a tracker does not
            # install the default reactor.
            from twisted.internet import reactor

            self._clock = cast(IReactorTime, reactor)
        return self._clock

    def _wait(
        self,
        fewerThan: int | None,
        watched: frozenset[int],
        watchesManual: bool,
        timeout: float | None,
    ) -> Deferred[bool]:
        waiter = _Waiter(fewerThan, watched, watchesManual)
        d: Deferred[bool] = Deferred(lambda _: self._forget(waiter))
        waiter.deferred = d
        self._waiters[waiter] = None
        if timeout is not None:
            waiter.timeoutCall = self._getClock().callLater(
                timeout, self._timedOut, waiter
            )
        return d

    def _forget(self, waiter: _Waiter) -> None:
        self._waiters.pop(waiter, None)
        call, waiter.timeoutCall = waiter.timeoutCall, None
        if call is not None and call.active():
            call.cancel()

    def _timedOut(self, waiter: _Waiter) -> None:
        waiter.timeoutCall = None
        self._waiters.pop(waiter, None)
        if waiter.deferred is not None and not waiter.deferred.called:
            waiter.deferred.callback(False)

    def _fire(self, waiters: list[_Waiter]) -> None:
        # Forget them all before firing any: a waiter's callbacks may put,
        # fire, wait or cancel, and must find the tracker consistent.
        for waiter in waiters:
            self._forget(waiter)
        for waiter in waiters:
            # Cancelled meanwhile, by the callbacks of an earlier one?
            if waiter.deferred is not None and not waiter.deferred.called:
                waiter.deferred.callback(True)

    def _deferredFired(self, d: Deferred[Any]) -> None:
        key = id(d)
        if self._pending.pop(key, None) is not None:
            self._countDropped(key)

    def _countDropped(self, firedKey: int | None) -> None:
        count = len(self)
        ready = [
            waiter
            for waiter in self._waiters
            if (waiter.fewerThan is not None and count < waiter.fewerThan)
            or (
                firedKey in waiter.watched
                if firedKey is not None
                else waiter.watchesManual
            )
        ]
        if ready:
            self._fire(ready)


class DeferredLock(defer.DeferredLock):
    """
    Twisted's L{defer.DeferredLock} with a VIP line and an orderly shutdown.

    C{acquire(vip=True)} waits ahead of every regular waiter (VIPs among
    themselves first come, first served). L{stop} takes no more
    acquisitions and, once the lock is free, runs the stoppers given to
    L{addStopper}. Use L{context} (or plain C{async with lock}) to hold the
    lock for a block.
    """

    def __init__(self, allowZombies: bool = False) -> None:
        # allowZombies: AsynQueue's, which ignored it too.
        super().__init__()
        # The VIP waiters are always the first _nVips entries of waiting.
        self._nVips = 0
        self._running = True
        self._stoppers: list[_Stopper] = []
        self._stopped = False
        self._stopFailure: Failure | None = None
        self._stopWaiters: list[Deferred[None]] = []

    def acquire(self, vip: bool = False) -> Deferred[Self]:
        """
        Return a Deferred that fires with me once I am acquired.

        With C{vip}, wait ahead of every regular waiter. After L{stop} was
        called, the Deferred fails with L{QueueRunError}.
        """
        if not self._running:
            return fail(QueueRunError("the lock has been stopped"))
        d: Deferred[Self] = Deferred(canceller=self._cancelAcquire)
        if not self.locked:
            self.locked = True
            d.callback(self)
        elif vip:
            self.waiting.insert(self._nVips, d)
            self._nVips += 1
        else:
            self.waiting.append(d)
        return d

    def _cancelAcquire(self, d: Deferred[Self]) -> None:
        if self.waiting.index(d) < self._nVips:
            self._nVips -= 1
        super()._cancelAcquire(d)

    def release(self) -> None:
        """
        Release me; the next waiter (VIPs first) gets me.
        """
        if self.waiting and self._nVips:
            # The waiter about to get the lock is a VIP.
            self._nVips -= 1
        super().release()

    def context(self, vip: bool = False) -> LockContext:
        """
        Hold me for a block, released however the block ends:
        C{async with lock.context(vip=True) as lock: ...}, or AsynQueue's
        C{with lock.context() as d: yield d} (see L{LockContext}). Entering
        fails with L{QueueRunError} after L{stop}.
        """
        return LockContext(self, vip)

    def acquireAndRelease(self, vip: bool = False) -> Deferred[None]:
        """Acquire me and release me at once: wait for my turn (AsynQueue)."""
        return self.acquire(vip).addCallback(lambda lock: lock.release())

    def addStopper(self, f: Callable[..., object], *args: Any, **kw: Any) -> None:
        """
        Have L{stop} call C{f(*args, **kw)} (and await its result).

        Stoppers run in the order they were added, each after the previous
        one's result (a Deferred or coroutine is awaited) is in.

        @raise QueueRunError: If the stoppers have already run.
        """
        if self._stopped:
            raise QueueRunError("the lock has already been stopped")
        self._stoppers.append((f, args, kw))

    def stop(self) -> Deferred[None]:
        """
        Take no more acquisitions; once I am free, run the stoppers, then fire.

        Those already waiting for me get me first. I am released after the
        stoppers ran. Every stopper runs even if one fails; the returned
        Deferred then fails with the first failure (later ones are logged).
        Calling this again returns a Deferred that fires at the same time.
        """
        d: Deferred[None] = Deferred()
        if self._stopped:
            d.callback(self._stopFailure)
            return d
        self._stopWaiters.append(d)
        if self._running:
            self._running = False
            Deferred.fromCoroutine(self._runStoppers())
        return d

    async def _runStoppers(self) -> None:
        # The base acquire: ours refuses now, and this one joins the end
        # of the line, behind everyone who was already waiting.
        await defer.DeferredLock.acquire(self)
        try:
            while self._stoppers:
                f, args, kw = self._stoppers.pop(0)
                try:
                    await maybeDeferred(f, *args, **kw)
                except Exception:
                    failure = Failure()
                    if self._stopFailure is None:
                        self._stopFailure = failure
                    else:
                        _log.failure(
                            "Stopper {name} failed", failure, name=callableName(f)
                        )
        finally:
            self._stopped = True
            self.release()
        waiters, self._stopWaiters = self._stopWaiters, []
        for d in waiters:
            d.callback(self._stopFailure)


def _readable(qualifiedName: str) -> str:
    # "outer.<locals>.inner" says nothing "outer.inner" does not.
    return qualifiedName.replace("<locals>.", "")


def callableName(f: object) -> str:
    """
    Return a readable name for callable C{f}, for logs and records.

    C{"func"}, C{"Class.method"} for methods bound to an instance or a
    class, C{"partial(func)"}, C{"Class.__call__"} for instances with a
    C{__call__}, C{"outer.<lambda>"}; the C{repr} of anything else.
    """
    if isinstance(f, functools.partial):
        return f"partial({callableName(f.func)})"
    if inspect.ismethod(f):
        owner = f.__self__
        ownerClass = owner if isinstance(owner, type) else type(owner)
        return f"{_readable(ownerClass.__qualname__)}.{f.__func__.__name__}"
    if isinstance(f, types.BuiltinFunctionType) and not isinstance(
        f.__self__, (type(None), types.ModuleType)
    ):
        # A C method bound to an instance ("list.append"); C functions
        # of modules fall through to their plain names.
        ownerClass = f.__self__ if isinstance(f.__self__, type) else type(f.__self__)
        return f"{_readable(ownerClass.__qualname__)}.{f.__name__}"
    name = getattr(f, "__qualname__", None) or getattr(f, "__name__", None)
    if isinstance(name, str):
        return _readable(name)
    if callable(f):
        return f"{_readable(type(f).__qualname__)}.__call__"
    return repr(f)


def deferredFromAwaitable(awaitable: Any) -> Deferred[Any]:
    """
    A Deferred of what any awaitable (a coroutine, a Future, an object with
    C{__await__}) gives; L{Deferred.fromCoroutine} takes coroutines only.
    """
    return Deferred.fromCoroutine(_awaitIt(awaitable))


async def _awaitIt(awaitable: Any) -> Any:
    return await awaitable


def o2p(obj: object) -> bytes:
    """Pickle C{obj}; an empty list, tuple or dict becomes C{b""} (AsynQueue)."""
    if isinstance(obj, (list, tuple, dict)) and not obj:
        return b""
    return pickle.dumps(obj)


def p2o(pickledString: bytes, defaultObj: object = None) -> Any:
    """
    Unpickle what L{o2p} made; C{b""} gives C{defaultObj} itself (not a copy).

    Like any unpickling, this runs code the pickle names: use it only on
    data you trust.
    """
    if not pickledString:
        return defaultObj
    return pickle.loads(pickledString)
