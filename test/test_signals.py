"""
SIGTERM and SIGINT to a program running a ProcessQueue under react(): it
exits, every Deferred it holds fires, and no child process is left.

Each test runs a real program (written to a temporary directory) in a
subprocess: it starts a C{ProcessQueue(2)}, submits calls that run for
minutes (each says so on its child's output, which reaches the parent's
log) and more that wait behind them, prints C{ready} and the children's
pids once both children run a call, and reports at the end of the
reactor's shutdown how many of its Deferreds fired and which of its
children are still there. The test waits on those lines and on the
program's exit, never on a sleep; the timeouts are safety bounds only.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

#: Safety bounds (seconds), not timing assertions.
READY_WITHIN = 60
EXIT_WITHIN = 30

PROGRAM = r'''
import os
import signal
import sys

# A program started in the background by a shell (as a CI step may be)
# inherits SIGINT ignored, and Python then keeps it so; this one stands for a
# program started from a terminal.
signal.signal(signal.SIGINT, signal.default_int_handler)

if sys.argv[1] == "asyncio":
    from twisted.internet import asyncioreactor

    asyncioreactor.install()

from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, globalLogPublisher, textFileLogObserver

from asynqueue import ProcessQueue

LONG, WAITING = 4, 20


def spin(seconds):
    """Say so on this child's output, then sleep in short steps for a long time."""
    import time

    print("spinning", flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return seconds


def children():
    """The processes whose parent is this one: {pid: state letter}."""
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == os.getpid():
            found[int(entry)] = fields[0]
    return found


def say(*words):
    print(*words, flush=True)


async def main(reactor):
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    q = ProcessQueue(2)
    submitted, fired = [], []
    spinning = set()
    ready = Deferred()

    def watch(event):
        # A child's print reaches the parent's log as "[worker pid N] line".
        if event.get("line") == "spinning" and event.get("pid"):
            spinning.add(event["pid"])
            if len(spinning) == 2 and not ready.called:
                ready.callback(sorted(spinning))

    globalLogPublisher.addObserver(watch)

    def report():
        say("fired", len(fired), "of", len(submitted))
        left = children()
        say("children", " ".join(f"{pid}:{state}" for pid, state in left.items()))

    # After the queue's own "before shutdown" trigger has finished.
    reactor.addSystemEventTrigger("after", "shutdown", report)
    for i in range(LONG + WAITING):
        d = q.call(spin, 600)
        d.addBoth(lambda result: fired.append(result))
        submitted.append(d)
    pids = await ready
    say("ready", *pids)
    await DeferredList(submitted, consumeErrors=True)


react(main)
'''


def _readLine(proc: subprocess.Popen[bytes], buffer: bytearray, deadline: float) -> str:
    """The next line of the program's output; '' at its end or at the deadline."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    while b"\n" not in buffer:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return ""
        readable, _, _ = select.select([fd], [], [], remaining)
        if not readable:
            return ""
        chunk = os.read(fd, 4096)
        if not chunk:
            line = bytes(buffer)
            buffer.clear()
            return line.decode()
        buffer += chunk
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode() + "\n"


def _state(pid: int) -> str | None:
    """The state letter of process C{pid}, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie no longer runs; init reaps it.
    return _state(pid) not in (None, "Z", "X")


def _reactorName(config: pytest.Config) -> str:
    try:
        return str(config.getoption("reactor") or "default")
    except ValueError:
        return "default"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("toGroup", [False, True], ids=["process", "group"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["TERM", "INT"])
def test_signalEndsTheProgramAndItsChildren(
    signum: int, toGroup: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """
    The signal goes to the program alone (as C{kill} sends it) or to its
    whole process group (as Ctrl-C in a terminal, or a service manager,
    sends it; the children then get it too).
    """
    program = tmp_path / "program.py"
    program.write_text(PROGRAM)
    stderrPath = tmp_path / "stderr.txt"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    with open(stderrPath, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, str(program), _reactorName(request.config)],
            stdout=subprocess.PIPE,
            stderr=stderr,
            env=env,
            start_new_session=True,
        )
    buffer = bytearray()
    lines: list[str] = []

    def diagnosis() -> str:
        return (
            f"exit status {proc.returncode}, output: {lines!r}\n"
            f"stderr:\n{stderrPath.read_text()[-4000:]}"
        )

    try:
        line = _readLine(proc, buffer, time.monotonic() + READY_WITHIN)
        lines.append(line)
        assert line.startswith("ready "), diagnosis()
        pids = [int(p) for p in line.split()[1:]]
        assert len(pids) == 2 and all(_alive(p) for p in pids), diagnosis()
        if toGroup:
            os.killpg(proc.pid, signum)
        else:
            os.kill(proc.pid, signum)
        try:
            proc.wait(timeout=EXIT_WITHIN)
        except subprocess.TimeoutExpired:
            pytest.fail(
                f"still running {EXIT_WITHIN} s after the signal\n{diagnosis()}"
            )
        deadline = time.monotonic() + EXIT_WITHIN
        while line:
            line = _readLine(proc, buffer, deadline)
            if line:
                lines.append(line)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
    report: dict[str, Any] = {
        line.split()[0]: line.split()[1:] for line in lines if line.strip()
    }
    assert "fired" in report, f"no report at shutdown\n{diagnosis()}"
    fired, _, submitted = report["fired"]
    assert fired == submitted == "24", diagnosis()
    assert report.get("children") == [], f"children left at exit\n{diagnosis()}"
    assert [p for p in pids if _alive(p)] == [], diagnosis()
