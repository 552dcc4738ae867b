"""
Soak: abuse process workers and remote nodes, and count what went wrong.

A maintainer runs this before a release (C{make soak}); it prints one table,
with a header describing the machine. Sections (pick with C{--only a,c}):

  a. SIGKILL of child processes under load: >= 1,000 kills during >= 10,000
     tasks on C{ProcessQueue(2)}, once with C{retries=0} and once with
     C{retries=3}.
  b. Timeouts and cancels of running tasks under load, with the throughput
     of plain calls measured before and after.
  c. Three loopback nodes (C{asynqueue-node}, mutual TLS) behind one
     TaskQueue of RemoteWorkers; one node is SIGKILLed and one SIGSTOPped
     mid-run (and SIGCONTed at the end).
  d. A hostile client mix against a TLS node (garbage bytes, plaintext AMP,
     a client of another CA, no client certificate, idle connections,
     oversize boxes) while a good client keeps calling: its throughput with
     and without the mix.
  e. C{map()} over 10^5 and 10^6 items: the parent's peak RSS.

Columns: C{lost}, Deferreds that never fired, not even when the queue was
shut down; C{stranded}, Deferreds still pending when every other had fired
(nothing fired for a while) or at the section's deadline; C{fired 2x},
Deferreds fired twice (C{AlreadyCalledError} included); C{ran 2x} and
C{done 2x}, tasks whose function started, or returned, more than once (each
task appends to a per-run log file as it starts and ends); C{zombies},
children of this process left in state Z after shutdown; C{fds} and
C{RSS MiB}, this process's descriptors and resident memory before and after
(for e, before and at the peak); C{calls/s}, the rate of the run (for b,
plain calls before and after the abuse; for d, the good client's without
and with the hostile mix). The goals: 0 lost, 0 stranded, 0 fired twice, 0
ran twice with C{retries=0}, 0 zombies, descriptors and RSS flat, the good
client unaffected; the C{verdict} column names every goal missed, and notes
under the table say more (what the descriptors left open are, what the
errors logged were, what the node made of each hostile client).

Everything runs on loopback and stops by itself: each section has a
deadline, and every process it started is killed at the end whatever
happened. C{--quick} is a smoke run of about a minute with smaller counts.

    .venv/bin/python benchmarks/soak.py [--quick] [--only a,b,c,d,e]
"""

from __future__ import annotations

import argparse
import functools
import gc
import inspect
import json
import os
import random
import re
import resource
import signal
import sys
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from common import gitRevision, machineHeader, now, printTable
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol
from twisted.internet.task import LoopingCall, react
from twisted.logger import (
    ILogObserver,
    globalLogBeginner,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.failure import Failure
from zope.interface import implementer

import asynqueue
from asynqueue import ProcessQueue, RemoteWorker, TaskQueue

# The public paths, kept across layouts: the soak runs against any of them.
from asynqueue.certs import makeCluster
from asynqueue.node import NodeOptions

reactor: Any = _reactor
MiB = 1 << 20
#: Every queue's options: stopped by the script, and 1,000 task records
#: kept (the default, 100,000, is ~27 MiB of history by design; the RSS
#: columns are for leaks).
QUEUE: dict[str, Any] = {"shutdownWithReactor": False, "maxRecords": 1000}

# ----------------------------------------------------------------------
# What the children run (pickled by value: this is __main__)


def work(log: str, i: int, seconds: float) -> int:
    """Note the start, work for C{seconds}, note the end; return C{i}."""
    import os
    import time

    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"s %d\n" % i)
        if seconds:
            time.sleep(seconds)
        os.write(fd, b"e %d\n" % i)
    finally:
        os.close(fd)
    return i


def trivial(x: int) -> int:
    return x


def double(x: int) -> int:
    return 2 * x


# ----------------------------------------------------------------------
# Processes, descriptors and memory, from /proc


def _stat(pid: int) -> tuple[str, int] | None:
    """(state letter, parent pid) of a process, or None if there is none."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def _parents() -> dict[int, tuple[str, int]]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            stat = _stat(int(entry))
            if stat is not None:
                table[int(entry)] = stat
    return table


def children(of: int | None = None) -> dict[int, str]:
    """The children of a process (this one by default): {pid: state}."""
    of = os.getpid() if of is None else of
    return {pid: state for pid, (state, ppid) in _parents().items() if ppid == of}


def descendants(of: int | None = None) -> dict[int, str]:
    """Children, their children and so on: {pid: state}."""
    of = os.getpid() if of is None else of
    table = _parents()
    found: dict[int, str] = {}
    frontier = [of]
    while frontier:
        parent = frontier.pop()
        for pid, (state, ppid) in table.items():
            if ppid == parent and pid not in found:
                found[pid] = state
                frontier.append(pid)
    return found


def isOurLiveChild(pid: int) -> bool:
    """A live process of ours: forked children's parent is the zygote, ours."""
    state = descendants().get(pid)
    return state is not None and state not in "ZX"


def fdTable(pid: int | str = "self") -> dict[int, str]:
    """The descriptors of a process: {fd: what it is}, as /proc names it."""
    table = {}
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                table[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                pass
    except OSError:
        pass
    return table


def fdKinds(table: dict[int, str]) -> str:
    """C{3 pipe, 1 socket}: the kinds of the descriptors of C{table}."""
    kinds = Counter(
        "memfd"
        if what.startswith("/memfd:")
        else "file"
        if what.startswith("/")
        else re.sub(r"[:\[].*", "", what)
        for what in table.values()
    )
    return ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())


def cpuSeconds(pid: int | str = "self") -> float:
    """User and system CPU seconds a process has used so far."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fdCount(pid: int | str = "self") -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def memory(pid: int | str = "self", key: str = "VmRSS") -> float:
    """A memory figure of /proc/PID/status (VmRSS, VmHWM), in MiB."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def resetPeak() -> bool:
    """Reset this process's VmHWM (Linux 4.0+); False if that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def killTree(pid: int) -> int:
    """SIGKILL a process and everything under it; how many were alive."""
    killed = 0
    for each in [pid, *descendants(pid)]:
        stat = _stat(each)
        if stat is not None and stat[0] not in "ZX":
            try:
                os.kill(each, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    return killed


# ----------------------------------------------------------------------
# Waiting, on Deferreds only


def within(d: Deferred[Any], seconds: float) -> Deferred[tuple[bool, Any]]:
    """
    Fire with C{(True, result)} when C{d} fires, or C{(False, None)} after
    C{seconds}; C{d} is not cancelled (a hang is reported, not hidden).
    """
    out: Deferred[tuple[bool, Any]] = Deferred()

    def late() -> None:
        if not out.called:
            out.callback((False, None))

    timer = reactor.callLater(seconds, late)

    def fired(result: object) -> None:
        if timer.active():
            timer.cancel()
        if not out.called:
            out.callback((True, result))

    d.addBoth(fired)
    return out


class Outcomes:
    """
    How each call ended ("ok" or an exception's type name), by dense ID:
    one byte a call, so that counting weighs little in the memory measured.
    """

    def __init__(self) -> None:
        self._codes = bytearray()
        self._names = ["", "ok"]
        self._fired = 0

    def __setitem__(self, i: int, outcome: str) -> None:
        if outcome not in self._names:
            self._names.append(outcome)
        if i >= len(self._codes):
            self._codes.extend(bytes(i + 1 - len(self._codes)))
        if not self._codes[i]:
            self._fired += 1
        self._codes[i] = self._names.index(outcome)

    def get(self, i: int, default: str | None = None) -> str | None:
        code = self._codes[i] if 0 <= i < len(self._codes) else 0
        return self._names[code] if code else default

    def __getitem__(self, i: int) -> str:
        outcome = self.get(i)
        if outcome is None:
            raise KeyError(i)
        return outcome

    def __contains__(self, i: object) -> bool:
        return isinstance(i, int) and self.get(i) is not None

    def __len__(self) -> int:
        return self._fired

    def items(self) -> Iterable[tuple[int, str]]:
        names = self._names
        return ((i, names[c]) for i, c in enumerate(self._codes) if c)

    def __iter__(self) -> Iterator[int]:
        return (i for i, c in enumerate(self._codes) if c)

    def values(self) -> Iterable[str]:
        return (outcome for _, outcome in self.items())


@dataclass
class Tally:
    """
    What became of a set of calls, each known by an integer ID.

    A call's Deferred is let go once it fires, so that the tally weighs
    little in the memory measured.
    """

    total: int = 0
    waiting: dict[int, Deferred[Any]] = field(default_factory=dict)
    outcome: Outcomes = field(default_factory=Outcomes)
    kind: dict[int, str] = field(default_factory=dict)
    firedTwice: int = 0
    lastFire: float = field(default_factory=now)
    onFire: Callable[[int, object], object] | None = None
    _waiters: list[Deferred[None]] = field(default_factory=list)

    def track(self, i: int, d: Deferred[Any], kind: str = "plain") -> Deferred[Any]:
        self.total += 1
        self.waiting[i] = d
        if kind != "plain":
            self.kind[i] = kind
        d.addBoth(self._fired, i)
        return d

    def cancel(self, i: int) -> None:
        d = self.waiting.get(i)
        if d is not None:
            d.cancel()

    def _fired(self, result: object, i: int) -> None:
        self.lastFire = now()
        if i in self.outcome:
            self.firedTwice += 1
            return
        self.waiting.pop(i, None)
        if isinstance(result, Failure):
            self.outcome[i] = result.type.__name__ if result.type else "Failure"
        else:
            self.outcome[i] = "ok"
        if self.onFire is not None:
            self.onFire(i, result)
        if self._waiters and not self.waiting:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)

    def rate(self, since: float) -> str:
        """Calls/s from C{since} to the last call that fired."""
        return f"{len(self.outcome) / max(self.lastFire - since, 1e-9):,.0f}"

    @property
    def pending(self) -> int:
        return len(self.waiting)

    def unfired(self) -> list[int]:
        return list(self.waiting)

    def counts(self, ids: Iterable[int] | None = None) -> Counter[str]:
        if ids is None:
            return Counter(self.outcome.values())
        return Counter(self.outcome[i] for i in ids)

    def settle(self, deadline: float, stall: float) -> Deferred[str]:
        """
        Fire with C{"done"} once every call has fired, C{"stalled"} once
        nothing fired for C{stall} seconds, or C{"deadline"} at
        C{deadline} (a L{now} value); a sampling timer watches the two
        last.
        """
        if self.pending == 0:
            return succeed("done")
        out: Deferred[str] = Deferred()
        allFired: Deferred[None] = Deferred()
        self._waiters.append(allFired)

        def finish(why: str) -> None:
            if sampler.running:
                sampler.stop()
            if not out.called:
                out.callback(why)

        began = now()

        def sample() -> None:
            t = now()
            if t >= deadline:
                finish("deadline")
            elif t - max(self.lastFire, began) >= stall:
                finish("stalled")

        allFired.addCallback(lambda _: finish("done"))
        sampler = LoopingCall(sample)
        sampler.clock = reactor
        sampler.start(0.2, now=False)
        return out


@implementer(ILogObserver)
class LogWatch:
    """Counts error events in the log: AlreadyCalledError, unhandled errors."""

    def __init__(self) -> None:
        self.alreadyCalled = 0
        self.errors = 0
        #: What the errors were: "Type: message" (or the log text), counted.
        self.kinds: Counter[str] = Counter()
        globalLogPublisher.addObserver(self)

    def __call__(self, event: dict[str, Any]) -> None:
        failure = event.get("log_failure")
        if failure is None and not event.get("isError"):
            return
        self.errors += 1
        if failure is not None:
            what = f"{failure.type.__name__}: {failure.getErrorMessage()}"
            if "AlreadyCalledError" in what:
                self.alreadyCalled += 1
        else:
            what = str(event.get("log_format") or event.get("log_text") or "?")
        self.kinds[what[:120]] += 1

    def mark(self) -> tuple[int, int]:
        return self.alreadyCalled, self.errors

    def since(self, before: Counter[str]) -> str:
        """The most frequent errors logged since C{before} was a copy of kinds."""
        new = self.kinds - before
        return "; ".join(f"{n}x {what}" for what, n in new.most_common(2))


def runLog(path: Path) -> tuple[Counter[int], Counter[int]]:
    """Starts and ends of each task ID, from a per-run log file."""
    starts: Counter[int] = Counter()
    ends: Counter[int] = Counter()
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return starts, ends
    for line in text.splitlines():
        what, _, ident = line.partition(b" ")
        if ident.isdigit():
            (starts if what == b"s" else ends)[int(ident)] += 1
    return starts, ends


# ----------------------------------------------------------------------
# Rows of the table


@dataclass
class Row:
    section: str
    run: str
    tasks: int = 0
    abuse: str = ""
    ok: int = 0
    failed: str = ""
    lost: int | str = "-"
    stranded: int | str = "-"
    firedTwice: int | str = "-"
    ranTwice: int | str = "-"
    doneTwice: int | str = "-"
    zombies: int | str = "-"
    fds: str = "-"
    rss: str = "-"
    rate: str = "-"
    seconds: float = 0.0
    missed: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def cells(self) -> list[Any]:
        verdict = "; ".join(self.missed) if self.missed else "ok"
        return [
            self.section,
            self.run,
            self.tasks,
            self.abuse or "-",
            self.ok,
            self.failed or "-",
            self.lost,
            self.stranded,
            self.firedTwice,
            self.ranTwice,
            self.doneTwice,
            self.zombies,
            self.fds,
            self.rss,
            self.rate,
            round(self.seconds),
            verdict,
        ]


HEADERS = [
    "§",
    "run",
    "tasks",
    "abuse",
    "ok",
    "failed (by type)",
    "lost",
    "stranded",
    "fired 2x",
    "ran 2x",
    "done 2x",
    "zombies",
    "fds",
    "RSS MiB",
    "calls/s",
    "s",
    "verdict",
]

_SHORT = {
    "WorkerCrashed": "Crashed",
    "CancelledError": "Cancelled",
    "TimeoutError": "Timeout",
}


def failedText(counts: Counter[str]) -> str:
    parts = [f"{_SHORT.get(k, k)} {v:,}" for k, v in counts.most_common() if k != "ok"]
    return ", ".join(parts)


def arrow(a: float, b: float, fmt: str = "{:,.0f}") -> str:
    return f"{fmt.format(a)}→{fmt.format(b)}"


@dataclass
class Before:
    """What this process had before a run: descriptors, memory, log errors."""

    fds: int
    rss: float
    log: tuple[int, int]
    t: float
    fdTable: dict[int, str]
    errorKinds: Counter[str]

    @classmethod
    def take(cls, watch: LogWatch) -> Before:
        gc.collect()
        table = fdTable()
        return cls(
            len(table), memory(), watch.mark(), now(), table, Counter(watch.kinds)
        )

    def newFds(self, table: dict[int, str]) -> str:
        """The kinds of the descriptors of C{table} that were not open before."""
        return fdKinds(
            {fd: what for fd, what in table.items() if self.fdTable.get(fd) != what}
        )


def finishRow(
    row: Row,
    before: Before,
    watch: LogWatch,
    tally: Tally,
    unfiredAtSettle: list[int],
    runLogPath: Path | None,
    expected: set[str],
    retries: int | None,
    settled: str,
) -> None:
    """Fill the counts common to every run of calls, and the verdict."""
    gc.collect()
    row.seconds = now() - before.t
    row.tasks = tally.total
    counts = tally.counts()
    row.ok = counts.get("ok", 0)
    atSettle = set(unfiredAtSettle)
    settledCounts = tally.counts(i for i in tally.outcome if i not in atSettle)
    row.failed = failedText(settledCounts)
    lost = tally.unfired()
    row.lost = len(lost)
    row.stranded = len(unfiredAtSettle)
    already, errors = watch.mark()
    row.firedTwice = tally.firedTwice + already - before.log[0]
    if runLogPath is not None:
        starts, ends = runLog(runLogPath)
        row.ranTwice = sum(1 for n in starts.values() if n > 1)
        row.doneTwice = sum(1 for n in ends.values() if n > 1)
        # How often the calls that failed had started: a crash should fail
        # only calls that ran (or were starting).
        ranBefore: dict[str, Counter[int]] = {}
        for i, outcome in tally.outcome.items():
            if outcome != "ok":
                ranBefore.setdefault(outcome, Counter())[starts.get(i, 0)] += 1
        for outcome, times in sorted(ranBefore.items()):
            row.notes.append(
                f"{outcome}: "
                + ", ".join(
                    f"{n} had started {k} time{'s' if k != 1 else ''}"
                    for k, n in sorted(times.items())
                )
            )
    left = children()
    row.zombies = sum(1 for state in left.values() if state == "Z")
    running = [pid for pid, state in left.items() if state not in "ZX"]
    table = fdTable()
    fdsAfter, rssAfter = len(table), memory()
    row.fds = arrow(before.fds, fdsAfter)
    row.rss = arrow(before.rss, rssAfter)
    # The verdict: every goal missed.
    if row.lost:
        row.missed.append(f"LOST {row.lost}")
    if row.stranded:
        row.missed.append(f"STRANDED {row.stranded} ({settled})")
    if row.firedTwice:
        row.missed.append("FIRED TWICE")
    if retries == 0 and isinstance(row.ranTwice, int) and row.ranTwice:
        row.missed.append("RAN TWICE")
    if row.zombies:
        row.missed.append("ZOMBIES")
    if running:
        row.missed.append(f"{len(running)} CHILDREN LEFT")
    if fdsAfter > before.fds:
        row.missed.append(f"fds {fdsAfter - before.fds:+d}")
        row.notes.append(f"descriptors left open: {before.newFds(table)}")
    if rssAfter - before.rss > max(20.0, 0.25 * before.rss):
        row.missed.append(f"RSS +{rssAfter - before.rss:.0f} MiB")
    unexpected = {k: v for k, v in settledCounts.items() if k != "ok"}
    unexpected = {k: v for k, v in unexpected.items() if k not in expected}
    if unexpected:
        row.missed.append("unexpected " + failedText(Counter(unexpected)))
    if errors - before.log[1]:
        row.notes.append(
            f"{errors - before.log[1]} errors logged, e.g. "
            + watch.since(before.errorKinds)
        )
    late = tally.counts(i for i in unfiredAtSettle if i in tally.outcome)
    if late:
        row.notes.append(
            "the stranded calls ended later as: "
            + ", ".join(f"{_SHORT.get(k, k)} {v}" for k, v in late.most_common())
        )
    for pid in running:
        killTree(pid)


async def stopQueue(q: TaskQueue, seconds: float, row: Row) -> None:
    """Shut C{q} down (cancelling what is left after half the time), or crash it."""
    ok, _ = await within(q.shutdown(timeout=seconds / 2), seconds)
    if not ok:
        row.missed.append("SHUTDOWN HUNG")
        for worker in q.workers():
            try:
                worker.crash()
            except Exception as e:  # reported; the run goes on
                row.notes.append(f"crash() of {worker!r} raised {e!r}")


# ----------------------------------------------------------------------
# Optional features other versions may have


def keywordDefaults(callable_: Any) -> dict[str, Any]:
    """The keywords of C{callable_} and their defaults."""
    try:
        parameters = inspect.signature(callable_).parameters
    except (TypeError, ValueError):
        return {}
    return {name: p.default for name, p in parameters.items()}


def nodeOptionDefaults() -> dict[str, Any]:
    """The C{asynqueue-node} options and their defaults (as shipped)."""
    options = cast(list[list[Any]], NodeOptions.optParameters)
    return {str(option[0]): option[2] for option in options}


def heartbeatSeconds() -> float:
    """
    How long a RemoteWorker, as shipped, takes to give up on a silent node
    (0 if it never does: no heartbeat).
    """
    defaults = keywordDefaults(RemoteWorker)
    beat = next((v for k, v in defaults.items() if "heartbeat" in k.lower()), None)
    missed = next((v for k, v in defaults.items() if "missed" in k.lower()), 1)
    if not isinstance(beat, int | float) or not beat:
        return 0.0
    return float(beat) * (missed if isinstance(missed, int) else 1)


def nodeLimits() -> dict[str, Any]:
    """The node's options, as shipped, that limit connections, if it has any."""
    return {
        name: default
        for name, default in nodeOptionDefaults().items()
        if any(word in name for word in ("conn", "unauth", "timeout"))
    }


def handshakeTimeout() -> float:
    """The node's timeout (as shipped) for a connection to authenticate; 0 if none."""
    for name, default in NODE_LIMITS.items():
        if "timeout" in name:
            try:
                return float(default)
            except (TypeError, ValueError):
                pass
    return 0.0


#: Features that may or may not be there; the script works either way.
HEARTBEAT = heartbeatSeconds()
NODE_LIMITS = nodeLimits()


def remoteWorker(port: int, certs: Path, client: str = "soak", **kwargs: Any) -> Any:
    ca = certs if client == "soak" else certs / "other"
    return RemoteWorker(
        f"tls:localhost:{port}",
        certificate=str(ca / f"{client}.pem"),
        ca=str(certs / "ca.crt"),
        **kwargs,
    )


# ----------------------------------------------------------------------
# Node processes


class NodeProcess(ProcessProtocol):
    """An C{asynqueue-node} in a process of its own; its log goes to a file."""

    def __init__(self, name: str, logPath: Path) -> None:
        self.name = name
        self.listening: Deferred[int] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.log = open(logPath, "wb")
        self.head = b""
        self.pid = 0
        self.stopped: list[int] = []

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def errReceived(self, data: bytes) -> None:
        self.log.write(data)
        if not self.listening.called:
            self.head += data
            found = re.search(rb"listening on .*?port=(\d+)", self.head)
            if found:
                self.listening.callback(int(found.group(1)))

    def outReceived(self, data: bytes) -> None:
        self.log.write(data)

    def processEnded(self, reason: Failure) -> None:
        self.log.close()
        if not self.listening.called:
            self.listening.errback(RuntimeError(self.head.decode(errors="replace")))
        self.ended.callback(None)

    def freeze(self) -> None:
        """SIGSTOP the node and its children."""
        self.stopped = [self.pid, *descendants(self.pid)]
        for pid in self.stopped:
            os.kill(pid, signal.SIGSTOP)

    def thaw(self) -> None:
        for pid in self.stopped:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        self.stopped = []

    async def stop(self, seconds: float = 15) -> bool:
        """SIGTERM, then SIGKILL; whether it ended by itself."""
        if self.ended.called:
            return True
        self.thaw()
        os.kill(self.pid, signal.SIGTERM)
        ok, _ = await within(self.ended, seconds)
        if not ok:
            killTree(self.pid)
            await within(self.ended, 5)
        return ok


def nodeCommand() -> list[str]:
    script = Path(sys.executable).parent / "asynqueue-node"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "asynqueue.node"]


async def startNode(
    name: str, certs: Path, workdir: Path, processes: int = 1, extra: Iterable[str] = ()
) -> tuple[NodeProcess, int]:
    listen = (
        f"ssl:port=0:interface=127.0.0.1:privateKey={certs}/localhost.key:"
        f"certKey={certs}/localhost.crt"
    )
    args = [
        *nodeCommand(),
        "--listen",
        listen,
        "--ca",
        str(certs / "ca.crt"),
        "--processes",
        str(processes),
        *extra,
    ]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    protocol = NodeProcess(name, workdir / f"{name}.log")
    reactor.spawnProcess(protocol, args[0], args, env=env)
    ok, port = await within(protocol.listening, 30)
    if not ok or isinstance(port, Failure):
        killTree(protocol.pid)
        raise RuntimeError(f"node {name} did not start: {port}")
    return protocol, port


# ----------------------------------------------------------------------
# The sections


@dataclass
class Plan:
    """The counts and bounds of a run (full, or --quick)."""

    killTasks: int
    kills: int
    bTasks: int
    bTimeouts: int
    bCancels: int
    rateCalls: int
    rateRounds: int
    cTasks: int
    dRounds: int
    dCalls: int
    dSeconds: float
    idle: int
    oversizeMiB: int
    mapSizes: tuple[int, ...]
    stall: float
    deadline: float
    killDeadline: float


FULL = Plan(
    killTasks=10_000,
    kills=1_000,
    bTasks=5_000,
    bTimeouts=150,
    bCancels=150,
    rateCalls=5_000,
    rateRounds=3,
    cTasks=3_000,
    dRounds=5,
    dCalls=2_000,
    dSeconds=30,
    idle=300,
    oversizeMiB=64,
    mapSizes=(10**5, 10**6),
    stall=15,
    deadline=300,
    killDeadline=420,
)
QUICK = Plan(
    killTasks=600,
    kills=60,
    bTasks=600,
    bTimeouts=12,
    bCancels=12,
    rateCalls=1_000,
    rateRounds=2,
    cTasks=600,
    dRounds=2,
    dCalls=500,
    dSeconds=5,
    idle=60,
    oversizeMiB=8,
    mapSizes=(10**5, 10**6),
    stall=6,
    deadline=60,
    killDeadline=90,
)


class Context:
    def __init__(self, plan: Plan, workdir: Path, seed: int) -> None:
        self.plan = plan
        self.workdir = workdir
        self.random = random.Random(seed)
        self.watch = LogWatch()
        self.nodes: list[NodeProcess] = []
        self.hostile: Any = None
        self._certs: Path | None = None

    @property
    def certs(self) -> Path:
        if self._certs is None:
            where = makeCluster(self.workdir / "certs", ["localhost"], ["soak"])
            makeCluster(where / "other", ["localhost"], ["stranger"])
            self._certs = where
        return self._certs


async def sectionA(ctx: Context, retries: int) -> Row:
    """SIGKILL children at random moments while tasks run."""
    plan = ctx.plan
    row = Row("a", f"SIGKILL children, retries={retries}")
    before = Before.take(ctx.watch)
    log = ctx.workdir / f"a-retries{retries}.runlog"
    q = ProcessQueue(2, **QUEUE)
    workers = q.workers()
    tally = Tally()
    killed: set[int] = set()
    stopKilling = False
    killing = False

    def killOne() -> None:
        nonlocal killing
        killing = False
        if stopKilling:
            return
        # Only a child that has answered something since it started: one
        # killed young tests the worker's back-off, not its recovery.
        candidates = []
        for w in workers:
            info = cast(Any, w).info()
            pid = info.get("pid")
            if pid and pid not in killed and info.get("processDone", 0) > 0:
                candidates.append(pid)
        ctx.random.shuffle(candidates)
        for pid in candidates:
            if isOurLiveChild(pid):
                killed.add(pid)
                os.kill(pid, signal.SIGKILL)
                return

    def onFire(i: int, result: object) -> None:
        # Kills keep pace with the calls that end, a few percent ahead so
        # that the aim is met; one at a time, a moment after a call ends.
        nonlocal killing
        due = len(tally.outcome) * plan.kills * 1.05 / plan.killTasks
        if len(killed) < due and not killing and not stopKilling:
            killing = True
            reactor.callLater(ctx.random.uniform(0, 0.003), killOne)

    tally.onFire = onFire
    for i in range(plan.killTasks):
        seconds = ctx.random.choice((0, 0.0005, 0.001, 0.002, 0.004))
        tally.track(i, q.call(work, str(log), i, seconds, retries=retries))
    settled = await tally.settle(now() + plan.killDeadline, plan.stall)
    stopKilling = True
    row.rate = tally.rate(before.t)
    unfired = tally.unfired()
    await stopQueue(q, 20, row)
    # What is left after shutdown is measured without the queue itself.
    workers.clear()
    del q
    row.abuse = f"{len(killed):,} SIGKILL"
    finishRow(
        row,
        before,
        ctx.watch,
        tally,
        unfired,
        log,
        {"WorkerCrashed"},
        retries,
        settled,
    )
    if len(killed) < plan.kills:
        row.notes.append(f"only {len(killed)} kills (aimed at {plan.kills})")
    return row


async def callRate(
    q: TaskQueue,
    calls: int,
    rounds: int,
    tally: Tally | None = None,
    minSeconds: float = 0.0,
) -> list[float]:
    """
    Calls/s of rounds of C{calls} trivial calls: at least C{rounds}, and
    for at least C{minSeconds}; a round that fails or hangs (60 s) counts
    0 and ends the measurement. C{tally} notes every call.
    """
    rates: list[float] = []
    began = now()
    while len(rates) < rounds or now() - began < minSeconds:
        t = now()
        ds = [q.call(trivial, i) for i in range(calls)]
        ids: range = range(0)
        if tally is not None:
            first = tally.total
            ids = range(first, first + calls)
            for i, d in zip(ids, ds, strict=True):
                tally.track(i, d)
        ok, result = await within(gatherResults(ds), 60)
        good = (
            ok
            and not isinstance(result, Failure)
            and (tally is None or all(tally.outcome.get(i) == "ok" for i in ids))
        )
        rates.append(calls / (now() - t) if good else 0.0)
        if not good:
            break
    return rates


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2] if ordered else 0.0


async def sectionB(ctx: Context) -> Row:
    """Timeouts and cancels of running tasks, among plain ones."""
    plan = ctx.plan
    row = Row("b", "timeouts + cancels of running tasks")
    before = Before.take(ctx.watch)
    log = ctx.workdir / "b.runlog"
    q = ProcessQueue(2, **QUEUE)
    rateBefore = median(await callRate(q, plan.rateCalls, plan.rateRounds))
    tally = Tally()
    kinds = (
        ["timeout"] * plan.bTimeouts
        + ["cancel"] * plan.bCancels
        + ["plain"] * plan.bTasks
    )
    ctx.random.shuffle(kinds)

    def started(event: str, record: Any) -> None:
        if event == "started" and record.name.startswith("cancel-"):
            i = int(record.name.split("-")[1])
            # Later: this may be news from inside the call() that made it.
            reactor.callLater(ctx.random.uniform(0.005, 0.03), tally.cancel, i)

    stopObserving = q.observe(started)
    for i, kind in enumerate(kinds):
        if kind == "timeout":
            d = q.call(work, str(log), i, 2.0, timeout=0.05, name=f"timeout-{i}")
        elif kind == "cancel":
            d = q.call(work, str(log), i, 2.0, name=f"cancel-{i}")
        else:
            seconds = ctx.random.choice((0, 0.0005, 0.001, 0.002))
            d = q.call(work, str(log), i, seconds)
        tally.track(i, d, kind)
    settled = await tally.settle(now() + plan.deadline, plan.stall)
    stopObserving()
    unfired = tally.unfired()
    rateAfter = median(await callRate(q, plan.rateCalls, plan.rateRounds))
    await stopQueue(q, 20, row)
    del q
    row.abuse = f"{plan.bTimeouts} timeouts, {plan.bCancels} cancels"
    row.rate = arrow(rateBefore, rateAfter)
    finishRow(
        row,
        before,
        ctx.watch,
        tally,
        unfired,
        log,
        {"TimeoutError", "CancelledError", "WorkerCrashed"},
        0,
        settled,
    )
    byKind: dict[str, Counter[str]] = {}
    for i, outcome in tally.outcome.items():
        byKind.setdefault(tally.kind.get(i, "plain"), Counter())[outcome] += 1
    wrong = {
        "timeout": sum(
            v for k, v in byKind.get("timeout", {}).items() if k != "TimeoutError"
        ),
        "cancel": sum(
            v for k, v in byKind.get("cancel", {}).items() if k != "CancelledError"
        ),
        "plain": sum(v for k, v in byKind.get("plain", {}).items() if k != "ok"),
    }
    if any(wrong.values()):
        row.notes.append(
            "outcomes other than the intended one: "
            + ", ".join(f"{k} {v}" for k, v in wrong.items() if v)
            + " ("
            + "; ".join(
                f"{k}: {failedText(c)}" for k, c in byKind.items() if failedText(c)
            )
            + ")"
        )
    if rateAfter < 0.7 * rateBefore:
        row.missed.append("THROUGHPUT DROPPED")
    return row


async def sectionC(ctx: Context) -> Row:
    """Three nodes; one killed, one frozen, mid-run."""
    plan = ctx.plan
    row = Row("c", "3 TLS nodes: 1 SIGKILL, 1 SIGSTOP")
    before = Before.take(ctx.watch)
    certs = ctx.certs
    log = ctx.workdir / "c.runlog"
    nodes: list[NodeProcess] = []
    workers: list[Any] = []
    tally = Tally()
    q: TaskQueue | None = None
    try:
        for n in range(3):
            node, port = await startNode(f"c-node{n}", certs, ctx.workdir)
            nodes.append(node)
            ctx.nodes.append(node)
            workers.append(remoteWorker(port, certs, name=f"node{n}"))
        for w in workers:
            ok, _ = await within(w.whenConnected(), 30)
            if not ok:
                raise RuntimeError(f"{w.name} did not connect")
        q = TaskQueue(*workers, **QUEUE)
        events: list[str] = []

        def onFire(i: int, result: object) -> None:
            done = len(tally.outcome)
            if done == plan.cTasks * 3 // 10:
                killTree(nodes[0].pid)
                events.append(f"SIGKILL node0 after {done}")
            elif done == plan.cTasks // 2:
                nodes[1].freeze()
                events.append(f"SIGSTOP node1 after {done}")

        tally.onFire = onFire
        for i in range(plan.cTasks):
            seconds = ctx.random.choice((0.001, 0.002, 0.004))
            tally.track(i, q.call(work, str(log), i, seconds))
        # Long enough for a heartbeat, if there is one, to give up on the
        # frozen node and for its calls to run elsewhere.
        stall = max(plan.stall, 1.5 * HEARTBEAT + 3)
        settled = await tally.settle(now() + plan.deadline, stall)
        rate = tally.rate(before.t)
        unfired = tally.unfired()
        nodes[1].thaw()
        events.append("SIGCONT node1")
        if tally.pending:
            await tally.settle(now() + plan.deadline / 2, stall)
        await stopQueue(q, 20, row)
        q = None
        workers.clear()
        for node in nodes:
            if not await node.stop():
                row.missed.append(f"{node.name} ignored SIGTERM")
        row.abuse = "1 SIGKILL, 1 SIGSTOP"
        row.rate = rate
        finishRow(
            row,
            before,
            ctx.watch,
            tally,
            unfired,
            log,
            {"NodeLost"},
            0,
            settled,
        )
        row.notes.append(", ".join(events))
        return row
    finally:
        if q is not None:
            await stopQueue(q, 10, row)
        for node in nodes:
            node.thaw()
            if not node.ended.called:
                killTree(node.pid)
                await within(node.ended, 5)
            ctx.nodes.remove(node)


class HostileProcess(ProcessProtocol):
    """The hostile client mix, in a process of its own (this script, --hostile)."""

    def __init__(self) -> None:
        self.ready: Deferred[None] = Deferred()
        self.ended: Deferred[None] = Deferred()
        self.out = b""
        self.pid = 0

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        self.out += data
        if not self.ready.called and b"hostile ready" in self.out:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        self.out += data

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(self.out.decode(errors="replace")))
        self.ended.callback(None)

    def summary(self) -> dict[str, Any]:
        for line in reversed(self.out.splitlines()):
            if line.startswith(b"{"):
                try:
                    return dict(json.loads(line))
                except ValueError:
                    break
        return {}


async def sectionD(ctx: Context) -> Row:
    """A good client's calls while hostile clients go at the same node."""
    plan = ctx.plan
    row = Row("d", "hostile mix vs 1 TLS node; good client")
    before = Before.take(ctx.watch)
    certs = ctx.certs
    # Idle connections, beyond the node's caps on them (as shipped), if any.
    caps = [
        int(v)
        for k, v in NODE_LIMITS.items()
        if k.startswith("max") and str(v).isdigit() and int(v) < 1000
    ]
    idle = max([plan.idle, *(cap + 50 for cap in caps)])
    # A hostile client waits this long for the node to drop it: longer than
    # the node's handshake timeout, if it has one.
    patience = max(5.0, handshakeTimeout() + 5)
    node, port = await startNode("d-node", certs, ctx.workdir, 1)
    ctx.nodes.append(node)
    hostile = HostileProcess()
    worker = remoteWorker(port, certs, name="good")
    tally = Tally()
    q: TaskQueue | None = None
    fresh: Any = None
    try:
        ok, _ = await within(worker.whenConnected(), 30)
        if not ok:
            raise RuntimeError("the good client did not connect")
        q = TaskQueue(worker, **QUEUE)
        await callRate(q, plan.dCalls, 1)
        without = await callRate(
            q, plan.dCalls, plan.dRounds, tally, minSeconds=plan.dSeconds
        )
        nodeTable, nodeRss = fdTable(node.pid), memory(node.pid)
        nodeFds = len(nodeTable)
        args = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--hostile",
            str(port),
            "--certs",
            str(certs),
            "--idle",
            str(idle),
            "--oversize-mib",
            str(plan.oversizeMiB),
            "--patience",
            str(patience),
        ]
        reactor.spawnProcess(hostile, sys.executable, args, env=dict(os.environ))
        ctx.hostile = hostile
        ok, result = await within(hostile.ready, 60)
        if not ok or isinstance(result, Failure):
            raise RuntimeError(f"the hostile mix did not start: {hostile.out[-500:]!r}")
        peak = [memory(node.pid)]
        sampler = LoopingCall(lambda: peak.append(memory(node.pid)))
        sampler.start(0.1)
        cpuBefore = {p: cpuSeconds(p) for p in ("self", node.pid, hostile.pid)}
        mixBegan = now()
        # A client that connects now, while the mix goes on.
        fresh = remoteWorker(port, certs, name="fresh")
        ok, _ = await within(fresh.whenConnected(), 15)
        freshNote = (
            f"a new client connected during the mix in {now() - mixBegan:.2f} s"
            if ok
            else "a new client could NOT connect during the mix (15 s)"
        )
        if not ok:
            row.missed.append("NEW CLIENT LOCKED OUT")
        await within(fresh.stop(), 10)
        fresh = None
        during = await callRate(
            q, plan.dCalls, plan.dRounds, tally, minSeconds=plan.dSeconds
        )
        mixSeconds = now() - mixBegan
        cpu = {
            name: (cpuSeconds(p) - cpuBefore[p]) / mixSeconds
            for name, p in (
                ("this process", "self"),
                ("node", node.pid),
                ("hostile", hostile.pid),
            )
        }
        sampler.stop()
        assert hostile.transport is not None
        hostile.transport.signalProcess("TERM")
        ok, _ = await within(hostile.ended, 20)
        if not ok:
            killTree(hostile.pid)
            await within(hostile.ended, 5)
        after = await callRate(
            q, plan.dCalls, plan.dRounds, tally, minSeconds=plan.dSeconds / 2
        )
        nodeTableAfter, nodeRssAfter = fdTable(node.pid), memory(node.pid)
        nodeFdsAfter = len(nodeTableAfter)
        unfired = tally.unfired()
        stats = hostile.summary()
        goodRate, badRate = median(without), median(during)
        row.abuse = f"{stats.get('connections', 0):,} hostile conns"
        row.rate = arrow(goodRate, badRate)
        if badRate < 0.7 * goodRate:
            row.missed.append(f"GOOD CLIENT AT {badRate / goodRate:.0%}")
        row.notes.append(
            f"good client: {goodRate:,.0f} calls/s without the mix, "
            f"{badRate:,.0f} with it ({len(during)} rounds in {mixSeconds:.0f} s), "
            f"{median(after):,.0f} after it; CPU during the mix, in cores: "
            + ", ".join(f"{name} {share:.2f}" for name, share in cpu.items())
        )
        row.notes.append(freshNote)
        row.notes.append(
            f"node: fds {nodeFds}→{nodeFdsAfter} (after the mix ended), "
            f"RSS {nodeRss:.0f}→{max(peak):.0f} (peak)→{nodeRssAfter:.0f} MiB"
        )
        if nodeFdsAfter > nodeFds:
            row.missed.append(f"node fds {nodeFdsAfter - nodeFds:+d}")
            opened = {
                fd: what
                for fd, what in nodeTableAfter.items()
                if nodeTable.get(fd) != what
            }
            row.notes.append(f"the node's descriptors left open: {fdKinds(opened)}")
        if nodeRssAfter - nodeRss > max(20.0, 0.25 * nodeRss):
            row.missed.append(f"node RSS +{nodeRssAfter - nodeRss:.0f} MiB")
        for kind, counts in sorted(stats.get("kinds", {}).items()):
            parts = [f"{counts['tried']} tried"]
            for key, words in (
                ("refused", "refused"),
                ("closedByNode", "closed by the node"),
                ("ourTimeout", f"left open by the node for {patience:g} s"),
                ("stillOpen", "still open at the end"),
            ):
                if counts.get(key):
                    parts.append(f"{counts[key]} {words}")
            row.notes.append(f"hostile {kind}: " + ", ".join(parts))
        await stopQueue(q, 20, row)
        q = worker = None
        if not await node.stop():
            row.missed.append("node ignored SIGTERM")
        finishRow(row, before, ctx.watch, tally, unfired, None, set(), 0, "round hung")
        return row
    finally:
        if fresh is not None:
            await within(fresh.stop(), 10)
        if q is not None:
            await stopQueue(q, 10, row)
        if not hostile.ended.called and hostile.pid:
            killTree(hostile.pid)
            await within(hostile.ended, 5)
        ctx.hostile = None
        if not node.ended.called:
            killTree(node.pid)
            await within(node.ended, 5)
        ctx.nodes.remove(node)


async def sectionE(ctx: Context, size: int) -> Row:
    """map() over many items: the parent's peak memory."""
    row = Row("e", f"map() over {size:,} items (RSS before→peak)")
    before = Before.take(ctx.watch)
    q = ProcessQueue(2, **QUEUE)
    try:
        await q.call(trivial, 0)
        gc.collect()
        rssStart = memory()
        exact = resetPeak()
        samples = [rssStart]
        sampler = LoopingCall(lambda: samples.append(memory()))
        sampler.start(0.05)
        count = total = 0
        error = ""
        t = now()

        async def consume() -> None:
            nonlocal count, total
            async for x in q.map(double, range(size)):
                count += 1
                total += x

        ok, result = await within(Deferred.fromCoroutine(consume()), ctx.plan.deadline)
        seconds = now() - t
        sampler.stop()
        if isinstance(result, Failure):
            error = result.getErrorMessage()
        peak = memory(key="VmHWM") if exact else max(samples)
        row.tasks = size
        row.ok = count
        row.lost = size - count
        row.stranded = 0 if ok else "yes"
        row.rss = arrow(rssStart, peak)
        row.rate = f"{count / seconds:,.0f}"
        if total != size * (size - 1):
            row.missed.append("WRONG RESULTS")
        if row.lost:
            row.missed.append(f"LOST {row.lost}")
        if not ok:
            row.missed.append("HUNG")
        if error:
            row.missed.append(f"error: {error}")
        if not exact:
            row.notes.append("peak RSS sampled every 50 ms (VmHWM not resettable)")
    finally:
        await stopQueue(q, 20, row)
    row.seconds = now() - before.t
    return row


# ----------------------------------------------------------------------
# The hostile client mix (runs as its own process)


def hostileMain(reactor: Any, args: argparse.Namespace) -> Deferred[None]:
    """Hostile clients, in a loop, until SIGTERM; then a JSON summary on stdout."""
    from twisted.internet import endpoints, ssl

    port, certs = args.hostile, Path(args.certs)
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 65536), hard))
    except (ValueError, OSError):
        pass
    ca = ssl.Certificate.loadPEM((certs / "ca.crt").read_bytes())
    good = ssl.PrivateCertificate.loadPEM((certs / "soak.pem").read_bytes())
    stranger = ssl.PrivateCertificate.loadPEM(
        (certs / "other" / "stranger.pem").read_bytes()
    )
    tcp = endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", port)

    def tls(cert: Any) -> Any:
        options = (
            ssl.optionsForClientTLS("localhost", trustRoot=ca, clientCertificate=cert)
            if cert is not None
            else ssl.optionsForClientTLS("localhost", trustRoot=ca)
        )
        return endpoints.wrapClientTLS(options, tcp)

    kinds: dict[str, dict[str, int]] = {}
    openConnections: dict[str, set[Any]] = {}
    stopping = [False]

    def stat(kind: str) -> dict[str, int]:
        return kinds.setdefault(
            kind,
            {
                "tried": 0,
                "refused": 0,
                "closedByNode": 0,
                "stillOpen": 0,
                "ourTimeout": 0,
            },
        )

    def amBox(pairs: list[tuple[bytes, bytes]]) -> bytes:
        return (
            b"".join(
                len(k).to_bytes(2, "big") + k + len(v).to_bytes(2, "big") + v
                for k, v in pairs
            )
            + b"\x00\x00"
        )

    oversize = args.oversize_mib * MiB
    value = b"\x00" * 65535

    class Hostile(Protocol):
        def __init__(self, kind: str, payload: Callable[[Any], None] | None) -> None:
            self.kind = kind
            self.payload = payload
            self.closed: Deferred[None] = Deferred()
            self.weClosed = False

        def connectionMade(self) -> None:
            openConnections.setdefault(self.kind, set()).add(self)
            if self.payload is not None:
                self.payload(self.transport)

        def connectionLost(self, reason: Any = None) -> None:
            openConnections.get(self.kind, set()).discard(self)
            if not self.weClosed and not stopping[0]:
                stat(self.kind)["closedByNode"] += 1
            self.closed.callback(None)

    def garbage(transport: Any) -> None:
        transport.write(os.urandom(random.randint(1, 4096)))

    def plaintextAMP(transport: Any) -> None:
        transport.write(
            amBox([(b"_ask", b"1"), (b"_command", b"NodeInfo")])
            + amBox([(b"_command", b"RunTasks"), (b"batch", b"\x80\x05N.")])
        )

    def handshakeOnly(transport: Any) -> None:
        # TLS: the handshake is the attempt; send a box in case it gets through.
        transport.write(amBox([(b"_ask", b"1"), (b"_command", b"NodeInfo")]))

    def oversizeKey(transport: Any) -> None:
        key = b"k" * 4000
        transport.write(len(key).to_bytes(2, "big") + key)

    def oversizeBox(transport: Any) -> None:
        # A box that never ends: key after key of 64 KiB values.
        pairs = oversize // (len(value) + 8)
        piece = amBox([(b"k%d" % i, value) for i in range(64)])[:-2]
        for _ in range(max(1, pairs // 64)):
            transport.write(piece)

    patience = args.patience
    mix: list[tuple[str, Any, Callable[[Any], None] | None, float]] = [
        ("garbage", tcp, garbage, patience),
        ("plaintext AMP", tcp, plaintextAMP, patience),
        ("wrong CA", tls(stranger), handshakeOnly, patience),
        ("no client cert", tls(None), handshakeOnly, patience),
        ("oversize key", tls(good), oversizeKey, patience),
        ("oversize box", tls(good), oversizeBox, patience),
    ]

    def once(protocol: Protocol) -> Factory:
        """A factory of just this protocol (one connection)."""
        factory = Factory()
        factory.buildProtocol = lambda addr: protocol  # type: ignore[method-assign]
        return factory

    def sleep(seconds: float) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        reactor.callLater(seconds, d.callback, None)
        return d

    async def cycle(kind: str, endpoint: Any, payload: Any, patience: float) -> None:
        while not stopping[0]:
            stat(kind)["tried"] += 1
            protocol = Hostile(kind, payload)
            try:
                await endpoint.connect(once(protocol))
            except Exception:  # refused before any byte: the node said no
                stat(kind)["refused"] += 1
                continue
            closed, _ = await within(protocol.closed, patience)
            if not closed:
                stat(kind)["ourTimeout"] += 1
                protocol.weClosed = True
                protocol.transport.abortConnection()  # type: ignore[union-attr]
                await protocol.closed
            # A mix, not a flood: the node's CPU is the good client's too.
            await sleep(args.pace)

    async def idleSlot(first: Deferred[None]) -> None:
        # Hold a connection open without sending a byte; when the node
        # drops it, come back a second later (a siege, not a flood).
        while not stopping[0]:
            stat("idle")["tried"] += 1
            protocol = Hostile("idle", None)
            try:
                await tcp.connect(once(protocol))
            except Exception:  # refused: a cap on connections at work
                stat("idle")["refused"] += 1
            else:
                if not first.called:
                    first.callback(None)
                await protocol.closed
            if not first.called:
                first.callback(None)
            await sleep(1.0)

    done: Deferred[None] = Deferred()

    def report() -> None:
        stopping[0] = True
        # Others may be on their way to being closed; idle ones are not.
        stat("idle")["stillOpen"] = len(openConnections.get("idle", ()))
        summary = {
            "connections": sum(k["tried"] for k in kinds.values()),
            "kinds": kinds,
        }
        sys.stdout.write(json.dumps(summary) + "\n")
        sys.stdout.flush()
        for conns in openConnections.values():
            for protocol in list(conns):
                protocol.weClosed = True
                protocol.transport.abortConnection()

    reactor.addSystemEventTrigger("before", "shutdown", report)

    async def run() -> None:
        firsts: list[Deferred[None]] = [Deferred() for _ in range(args.idle)]
        for first in firsts:
            Deferred.fromCoroutine(idleSlot(first))
        await gatherResults(firsts)
        for kind, endpoint, payload, patience in mix:
            for _ in range(2):
                Deferred.fromCoroutine(cycle(kind, endpoint, payload, patience))
        print("hostile ready", flush=True)
        await done

    return Deferred.fromCoroutine(run())


# ----------------------------------------------------------------------
# Main


SECTIONS = "abcde"


async def main(reactor_: Any, args: argparse.Namespace) -> None:
    import twisted

    plan = QUICK if args.quick else FULL
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="asynqueue-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    logFile = open(workdir / "soak.log", "w")
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(logFile)], redirectStandardIO=False
    )
    ctx = Context(plan, workdir, args.seed)
    chosen = [s for s in SECTIONS if s in args.only]
    package = str(Path(asynqueue.__file__).resolve().parent)
    print(
        machineHeader(
            twisted=twisted.__version__,
            asynqueue=f"{asynqueue.__version__} ({gitRevision(package)})",
        )
    )
    print(
        f"asynqueue from {package}; soak {'--quick' if args.quick else '(full)'}, "
        f"sections {','.join(chosen)}, "
        f"seed {args.seed}; RemoteWorker gives up on a silent node after: "
        f"{f'{HEARTBEAT:g} s' if HEARTBEAT else 'never (no heartbeat)'}; "
        f"node limits: {NODE_LIMITS or 'none'}; logs in {workdir}"
    )
    sys.stdout.flush()
    runs: list[tuple[str, Callable[[], Any]]] = []
    if "a" in chosen:
        runs += [("a", lambda: sectionA(ctx, 0)), ("a", lambda: sectionA(ctx, 3))]
    if "b" in chosen:
        runs.append(("b", lambda: sectionB(ctx)))
    if "c" in chosen:
        runs.append(("c", lambda: sectionC(ctx)))
    if "d" in chosen:
        runs.append(("d", lambda: sectionD(ctx)))
    if "e" in chosen:
        runs += [
            ("e", functools.partial(sectionE, ctx, size)) for size in plan.mapSizes
        ]
    await warmUp(plan.killTasks)
    rows: list[Row] = []
    began = now()
    budget = args.budget or (180 if args.quick else 900)
    try:
        for section, runSection in runs:
            if now() - began > budget:
                rows.append(Row(section, "skipped: over the time budget"))
                continue
            try:
                rows.append(await runSection())
            except Exception as e:  # one section's failure is a row of the table
                row = Row(section, "FAILED")
                row.missed.append(f"{type(e).__name__}: {e}")
                rows.append(row)
            print(
                f"  [{section}] {rows[-1].run}: {now() - began:.0f} s", file=sys.stderr
            )
    finally:
        left = cleanUp(ctx)
    printTable(
        "Soak: goals are 0 lost, 0 stranded, 0 fired 2x, 0 ran 2x (retries=0), "
        "0 zombies, fds and RSS flat, good client unaffected",
        HEADERS,
        [row.cells() for row in rows],
    )
    for row in rows:
        for note in row.notes:
            print(f"  [{row.section}] {note}")
    print(
        f"  processes left behind at the end: {left} (killed); "
        f"total {now() - began:.0f} s; logs in {workdir}"
    )


async def warmUp(calls: int) -> None:
    """
    What a program does once (the reactor's child-reaping pipe, imports, the
    memory of a first burst of calls) is done before the first
    measurement, not charged to it.
    """
    q = ProcessQueue(2, **QUEUE)
    await within(gatherResults([q.call(trivial, i) for i in range(calls)]), 60)
    await within(q.shutdown(), 30)
    del q
    gc.collect()


def cleanUp(ctx: Context) -> int:
    """Kill every process this script started, whatever state it is in."""
    for node in list(ctx.nodes):
        node.thaw()
    return killDescendants()


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="a ~1-minute smoke run")
    parser.add_argument(
        "--only", default=SECTIONS, help="sections to run, e.g. a,c (default: all)"
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--workdir", help="where logs go (default: a new temp dir)")
    parser.add_argument(
        "--budget", type=float, help="seconds after which sections are skipped"
    )
    # The hostile client mix, as a process of its own (used by section d).
    parser.add_argument("--hostile", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--certs", help=argparse.SUPPRESS)
    parser.add_argument("--idle", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--oversize-mib", type=int, default=8, help=argparse.SUPPRESS)
    parser.add_argument("--pace", type=float, default=0.02, help=argparse.SUPPRESS)
    parser.add_argument("--patience", type=float, default=5, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.only = args.only.replace(",", "").lower()
    return args


def killDescendants() -> int:
    """SIGKILL every process under this one (SIGCONT first); how many lived."""
    left = 0
    for pid, state in descendants().items():
        if state not in "ZX":
            left += 1
            try:
                os.kill(pid, signal.SIGCONT)
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    return left


def run(reactor_: Any, args: argparse.Namespace) -> Deferred[None]:
    return Deferred.fromCoroutine(main(reactor_, args))


if __name__ == "__main__":
    arguments = parse()
    if arguments.hostile:
        react(hostileMain, [arguments])
    else:
        import atexit

        # Whatever ends the run (Ctrl-C included), no process stays behind.
        atexit.register(killDescendants)
        reactor.addSystemEventTrigger("before", "shutdown", killDescendants)
        react(run, [arguments])
