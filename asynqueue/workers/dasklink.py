"""
The Dask client's side of a L{asynqueue.workers.dask.DaskWorker}:
L{DaskLink}, which submits calls in batches, scatters large arguments,
harvests finished calls over C{as_completed}, follows workers joining and
leaving, and reaches iterators kept on the Dask workers.

Everything of L{DaskLink} runs on the Dask loop, never in the reactor
thread (unless the two are the same, under the asyncio reactor).
"""

from __future__ import annotations

import asyncio
import itertools
import traceback
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any

import distributed
from dask.sizeof import sizeof
from distributed import as_completed

from asynqueue.errors import NodeLost
from asynqueue.workers import daskside
from asynqueue.workers.daskbridge import Bridge
from asynqueue.workers.daskside import AsynQueuePlugin, IteratorRef

__all__ = ["DaskLink", "SCATTER_BYTES"]

#: How a call ended: C{(key, kind, value, address, seconds it ran)}; kind is
#: C{"result"}, C{"error"} or C{"lost"}.
Outcome = tuple[str, str, Any, Any, float]

#: Arguments at least this big (bytes) are scattered once and reused.
SCATTER_BYTES = 1 << 20

#: The Dask client's own batching interval (its BatchedSend to the
#: scheduler): a graph sent sooner after the last one waits for it anyway, so
#: the calls that come meanwhile are held to go in the same graph update.
SUBMIT_INTERVAL = 0.01

#: Finished calls are let go (Dask then frees their results on the workers)
#: at most this often, with a submission, or this long after the last one:
#: every release is a message to each worker holding results, which holds
#: back the next message on the same stream by the scheduler's batching.
RELEASE_INTERVAL = 0.1

#: While other calls are out, finished ones are kept until this many, or
#: results of this many bytes (by Dask's C{sizeof}), wait to be let go, or
#: until none is out: letting go costs the scheduler and the workers work
#: for every call and every message, which would compete with the calls.
RELEASE_KEEP = 256
RELEASE_BYTES = 64 << 20

#: While more than this many calls per thread are still to finish (the
#: scheduler has calls queued to keep the threads busy), the harvester waits
#: after a call finishes, so that the calls finishing meanwhile come in the
#: same gather, and their successors go in the same graph update: far fewer
#: messages through the client, the scheduler and the workers, whose cost
#: per message competes with the calls for the cores. It waits
#: C{GATHER_HOLD} seconds, or, for longer calls, until the calls queued
#: beyond those would keep the threads busy for two such waits more (by
#: their average run time), up to C{GATHER_HOLD_MAX}: the queue refills the
#: scheduler before it drains, and an idle cluster's round trip is unchanged.
GATHER_HOLD_PER_THREAD = 2
GATHER_HOLD = 0.04
GATHER_HOLD_MAX = 0.25


def _payloadSize(value: object) -> int:
    """The size in bytes of a value worth scattering, or 0 if not known cheaply."""
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, memoryview):
        return value.nbytes
    nbytes = getattr(type(value), "nbytes", None)
    if nbytes is not None:
        try:
            return int(value.nbytes)  # type: ignore[attr-defined]
        except Exception:
            return 0
    return 0


def _remoteError(
    error: BaseException, tb: TracebackType | None, address: str
) -> BaseException:
    """The exception of a failed Dask task, with its remote traceback text."""
    try:
        text = "".join(traceback.format_exception(type(error), error, tb))
    except Exception:
        text = f"{type(error).__qualname__} (its traceback could not be formatted)\n"
    error.add_note(f"Traceback from Dask ({address}):\n{text.rstrip()}")
    error.remoteTraceback = text  # type: ignore[attr-defined]
    return error


class DaskLink:
    """
    A DaskWorker's client and what it does on the Dask loop.

    It tells C{owner} (in the reactor thread) C{_connectedNow(address,
    threads)}, C{_setCapacity(threads)} and C{_delivered(outcomes)}.
    """

    def __init__(
        self,
        owner: Any,
        bridge: Bridge,
        address: str | None,
        security: Any,
        timeout: float,
        initializer: Callable[..., Any] | None,
        initargs: tuple[Any, ...],
        scatterBytes: int,
        scatterKeep: int,
        localOptions: dict[str, Any],
    ) -> None:
        self.owner = owner
        self.name = owner.name
        self.bridge = bridge
        self.address = address
        self.ownCluster = address is None
        self.security = security
        self.timeout = timeout
        self.initializer = initializer
        self.initargs = initargs
        self.scatterBytes = scatterBytes
        self.scatterKeep = scatterKeep
        self.localOptions = localOptions
        #: How many arguments were scattered.
        self.scattered = 0
        self.client: Any = None
        self._cluster: Any = None
        self._plugins: list[str] = []
        self._futures: dict[str, Any] = {}
        self._done: list[Any] = []
        self._doneBytes = 0
        self._lastRelease = 0.0
        self._releaseTimer: asyncio.TimerHandle | None = None
        #: The threads of the cluster's workers, as last counted.
        self.threads = 0
        #: The moving average of how long calls ran, seconds.
        self.average = 0.0
        self._ac: Any = None
        self._wake: asyncio.Event | None = None
        self._toSubmit: list[
            tuple[str, Any, tuple[Any, ...], dict[str, Any], float]
        ] = []
        self._submitting = False
        self._lastSubmit = 0.0
        self._cancelled: set[str] = set()
        self._scatterCache: dict[int, tuple[Any, Any]] = {}
        self._closing = False
        self._watching = False

    @property
    def closing(self) -> bool:
        """Whether the link is closing or closed."""
        return self._closing

    async def start(self) -> None:
        if self.ownCluster:
            options = {"dashboard_address": ":0", **self.localOptions}
            self._cluster = await distributed.LocalCluster(
                asynchronous=True, security=self.security, **options
            )
            self.address = self._cluster.scheduler_address
        client = distributed.Client(
            self.address,
            asynchronous=True,
            security=self.security,
            timeout=self.timeout,
            set_as_default=False,
        )
        # Asked before connecting, the subscription goes with the client's
        # first messages: workers joining or leaving change my capacity.
        client.subscribe_topic("all", self._clusterEvent)
        try:
            await client
        except BaseException:
            # Left to the garbage collector, a client that failed to connect
            # would be closed there, by a coroutine never awaited.
            await client.close()
            raise
        if self._closing:
            # Closed while connecting: nothing is left behind.
            await client.close()
            return
        self.client = client
        self._wake = asyncio.Event()
        self._ac = as_completed(loop=client.loop)
        if self.initializer is not None:
            await self._register(
                AsynQueuePlugin(
                    f"asynqueue-{self.name}-init-{uuid.uuid4().hex}",
                    self.initializer,
                    self.initargs,
                    {},
                    initializer=True,
                )
            )
        asyncio.ensure_future(self._harvest())
        threads = await self._countThreads()
        address = str(getattr(client.scheduler, "address", self.address))
        self.bridge.toReactor(self.owner._connectedNow, address, threads)

    async def _register(self, plugin: AsynQueuePlugin) -> None:
        await self.client.register_plugin(plugin, name=plugin.name)
        self._plugins.append(plugin.name)

    async def keptUpdate(
        self, name: str, f: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any]:
        await self._register(AsynQueuePlugin(name, f, args, kwargs))
        result: dict[str, Any] = await self.client.run(daskside.updateResult, name)
        return result

    async def _countThreads(self) -> int:
        identity = await self.client.scheduler.identity(n_workers=-1)
        workers = identity.get("workers", {}).values()
        self.threads = sum(w.get("nthreads", 0) for w in workers)
        return self.threads

    def _clusterEvent(self, event: Any) -> None:
        """A scheduler event: count the threads again when a worker joins or leaves."""
        _, message = event
        if isinstance(message, dict) and message.get("action") in (
            "add-worker",
            "remove-worker",
        ):
            asyncio.ensure_future(self._recount())

    async def _recount(self) -> None:
        try:
            threads = await self._countThreads()
        except Exception:
            # The scheduler is going away: what fails with it says so.
            return
        self.bridge.toReactor(self.owner._setCapacity, threads)

    def _schedulerLost(self) -> None:
        """
        The client lost the scheduler: take no calls until it is back (the
        client reconnects by itself), or give up once it gives up.
        """
        if self._watching or self._closing:
            return
        self._watching = True
        self.bridge.toReactor(self.owner._setCapacity, 0)
        asyncio.ensure_future(self._awaitScheduler())

    async def _awaitScheduler(self) -> None:
        try:
            # One call that returns once the scheduler answers again.
            threads = await asyncio.wait_for(self._countThreads(), self.timeout)
        except Exception:
            if not self._closing:
                self.bridge.toReactor(self.owner._lost, "the Dask scheduler is gone")
            return
        finally:
            self._watching = False
        self.bridge.toReactor(self.owner._setCapacity, threads)

    def enqueue(
        self, batch: list[tuple[str, Any, tuple[Any, ...], dict[str, Any], float]]
    ) -> None:
        """Submit calls C{(key, f, args, kwargs, priority)} soon, in one batch."""
        self._toSubmit += batch
        if not self._submitting:
            self._submitting = True
            loop = self.bridge.loop
            wait = self._lastSubmit + SUBMIT_INTERVAL - loop.time()
            if wait > 0:
                loop.call_later(wait, self._submitSoon)
            else:
                # After the calls that came with these: they go in one batch.
                loop.call_soon(self._submitSoon)

    def _submitSoon(self) -> None:
        batch, self._toSubmit = self._toSubmit, []
        if self.client is None or self._closing:
            self._submitting = False
            lost = [(k, "lost", "not connected to Dask", None, 0.0) for k, *_ in batch]
            if lost:
                self.bridge.toReactor(self.owner._delivered, lost)
            return
        big = any(
            _payloadSize(a) >= self.scatterBytes
            for _, _, args, kwargs, _ in batch
            for a in itertools.chain(args, kwargs.values())
        )
        if big:
            asyncio.ensure_future(self._scatterAndSubmit(batch))
        else:
            self._submit(batch)
            self._submitting = False

    async def _scatterAndSubmit(self, batch: list[Any]) -> None:
        try:
            ready = []
            for key, f, args, kwargs, priority in batch:
                args = tuple([await self._scattered(a) for a in args])
                kwargs = {k: await self._scattered(v) for k, v in kwargs.items()}
                ready.append((key, f, args, kwargs, priority))
            self._submit(ready)
        finally:
            self._submitting = False
            if self._toSubmit:
                self._submitting = True
                self.bridge.loop.call_soon(self._submitSoon)

    async def _scattered(self, value: Any) -> Any:
        """A large value's Dask future (scattered once), or the value itself."""
        if _payloadSize(value) < self.scatterBytes:
            return value
        cached = self._scatterCache.get(id(value))
        if cached is not None and cached[0] is value:
            return cached[1]
        future = await self.client.scatter(value, hash=False, broadcast=False)
        self.scattered += 1
        # Kept with the value itself, so that its id is not reused meanwhile.
        self._scatterCache[id(value)] = (value, future)
        while len(self._scatterCache) > self.scatterKeep:
            del self._scatterCache[next(iter(self._scatterCache))]
        return future

    def _submit(self, batch: list[Any]) -> None:
        client, futures, cancelled = self.client, self._futures, self._cancelled
        now = self._lastSubmit = self.bridge.loop.time()
        # One graph update per priority in the batch: far cheaper for the
        # scheduler than one per call.
        byPriority: dict[float, list[Any]] = {}
        for item in batch:
            if item[0] in cancelled:
                cancelled.discard(item[0])
                continue
            byPriority.setdefault(item[4], []).append(item)
        made = []
        # Most urgent first: the scheduler sees them in this order.
        for priority, items in sorted(byPriority.items(), reverse=True):
            made += client.map(
                daskside.runCall,
                [item[1] for item in items],
                [item[2] for item in items],
                [item[3] for item in items],
                key=[item[0] for item in items],
                priority=priority,
                pure=False,
                # Each update a generation of its own: calls of the same
                # priority run in the order they came, as in the queue.
                fifo_timeout=0,
            )
        for future in made:
            futures[future.key] = future
        if now - self._lastRelease >= RELEASE_INTERVAL and self._mayRelease(
            len(futures) > len(made)
        ):
            # Let go after the graph update: both go in one message.
            self._releaseDone(now)
        if made:
            self._ac.update(made)
            assert self._wake is not None
            self._wake.set()

    def cancel(self, key: str) -> None:
        future = self._futures.pop(key, None)
        if future is None:
            # Not submitted yet (or done already): make sure it never is.
            if any(item[0] == key for item in self._toSubmit) or self._submitting:
                self._cancelled.add(key)
            return
        self._cancelled.add(key)
        if self.client is not None and not self._closing:
            asyncio.ensure_future(self.client.cancel([future]))

    async def _harvest(self) -> None:
        """Collect finished calls in batches and send them to the reactor."""
        ac, wake = self._ac, self._wake
        assert wake is not None
        while not self._closing:
            if ac.is_empty():
                wake.clear()
                await wake.wait()
                continue
            try:
                first = await ac.__anext__()
            except StopAsyncIteration:
                continue
            await self._hold(ac)
            batch = [first, *ac.next_batch(block=False)]
            # Held here until the next batch, these futures would be let go
            # as it arrives: a release sent alone, which holds back the next
            # submission by the client's batching interval.
            del first
            try:
                outcomes = await self._outcomes(batch)
            except Exception as e:
                outcomes = [(f.key, "lost", str(e), None, 0.0) for f in batch]
            del batch
            if outcomes:
                self.bridge.toReactor(self.owner._delivered, outcomes)

    async def _hold(self, ac: Any) -> None:
        """Wait before gathering, while calls are queued at the scheduler."""
        if self._queued(ac) <= 0:
            return
        await asyncio.sleep(GATHER_HOLD)
        held = GATHER_HOLD
        # Longer calls: on, in steps, until those still queued would keep the
        # threads busy (by the calls' average run time) for two steps more,
        # time enough for their successors to arrive; results go at once if
        # every call ended meanwhile (calls of mixed lengths).
        while held < GATHER_HOLD_MAX and not self._closing:
            queued = self._queued(ac)
            if queued * self.average <= 2 * GATHER_HOLD * max(1, self.threads):
                return
            await asyncio.sleep(GATHER_HOLD)
            held += GATHER_HOLD

    def _queued(self, ac: Any) -> int:
        """
        How many calls out are yet to finish, beyond those the threads hold
        (the first finished one is out of C{ac}'s queue, not yet gathered).
        """
        unfinished = len(self._futures) - 1 - int(ac.queue.qsize())
        return unfinished - GATHER_HOLD_PER_THREAD * max(1, self.threads)

    async def _outcomes(
        self, batch: list[Any]
    ) -> list[tuple[str, str, Any, Any, float]]:
        futures, cancelled = self._futures, self._cancelled
        outcomes: list[tuple[str, str, Any, Any, float]] = []
        finished = []
        for future in batch:
            key = future.key
            if key in cancelled:
                cancelled.discard(key)
                futures.pop(key, None)
                continue
            if future.status == "finished":
                finished.append(future)
            elif future.status == "error":
                error = await future.exception()
                tb = await future.traceback()
                outcomes.append(
                    (key, "error", _remoteError(error, tb, "a worker"), None, 0.0)
                )
            else:
                if self.client.status != "running":
                    why = "lost the connection to the Dask scheduler"
                    self._schedulerLost()
                else:
                    why = "the Dask scheduler cancelled the call"
                outcomes.append((key, "lost", why, None, 0.0))
        if finished:
            try:
                results = await self.client.gather(finished)
            except Exception as e:
                outcomes += [(f.key, "lost", str(e), None, 0.0) for f in finished]
                finished, results = [], []
            average, size = self.average, 0
            for future, (address, value, ran) in zip(finished, results, strict=False):
                outcomes.append((future.key, "result", value, address, ran))
                average = 0.9 * average + 0.1 * ran
                size += sizeof(value)
            self.average = average
            self._doneBytes += size
        # Let go of them (Dask then releases their results) with a later
        # submission, or once idle: a release sent alone holds back, by the
        # client's batching, a submission that follows it at once.
        done = self._done
        for future in batch:
            done.append(futures.pop(future.key, future))
        if self._releaseTimer is None:
            self._releaseTimer = self.bridge.loop.call_later(
                RELEASE_INTERVAL, self._releaseIdle
            )
        return outcomes

    def _mayRelease(self, busy: bool) -> bool:
        """Whether to let go of finished calls now, C{busy} if others are out."""
        return bool(self._done) and (
            not busy
            or len(self._done) >= RELEASE_KEEP
            or self._doneBytes >= RELEASE_BYTES
        )

    def _releaseDone(self, now: float) -> None:
        self._done.clear()
        self._doneBytes = 0
        self._lastRelease = now

    def _releaseIdle(self) -> None:
        """Let go of finished calls, unless calls are being submitted or out."""
        self._releaseTimer = None
        if not self._done:
            return
        now = self.bridge.loop.time()
        if now - self._lastSubmit < 2 * SUBMIT_INTERVAL or not self._mayRelease(
            bool(self._futures)
        ):
            # Busy: they go with a submission, or when it calms down.
            self._releaseTimer = self.bridge.loop.call_later(
                RELEASE_INTERVAL, self._releaseIdle
            )
        else:
            self._releaseDone(now)

    async def close(self) -> None:
        self._closing = True
        if self._wake is not None:
            self._wake.set()
        if self._releaseTimer is not None:
            self._releaseTimer.cancel()
            self._releaseTimer = None
        self._done.clear()
        self._doneBytes = 0
        client = self.client
        if client is not None:
            try:
                client.unsubscribe_topic("all")
            except Exception:
                pass
            for name in self._plugins:
                try:
                    await client.unregister_worker_plugin(name)
                except Exception:
                    pass
            self._futures.clear()
            self._scatterCache.clear()
            await client.close()
        if self._cluster is not None:
            await self._cluster.close()
            self._cluster = None

    async def fetch(self, ref: IteratorRef, maxItems: int) -> Any:
        """Take up to C{maxItems} items of an iterator on a Dask worker."""
        if self.client is None or self._closing:
            raise NodeLost(f"{self.name} is closed")
        try:
            answer = await self.client.run(
                daskside.fetchItems, ref.key, maxItems, workers=[ref.address]
            )
        except (OSError, KeyError) as e:
            raise NodeLost(f"the Dask worker {ref.address} is gone: {e}") from e
        return answer[ref.address]

    async def closeIterator(self, ref: IteratorRef) -> Any:
        """Close an iterator on a Dask worker (if both are still there)."""
        if self.client is None or self._closing:
            return None
        return await self.client.run(
            daskside.closeIterator, ref.key, workers=[ref.address]
        )
