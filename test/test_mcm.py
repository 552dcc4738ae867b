"""
Tests of mcmandelbrot, the `mcm` demo: the numerics against a pure-Python
reference, rendering on queues (streamed, in order, in bounded memory), the
command line, and remote nodes.
"""

from __future__ import annotations

import io
import math
import os
import sys
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
import png
import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred

from asynqueue import AsyncWorker, ProcessQueue, TaskQueue, ThreadWorker
from asynqueue.node.certs import makeCluster
from asynqueue.node.service import NodeService
from asynqueue.progress import ProgressBar
from mcmandelbrot import kernel, main, render
from mcmandelbrot.view import BLOCK_PIXELS, DEFAULT_VIEW, View

# -- a tiny pure-Python reference ----------------------------------------------


def referenceValue(cx: float, cy: float, maxIter: int) -> float:
    """The smooth escape count of one point, the plain way; -1 inside."""
    x = y = 0.0
    for n in range(maxIter):
        x, y = x * x - y * y + cx, 2 * x * y + cy
        r2 = x * x + y * y
        if r2 > kernel.BAILOUT**2:
            return n + 1 - math.log(0.5 * math.log(r2)) / math.log(2)
    return -1.0


def referenceColour(value: float) -> tuple[int, int, int]:
    """The palette colour of a smooth escape count, by linear interpolation."""
    if value < 0:
        return (0, 0, 0)
    t = (kernel.CYCLES * math.log2(1 + value)) % 1.0
    stops = [*kernel.PALETTE, (1.0, kernel.PALETTE[0][1])]
    for (p0, c0), (p1, c1) in zip(stops, stops[1:], strict=False):
        if p0 <= t <= p1:
            f = (t - p0) / (p1 - p0)
            r, g, b = (round(a + f * (b - a)) for a, b in zip(c0, c1, strict=True))
            return (r, g, b)
    raise AssertionError(f"{t} is outside the palette")


def referencePixels(view: View) -> list[list[float]]:
    """The smooth escape counts of every pixel of a view, row by row."""
    x0, y0 = view.corner
    size = view.pixelSize
    return [
        [
            referenceValue(
                x0 + (col + 0.5) * size, y0 - (row + 0.5) * size, view.maxIter
            )
            for col in range(view.nx)
        ]
        for row in range(view.ny)
    ]


def decodePNG(data: bytes) -> np.ndarray:
    """A PNG file's pixels as a (rows, columns, 3) array."""
    width, height, rows, info = png.Reader(bytes=data).asRGB8()
    pixels = np.vstack([np.frombuffer(bytes(r), dtype=np.uint8) for r in rows])
    return pixels.reshape(height, width, 3)


def valuesOf(view: View) -> np.ndarray:
    x0, y0 = view.corner
    cx, cy = kernel._grid(x0, y0, view.pixelSize, 0, view.nx, 0, view.ny)
    return kernel.escapeValues(cx, cy, view.maxIter)


#: An overview; the period-3 bulb, where only cycle detection finds the
#: inside; and the real axis just right of the cusp at 1/4, where z crawls
#: by steps of 1e-5 for hundreds of iterations before it escapes (and must
#: not be taken for a cycle).
VIEWS = [
    View(40, -0.75, 0.0, 1.5, 1.1, maxIter=60),
    View(24, -0.1225, 0.7449, 0.08, maxIter=250),
    View(24, 0.25002, 0.0, 0.00003, 1e-7, maxIter=3000),
]


# -- numerics --------------------------------------------------------------------


@pytest.mark.parametrize("view", VIEWS, ids=["overview", "period3", "cusp"])
def test_escapeValuesMatchTheReference(view: View) -> None:
    """The numpy kernel agrees with the plain loop at every pixel."""
    expected = np.array(referencePixels(view))
    got = valuesOf(view)
    assert got.shape == expected.shape
    np.testing.assert_array_equal(got < 0, expected < 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert (expected < 0).any() and (expected >= 0).any()


def test_cycleDetectionFindsTheInsideEarly() -> None:
    """
    Inside points off the cardioid stop iterating once caught in a cycle, so
    a huge maxIter costs little; more iterations only let more points escape.
    """
    view = VIEWS[1]
    few = valuesOf(view)
    many = valuesOf(View(view.nx, view.cr, view.ci, view.crPM, maxIter=100_000))
    assert ((many < 0) <= (few < 0)).all()
    np.testing.assert_array_equal(many[few >= 0], few[few >= 0])
    assert (many < 0).mean() > 0.5


def test_coloursMatchTheReference() -> None:
    values = np.array([-1.0, 0.0, 0.3, 1.0, 2.5, 7.0, 30.0, 99.9, 1234.5, 5e4])
    got = kernel.colourize(values)
    for value, colour in zip(values, got, strict=True):
        expected = referenceColour(float(value))
        assert np.abs(colour.astype(int) - expected).max() <= 1, (value, colour)
    assert tuple(got[0]) == (0, 0, 0)


def test_pixelsMatchTheReference() -> None:
    """renderRows: reference escape counts, reference colours, rows top down."""
    view = VIEWS[0]
    rgb = np.frombuffer(
        kernel.renderRows(*view.blockArgs(0, view.ny)), dtype=np.uint8
    ).reshape(view.ny, view.nx, 3)
    expected = np.array(
        [[referenceColour(v) for v in row] for row in referencePixels(view)]
    )
    assert np.abs(rgb.astype(int) - expected).max() <= 1


def test_blocksAndTilesAgree() -> None:
    """A pixel is the same in whatever block or tile it is computed."""
    view = View(64, -0.5, 0.3, 1.2, 0.7, maxIter=80)
    whole = kernel.renderRows(*view.blockArgs(0, view.ny))
    blocks = b"".join(
        kernel.renderRows(*view.blockArgs(first, count))
        for first, count in view.blocks(5)
    )
    assert blocks == whole
    x0, y0 = view.corner
    tile = decodePNG(
        kernel.renderTile(x0, y0, view.pixelSize, 16, 20, 8, 12, view.maxIter)
    )
    image = np.frombuffer(whole, dtype=np.uint8).reshape(view.ny, view.nx, 3)
    np.testing.assert_array_equal(tile, image[8:20, 16:36])


def test_viewGeometry() -> None:
    view = View(300, -0.5, 0.0, 1.5, 1.0)
    assert (view.nx, view.ny) == (300, 200)
    assert View(300, 0, 0, 1.5).ny == 300
    assert view.pixelSize == pytest.approx(0.01)
    assert list(view.blocks(64)) == [(0, 64), (64, 64), (128, 64), (192, 8)]
    assert sum(c for _, c in view.blocks(view.rowsPerBlock(2))) == view.ny
    wide = View(20000, 0, 0, 1.5, 0.1)
    assert wide.nx * wide.rowsPerBlock(2) <= BLOCK_PIXELS
    assert 3 * wide.nx * wide.rowsPerBlock(2) * wide.blocksInFlight(2) <= 3 << 20
    assert View(2000, 0, 0, 1).blocksInFlight(2) == 8
    assert View(100, 0, 0, 1).blocksInFlight(2) == 16
    assert View(10, 0, 0, 1, 0.01).ny == 1
    for bad in (
        dict(nx=0),
        dict(crPM=0.0),
        dict(ciPM=-1.0),
        dict(maxIter=0),
        dict(cr=math.nan),
    ):
        fields = dict(nx=10, cr=0.0, ci=0.0, crPM=1.0, ciPM=None, maxIter=10)
        fields.update(bad)
        with pytest.raises(ValueError):
            View(**fields)  # type: ignore[arg-type]


# -- rendering on queues -----------------------------------------------------------


@pytest.fixture
def processQueue() -> Iterator[ProcessQueue]:
    q = ProcessQueue(2, shutdownWithReactor=False)
    yield q
    pytest_twisted.blockon(q.shutdown())


def plainPNG(view: View) -> bytes:
    out = io.BytesIO()
    render.renderPlain(view, out)
    return out.getvalue()


@pytest_twisted.ensureDeferred
async def test_renderOnProcessesEqualsThePlainLoop(processQueue: ProcessQueue) -> None:
    """Blocks from two processes come back in order: the very same file."""
    view = View(160, -0.75, 0.1, 1.4, 1.0, maxIter=120)
    bar = ProgressBar(backend=_FakeBar)
    out = io.BytesIO()
    result = await render.render(view, processQueue, out, progress=bar)
    assert out.getvalue() == plainPNG(view)
    assert result.pixels == view.pixels and result.workers == 2
    assert result.seconds > 0
    blocks = view.blockCount(2)
    assert blocks > 2
    assert bar.total == bar.done == blocks


@pytest_twisted.ensureDeferred
async def test_wideImageNeverSitsWholeInMemory(
    processQueue: ProcessQueue, tmp_path: Path
) -> None:
    """A 20000-pixel-wide render holds a few blocks in the parent, not the image."""
    view = View(20000, -0.75, 0.0, 1.5, 0.027, maxIter=20)
    imageBytes = 3 * view.nx * view.ny
    assert imageBytes > 20_000_000
    path = tmp_path / "wide.png"
    tracemalloc.start()
    try:
        with path.open("wb") as out:
            await render.render(view, processQueue, out)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < imageBytes / 4, f"peak {peak:,} bytes for a {imageBytes:,}-byte image"
    width, height, rows, _ = png.Reader(filename=str(path)).asRGB8()
    assert (width, height) == (view.nx, view.ny)
    wanted = {0, view.ny // 2, view.ny - 1}
    for i, row in enumerate(rows):
        if i in wanted:
            assert bytes(row) == kernel.renderRows(*view.blockArgs(i, 1))


class _Boom(Exception):
    pass


@pytest_twisted.ensureDeferred
async def test_aFailingBlockFailsTheRender(
    monkeypatch: pytest.MonkeyPatch, loggedErrors: list[dict[str, Any]]
) -> None:
    view = View(50, -0.5, 0, 1.5, maxIter=20)
    calls = []

    def failOnThird(*args: Any) -> bytes:
        calls.append(args)
        if len(calls) == 3:
            raise _Boom("block 3")
        return kernel.renderRows(*args)

    monkeypatch.setattr(render, "renderRows", failOnThird)
    queue = TaskQueue(ThreadWorker(), shutdownWithReactor=False)
    try:
        with pytest.raises(_Boom):
            await render.render(view, queue, io.BytesIO(), workers=1)
    finally:
        await queue.shutdown()
    assert not loggedErrors


class _FakeBar:
    """A progress backend that draws nothing."""

    def __init__(self, total: int | None, description: str, file: IO[str] | None):
        pass

    def advance(self, n: int) -> None:
        pass

    def setTotal(self, total: int | None) -> None:
        pass

    def close(self) -> None:
        pass


# -- the command line ----------------------------------------------------------------


def test_argumentsKeepTheOldForm() -> None:
    options = main.parseArguments(["-N", "300", "800", "-0.630", "0", "1.4", "1.2"])
    assert options.command == "render"
    assert options.view == View(800, -0.63, 0.0, 1.4, 1.2, 300)
    assert options.workers == (os.cpu_count() or 1)
    assert main.parseArguments(["640", "-2", "-1", "0.5"]).view.ciPM is None
    assert main.parseArguments([]).view == DEFAULT_VIEW
    options = main.parseArguments(["-w", "3", "-N", "50"])
    assert options.workers == 3 and options.view.maxIter == 50
    options = main.parseArguments(
        ["-d", "tls:a:1", "-d", "tls:b:2", "--certificate", "c", "--ca", "ca"]
    )
    assert options.nodes == ["tls:a:1", "tls:b:2"] and options.workers == 0
    serve = main.parseArguments(["serve", "--listen", "tcp:0", "-w", "1"])
    assert (serve.command, serve.listen, serve.workers) == ("serve", "tcp:0", 1)


@pytest.mark.parametrize(
    "argv",
    [
        ["640", "0", "0"],
        ["-d", "tls:a:1"],
        ["-w", "0"],
        ["0", "0", "0", "1"],
        ["10", "0", "0", "-1"],
        ["x", "0", "0", "1"],
    ],
)
def test_badArgumentsExit(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main.parseArguments(argv)
    assert info.value.code == 2
    assert "mcm" in capsys.readouterr().err


class FakeStdout(io.StringIO):
    """A text stdout with a binary buffer, a terminal or not."""

    def __init__(self, terminal: bool) -> None:
        super().__init__()
        self.terminal = terminal
        self.buffer = io.BytesIO()

    def isatty(self) -> bool:
        return self.terminal


VIEW_ARGS = ["-N", "60", "96", "-0.7", "0.2", "1.3", "1.0"]
SMALL = ["-q", "-w", "2", *VIEW_ARGS]


async def runMcm(argv: list[str], terminal: bool) -> tuple[FakeStdout, io.StringIO]:
    from twisted.internet import reactor

    stdout, stderr = FakeStdout(terminal), io.StringIO()
    await main.main(reactor, main.parseArguments(argv), stdout, stderr)
    return stdout, stderr


@pytest_twisted.ensureDeferred
async def test_pngGoesToStdoutWhenItIsNotATerminal() -> None:
    stdout, stderr = await runMcm(SMALL, terminal=False)
    view = main.parseArguments(SMALL).view
    assert stdout.buffer.getvalue() == plainPNG(view)
    assert stdout.getvalue() == ""
    line = stderr.getvalue()
    assert line.count("\n") == 1
    assert f"{view.pixels:,} pixels in " in line
    assert "Mpixel/s on 2 local processes" in line


@pytest_twisted.ensureDeferred
async def test_aFileWhenStdoutIsATerminal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    stdout, stderr = await runMcm(SMALL, terminal=True)
    written = tmp_path / "mandelbrot.png"
    assert written.read_bytes() == plainPNG(main.parseArguments(SMALL).view)
    assert stdout.buffer.getvalue() == b""
    lines = stdout.getvalue().splitlines()
    assert lines[0] == f"Wrote {written}"
    assert "Mpixel/s" in lines[1] and len(lines) == 2


@pytest_twisted.ensureDeferred
async def test_aFailedRenderLeavesNoFile(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def queue(options: Any) -> tuple[TaskQueue, int, str]:
        return TaskQueue(AsyncWorker(), shutdownWithReactor=False), 1, "a test"

    async def failing(view: View, queue: TaskQueue, out: IO[bytes], **_: Any) -> None:
        out.write(b"\x89PNG half")
        raise _Boom()

    monkeypatch.setattr(main, "makeQueue", queue)
    monkeypatch.setattr(main, "render", failing)
    with pytest.raises(_Boom):
        await runMcm([*SMALL, "-o", str(tmp_path / "x.png")], terminal=True)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit) as info:
        await runMcm([*SMALL, "-o", str(tmp_path / "no" / "x.png")], terminal=True)
    assert str(info.value.code).startswith("mcm: cannot write the image: ")


def test_outputChoices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-o names a file, or '-' stdout even on a terminal."""
    monkeypatch.chdir(tmp_path)
    stderr = io.StringIO()
    for terminal in (True, False):
        stdout = FakeStdout(terminal)
        out = main._chooseOutput("other.png", stdout, stderr)
        assert out.path == "other.png" and out.messages is stdout and out.close
        out.stream.close()
        out = main._chooseOutput("-", stdout, stderr)
        assert out.stream is stdout.buffer and out.messages is stderr
        assert out.path is None and not out.close


@pytest_twisted.ensureDeferred
async def test_compareMeasuresOneWorkerInTheSameRun() -> None:
    stdout, stderr = await runMcm(["--compare", *SMALL], terminal=False)
    line = stderr.getvalue().strip()
    assert "x the speed of one worker (" in line
    assert "measured in this run" in line
    speedup = float(line.split("; ")[1].split("x the speed")[0])
    assert speedup > 0


@pytest_twisted.ensureDeferred
async def test_theConsoleScript(tmp_path: Path) -> None:
    """`mcm` is installed and runs under react(): a file and a summary."""
    from twisted.internet.utils import getProcessOutputAndValue

    script = Path(sys.executable).with_name("mcm")
    out = tmp_path / "m.png"
    stdout, stderr, code = await getProcessOutputAndValue(
        str(script),
        ["-q", "-w", "1", "-N", "40", "-o", str(out), "64", "-0.5", "0", "1.5"],
        env=os.environ,
    )
    assert code == 0, stderr
    assert decodePNG(out.read_bytes()).shape == (64, 64, 3)
    assert b"4,096 pixels in" in stdout and b"1 local process" in stdout


# -- remote nodes ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return makeCluster(tmp_path_factory.mktemp("certs"), ["localhost"], ["mcm"])


@pytest.fixture
def node(certs: Path) -> Iterator[NodeService]:
    listen = (
        f"ssl:port=0:privateKey={certs}/localhost.key:certKey={certs}/localhost.crt"
    )
    service = NodeService(listen, ca=str(certs / "ca.crt"), processes=2)
    pytest_twisted.blockon(service.startService())
    yield service
    pytest_twisted.blockon(service.stopService())


@pytest_twisted.ensureDeferred
async def test_remoteNodesRenderTheSameImage(node: NodeService, certs: Path) -> None:
    port = node.port.getHost().port
    argv = [
        "-q",
        "-d",
        f"tls:localhost:{port}",
        "--certificate",
        str(certs / "mcm.pem"),
        "--ca",
        str(certs / "ca.crt"),
        *VIEW_ARGS,
    ]
    stdout, stderr = await runMcm(argv, terminal=False)
    assert stdout.buffer.getvalue() == plainPNG(main.parseArguments(SMALL).view)
    assert "on 1 node (2 processes)" in stderr.getvalue()


@pytest_twisted.ensureDeferred
async def test_anUnreachableNodeIsReported(certs: Path) -> None:
    argv = [
        "--connect-timeout",
        "1",
        "-d",
        "tls:127.0.0.1:1",
        "--certificate",
        str(certs / "mcm.pem"),
        "--ca",
        str(certs / "ca.crt"),
    ]
    with pytest.raises(SystemExit) as info:
        await runMcm(argv, terminal=False)
    assert info.value.code == (
        "mcm: cannot reach node tls:127.0.0.1:1 within 1 s: "
        "nothing listens at 127.0.0.1:1"
    )


@pytest_twisted.ensureDeferred
async def test_aMissingCertificateIsReportedInOneLine(
    certs: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere.pem"
    argv = ["-d", "tls:127.0.0.1:1", "--certificate", str(missing)]
    argv += ["--ca", str(certs / "ca.crt")]
    with pytest.raises(SystemExit) as info:
        await runMcm(argv, terminal=False)
    assert info.value.code == (
        "mcm: cannot use node tls:127.0.0.1:1: [Errno 2] No such file or "
        f"directory: '{missing}'"
    )
    argv[3] = str(certs / "localhost.crt")
    with pytest.raises(SystemExit) as info:
        await runMcm(argv, terminal=False)
    assert "localhost.crt has no private key" in str(info.value.code)


def test_renderResultRate() -> None:
    assert render.RenderResult(1000, 0.5, 2).pixelsPerSecond == 2000
    line = main.summary(
        render.RenderResult(2_000_000, 1.0, 2), "2 local processes", None
    )
    assert line == "2,000,000 pixels in 1.00 s: 2.00 Mpixel/s on 2 local processes"
    line = main.summary(
        render.RenderResult(2_000_000, 1.0, 2),
        "2 local processes",
        render.RenderResult(2_000_000, 1.9, 1),
    )
    assert line.endswith(
        "; 1.90x the speed of one worker (1.90 s, measured in this run)"
    )


@pytest.mark.parametrize("args", [[], ["--help"], ["-q", "64", "0", "0", "1"]])
def test_withoutNumpyTheConsoleScriptNamesTheExtra(args: list[str]) -> None:
    """The installed `mcm`, with numpy unimportable: one line, no traceback."""
    import subprocess
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="mcm")
    code = (
        "import sys; sys.modules['numpy'] = None; "
        f"from {script.module} import {script.attr} as run; "
        f"sys.argv = ['mcm', *{args!r}]; run()"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [
        "mcm needs numpy: pip install 'asynqueue[mcm]'"
    ], done.stderr
    assert done.stdout == ""


def test_anImageTooLargeForTheMemoryIsRefused() -> None:
    view = View(100_000_000, 0.0, 0.0, 1.0)
    with pytest.raises(ValueError) as caught:
        render.checkSize(view, 2, 2, available=16 * 10**9)
    assert str(caught.value) == (
        "a 100,000,000x100,000,000 image needs some 38.0 GB of memory at once "
        "(each row is 300.0 MB), and 16.0 GB is available: make it narrower"
    )
    render.checkSize(DEFAULT_VIEW, 2, 2, available=10**9)
    with pytest.raises(ValueError, match="too large for a PNG file"):
        render.checkSize(View(2**31, 0.0, 0.0, 1.0), 1, 1, available=None)


def mcmProcess(tmp_path: Path, *args: str) -> Any:
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-m", "mcmandelbrot", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )


def test_aTypodWidthIsRefusedAtOnce(tmp_path: Path) -> None:
    """A width no machine has the memory for: one line, no file, no worker."""
    child = mcmProcess(tmp_path, "-o", "m.png", "2000000000", "0", "0", "1")
    stdout, stderr = child.communicate(timeout=60)
    assert child.returncode == 1
    assert len(stderr.splitlines()) == 1, stderr
    assert stderr.startswith("mcm: a 2,000,000,000x2,000,000,000 image needs some ")
    assert list(tmp_path.iterdir()) == []


def test_sigtermDuringARenderEndsItPromptly(tmp_path: Path) -> None:
    """
    SIGTERM while the writer's thread waits for blocks: mcm stops (the
    reactor does not wait for ever to join that thread), says so in one
    line, and leaves no file.
    """
    import signal

    child = mcmProcess(
        tmp_path, "-w", "1", "-N", "3000", "-o", "m.png", "3000", "-0.75", "0", "0.5"
    )
    assert child.stderr is not None
    first = child.stderr.readline()
    # The first block is written: the render is under way.
    assert " tasks in " in first, first
    child.send_signal(signal.SIGTERM)
    try:
        stdout, stderr = child.communicate(timeout=60)
    finally:
        child.kill()
    assert "Traceback" not in stderr, stderr
    assert stderr.splitlines()[-1] == "mcm: interrupted", stderr
    assert child.returncode == 1
    assert list(tmp_path.iterdir()) == []


class _StuckOutput:
    """A file whose first write blocks its thread until released."""

    def __init__(self) -> None:
        import threading

        from twisted.internet import reactor

        self.reactor = reactor
        self.entered: Deferred[None] = Deferred()
        self.release = threading.Event()
        self.writes = 0

    def write(self, data: bytes) -> int:
        self.writes += 1
        if self.writes == 1:
            self.reactor.callFromThread(self.entered.callback, None)
            self.release.wait()
        return len(data)


@pytest_twisted.ensureDeferred
async def test_theWriterEndsBeforeTheReactorJoinsItsThreads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    As the reactor stops (SIGTERM), it joins its threads: the render's
    trigger before that tells the writer's thread to stop asking for blocks
    and waits until it has ended, however busy the thread was.
    """
    from twisted.internet import reactor

    triggers: list[tuple[str, str, Any]] = []
    realAdd = reactor.addSystemEventTrigger

    def add(phase: str, event: str, f: Any, *a: Any) -> Any:
        triggers.append((phase, event, f))
        return realAdd(phase, event, f, *a)

    monkeypatch.setattr(reactor, "addSystemEventTrigger", add)
    view = View(200, -0.75, 0.0, 1.5, maxIter=20)
    out = _StuckOutput()
    queue = TaskQueue(ThreadWorker(), shutdownWithReactor=False)
    try:
        rendering = Deferred.fromCoroutine(
            render.render(view, queue, out, workers=1)  # type: ignore[arg-type]
        )
        await out.entered
        (stopWriting,) = [
            f
            for phase, event, f in triggers
            if (phase, event) == ("before", "shutdown")
        ]
        written = stopWriting()
        assert not written.called, "the writer's thread is still busy"
        out.release.set()
        await written
        with pytest.raises(CancelledError):
            await rendering
    finally:
        out.release.set()
        await queue.shutdown()
