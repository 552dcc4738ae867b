"""
The C{mcm} command: render the Mandelbrot set on every core (or on remote
worker nodes, or a Dask cluster) into a PNG file, or serve it to browsers.

  mcm [-N maxIter] [-o out.png] [-w workers] [-d endpoint ...]
      [--certificate F --ca F] [--dask ADDRESS|local] [--compare] [-q]
      [--dashboard [ENDPOINT]]
      [Nx cr ci crPM [ciPM]]
  mcm serve [--listen tcp:8080:interface=127.0.0.1] [-N maxIter]
      [-w workers] [-d endpoint ...] [--certificate F --ca F]
      [--dashboard [ENDPOINT]]
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Any

from twisted.internet.defer import CancelledError, Deferred

from asynqueue import ProcessQueue, RemoteWorker, TaskQueue
from asynqueue.progress import ProgressBar
from mcmandelbrot.calls import warmUp
from mcmandelbrot.render import RenderResult, checkSize, render
from mcmandelbrot.view import DEFAULT_VIEW, View

__all__ = ["main", "parseArguments", "run", "serve"]

#: Where the image goes when stdout is a terminal and no -o is given.
DEFAULT_FILE = "mandelbrot.png"
#: Where C{--dashboard} listens unless told.
DASHBOARD = "tcp:8765:interface=127.0.0.1"


def _addWorkerOptions(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-w",
        "--workers",
        type=int,
        default=None,
        help="local worker processes (default: one per core, none with -d)",
    )
    parser.add_argument(
        "-d",
        "--node",
        dest="nodes",
        action="append",
        default=[],
        metavar="ENDPOINT",
        help="a worker node to use, as tls:HOST:PORT (repeat for more)",
    )
    parser.add_argument(
        "--dask",
        metavar="ADDRESS",
        help="render on the Dask cluster of this scheduler (tcp://HOST:8786), "
        "or 'local' for a LocalCluster on this machine (needs asynqueue[dask])",
    )
    parser.add_argument(
        "--certificate", metavar="FILE", help="this client's certificate and key (PEM)"
    )
    parser.add_argument(
        "--ca", metavar="FILE", help="the certificate of the CA of the nodes (PEM)"
    )
    parser.add_argument(
        "--dashboard",
        nargs="?",
        const=DASHBOARD,
        default=None,
        metavar="ENDPOINT",
        help=f"show the queue live in a browser (default endpoint: {DASHBOARD}; "
        "one not on loopback gets a token, in the address printed; put it after "
        "the view, or write --dashboard=ENDPOINT)",
    )
    parser.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        metavar="SECONDS",
        help="how long to wait for each node (default: 10)",
    )


def _renderParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcm",
        description="Render the Mandelbrot set in parallel with asynqueue. "
        "'mcm serve --help' for the web viewer.",
        epilog="With no view given, mcm draws "
        f"{DEFAULT_VIEW.describe()} (seahorse valley).",
    )
    parser.add_argument(
        "-N",
        dest="maxIter",
        type=int,
        help=f"maximum iterations (default: {DEFAULT_VIEW.maxIter})",
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help=f"PNG file to write ('-' for stdout; default: stdout unless it is "
        f"a terminal, else {DEFAULT_FILE})",
    )
    _addWorkerOptions(parser)
    parser.add_argument(
        "--compare",
        action="store_true",
        help="also render on one worker first, and report the speedup",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    parser.add_argument("Nx", type=int, nargs="?", help="image width in pixels")
    parser.add_argument("cr", type=float, nargs="?", help="centre, real part")
    parser.add_argument("ci", type=float, nargs="?", help="centre, imaginary part")
    parser.add_argument("crPM", type=float, nargs="?", help="half-width")
    parser.add_argument(
        "ciPM", type=float, nargs="?", help="half-height (default: crPM)"
    )
    return parser


def _serveParser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mcm serve",
        description="Serve a zoomable view of the Mandelbrot set to browsers.",
    )
    parser.add_argument(
        "--listen",
        default="tcp:8080:interface=127.0.0.1",
        help="endpoint to listen on (default: tcp:8080:interface=127.0.0.1)",
    )
    parser.add_argument(
        "-N",
        dest="maxIter",
        type=int,
        default=500,
        help="iterations of the first view, more when zoomed (default: 500)",
    )
    _addWorkerOptions(parser)
    return parser


def parseArguments(argv: Sequence[str]) -> argparse.Namespace:
    """
    Parse C{mcm}'s arguments (without the program name); exit on errors.

    C{command} is C{"render"} or C{"serve"}; a render has C{view}.
    """
    argv = list(argv)
    if argv[:1] == ["serve"]:
        parser = _serveParser()
        options = parser.parse_args(argv[1:])
        options.command = "serve"
    else:
        parser = _renderParser()
        options = parser.parse_args(argv)
        options.command = "render"
        given = [options.Nx, options.cr, options.ci, options.crPM]
        if any(v is None for v in given) and not all(v is None for v in given):
            parser.error("give all of Nx cr ci crPM (and ciPM if you like), or none")
        view = DEFAULT_VIEW
        try:
            if options.Nx is not None:
                view = View(
                    options.Nx,
                    options.cr,
                    options.ci,
                    options.crPM,
                    options.ciPM,
                    view.maxIter,
                )
            if options.maxIter is not None:
                view = View(
                    view.nx, view.cr, view.ci, view.crPM, view.ciPM, options.maxIter
                )
        except ValueError as e:
            parser.error(str(e))
        options.view = view
    if options.workers is None:
        options.workers = 0 if options.nodes or options.dask else os.cpu_count() or 1
    if options.workers < 0 or (
        options.workers == 0 and not options.nodes and not options.dask
    ):
        parser.error("give at least one worker (-w), node (-d) or --dask cluster")
    if options.nodes and not (options.certificate and options.ca):
        parser.error("nodes (-d) need --certificate and --ca")
    return options


async def makeQueue(options: argparse.Namespace) -> tuple[TaskQueue, int, str]:
    """
    A queue of the local processes and remote nodes the options name, every
    worker ready; how many tasks it runs at once; a description of it.
    """
    from twisted.internet import reactor

    # warmUp as the initializer: the children's zygote imports the kernel
    # (numpy) once, so that each child is forked with it ready.
    queue: TaskQueue = (
        ProcessQueue(options.workers, initializer=warmUp)
        if options.workers
        else TaskQueue()
    )
    remote = []
    for endpoint in options.nodes:
        try:
            remote.append(
                RemoteWorker(endpoint, certificate=options.certificate, ca=options.ca)
            )
        except (OSError, ValueError) as e:
            for worker in remote:
                worker.crash()
            await queue.shutdown()
            raise SystemExit(f"mcm: cannot use node {endpoint}: {e}") from None
    try:
        for worker in remote:
            try:
                await worker.whenConnected().addTimeout(
                    options.connect_timeout, reactor
                )
            except Exception:
                why = worker.unreachableBecause or "no answer"
                raise SystemExit(
                    f"mcm: cannot reach node {worker.description} within "
                    f"{options.connect_timeout:g} s: {why}"
                ) from None
            await queue.attachWorker(worker)
        dask = await _attachDask(queue, options)
        await queue.update(warmUp, ephemeral=True)
    except BaseException:
        for worker in remote:
            if worker not in queue.workers():
                worker.crash()
        await queue.shutdown()
        raise
    parts = []
    concurrency = options.workers
    if options.workers:
        parts.append(f"{options.workers} local process{_s(options.workers, 'es')}")
    if remote:
        processes = sum(max(1, w.processes) for w in remote)
        concurrency += processes
        parts.append(
            f"{len(remote)} node{_s(len(remote))} "
            f"({processes} process{_s(processes, 'es')})"
        )
    if dask is not None:
        concurrency += dask.threads
        parts.append(f"Dask at {dask.address} ({dask.threads} threads)")
    return queue, concurrency, " and ".join(parts)


async def _attachDask(queue: TaskQueue, options: argparse.Namespace) -> Any:
    """Attach a DaskWorker for C{--dask} (if given) once it is connected."""
    if not options.dask:
        return None
    from twisted.internet import reactor

    try:
        from asynqueue.workers.dask import DaskWorker
    except ImportError as e:
        raise SystemExit(f"mcm: {e}") from None
    address = None if options.dask == "local" else options.dask
    worker = DaskWorker(address, timeout=options.connect_timeout)
    try:
        await worker.whenConnected().addTimeout(options.connect_timeout, reactor)
    except Exception as e:
        await worker.stop()
        raise SystemExit(
            f"mcm: cannot reach the Dask scheduler {options.dask}: {e}"
        ) from None
    await queue.attachWorker(worker)
    return worker


async def startDashboard(
    queue: TaskQueue, endpoint: str, messages: IO[str], expected: int | None = None
) -> Any:
    """Serve C{queue}'s dashboard at C{endpoint}; say where; return it."""
    from twisted.internet.error import CannotListenError

    from asynqueue.web import DashboardError, TokenRequired

    try:
        try:
            dashboard = await queue.serveDashboard(endpoint)
        except TokenRequired:
            # Off loopback: a token of its own, given only in what is printed here.
            dashboard = await queue.serveDashboard(endpoint, token=True)
    except (DashboardError, CannotListenError) as e:
        await queue.shutdown()
        raise SystemExit(f"mcm: no dashboard at {endpoint!r}: {e}") from None
    if expected is not None:
        dashboard.expect(expected)
    print(f"Dashboard at {dashboard.url}", file=messages, flush=True)
    return dashboard


def _s(n: int, plural: str = "s") -> str:
    return "" if n == 1 else plural


class _Discard:
    """A binary sink: the one-worker render of --compare is timed, not kept."""

    def write(self, data: bytes) -> int:
        return len(data)


@dataclass
class _Output:
    """Where the PNG goes and where messages go."""

    stream: IO[bytes]
    messages: IO[str]
    path: str | None
    close: bool


def _chooseOutput(output: str | None, stdout: IO[str], stderr: IO[str]) -> _Output:
    if output == "-" or (output is None and not stdout.isatty()):
        return _Output(stdout.buffer, stderr, None, False)  # type: ignore[attr-defined]
    path = output or DEFAULT_FILE
    return _Output(open(path, "wb"), stdout, path, True)


def summary(result: RenderResult, workers: str, baseline: RenderResult | None) -> str:
    """The closing line: pixels, time, rate, workers (and speedup)."""
    line = (
        f"{result.pixels:,} pixels in {result.seconds:.2f} s: "
        f"{result.pixelsPerSecond / 1e6:.2f} Mpixel/s on {workers}"
    )
    if baseline is not None:
        speedup = baseline.seconds / result.seconds if result.seconds else 0.0
        line += (
            f"; {speedup:.2f}x the speed of one worker "
            f"({baseline.seconds:.2f} s, measured in this run)"
        )
    return line


async def renderCommand(
    options: argparse.Namespace, stdout: IO[str], stderr: IO[str]
) -> None:
    """Render the view of the options into a PNG file, and say how fast."""
    view: View = options.view
    try:
        # Before anything starts: a typo'd width must not eat the memory.
        checkSize(view, max(1, options.workers), options.workers)
    except ValueError as e:
        raise SystemExit(f"mcm: {e}") from None
    try:
        out = _chooseOutput(options.output, stdout, stderr)
    except OSError as e:
        raise SystemExit(f"mcm: cannot write the image: {e}") from None
    try:
        baseline = None
        if options.compare:
            single = ProcessQueue(1, initializer=warmUp)
            try:
                await single.update(warmUp, ephemeral=True)
                baseline = await render(
                    view,
                    single,
                    _Discard(),  # type: ignore[arg-type]
                    workers=1,
                )
            finally:
                await single.shutdown()
        queue, concurrency, workers = await makeQueue(options)
        if options.dashboard:
            blocks = view.blockCount(concurrency)
            await startDashboard(queue, options.dashboard, out.messages, blocks)
        bar = None
        if not options.quiet:
            bar = ProgressBar(description=f"{view.nx}x{view.ny}", file=stderr)
        try:
            result = await render(
                view, queue, out.stream, progress=bar, workers=concurrency
            )
        finally:
            if bar is not None:
                bar.close()
            await queue.shutdown()
    except BaseException:
        if out.close:
            # No half-written file is left behind.
            out.stream.close()
            os.unlink(out.path)  # type: ignore[arg-type]
        raise
    if out.close:
        out.stream.close()
    if out.path is not None:
        print(f"Wrote {os.path.abspath(out.path)}", file=out.messages)
    print(summary(result, workers, baseline), file=out.messages)


async def serve(options: argparse.Namespace, stdout: IO[str]) -> tuple[Any, TaskQueue]:
    """Start the web viewer; return the listening port and the queue."""
    from twisted.internet import reactor
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.error import CannotListenError

    from mcmandelbrot.web import makeSite

    try:
        endpoint = serverFromString(reactor, options.listen)
    except ValueError as e:
        raise SystemExit(f"mcm: cannot listen on {options.listen!r}: {e}") from None
    queue, concurrency, workers = await makeQueue(options)
    if options.dashboard:
        await startDashboard(queue, options.dashboard, stdout)
    site = makeSite(queue, options.maxIter, concurrency)
    try:
        port = await endpoint.listen(site)
    except CannotListenError as e:
        await queue.shutdown()
        raise SystemExit(f"mcm: {e}") from None
    address = port.getHost()
    print(
        f"Serving the Mandelbrot set at http://{address.host}:{address.port}/ "
        f"on {workers}",
        file=stdout,
        flush=True,
    )
    return port, queue


async def main(
    reactor: Any,
    options: argparse.Namespace,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> None:
    """Carry out C{mcm}'s parsed options; a server runs until the reactor stops."""
    stdout = sys.stdout if stdout is None else stdout
    stderr = sys.stderr if stderr is None else stderr
    try:
        if options.command == "serve":
            await serve(options, stdout)
            await Deferred()
        else:
            await renderCommand(options, stdout, stderr)
    except CancelledError:
        # The reactor is stopping (Ctrl-C): the queue cancelled the tasks.
        raise SystemExit("mcm: interrupted") from None
    except BrokenPipeError:
        raise SystemExit(
            "mcm: the output was closed before the image was written"
        ) from None


def run(argv: Sequence[str] | None = None) -> None:
    """The C{mcm} console script."""
    from twisted.internet.task import react

    options = parseArguments(sys.argv[1:] if argv is None else argv)
    try:
        react(lambda reactor: Deferred.fromCoroutine(main(reactor, options)))
    finally:
        # The interpreter's last garbage collections at exit would walk
        # every object Twisted made (some 45 ms): nothing is left to collect
        # that matters, so they are spared.
        gc.freeze()


if __name__ == "__main__":
    run()
