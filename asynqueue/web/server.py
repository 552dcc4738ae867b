"""
The dashboard's server: a L{Dashboard} serves the page, a JSON snapshot
and a stream of server-sent events over twisted.web, guarded by a token.

A page opens C{events}, an event stream; the server pushes a snapshot when
the queue changed, at most every C{interval} seconds (and every C{refresh}
seconds anyway, for rates and run times), the same bytes to every page.
Nothing is computed while no page is open. A page whose connection does
not drain is skipped (its transport paused us, L{EventClient}), sent a
whole snapshot once it drains, and dropped if it stays stalled.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import secrets
from collections.abc import Callable
from importlib import resources
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IDelayedCall,
    IListeningPort,
    IPushProducer,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site
from zope.interface import implementer

from asynqueue.web.state import QueueView

if TYPE_CHECKING:
    from asynqueue.queue.core import TaskQueue

__all__ = ["Dashboard", "EventClient", "DashboardError", "TokenRequired"]

_COOKIE = b"asynqueue_dashboard"
_STATIC = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}
_HEADERS = {
    # The page runs only its own script, loads nothing from elsewhere and
    # is framed by nobody; its address (which may hold the token) is not
    # sent on.
    b"Content-Security-Policy": b"default-src 'none'; script-src 'self'; "
    b"style-src 'self'; connect-src 'self'; img-src 'self' data:; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
}


class DashboardError(ValueError):
    """A dashboard cannot start as asked (an unsafe or unusable endpoint)."""


class TokenRequired(DashboardError):
    """The endpoint is not loopback only, and the dashboard has no token."""


def isLoopback(host: str) -> bool:
    """True for an address (or C{localhost}) that only this machine reaches."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%")[0]).is_loopback
    except ValueError:
        return False


@implementer(IPushProducer)
class EventClient:
    """
    One open event stream: what is written to it, and whether its
    connection keeps up.

    The client registers as its request's push producer: when the
    connection's buffer is full the transport pauses it, and a paused
    client is sent nothing (it is owed a whole snapshot instead); after
    C{maxMissed} pushes missed in a row it is dropped. So a client that
    never reads costs the server one transport buffer, no more.
    """

    def __init__(self, request: Request, maxMissed: int) -> None:
        self.request = request
        self.maxMissed = maxMissed
        self.paused = False
        self.closed = False
        self.needsFull = True
        self.missed = 0
        self.sent = 0
        request.registerProducer(self, True)

    def pauseProducing(self) -> None:
        """The connection's buffer is full: send nothing more for now."""
        self.paused = True

    def resumeProducing(self) -> None:
        """The connection drained."""
        self.paused = False

    def stopProducing(self) -> None:
        """The connection is gone."""
        self.closed = True

    def offer(self, full: Callable[[], bytes], delta: bytes) -> bool:
        """
        Send the newest snapshot (C{full()} builds the whole one); return
        False if the client is to be dropped.
        """
        if self.closed:
            return False
        if self.paused:
            self.needsFull = True
            self.missed += 1
            return self.missed <= self.maxMissed
        self.missed = 0
        if self.needsFull:
            self.needsFull = False
            self.write(full())
        else:
            self.write(delta)
        return True

    def write(self, data: bytes) -> None:
        """Write one event."""
        self.sent += 1
        self.request.write(data)

    def drop(self) -> None:
        """Cut the connection (a client that does not read)."""
        self.closed = True
        transport = self.request.channel.transport if self.request.channel else None
        if transport is not None:
            abort = getattr(transport, "abortConnection", None)
            (abort or transport.loseConnection)()

    def finish(self) -> None:
        """End the stream (the dashboard stops)."""
        if not self.closed:
            self.closed = True
            self.request.unregisterProducer()
            self.request.finish()


def event(snapshot: dict[str, Any]) -> bytes:
    """A snapshot as one server-sent event."""
    data = json.dumps(snapshot, separators=(",", ":"), default=str)
    return b"event: snapshot\ndata: " + data.encode() + b"\n\n"


class _Resource(Resource):
    """Every path of the dashboard: the token is checked first, whatever it is."""

    isLeaf = True

    def __init__(self, dashboard: Dashboard) -> None:
        super().__init__()
        self.dashboard = dashboard

    def render(self, request: Request) -> bytes | int:
        dash = self.dashboard
        for name, value in _HEADERS.items():
            request.setHeader(name, value)
        if not dash.authorized(request):
            request.setResponseCode(401)
            request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
            return b"This dashboard needs its token (?token=... in the address).\n"
        path = b"/".join(request.postpath or [])
        method = request.method
        if path == b"events" and method == b"GET":
            return dash.openStream(request)
        if path == b"state" and method == b"GET":
            request.setHeader(b"Content-Type", b"application/json")
            return json.dumps(dash.fullSnapshot(), default=str).encode()
        if path == b"cancel":
            return dash.cancel(request)
        static = _STATIC.get(path)
        if static is not None and method in (b"GET", b"HEAD"):
            request.setHeader(b"Content-Type", static[1])
            return dash.staticFile(static[0])
        request.setResponseCode(404)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return b"Not found.\n"


class Dashboard:
    """
    A live view of a queue in the browser.

    C{dash = Dashboard(q, "tcp:8765:interface=127.0.0.1")}, then C{await
    dash.start()} (it fires with the page's address, which it also logs)
    and C{dash.stop()}; the dashboard stops by itself when the queue has
    shut down. See C{doc/dashboard.rst}.

    @param queue: The L{asynqueue.TaskQueue} to show.
    @param endpoint: A Twisted server endpoint string; loopback unless it
        says otherwise (C{tcp:0:...} picks a free port). Or an endpoint
        object, whose C{_interface} (if it has one) is checked the same way.
    @param token: What every request must carry (C{?token=}, an
        C{Authorization: Bearer} header, or the cookie the page is given).
        Required on any interface other than loopback. C{True} makes one.
    @param control: Show a cancel button for each running and pending
        task; only with a token, since only authenticated pages may cancel.
    @param window: Seconds of task bars the task stream shows.
    @param interval: The shortest time between two pushes to a page.
    @param refresh: The longest time between two pushes while a page is open.
    @param maxClients: How many pages may stream at once.
    @param maxMissed: How many pushes in a row a stalled page may miss
        before it is dropped.
    @param clock: What times the pushes (default: the queue's clock).
    @param clientCertificates: C{endpoint} is an endpoint object that
        admits only clients with a certificate from your CA (mutual TLS, as
        the worker nodes use: C{asynqueue.node.service.nodeEndpoint(reactor,
        "ssl:...", ca=...)}); such a dashboard needs no token off loopback.
    """

    log = Logger()

    def __init__(
        self,
        queue: TaskQueue,
        endpoint: str | IStreamServerEndpoint = "tcp:8765:interface=127.0.0.1",
        *,
        token: str | bool | None = None,
        control: bool = False,
        window: float = 60.0,
        interval: float = 0.25,
        refresh: float = 2.0,
        maxClients: int = 32,
        maxMissed: int = 40,
        clock: IReactorTime | None = None,
        reactor: Any = None,
        clientCertificates: bool = False,
    ) -> None:
        if isinstance(endpoint, str) and not endpoint:
            raise DashboardError("endpoint must be an endpoint string, not ''")
        if not isinstance(endpoint, str) and not IStreamServerEndpoint.providedBy(
            endpoint
        ):
            raise DashboardError(
                f"endpoint must be an endpoint string or a server endpoint, "
                f"not {endpoint!r}"
            )
        if token is True:
            token = secrets.token_urlsafe(16)
        if token is not None and (not isinstance(token, str) or not token):
            raise DashboardError("token must be a non-empty string (or True)")
        if control and token is None and not clientCertificates:
            raise DashboardError(
                "control=True needs a token (or client certificates): only "
                "authenticated pages may cancel tasks"
            )
        if interval <= 0 or refresh < interval:
            raise DashboardError("need 0 < interval <= refresh")
        if reactor is None:
            from twisted.internet import reactor
        self.queue = queue
        self.endpoint = endpoint
        self.token: str | None = token or None
        self.control = control
        #: Every peer proves who it is: a token, or a client certificate.
        self.authenticates = token is not None or clientCertificates
        self.interval = interval
        self.refresh = refresh
        self.maxClients = maxClients
        self.maxMissed = maxMissed
        self._reactor = reactor
        self.clock: IReactorTime = (
            clock if clock is not None else getattr(queue, "_clock", reactor)
        )
        # The view calls _changed only while a page is open and no push is
        # due yet: a task's end costs no call otherwise.
        self.view = QueueView(queue, self.clock, window=window)
        self.clients: set[EventClient] = set()
        self.url: str | None = None
        self.port: IListeningPort | None = None
        self._timer: IDelayedCall | None = None
        #: A push is due within C{interval}.
        self._soon = False
        self._static: dict[str, bytes] = {}
        self._stopShutdownHook: Callable[[], None] | None = None
        self._trigger: Any = None
        self._stopped: Deferred[None] | None = None

    # ------------------------------------------------------------------
    # Starting and stopping

    def start(self) -> Deferred[str]:
        """
        Listen; fire with the page's address (with its token, if any).

        Fails at once with L{DashboardError} for an endpoint that is not
        loopback when there is no token.
        """
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> str:
        from twisted.internet.endpoints import serverFromString

        if self.port is not None:
            assert self.url is not None
            return self.url
        endpoint: Any = self.endpoint
        if isinstance(endpoint, str):
            try:
                endpoint = serverFromString(self._reactor, endpoint)
            except (ValueError, TypeError, KeyError) as e:
                raise DashboardError(
                    f"{self.endpoint!r} is not a server endpoint string: {e}"
                ) from None
        interface = getattr(endpoint, "_interface", None)
        if (
            isinstance(interface, str)
            and not self.authenticates
            and not isLoopback(interface)
        ):
            self._refuse(interface)
        for name in ("index.html", "dashboard.js", "dashboard.css"):
            self._static[name] = (
                resources.files("asynqueue.web").joinpath("static", name).read_bytes()
            )
        site = Site(_Resource(self))
        site.displayTracebacks = False
        port = await endpoint.listen(site)
        host = port.getHost()
        address = getattr(host, "host", None)
        if address is not None and not self.authenticates and not isLoopback(address):
            # An endpoint whose interface could not be read before.
            await port.stopListening()
            self._refuse(address)
        self.port = port
        self._stopped = None
        secure = (
            self.endpoint.startswith(("ssl:", "tls:"))
            if isinstance(self.endpoint, str)
            else getattr(endpoint, "_sslContextFactory", None) is not None
        )
        scheme = "https" if secure else "http"
        if address is None:
            self.url = f"{self.endpoint} (path /)"
        else:
            shown = address if ":" not in address else f"[{address}]"
            if address in ("0.0.0.0", "::", ""):
                shown = "localhost"
            self.url = f"{scheme}://{shown}:{host.port}/"
        if self.token is not None:
            self.url += f"?token={quote(self.token)}"
        self.view.attach()
        self._stopShutdownHook = self.queue.notifyShutdown(self.stop)
        self._trigger = self._reactor.addSystemEventTrigger(
            "before", "shutdown", self.stop
        )
        self.log.info(
            "Dashboard of {queue} at {url}", queue=self.queue.name, url=self.url
        )
        return self.url

    def _refuse(self, interface: str) -> None:
        shown = interface or "every interface"
        raise TokenRequired(
            f"the dashboard would listen on {shown}, not only loopback: give it a "
            f"token (token=... or token=True), or an endpoint that requires client "
            f"certificates, or listen on 127.0.0.1"
        )

    def stop(self) -> Deferred[None]:
        """Close every page's stream, stop listening and observing."""
        if self._stopped is not None:
            return self._stopped
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        for client in list(self.clients):
            client.finish()
        self.clients.clear()
        self.view.onChange = None
        self.view.detach()
        if self._stopShutdownHook is not None:
            self._stopShutdownHook()
            self._stopShutdownHook = None
        if self._trigger is not None:
            try:
                self._reactor.removeSystemEventTrigger(self._trigger)
            except (ValueError, KeyError):
                pass
            self._trigger = None
        port, self.port = self.port, None
        d: Deferred[Any] = (
            succeed(None) if port is None else Deferred.fromCoroutine(_stopped(port))
        )
        stopped: Deferred[None] = d.addCallback(lambda _: None)
        self._stopped = stopped
        return stopped

    def expect(self, total: int) -> None:
        """C{total} tasks are to end from now: the page shows an ETA."""
        self.view.expect(total)

    # ------------------------------------------------------------------
    # Requests

    def authorized(self, request: Request) -> bool:
        """Whether C{request} carries the token (always, if there is none)."""
        token = self.token
        if token is None:
            return True
        expected = token.encode()
        query = request.args.get(b"token", []) if request.args else []
        header = request.getHeader(b"authorization") or b""
        given = [
            *query,
            header[7:] if header.lower().startswith(b"bearer ") else b"",
            request.getCookie(_COOKIE) or b"",
        ]
        # Every candidate is compared, in constant time.
        ok = False
        for candidate in given:
            ok = hmac.compare_digest(candidate, expected) or ok
        if ok and query:
            # The page's script, styles and stream are fetched without the
            # query: a cookie for this site alone carries the token.
            request.addCookie(
                _COOKIE, expected, path=b"/", httpOnly=True, sameSite="strict"
            )
        return ok

    def staticFile(self, name: str) -> bytes:
        """The page's own files, read once at start."""
        return self._static[name]

    def openStream(self, request: Request) -> bytes | int:
        """Keep C{request} open as an event stream of snapshots."""
        if len(self.clients) >= self.maxClients:
            request.setResponseCode(503)
            return b"Too many pages are open.\n"
        request.setHeader(b"Content-Type", b"text/event-stream")
        request.setHeader(b"X-Accel-Buffering", b"no")
        client = EventClient(request, self.maxMissed)

        def gone(_: object) -> None:
            client.closed = True
            self.removeClient(client)

        request.notifyFinish().addBoth(gone)
        client.write(b"retry: 3000\n\n")
        self.addClient(client)
        return NOT_DONE_YET

    def addClient(self, client: EventClient) -> None:
        """Push to C{client} from now on, starting with a whole snapshot."""
        self.clients.add(client)
        self.pushNow(only=client)
        if not self._soon:
            self.view.onChange = self._changed
        if self._timer is None or not self._timer.active():
            self._timer = self.clock.callLater(self.refresh, self.pushNow)

    def removeClient(self, client: EventClient) -> None:
        """Push to C{client} no more."""
        self.clients.discard(client)
        if not self.clients:
            self.view.onChange = None

    def cancel(self, request: Request) -> bytes:
        """Cancel a task by ID: only with C{control=True}, by POST from the page."""
        request.setHeader(b"Content-Type", b"application/json")
        if not self.control:
            request.setResponseCode(403)
            return b'{"error": "this dashboard was started without control"}'
        if request.method != b"POST" or request.getHeader(b"x-dashboard") != b"cancel":
            # A custom header: a form or script on another site cannot send it
            # without a preflight, which nothing here answers.
            request.setResponseCode(400)
            return b'{"error": "cancel by POST with X-Dashboard: cancel"}'
        try:
            taskID = int(request.args[b"id"][0])
        except (KeyError, IndexError, ValueError):
            request.setResponseCode(400)
            return b'{"error": "give the task\'s id"}'
        if not self.queue.cancelTask(taskID):
            request.setResponseCode(404)
            return b'{"error": "no such task is pending or running"}'
        self.log.info("Task {id} cancelled from the dashboard", id=taskID)
        return b'{"cancelled": true}'

    # ------------------------------------------------------------------
    # Pushing

    def fullSnapshot(self) -> dict[str, Any]:
        """What a page is sent first: everything, its whole task stream too."""
        snapshot = self.view.snapshot(full=True)
        snapshot["control"] = self.control
        return snapshot

    def _changed(self) -> None:
        """The queue changed: push within C{interval}, coalescing what follows."""
        if self._soon or not self.clients:
            return
        self._soon = True
        # Until the push, the view need not say more.
        self.view.onChange = None
        timer = self._timer
        if timer is None or not timer.active():
            self._timer = self.clock.callLater(self.interval, self.pushNow)
        elif timer.getTime() > self.clock.seconds() + self.interval:
            timer.reset(self.interval)

    def pushNow(self, only: EventClient | None = None) -> None:
        """Send every page (or C{only} one) the newest snapshot."""
        if only is None:
            self._timer = None
            self._soon = False
            if self.clients:
                self.view.onChange = self._changed
        clients = [only] if only is not None else list(self.clients)
        if not clients:
            return
        now = self.clock.seconds()
        full: list[bytes] = []

        def whole() -> bytes:
            if not full:
                snapshot = dict(common)
                snapshot["stream"] = dict(
                    common["stream"], full=True, ended=self.view.bars(now, fresh=False)
                )
                full.append(event(snapshot))
            return full[0]

        if only is not None:
            common = self.fullSnapshot()
            full.append(event(common))
            delta = b""
        else:
            common = self.view.snapshot(now, full=False)
            common["control"] = self.control
            delta = event(common)
        for client in clients:
            if not client.offer(whole, delta):
                self.log.info("Dropped a dashboard page that did not read")
                self.removeClient(client)
                client.drop()
        if self.clients and only is None:
            self._timer = self.clock.callLater(self.refresh, self.pushNow)


async def _stopped(port: IListeningPort) -> None:
    d = port.stopListening()
    if d is not None:
        await d
