"""
Shutting a L{TaskQueue} down: stop taking calls, finish or cancel what is
queued, stop the workers; and the same, hurried, when the reactor stops.
"""

from __future__ import annotations

from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from twisted.internet.defer import Deferred, DeferredList
from twisted.python.failure import Failure

from asynqueue.interfaces import IStopPreparing
from asynqueue.queue.running import _STOPPED, _STOPPING
from asynqueue.queue.slots import _Workers
from asynqueue.settings import Settings

if TYPE_CHECKING:
    from asynqueue.feed import Feeder


class _Shutdown(_Workers):
    """Shut the queue down, gently or at once."""

    settings: Settings
    _reactor: Any
    _feeders: set[Feeder]
    _shutdownDeferred: Deferred[None] | None
    _triggerID: Any
    _closeLog: Callable[[], None] | None
    _shutdownHooks: list[Callable[[], object]]

    def shutdown(
        self, timeout: float | None = None, cancelPending: bool = False
    ) -> Deferred[None]:
        """
        Stop taking calls, finish or cancel what is queued, stop the workers.

        Pending tasks still run unless C{cancelPending} is true, in which case
        their Deferreds fail with C{CancelledError}. After C{timeout}
        seconds, whatever is still pending or running is cancelled. The
        C{CancelledError} says which: C{"cancelled by shutdown after 2 s"}. The
        Deferred fires once every task's Deferred has fired and every worker
        has stopped; calling again returns a Deferred of the same moment.
        """
        if self._shutdownDeferred is None:
            if timeout is None:
                timeout = self.settings.shutdownTimeout
            for feeder in list(self._feeders):
                feeder.stop(timeout=0)
            self._shutdownDeferred = Deferred()
            self._state = _STOPPING
            if self._triggerID is not None:
                try:
                    self._reactor.removeSystemEventTrigger(self._triggerID)
                except (ValueError, KeyError):
                    pass
                self._triggerID = None
            if cancelPending:
                self._sayWhyCancelled("cancelled by shutdown (cancelPending)")
                self._cancelPending()
            timer = None
            if timeout is not None:
                timer = self._clock.callLater(
                    timeout,
                    self._cancelEverything,
                    f"cancelled by shutdown after {timeout:g} s",
                )
            d = self._whenAllDone()

            def stopWorkers(_: object) -> Deferred[Any]:
                if timer is not None and timer.active():
                    timer.cancel()
                return DeferredList(
                    [self.detachWorker(w) for w in list(self._slots)],
                    consumeErrors=True,
                )

            def stopped(_: object) -> None:
                self._state = _STOPPED
                if self._closeLog is not None:
                    self._closeLog()
                    self._closeLog = None
                hooks, self._shutdownHooks = self._shutdownHooks, []
                for hook in hooks:
                    try:
                        hook()
                    except Exception:
                        self.log.failure("Shutdown hook {hook} failed", hook=hook)
                assert self._shutdownDeferred is not None
                self._shutdownDeferred.callback(None)

            d.addCallback(stopWorkers).addCallback(stopped)
        result: Deferred[None] = Deferred()
        self._shutdownDeferred.addBoth(_relay, result)
        return result

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        excType: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    def _reactorShutdown(self) -> Deferred[None]:
        # The program is ending: nothing may keep the reactor from stopping,
        # so running tasks are cancelled too (a thread is abandoned).
        self._triggerID = None
        d = self.shutdown(cancelPending=True)
        self._cancelEverything("cancelled: the reactor is stopping")
        return d

    def _cancelPending(self) -> None:
        for task in list(self._pending):
            if not task.cancelled:
                task.deferred.cancel()

    def _sayWhyCancelled(self, why: str) -> None:
        """From now on, a task the queue cancels fails saying C{why}."""
        self._cancelReason = why

    def _cancelEverything(self, why: str) -> None:
        self._sayWhyCancelled(why)
        self._cancelPending()
        # Workers that replace what a cancel ends (a killed process) need
        # not: they are about to stop.
        for slot in self._slotList:
            worker = slot.worker
            if IStopPreparing.providedBy(worker):
                worker.prepareToStop()
        for task in list(self._running):
            task.deferred.cancel()


def _relay(result: object, d: Deferred[Any]) -> None:
    """Pass a result or failure on to another Deferred; the chain goes on with None."""
    if isinstance(result, Failure):
        d.errback(result)
    else:
        d.callback(result)
