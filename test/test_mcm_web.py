"""
Tests of mcmandelbrot.web, `mcm serve`: fair tile scheduling, the HTTP
resources, and the page itself driven in headless Chromium.

Selenium's calls block, and the server runs in the test's reactor, so every
browser call runs in a thread (deferToThread) while the reactor serves.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import numpy as np
import png
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.threads import deferToThread
from twisted.python.failure import Failure
from twisted.web.client import Agent, ResponseNeverReceived

from asynqueue import MemoryWorker, ProcessQueue, TaskQueue, ThreadWorker
from asynqueue.tasks import TaskRecord
from helpers import failureOf, result
from mcmandelbrot import kernel, web

# -- fair shares -----------------------------------------------------------------


def tileFor(column: int) -> tuple[float, float, float, int, int, int, int, int]:
    """A tiny tile whose column tells which request it was."""
    return (-2.0, 1.0, 0.01, column, 2, 0, 2, 10)


@pytest.fixture
def memoryQueue() -> Iterator[tuple[TaskQueue, MemoryWorker]]:
    worker = MemoryWorker(capacity=1)
    queue = TaskQueue(worker, shutdownWithReactor=False)
    yield queue, worker
    queue.shutdown(cancelPending=True).addErrback(lambda _: None)


def runInOrder(worker: MemoryWorker) -> list[int]:
    """Run every task the queue hands the worker; the tiles' columns, in order."""
    order = []
    while worker.accepted:
        order.append(worker.accepted[0][0].args[3])
        worker.runNext()
    return order


def test_clientsTakeTurnsAndVisibleTilesGoFirst(
    memoryQueue: tuple[TaskQueue, MemoryWorker],
) -> None:
    queue, worker = memoryQueue
    scheduler = web.TileScheduler(queue)
    tiles = [
        scheduler.tile("a", True, tileFor(0)),
        scheduler.tile("a", True, tileFor(1)),
        scheduler.tile("a", False, tileFor(2)),
        scheduler.tile("a", True, tileFor(3)),
        scheduler.tile("b", True, tileFor(10)),
        scheduler.tile("b", False, tileFor(11)),
        scheduler.tile("b", True, tileFor(12)),
    ]
    assert scheduler.outstanding == {"a": 4, "b": 3}
    # a's first tile went straight to the idle worker; then a and b take
    # turns; tiles the browsers do not show come last.
    assert runInOrder(worker) == [0, 10, 1, 12, 3, 11, 2]
    for d in tiles:
        assert result(d)[:8] == b"\x89PNG\r\n\x1a\n"
    assert scheduler.outstanding == {}


def test_aWithdrawnTileNeverRuns(
    memoryQueue: tuple[TaskQueue, MemoryWorker],
) -> None:
    """A tile cancelled before it starts is withdrawn; once started, it runs on."""
    queue, worker = memoryQueue
    scheduler = web.TileScheduler(queue)
    running = scheduler.tile("a", True, tileFor(0))
    waiting = scheduler.tile("a", True, tileFor(1))
    assert worker.startNext() is not None
    running.cancel()
    waiting.cancel()
    failureOf(running).trap(CancelledError)
    failureOf(waiting).trap(CancelledError)
    states = {r.name: r.state for r in queue.records()}
    assert sorted(states.values()) == ["cancelled", "running"]
    assert len(worker.started) == 1 and not worker.accepted
    (task,) = list(worker.started)
    worker.finish(task, b"late")
    assert scheduler.outstanding == {}
    assert not queue.isBusy()


@pytest.mark.parametrize(
    "change",
    [
        {"crPM": 0.0},
        {"width": 0},
        {"height": 20000},
        {"tileSize": 1024},
        {"maxIter": 0},
        {"tx": 4},
        {"ty": -1},
    ],
)
def test_unreasonableTilesAreRefused(change: dict[str, Any]) -> None:
    arguments: dict[str, Any] = dict(
        cr=-0.5,
        ci=0.0,
        crPM=1.5,
        width=1024,
        height=768,
        tx=1,
        ty=1,
        tileSize=256,
        maxIter=100,
    )
    assert web.tileArgs(**arguments) == (
        -2.0,
        1.125,
        1.5 / 512,
        256,
        256,
        256,
        256,
        100,
    )
    arguments.update(change)
    with pytest.raises(web.BadRequest):
        web.tileArgs(**arguments)


def test_edgeTilesAreClipped() -> None:
    args = web.tileArgs(0.0, 0.0, 1.0, 300, 200, 1, 0, 256, 50)
    assert args[3:7] == (256, 44, 0, 200)


# -- over HTTP ----------------------------------------------------------------------


class Server:
    """A viewer listening on loopback, rendering on C{queue}."""

    def __init__(self, queue: TaskQueue) -> None:
        self.queue = queue
        self.site = web.makeSite(queue, maxIter=100, workers=len(queue.workers()))
        self.port = reactor.listenTCP(0, self.site, interface="127.0.0.1")  # type: ignore[attr-defined]
        self.url = f"http://127.0.0.1:{self.port.getHost().port}/"

    async def close(self) -> None:
        await self.port.stopListening()
        await self.queue.shutdown(timeout=0, cancelPending=True)


@pytest.fixture
def threadServer() -> Iterator[Server]:
    server = Server(TaskQueue(ThreadWorker(), shutdownWithReactor=False))
    yield server
    pytest_twisted.blockon(Deferred.fromCoroutine(server.close()))


class _Body(Protocol):
    """Collects a response's body."""

    def __init__(self) -> None:
        self.data: list[bytes] = []
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.data.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.done.callback(b"".join(self.data))


def bodyOf(response: Any) -> Deferred[bytes]:
    collector = _Body()
    response.deliverBody(collector)
    return collector.done


async def get(url: str) -> tuple[int, dict[str, list[str]], bytes]:
    response = await Agent(reactor).request(b"GET", url.encode())
    body = await bodyOf(response)
    headers = {
        k.decode().lower(): [v.decode() for v in vs]
        for k, vs in response.headers.getAllRawHeaders()
    }
    return response.code, headers, body


QUERY = "tile?cr=-0.5&ci=0.1&crPM=1.5&w=1024&h=768&tx=1&ty=2&ts=256&n=80&c=t&v=1"


@pytest_twisted.ensureDeferred
async def test_pageAndTilesOverHTTP(threadServer: Server) -> None:
    code, headers, body = await get(threadServer.url)
    assert code == 200 and headers["content-type"] == ["text/html; charset=utf-8"]
    assert b'<div id="plane">' in body and b'{"maxIter": 100}' in body
    code, headers, body = await get(threadServer.url + QUERY)
    assert code == 200 and headers["content-type"] == ["image/png"]
    args = web.tileArgs(-0.5, 0.1, 1.5, 1024, 768, 1, 2, 256, 80)
    assert body == kernel.renderTile(*args)
    code, _, body = await get(threadServer.url + QUERY.replace("n=80", "n=x"))
    assert (code, body) == (400, b"bad value for 'n'\n")
    code, _, _ = await get(threadServer.url + QUERY.replace("&c=t", ""))
    assert code == 400
    code, _, _ = await get(threadServer.url + "nothing")
    assert code == 404


@pytest_twisted.ensureDeferred
async def test_aTileTheBrowserGaveUpOnIsWithdrawn() -> None:
    """A closed connection withdraws its tile's task if it has not started."""
    worker = MemoryWorker(capacity=1)
    server = Server(TaskQueue(worker, shutdownWithReactor=False))
    ended: Deferred[TaskRecord] = Deferred()
    submitted: list[Deferred[None]] = [Deferred(), Deferred()]

    def watch(event: str, record: TaskRecord) -> None:
        if event == "submitted" and submitted:
            # Fired on the next turn: by then the queue has handed it on.
            reactor.callLater(0, submitted.pop(0).callback, None)  # type: ignore[attr-defined]
        elif event == "ended" and record.state == "cancelled":
            ended.callback(record)

    server.queue.observe(watch)
    first, second = submitted
    try:
        agent = Agent(reactor)
        busy = agent.request(b"GET", (server.url + QUERY).encode())
        await first
        assert worker.startNext() is not None
        doomed = agent.request(
            b"GET", (server.url + QUERY.replace("tx=1", "tx=2")).encode()
        )
        await second
        doomed.cancel()
        record = await ended
        assert record.state == "cancelled" and record.started is None
        assert not worker.accepted
        (task,) = list(worker.started)
        worker.finish(task, b"\x89PNG tile")
        response = await busy
        assert response.code == 200 and await bodyOf(response) == b"\x89PNG tile"
        with pytest.raises(ResponseNeverReceived) as info:
            await doomed
        assert info.value.reasons[0].check(CancelledError)
    finally:
        await server.close()


@pytest_twisted.ensureDeferred
async def test_mcmServe() -> None:
    """`mcm serve` listens where it is told and says where."""
    import io

    from mcmandelbrot import main

    options = main.parseArguments(
        ["serve", "--listen", "tcp:0:interface=127.0.0.1", "-w", "1"]
    )
    out = io.StringIO()
    port, queue = await main.serve(options, out)
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/"
        assert out.getvalue() == (
            f"Serving the Mandelbrot set at {url} on 1 local process\n"
        )
        code, _, body = await get(url + QUERY)
        assert code == 200 and body[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        await port.stopListening()
        await queue.shutdown()
    with pytest.raises(SystemExit) as info:
        await main.serve(main.parseArguments(["serve", "--listen", "bogus"]), out)
    assert "cannot listen on 'bogus'" in str(info.value.code)


# -- in the browser ------------------------------------------------------------------

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    # Smaller than the 1024×768 plane: some tiles are out of sight.
    "--window-size=700,500",
]


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    """Headless Chromium through chromedriver (Debian's chromium, chromium-driver)."""
    chromium = shutil.which("chromium")
    driverPath = shutil.which("chromedriver")
    if chromium is None:
        pytest.skip("the browser test needs Debian's package chromium")
    if driverPath is None:
        pytest.skip("the browser test needs Debian's package chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    driver = pytest_twisted.blockon(
        deferToThread(webdriver.Chrome, service=Service(driverPath), options=options)
    )
    yield driver
    pytest_twisted.blockon(deferToThread(driver.quit))


@pytest.fixture
def processServer() -> Iterator[Server]:
    server = Server(ProcessQueue(2, shutdownWithReactor=False))
    yield server
    pytest_twisted.blockon(Deferred.fromCoroutine(server.close()))


def call(driver: Any, script: str, *args: Any) -> Deferred[Any]:
    return deferToThread(driver.execute_script, script, *args)


def waitFor(driver: Any, condition: Callable[[Any], Any]) -> Deferred[Any]:
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(driver, 30, poll_frequency=0.05)
    return deferToThread(wait.until, condition)


def shown(generation: int) -> Callable[[Any], bool]:
    """Every tile of the page's view number C{generation} has loaded."""
    return lambda d: bool(
        d.execute_script(
            "return document.body.dataset.loaded === arguments[0] && "
            "[...document.querySelectorAll('#plane img')].every("
            "i => i.complete && i.naturalWidth > 0)",
            str(generation),
        )
    )


FETCH_TILE = """
const done = arguments[arguments.length - 1];
const img = document.querySelector(`#plane img[data-tx="1"][data-ty="1"]`);
fetch(img.src).then(r => r.arrayBuffer()).then(buffer => {
  const bytes = new Uint8Array(buffer);
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  done([img.src, btoa(text)]);
}).catch(e => done(["error", String(e)]));
"""


async def centreTile(driver: Any) -> tuple[str, bytes]:
    """The URL and PNG bytes of tile (1, 1), as the browser got them."""
    src, data = await deferToThread(driver.execute_async_script, FETCH_TILE)
    assert src != "error", data
    return src, base64.b64decode(data)


def expectedTile(src: str) -> bytes:
    """What the kernel renders for a tile URL."""
    q = {k: v[0] for k, v in parse_qs(urlsplit(src).query).items()}
    return kernel.renderTile(
        *web.tileArgs(
            float(q["cr"]),
            float(q["ci"]),
            float(q["crPM"]),
            int(q["w"]),
            int(q["h"]),
            int(q["tx"]),
            int(q["ty"]),
            int(q["ts"]),
            int(q["n"]),
        )
    )


async def clickAt(driver: Any, x: float, y: float, shift: bool = False) -> None:
    """A real click (with shift held, or not) at a point of the plane."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    rect = await call(
        driver, "return document.getElementById('plane').getBoundingClientRect()"
    )

    def click() -> None:
        chain = ActionChains(driver)
        if shift:
            chain.key_down(Keys.SHIFT)
        chain.w3c_actions.pointer_action.move_to_location(
            int(rect["left"] + x), int(rect["top"] + y)
        )
        chain.w3c_actions.key_action.pause()
        chain.click()
        if shift:
            chain.key_up(Keys.SHIFT)
        chain.perform()

    await deferToThread(click)


async def viewOf(driver: Any) -> dict[str, float]:
    return json.loads(await call(driver, "return document.body.dataset.view"))


@pytest_twisted.ensureDeferred
async def test_clickToZoomInTheBrowser(browser: Any, processServer: Server) -> None:
    await deferToThread(browser.get, processServer.url)
    await waitFor(browser, shown(1))
    home = await viewOf(browser)
    srcBefore, before = await centreTile(browser)
    assert before == expectedTile(srcBefore)

    # A click recentres the view on the point clicked and halves its width.
    await clickAt(browser, 300, 200)
    await waitFor(browser, shown(2))
    zoomed = await viewOf(browser)
    size = 2 * home["crPM"] / 1024
    assert zoomed["crPM"] == home["crPM"] / 2
    assert zoomed["cr"] == pytest.approx(home["cr"] + (300 - 512) * size, abs=size)
    assert zoomed["ci"] == pytest.approx(home["ci"] - (200 - 384) * size, abs=size)
    srcAfter, after = await centreTile(browser)
    assert srcAfter != srcBefore and after != before
    assert after == expectedTile(srcAfter)
    width, height, rows, _ = png.Reader(bytes=after).asRGB8()
    assert (width, height) == (256, 256)
    pixels = np.array([list(r) for r in rows], dtype=np.uint8)
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50

    # Shift-click zooms back out, about the point clicked.
    await clickAt(browser, 400, 250, shift=True)
    await waitFor(browser, shown(3))
    out = await viewOf(browser)
    size = 2 * zoomed["crPM"] / 1024
    assert out["crPM"] == home["crPM"]
    assert out["cr"] == pytest.approx(zoomed["cr"] + (400 - 512) * size, abs=size)
    assert out["ci"] == pytest.approx(zoomed["ci"] - (250 - 384) * size, abs=size)

    # The first view's tiles: those in the window were asked for first, and
    # the others said they were hidden (the plane is larger than the window).
    first = [r.priority >= web.INVISIBLE for r in processServer.queue.records()[:12]]
    assert first == sorted(first) and 0 < sum(first) < 12
