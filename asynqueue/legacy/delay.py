"""
Waiting in Twisted fashion: L{Delay} (AsynQueue's C{iteration.Delay}) and
L{deferToDelay}.

A delay is one reactor timer. L{Delay.untilEvent} fires as soon as its
condition holds: it checks when asked, again whenever L{Delay.notify} says
something changed, and when a Deferred the condition returned fires. A
plain condition that nothing announces (a file appearing, another
thread's flag) can only be checked again later; for those, and only while
one is waited for, it is checked on AsynQueue's back-off schedule.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorCore, IReactorTime
from twisted.logger import Logger

__all__ = ["Delay", "deferToDelay"]

_log = Logger()


def deferToDelay(delay: float, reactor: Any = None) -> Deferred[None]:
    """A Deferred that fires with C{None} after C{delay} seconds."""
    return Delay(reactor=reactor)(delay)


class _Wait:
    """One L{Delay.untilEvent} in progress."""

    def __init__(
        self,
        owner: Delay,
        check: Callable[[], object],
        interval: float,
        deadline: float | None,
    ) -> None:
        self.owner = owner
        self.check = check
        self.interval = interval
        self.deadline = deadline
        self.d: Deferred[bool | None] = Deferred(self._cancelled)
        self.call: IDelayedCall | None = None
        self.asking = False

    def _cancelled(self, d: Deferred[bool | None]) -> None:
        self.end(None, fire=False)

    def end(self, result: bool | None, fire: bool = True) -> None:
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = None
        self.owner._forget(self)
        if fire and not self.d.called:
            self.d.callback(result)

    def test(self) -> None:
        """Check the condition now; end the wait or schedule the next check."""
        if self.d.called or self.asking:
            return
        try:
            answer = self.check()
        except Exception:
            _log.failure("The event checker of a Delay failed")
            self.end(None)
            return
        if isinstance(answer, Deferred):
            # The checker tells us itself when it knows: an event, not a poll.
            self.asking = True
            answer.addCallbacks(self._answered, self._failed)
            return
        self._answered(answer)

    def _answered(self, answer: object) -> None:
        self.asking = False
        if self.d.called:
            return
        if answer:
            self.end(True)
            return
        self.schedule()

    def _failed(self, failure: Any) -> None:
        self.asking = False
        if not failure.check(CancelledError):
            _log.failure("The event checker of a Delay failed", failure)
        self.end(None)

    def schedule(self) -> None:
        clock = self.owner.clock
        now = clock.seconds()
        if self.deadline is not None and now >= self.deadline:
            self.end(False)
            return
        wait = self.interval
        self.interval *= self.owner.backoff
        if self.deadline is not None:
            wait = min(wait, self.deadline - now)
        if self.call is not None and self.call.active():
            self.call.cancel()
        self.call = clock.callLater(wait, self.test)


class Delay:
    """
    Deferreds that fire after a delay, or once something has happened.

    C{Delay(interval=None, backoff=None, timeout=None)} as in AsynQueue:
    C{delay(seconds)} fires after C{seconds} (C{interval} if not given);
    L{untilEvent} fires with C{True} when the condition holds, C{False}
    when C{timeout} passed first, or C{None} if the condition raised.
    Before the reactor shuts down, everything pending fires at once.

    @ivar interval: The default delay, and the first wait before checking
        a condition that nothing announced again.
    @ivar backoff: How much longer each further wait is (1.0 to 1.3).
    """

    _interval = 0.001
    _backoff = 1.10

    def __init__(
        self,
        interval: float | None = None,
        backoff: float | None = None,
        timeout: float | None = None,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor
        self.interval = self._interval if interval is None else interval
        self.backoff = self._backoff if backoff is None else backoff
        if not 1.0 <= self.backoff <= 1.3:
            raise ValueError(
                f"Unworkable backoff {self.backoff:f}, keep it in 1.0-1.3 range"
            )
        if self.interval < 0:
            raise ValueError(f"a Delay's interval cannot be negative: {self.interval}")
        if timeout:
            self.timeout = timeout
        self.reactor = reactor
        self.clock: IReactorTime = reactor
        self.pendingCalls: dict[IDelayedCall, Deferred[None]] = {}
        self._waits: list[_Wait] = []
        self._stopped = False
        # Added only while something waits, so that Delays made and
        # dropped by the thousand leave no trigger behind.
        self.triggerID: Any = None

    timeout: float | None = None

    # Shutdown -----------------------------------------------------------

    def _watchShutdown(self) -> None:
        if self.triggerID is None and IReactorCore.providedBy(self.reactor):
            self.triggerID = self.reactor.addSystemEventTrigger(
                "before", "shutdown", self._shuttingDown
            )

    def _forget(self, wait: _Wait) -> None:
        if wait in self._waits:
            self._waits.remove(wait)
        self._unwatchIfIdle()

    def _unwatchIfIdle(self) -> None:
        if self.triggerID is not None and not (self.pendingCalls or self._waits):
            self.reactor.removeSystemEventTrigger(self.triggerID)
            self.triggerID = None

    def _shuttingDown(self) -> None:
        self.triggerID = None
        self.shutdown()

    def shutdown(self) -> None:
        """
        Fire every pending delay (with C{None}) and wait (with C{True}) now;
        later ones fire at once.
        """
        self._stopped = True
        for call, d in list(self.pendingCalls.items()):
            if call.active():
                call.cancel()
            if not d.called:
                d.callback(None)
        self.pendingCalls.clear()
        for wait in list(self._waits):
            wait.end(True)
        self._unwatchIfIdle()

    # Delays ---------------------------------------------------------------

    def __call__(self, delay: float | None = None) -> Deferred[None]:
        """
        A Deferred that fires after C{delay} seconds (my C{interval} if
        C{None}; 0 means the next reactor turn). Cancelling it cancels the
        timer.
        """
        if self._stopped:
            return succeed(None)
        if delay is None:
            delay = self.interval
        if delay < 0:
            raise ValueError(f"a delay cannot be negative: {delay}")

        def cancel(d: Deferred[None]) -> None:
            if call.active():
                call.cancel()
            self.pendingCalls.pop(call, None)
            self._unwatchIfIdle()

        def fire() -> None:
            self.pendingCalls.pop(call, None)
            self._unwatchIfIdle()
            d.callback(None)

        d: Deferred[None] = Deferred(cancel)
        call = self.clock.callLater(delay, fire)
        self.pendingCalls[call] = d
        self._watchShutdown()
        return d

    # Events -----------------------------------------------------------------

    def untilEvent(
        self, eventChecker: Callable[..., object], *args: Any, **kw: Any
    ) -> Deferred[bool | None]:
        """
        A Deferred that fires with C{True} once C{eventChecker(*args, **kw)}
        is true, C{False} if my C{timeout} passes first, C{None} if the
        checker raises.

        The checker is called now, whenever L{notify} is called, and, if
        it returns a Deferred, once that fires (with its result as the
        answer). Otherwise it is checked again after C{interval}, then
        after waits growing by C{backoff}: nothing else can tell when a
        plain condition became true.
        """
        if not callable(eventChecker):
            raise TypeError("You must supply a callable event checker")
        if self._stopped:
            return succeed(True)
        deadline = None
        if self.timeout:
            deadline = self.clock.seconds() + self.timeout
        wait = _Wait(self, lambda: eventChecker(*args, **kw), self.interval, deadline)
        self._waits.append(wait)
        self._watchShutdown()
        wait.test()
        return wait.d

    def notify(self) -> None:
        """Something changed: check every condition waited for now."""
        for wait in list(self._waits):
            wait.test()
