"""
The web viewer: a twisted.web site that shows the set in tiles rendered by
the queue. Click to zoom in, shift-click to zoom out.

Each browser page names itself with a random client id. The tiles of all
clients share one queue fairly: a client's k-th outstanding tile has
priority k, so the clients' tiles take turns, and tiles outside the
browser's window wait behind every visible one. A tile the browser stops
waiting for (it zoomed on) is withdrawn if it has not started.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from asynqueue import TaskQueue
from asynqueue.tasks import TaskRecord
from mcmandelbrot.calls import renderTile

__all__ = ["TileScheduler", "TileResource", "PageResource", "makeSite", "tileArgs"]

#: Added to the priority of a tile the browser does not show now.
INVISIBLE = 1_000_000
#: The largest tile side, iteration count and image side a request may ask.
MAX_TILE = 512
MAX_ITER = 100_000
MAX_SIDE = 16384


class TileScheduler:
    """
    Renders tiles on a queue, sharing its workers fairly among clients.

    The queue is used, not owned: other work may share it.
    """

    def __init__(self, queue: TaskQueue) -> None:
        self.queue = queue
        self.outstanding: dict[str, int] = {}
        self._ours: set[str] = set()
        self._started: set[str] = set()
        self._ids = itertools.count(1)
        self._stopObserving = queue.observe(self._observed)

    def _observed(self, event: str, record: TaskRecord) -> None:
        name = record.name
        if name in self._ours:
            if event == "started":
                self._started.add(name)
            elif event == "ended":
                self._ours.discard(name)
                self._started.discard(name)

    def priorityFor(self, client: str, visible: bool) -> int:
        """The priority the client's next tile gets."""
        return self.outstanding.get(client, 0) + (0 if visible else INVISIBLE)

    def tile(
        self, client: str, visible: bool, args: tuple[Any, ...]
    ) -> Deferred[bytes]:
        """
        A Deferred of the PNG bytes of a tile (C{args} of C{renderTile}).

        Cancelling it withdraws the tile's task if it has not started; a
        started one finishes and its result is dropped (stopping it would
        cost its worker process).
        """
        priority = self.priorityFor(client, visible)
        self.outstanding[client] = self.outstanding.get(client, 0) + 1
        # The name tells this tile's task apart in the queue's events.
        name = f"tile-{id(self):x}-{next(self._ids)}"
        self._ours.add(name)
        task = self.queue.call(renderTile, *args, priority=priority, name=name)

        def cancel(_: Deferred[bytes]) -> None:
            if name not in self._started:
                task.cancel()

        result: Deferred[bytes] = Deferred(cancel)

        def settled(outcome: object) -> None:
            self._ours.discard(name)
            left = self.outstanding[client] - 1
            if left:
                self.outstanding[client] = left
            else:
                del self.outstanding[client]
            if not result.called:
                if isinstance(outcome, Failure):
                    result.errback(outcome)
                else:
                    result.callback(cast(bytes, outcome))

        task.addBoth(settled)
        return result

    def stop(self) -> None:
        """Stop watching the queue."""
        self._stopObserving()


class BadRequest(ValueError):
    """A tile request with missing or unreasonable parameters."""


def _arg(request: Request, name: str, kind: Callable[[str], Any]) -> Any:
    values = request.args.get(name.encode()) if request.args else None
    if not values:
        raise BadRequest(f"missing parameter {name!r}")
    try:
        value = kind(values[0].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest(f"bad value for {name!r}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{name!r} must be finite")
    return value


def tileArgs(
    cr: float,
    ci: float,
    crPM: float,
    width: int,
    height: int,
    tx: int,
    ty: int,
    tileSize: int,
    maxIter: int,
) -> tuple[float, float, float, int, int, int, int, int]:
    """
    The arguments of C{renderTile} for tile C{(tx, ty)} of a view
    C{width}×C{height} pixels centred on C{cr + ci·j}, C{crPM} across.
    """
    if not crPM > 0:
        raise BadRequest("crPM must be positive")
    if not (0 < width <= MAX_SIDE and 0 < height <= MAX_SIDE):
        raise BadRequest(f"the view's sides must be 1 to {MAX_SIDE} pixels")
    if not 0 < tileSize <= MAX_TILE:
        raise BadRequest(f"the tile size must be 1 to {MAX_TILE} pixels")
    if not 0 < maxIter <= MAX_ITER:
        raise BadRequest(f"the iterations must be 1 to {MAX_ITER}")
    firstCol, firstRow = tx * tileSize, ty * tileSize
    if not (0 <= firstCol < width and 0 <= firstRow < height):
        raise BadRequest("the tile is outside the view")
    size = 2.0 * crPM / width
    x0, y0 = cr - crPM, ci + 0.5 * height * size
    nCols = min(tileSize, width - firstCol)
    nRows = min(tileSize, height - firstRow)
    return (x0, y0, size, firstCol, nCols, firstRow, nRows, maxIter)


class TileResource(Resource):
    """C{/tile?cr=&ci=&crPM=&w=&h=&tx=&ty=&ts=&n=&c=&v=}: one tile, as PNG."""

    isLeaf = True
    log = Logger()

    def __init__(self, scheduler: TileScheduler) -> None:
        super().__init__()
        self.scheduler = scheduler

    def render_GET(self, request: Request) -> bytes | int:
        try:
            args = tileArgs(
                _arg(request, "cr", float),
                _arg(request, "ci", float),
                _arg(request, "crPM", float),
                _arg(request, "w", int),
                _arg(request, "h", int),
                _arg(request, "tx", int),
                _arg(request, "ty", int),
                _arg(request, "ts", int),
                _arg(request, "n", int),
            )
            client = _arg(request, "c", str)[:64]
            visible = _arg(request, "v", int) != 0
        except BadRequest as e:
            request.setResponseCode(400)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"{e}\n".encode()
        d = self.scheduler.tile(client, visible, args)
        request.notifyFinish().addErrback(lambda _: d.cancel())
        d.addCallbacks(
            self._send, self._failed, callbackArgs=(request,), errbackArgs=(request,)
        )
        return NOT_DONE_YET

    def _send(self, png: bytes, request: Request) -> None:
        if request.finished or request.channel is None:
            return
        request.setHeader(b"content-type", b"image/png")
        # A tile's URL says all that is in it.
        request.setHeader(b"cache-control", b"public, max-age=86400, immutable")
        request.write(png)
        request.finish()

    def _failed(self, failure: Failure, request: Request) -> None:
        if failure.check(CancelledError) or request.finished:
            return
        self.log.failure("A tile failed", failure)
        if request.channel is not None:
            request.setResponseCode(500)
            request.write(b"the tile could not be rendered\n")
            request.finish()


class PageResource(Resource):
    """The viewer's page."""

    isLeaf = True

    def __init__(self, maxIter: int, workers: int) -> None:
        super().__init__()
        self.maxIter = maxIter
        self.workers = workers

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        # Raw text in a script element: only "</" could end it early.
        settings = json.dumps({"maxIter": self.maxIter}).replace("</", "<\\/")
        page = _PAGE.replace("{settings}", settings)
        page = page.replace("{workers}", str(self.workers))
        return page.encode("utf-8")


class _Root(Resource):
    def getChild(self, path: bytes, request: Request) -> IResource:
        from twisted.web.pages import notFound

        return notFound()


def makeSite(queue: TaskQueue, maxIter: int = 500, workers: int = 1) -> Site:
    """The viewer's site, rendering its tiles on C{queue}."""
    scheduler = TileScheduler(queue)
    root = _Root()
    root.putChild(b"", PageResource(maxIter, workers))
    root.putChild(b"tile", TileResource(scheduler))
    site = Site(root)
    site.scheduler = scheduler  # type: ignore[attr-defined]
    return site


_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>mcmandelbrot</title>
<style>
body { margin: 0; background: #111; color: #ddd; font: 14px sans-serif; }
header { padding: 6px 10px; }
#plane { position: relative; width: 1024px; height: 768px; cursor: crosshair;
         background: #000; overflow: hidden; }
#plane img { position: absolute; display: block; user-select: none; }
</style>
</head>
<body data-generation="0" data-loaded="0">
<header>Click to zoom in, shift-click to zoom out &middot;
<span id="where"></span> &middot; {workers} workers</header>
<div id="plane"></div>
<script type="application/json" id="settings">{settings}</script>
<script>
"use strict";
(function () {
  const W = 1024, H = 768, T = 256;
  const settings = JSON.parse(document.getElementById("settings").textContent);
  const home = {cr: -0.65, ci: 0.0, crPM: 1.6};
  const client = Math.random().toString(36).slice(2) + Date.now().toString(36);
  const plane = document.getElementById("plane");
  const where = document.getElementById("where");
  const tiles = [];
  let view = Object.assign({}, home);
  let generation = 0;

  const saved = location.hash.slice(1).split(",").map(Number);
  if (saved.length === 3 && saved.every(Number.isFinite) && saved[2] > 0) {
    view = {cr: saved[0], ci: saved[1], crPM: saved[2]};
  }

  function allLoaded() {
    return tiles.every((img) => img.dataset.loaded === String(generation));
  }

  for (let ty = 0; ty * T < H; ty++) {
    for (let tx = 0; tx * T < W; tx++) {
      const img = new Image(Math.min(T, W - tx * T), Math.min(T, H - ty * T));
      img.alt = "";
      img.draggable = false;
      img.style.left = tx * T + "px";
      img.style.top = ty * T + "px";
      img.dataset.tx = tx;
      img.dataset.ty = ty;
      img.addEventListener("load", () => {
        img.dataset.loaded = img.dataset.generation;
        if (allLoaded()) document.body.dataset.loaded = String(generation);
      });
      plane.appendChild(img);
      tiles.push(img);
    }
  }

  function iterations(crPM) {
    // Deeper views need more iterations to show their edges.
    const depth = Math.max(0, Math.log2(home.crPM / crPM));
    return Math.round(settings.maxIter * (1 + depth / 8));
  }

  function visible(img) {
    const r = img.getBoundingClientRect();
    return r.bottom > 0 && r.right > 0 && r.top < innerHeight && r.left < innerWidth;
  }

  function show() {
    generation += 1;
    const n = iterations(view.crPM);
    document.body.dataset.generation = String(generation);
    document.body.dataset.view = JSON.stringify(view);
    const sign = view.ci >= 0 ? "+" : "-";
    where.textContent = `${view.cr} ${sign} ${Math.abs(view.ci)}i, ` +
      `\\u00b1${view.crPM.toPrecision(3)}, ${n} iterations`;
    history.replaceState(null, "", `#${view.cr},${view.ci},${view.crPM}`);
    // Visible tiles are asked for first, and say so.
    const order = tiles.map((img) => [visible(img), img]);
    order.sort((a, b) => b[0] - a[0]);
    for (const [isVisible, img] of order) {
      const query = new URLSearchParams({
        cr: view.cr, ci: view.ci, crPM: view.crPM, w: W, h: H,
        tx: img.dataset.tx, ty: img.dataset.ty, ts: T, n: n,
        c: client, v: isVisible ? 1 : 0,
      });
      img.dataset.generation = String(generation);
      img.src = "/tile?" + query;
    }
  }

  plane.addEventListener("click", (event) => {
    const r = plane.getBoundingClientRect();
    const size = 2 * view.crPM / W;
    view = {
      cr: view.cr + (event.clientX - r.left - W / 2) * size,
      ci: view.ci - (event.clientY - r.top - H / 2) * size,
      crPM: event.shiftKey ? view.crPM * 2 : view.crPM / 2,
    };
    show();
  });

  show();
})();
</script>
</body>
</html>
"""
