"""
Tests of asynqueue.web.server over real loopback HTTP: the page and its
files, the JSON snapshot and the event stream, the token, cancelling, and
the refusals (no token off loopback, a wrong token, control off).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseNeverReceived
from twisted.web.http_headers import Headers

from asynqueue import MemoryWorker, TaskQueue
from asynqueue.web import Dashboard, DashboardError, TokenRequired
from helpers import failureOf

LOOPBACK = "tcp:0:interface=127.0.0.1"


def sleepy() -> str:
    return "slept"


def failing(text: str) -> None:
    raise ValueError(text)


class Collector(Protocol):
    """A response's body; C{firstEvent} fires with the first whole event."""

    def __init__(self) -> None:
        self.data = b""
        self.done: Deferred[bytes] = Deferred()
        self.firstEvent: Deferred[dict[str, Any]] = Deferred()
        self.waiting: list[tuple[bytes, Deferred[None]]] = []

    def when(self, marker: bytes) -> Deferred[None]:
        """Fire once C{marker} has arrived."""
        d: Deferred[None] = Deferred()
        self.waiting.append((marker, d))
        self.dataReceived(b"")
        return d

    def dataReceived(self, data: bytes) -> None:
        self.data += data
        for marker, d in list(self.waiting):
            if marker in self.data:
                self.waiting.remove((marker, d))
                d.callback(None)
        if not self.firstEvent.called and b"event: snapshot\ndata: " in self.data:
            head, _, rest = self.data.partition(b"event: snapshot\ndata: ")
            if b"\n\n" in rest:
                self.firstEvent.callback(json.loads(rest.partition(b"\n\n")[0]))

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(self.data)


async def request(
    url: str, method: bytes = b"GET", headers: dict[bytes, list[bytes]] | None = None
) -> tuple[int, Headers, Collector, Any]:
    response = await Agent(reactor).request(method, url.encode(), Headers(headers))
    collector = Collector()
    response.deliverBody(collector)
    return response.code, response.headers, collector, response


async def get(url: str, **kw: Any) -> tuple[int, Headers, bytes]:
    code, headers, collector, _ = await request(url, **kw)
    return code, headers, await collector.done


@pytest.fixture
def queue() -> Iterator[tuple[TaskQueue, MemoryWorker]]:
    worker = MemoryWorker(capacity=1, name="mem")
    q = TaskQueue(worker, shutdownWithReactor=False)
    yield q, worker
    pytest_twisted.blockon(q.shutdown(timeout=0, cancelPending=True))


async def started(q: TaskQueue, **kw: Any) -> tuple[Dashboard, str]:
    dash = Dashboard(q, kw.pop("endpoint", LOOPBACK), **kw)
    url = await dash.start()
    return dash, url


@pytest_twisted.ensureDeferred
async def test_pageFilesAndSnapshot(queue: tuple[TaskQueue, MemoryWorker]) -> None:
    q, worker = queue
    dash, url = await started(q)
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/")
        code, headers, body = await get(url)
        assert code == 200 and b'<canvas id="stream"' in body
        csp = headers.getRawHeaders(b"content-security-policy")[0]
        assert b"script-src 'self'" in csp and b"unsafe" not in csp
        for name, kind in (
            ("dashboard.js", b"text/javascript"),
            ("dashboard.css", b"text/css"),
        ):
            code, headers, body = await get(url + name)
            assert code == 200 and body
            assert headers.getRawHeaders(b"content-type")[0].startswith(kind)
        d = q.call(sleepy, name="<b>shown as text</b>")
        worker.runAll()
        await d
        code, _, body = await get(url + "state")
        state = json.loads(body)
        assert state["headline"]["done"] == 1
        assert state["workers"][0]["name"] == "mem"
        assert state["stream"]["ended"][0][4] == "done"
        assert (await get(url + "nothing"))[0] == 404
    finally:
        await dash.stop()


@pytest_twisted.ensureDeferred
async def test_theStreamSendsSnapshotsAndForgetsAClosedPage(
    queue: tuple[TaskQueue, MemoryWorker],
) -> None:
    q, worker = queue
    dash, url = await started(q, interval=0.01, refresh=0.05)
    try:
        code, headers, collector, response = await request(url + "events")
        assert code == 200
        assert headers.getRawHeaders(b"content-type") == [b"text/event-stream"]
        first = await collector.firstEvent
        assert first["stream"]["full"] is True and first["control"] is False
        (client,) = dash.clients
        # A snapshot follows once the queue changes.
        q.call(sleepy)
        worker.runAll()
        await collector.when(b'"done":1')
        # The page goes: the server forgets it.
        finished = client.request.notifyFinish()
        collector.transport.stopProducing()
        await finished.addErrback(lambda _: None)
        assert dash.clients == set()
    finally:
        await dash.stop()


@pytest_twisted.ensureDeferred
async def test_tooManyPages(queue: tuple[TaskQueue, MemoryWorker]) -> None:
    q, _ = queue
    dash, url = await started(q, maxClients=1)
    try:
        _, _, collector, _ = await request(url + "events")
        await collector.firstEvent
        code, _, body = await get(url + "events")
        assert code == 503
        collector.transport.stopProducing()
    finally:
        await dash.stop()


@pytest_twisted.ensureDeferred
async def test_noTokenOffLoopbackIsRefusedAtStart(
    queue: tuple[TaskQueue, MemoryWorker],
) -> None:
    q, _ = queue
    for endpoint in ("tcp:0", "tcp:0:interface=0.0.0.0", "tcp6:0:interface=\\:\\:"):
        dash = Dashboard(q, endpoint)
        error = failureOf(dash.start()).value
        assert isinstance(error, TokenRequired)
        assert "not only loopback: give it a token" in str(error)
        assert dash.port is None
    assert q._observers == []


def test_badArgumentsAreRefused(queue: tuple[TaskQueue, MemoryWorker]) -> None:
    q, _ = queue
    with pytest.raises(DashboardError, match="control=True needs a token"):
        Dashboard(q, LOOPBACK, control=True)
    with pytest.raises(DashboardError, match="endpoint must be"):
        Dashboard(q, 8765)  # type: ignore[arg-type]
    error = failureOf(Dashboard(q, "nonsense:1").start()).value
    assert isinstance(error, DashboardError) and "not a server endpoint" in str(error)


@pytest_twisted.ensureDeferred
async def test_theTokenIsCheckedOnEveryRequest(
    queue: tuple[TaskQueue, MemoryWorker],
) -> None:
    q, _ = queue
    # With a token, listening on every interface is allowed.
    dash, url = await started(q, endpoint="tcp:0", token="sesame")
    try:
        assert url.startswith("http://localhost:") and url.endswith("/?token=sesame")
        base = url.partition("?")[0]
        for path in ("", "dashboard.js", "state", "events"):
            assert (await get(base + path))[0] == 401
            assert (await get(base + path + "?token=sesam"))[0] == 401
            headers = {b"authorization": [b"Bearer wrong"]}
            assert (await get(base + path, headers=headers))[0] == 401
        code, headers, body = await get(url)
        assert code == 200
        cookie = headers.getRawHeaders(b"set-cookie")[0]
        assert cookie.startswith(b"asynqueue_dashboard=sesame")
        assert b"HttpOnly" in cookie and b"SameSite=strict" in cookie
        # The page's files and stream come with the cookie; scripts use a header.
        name = cookie.partition(b";")[0]
        assert (await get(base + "state", headers={b"cookie": [name]}))[0] == 200
        headers = {b"authorization": [b"Bearer sesame"]}
        assert (await get(base + "state", headers=headers))[0] == 200
    finally:
        await dash.stop()


@pytest_twisted.ensureDeferred
async def test_cancelOnlyWithControl(queue: tuple[TaskQueue, MemoryWorker]) -> None:
    q, worker = queue
    q.call(sleepy).addErrback(lambda _: None)  # the worker holds it
    pending = q.call(sleepy)
    taskID = 1
    dash, url = await started(q)
    try:
        code, _, body = await get(
            url + f"cancel?id={taskID}",
            method=b"POST",
            headers={b"x-dashboard": [b"cancel"]},
        )
        assert code == 403 and b"without control" in body
        assert not pending.called
    finally:
        await dash.stop()
    dash, url = await started(q, token="t", control=True)
    try:
        auth = {b"authorization": [b"Bearer t"]}
        state = json.loads(
            (await get(url.partition("?")[0] + "state", headers=auth))[2]
        )
        assert state["control"] is True
        assert [t["id"] for t in state["pendingTasks"]] == [taskID]
        base = url.partition("?")[0] + f"cancel?id={taskID}"
        # Not by GET, not without its header, not without the token.
        assert (await get(base, headers=auth))[0] == 400
        assert (await get(base, method=b"POST", headers=auth))[0] == 400
        headers = {b"x-dashboard": [b"cancel"]}
        assert (await get(base, method=b"POST", headers=headers))[0] == 401
        headers.update(auth)
        code, _, body = await get(base, method=b"POST", headers=headers)
        assert code == 200 and json.loads(body) == {"cancelled": True}
        assert failureOf(pending).check(CancelledError)
        assert (await get(base, method=b"POST", headers=headers))[0] == 404
    finally:
        await dash.stop()
    worker.runAll()


@pytest_twisted.ensureDeferred
async def test_theDashboardStopsWithItsQueue() -> None:
    q = TaskQueue(MemoryWorker(), shutdownWithReactor=False)
    dash, url = await started(q)
    _, _, collector, _ = await request(url + "events")
    await collector.firstEvent
    await q.shutdown()
    assert dash.port is None and dash.clients == set()
    # The page's stream was ended.
    await collector.done
    assert q._observers == [] and q._endObservers == []


@pytest_twisted.ensureDeferred
async def test_serveDashboardIsTheOneLiner() -> None:
    q = TaskQueue(MemoryWorker(), shutdownWithReactor=False)
    dash = await q.serveDashboard(LOOPBACK)
    assert isinstance(dash, Dashboard) and dash.url is not None
    assert (await get(dash.url + "state"))[0] == 200
    await q.shutdown()
    assert dash.port is None


@pytest_twisted.ensureDeferred
async def test_mcmDashboard() -> None:
    import io

    from mcmandelbrot import main

    options = main.parseArguments(["-w", "1", "--dashboard"])
    assert options.dashboard == main.DASHBOARD
    options = main.parseArguments(["-w", "1", "--dashboard=tcp:0"])
    assert options.dashboard == "tcp:0"
    q = TaskQueue(MemoryWorker(), shutdownWithReactor=False)
    out = io.StringIO()
    # Off loopback, mcm makes a token and prints the address with it.
    dash = await main.startDashboard(q, "tcp:0", out, expected=12)
    assert out.getvalue() == f"Dashboard at {dash.url}\n" and "?token=" in dash.url
    assert dash.view.expected == 12
    await q.shutdown()
    with pytest.raises(SystemExit, match="mcm: no dashboard at 'nonsense:1'"):
        await main.startDashboard(
            TaskQueue(MemoryWorker(), shutdownWithReactor=False), "nonsense:1", out
        )


@pytest_twisted.ensureDeferred
async def test_clientCertificatesInsteadOfAToken(
    tmp_path: Any, queue: tuple[TaskQueue, MemoryWorker]
) -> None:
    from twisted.internet import ssl
    from twisted.web.iweb import IPolicyForHTTPS
    from zope.interface import implementer

    from asynqueue.node.certs import makeCluster
    from asynqueue.node.service import nodeEndpoint

    q, _ = queue
    certs = makeCluster(tmp_path / "certs", ["localhost"], ["app"])
    listen = (
        f"ssl:port=0:privateKey={certs}/localhost.key:"
        f"certKey={certs}/localhost.crt:interface=0.0.0.0"
    )
    ca = str(certs / "ca.crt")
    # An endpoint object is taken as it is: off loopback, a token is needed
    # unless the caller says the endpoint requires client certificates.
    error = failureOf(Dashboard(q, nodeEndpoint(reactor, listen, ca=ca)).start())
    assert error.check(TokenRequired)
    dash = Dashboard(q, nodeEndpoint(reactor, listen, ca=ca), clientCertificates=True)
    url = await dash.start()
    try:
        assert url.startswith("https://localhost:")
        trust = ssl.Certificate.loadPEM((certs / "ca.crt").read_bytes())

        @implementer(IPolicyForHTTPS)
        class Policy:
            def __init__(self, client: Any) -> None:
                self.client = client

            def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
                return ssl.optionsForClientTLS(
                    "localhost", trustRoot=trust, clientCertificate=self.client
                )

        app = ssl.PrivateCertificate.loadPEM((certs / "app.pem").read_bytes())
        response = await Agent(reactor, contextFactory=Policy(app)).request(
            b"GET", (url + "state").encode()
        )
        assert response.code == 200
        collector = Collector()
        response.deliverBody(collector)
        await collector.done
        # Without a client certificate the handshake fails: no response.
        failed = Agent(reactor, contextFactory=Policy(None)).request(
            b"GET", (url + "state").encode()
        )
        with pytest.raises(ResponseNeverReceived):
            await failed
    finally:
        await dash.stop()


class Stalled(Protocol):
    """A page that sends its request and never reads a byte."""

    def connectionMade(self) -> None:
        import socket

        self.transport.getHandle().setsockopt(  # type: ignore[attr-defined]
            socket.SOL_SOCKET, socket.SO_RCVBUF, 4096
        )
        self.transport.pauseProducing()  # type: ignore[attr-defined]
        self.transport.write(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")


@pytest_twisted.ensureDeferred
async def test_aPageThatNeverReadsIsDropped(
    queue: tuple[TaskQueue, MemoryWorker],
) -> None:
    import socket

    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    q, worker = queue
    for n in range(20):
        # Failures with long messages: every snapshot is some 10 KB.
        q.call(failing, "x" * 400 + str(n)).addErrback(lambda _: None)
        worker.runAll()
    dash, url = await started(q, interval=0.001, refresh=0.001, maxMissed=3)
    try:
        assert dash.port is not None
        opened: Deferred[None] = Deferred()
        openStream = dash.openStream

        def watched(request: Any) -> Any:
            result = openStream(request)
            request.channel.transport.getHandle().setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096
            )
            opened.callback(None)
            return result

        dash.openStream = watched  # type: ignore[method-assign]
        page = await connectProtocol(
            TCP4ClientEndpoint(reactor, "127.0.0.1", dash.port.getHost().port),
            Stalled(),
        )
        await opened
        (client,) = dash.clients
        # The server writes until the connection's buffers are full, is
        # paused, misses 3 pushes and cuts the page off.
        finished = client.request.notifyFinish().addErrback(lambda _: None)
        await finished.addTimeout(30, reactor)
        assert client.closed and dash.clients == set()
        assert client.missed == 4 and client.paused
        page.transport.loseConnection()
    finally:
        await dash.stop()


@pytest_twisted.ensureDeferred
async def test_startStopStartStop(queue: tuple[TaskQueue, MemoryWorker]) -> None:
    q, _ = queue
    dash, url = await started(q)
    assert await dash.start() == url
    await dash.stop()
    await dash.stop()
    assert dash.port is None and q._endObservers == []
    url = await dash.start()
    assert (await get(url + "state"))[0] == 200
    await dash.stop()
    assert dash.port is None and q._endObservers == []
