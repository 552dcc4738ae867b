"""
Small helpers shared by the benchmark scripts: machine header, timing,
percentiles, a table and ratio lines.

Scripts import it as C{common} (they run as C{python benchmarks/NAME.py},
which puts this folder first on C{sys.path}).
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from typing import Any

now = time.perf_counter


def machineHeader(**versions: str) -> str:
    """One line describing this machine, this Python and the given versions."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    parts = [
        f"nproc {os.cpu_count()}",
        cpu,
        f"{platform.system()} {platform.release()}",
        f"Python {platform.python_version()} ({sys.implementation.name})",
    ]
    parts += [f"{name} {version}" for name, version in versions.items()]
    return " | ".join(parts)


def gitRevision(path: str = ".") -> str:
    """The short commit of the repository at C{path}, '+' if its tree is edited."""
    try:
        run = lambda *a: subprocess.run(  # noqa: E731
            ["git", "-C", path, *a], capture_output=True, text=True, check=True
        ).stdout.strip()
        return run("rev-parse", "--short", "HEAD") + (
            "+" if run("status", "-s") else ""
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


class Stopwatch:
    """
    Wall and this thread's CPU seconds of a C{with} block.

    A full collection runs first, so that garbage left by earlier work is
    not charged to the block; with C{gcOff} the cyclic collector is off
    inside it. Works around C{await}s in a coroutine too.
    """

    def __init__(self, gcOff: bool = False) -> None:
        self.gcOff = gcOff
        self.wall = self.cpu = 0.0

    def __enter__(self) -> Stopwatch:
        gc.collect()
        if self.gcOff:
            gc.disable()
        self.wall, self.cpu = now(), time.thread_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall, self.cpu = now() - self.wall, time.thread_time() - self.cpu
        if self.gcOff:
            gc.enable()


def percentile(values: Sequence[float], p: float) -> float:
    """The C{p}-th percentile (0-100) of C{values}, by linear interpolation."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    k = (len(ordered) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def median(values: Iterable[float]) -> float:
    """The median of C{values}."""
    return statistics.median(values)


def printTable(
    title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]
) -> None:
    """Print rows under headers; numbers are right-aligned, text left-aligned."""
    cells = [[_fmt(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(_isNumber(r[i]) for r in cells) for i in range(len(headers))]
    print(f"\n{title}")
    print(
        "  ".join(
            h.rjust(w) if n else h.ljust(w)
            for h, w, n in zip(headers, widths, numeric, strict=True)
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(
            "  ".join(
                (c.rjust(w) if _isNumber(c) else c.ljust(w))
                for c, w in zip(row, widths, strict=True)
            )
        )


def printRatio(
    label: str, numerator: float, denominator: float, target: float | None = None
) -> bool | None:
    """Print C{numerator / denominator} and whether it meets C{target}; return that."""
    ratio = numerator / denominator if denominator else float("inf")
    line = f"  {label}: {ratio:.2f}x"
    met = None
    if target is not None:
        met = ratio >= target
        line += f"  (target >= {target:g}x: {'met' if met else 'NOT met'})"
    print(line)
    return met


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:,.1f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _isNumber(text: str) -> bool:
    return text.replace(",", "").replace(".", "", 1).lstrip("-").isdigit()
