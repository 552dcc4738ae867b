"""
The dashboard in headless Chromium, against a real ProcessQueue: worker
rows appear, the done count rises, a failure shows its traceback, the task
stream draws, nothing the tasks say becomes markup; and a screenshot.

Selenium's calls block, and the dashboard runs in the test's reactor, so
every browser call runs in a thread (deferToThread) while the reactor
serves. Set C{ASYNQUEUE_DASHBOARD_SCREENSHOT} to a path to keep the
screenshot (that is how C{doc/images/dashboard.png} is made).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import png
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.threads import deferToThread

from asynqueue import ProcessQueue
from asynqueue.web import Dashboard

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,1000",
]

#: What a task may say, that must show as text and never become markup.
HOSTILE = '<img id="injected" src="x" onerror="document.title=1">'


def render(n: int, seconds: float) -> int:
    """A task that takes a while."""
    time.sleep(seconds)
    return n * n


def failing(text: str) -> None:
    """A task that fails with a message of its own."""
    raise ValueError(f"the dashboard shows this {text}")


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
def processQueue() -> Iterator[ProcessQueue]:
    queue = ProcessQueue(2, name="renders", shutdownWithReactor=False)
    yield queue
    pytest_twisted.blockon(queue.shutdown(timeout=0, cancelPending=True))


def waitFor(driver: Any, script: str, *args: Any) -> Deferred[Any]:
    """Wait (in a thread) until C{script} returns something true; fire with it."""
    from selenium.webdriver.support.wait import WebDriverWait

    wait = WebDriverWait(driver, 30, poll_frequency=0.05)

    def condition(d: Any) -> Any:
        return d.execute_script(script, *args)

    return deferToThread(wait.until, condition)


def colours(path: Path) -> int:
    """How many different colours a PNG has (a blank page has one)."""
    width, height, rows, info = png.Reader(filename=str(path)).asRGBA8()
    seen: set[bytes] = set()
    for row in rows:
        data = bytes(row)
        for x in range(0, len(data), 4 * 7):
            seen.add(data[x : x + 3])
    return len(seen)


@pytest_twisted.ensureDeferred
async def test_theDashboardInChromium(
    browser: Any, processQueue: ProcessQueue, tmp_path: Path
) -> None:
    queue = processQueue
    # Children started, so that their rows show their pids.
    await queue.update(render, 0, 0.0, ephemeral=True)
    dash = Dashboard(queue, "tcp:0:interface=127.0.0.1", window=5.0)
    url = await dash.start()
    try:
        await deferToThread(browser.get, url)
        assert await waitFor(
            browser,
            "return document.body.dataset.connected === 'yes' && "
            "document.querySelectorAll('#workers tbody tr').length === 2",
        )
        kinds = await deferToThread(
            browser.execute_script,
            "return [...document.querySelectorAll('#workers tbody tr')]"
            ".map(r => r.children[1].textContent + ' ' + r.children[2].textContent)",
        )
        assert all(k.startswith("process ") and "/ " in k for k in kinds), kinds

        dash.expect(31)
        ds = [queue.call(render, n, 0.02, name="render") for n in range(30)]
        ds.append(queue.call(failing, HOSTILE))
        await DeferredList(ds, consumeErrors=True)

        assert await waitFor(
            browser,
            "return document.getElementById('count-done').textContent === '30'",
        )
        traceback = await waitFor(
            browser,
            "const pre = document.querySelector('#failures pre');"
            "return pre && pre.textContent",
        )
        assert "ValueError: the dashboard shows this" in traceback
        assert "in failing" in traceback
        summary = await waitFor(
            browser, "return document.querySelector('#failures summary').textContent"
        )
        assert summary.startswith("ValueError: the dashboard shows this <img id=")
        assert await waitFor(
            browser, "return Number(document.getElementById('stream').dataset.bars)"
        )
        slowest = await waitFor(
            browser,
            "return document.querySelector('#slowest tbody td:nth-child(2)')"
            ".textContent",
        )
        assert slowest.startswith("render(") and slowest.endswith(", 0.02)")
        # What the tasks said is text: no element was made of it, nothing ran.
        assert await deferToThread(
            browser.execute_script,
            "return document.getElementById('injected') === null && "
            "document.title === 'asynqueue dashboard'",
        )
        assert (
            await deferToThread(
                browser.execute_script,
                "return document.getElementById('eta').textContent",
            )
            == "0.0 s"
        )

        # Read-only: no cancel button anywhere.
        assert not await deferToThread(
            browser.execute_script,
            "return document.querySelectorAll('button.cancel').length",
        )

        # Open the first failure, then take the picture.
        await deferToThread(
            browser.execute_script,
            "document.querySelector('#failures details').open = true",
        )
        shot = tmp_path / "dashboard.png"
        assert await deferToThread(browser.save_screenshot, str(shot))
        assert colours(shot) > 5
        keep = os.environ.get("ASYNQUEUE_DASHBOARD_SCREENSHOT")
        if keep:
            shutil.copyfile(shot, keep)
    finally:
        await dash.stop()
    # The page's stream was ended when the dashboard stopped.
    assert await waitFor(browser, "return document.body.dataset.connected === 'no'")


def sleepy() -> str:
    return "slept"


@pytest_twisted.ensureDeferred
async def test_cancelFromThePageWithControl(browser: Any) -> None:
    from twisted.internet.defer import CancelledError

    from asynqueue import MemoryWorker, TaskQueue

    worker = MemoryWorker(name="held")
    queue = TaskQueue(worker, shutdownWithReactor=False)
    held = queue.call(sleepy, name="held")  # the worker holds it
    waiting = queue.call(sleepy, name="waiting")
    dash = Dashboard(queue, "tcp:0:interface=127.0.0.1", token="t", control=True)
    url = await dash.start()
    try:
        await deferToThread(browser.get, url)
        button = "#pending button.cancel[data-task='1']"
        assert await waitFor(
            browser, f"return document.querySelector({button!r}) !== null"
        )
        await deferToThread(
            browser.execute_script, f"document.querySelector({button!r}).click()"
        )
        with pytest.raises(CancelledError):
            await waiting.addTimeout(30, reactor)
        # The page hears of it: the task is pending no more.
        assert await waitFor(
            browser,
            "return document.getElementById('count-cancelled').textContent === '1'"
            " && document.querySelectorAll('#pending li').length === 0",
        )
        assert not held.called
    finally:
        await dash.stop()
        worker.runAll()
        await queue.shutdown()
