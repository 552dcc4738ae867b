"""
Where the end-to-end time of C{mcm -w 1} and C{mcm -w 2} goes, and the
floor under it: why C{mcm -w 2} is not 1.8x as fast as C{mcm -w 1} on
C{mcm -N 2000 1600 -0.75 0.1 0.05} here (issue 16).

1. Floors: fresh interpreters that only import what any numpy and
   Twisted program must (median of C{--reps}).
2. Phases: the whole C{mcm} command, C{-w 1} and C{-w 2} taking turns,
   C{--reps} times each, run with timestamps: the parent's interpreter and
   imports, the queue's start (the zygote, its children and their
   initializer), the render (first block sent to last block in), the PNG
   file's last bytes, the queue's shutdown, the interpreter's exit; each
   worker's time busy in the kernel and idle, and how late the last
   worker finished after the first.
3. The algebra: with F the fixed costs (everything but the render) and
   R the render on one worker, two workers on two cores can at best make
   the command (F + R) / (F + R/2) as fast, which is 1.8 only if
   F <= R/8. Printed with F and R as measured, with the render's
   parallel efficiency as measured, and with F at its floor.

    .venv/bin/python benchmarks/bench_mcm_end.py [--reps N]
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from typing import Any

# Little is imported here: the traced mcm command runs this file too, and
# its start is timed.

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIEW = ["-N", "2000", "1600", "-0.75", "0.1", "0.05"]

FLOORS = [
    ("python -c pass", "pass"),
    ("import numpy", "import numpy"),
    ("import twisted.internet.reactor", "import twisted.internet.reactor"),
    (
        "import numpy, twisted.internet.reactor",
        "import numpy, twisted.internet.reactor",
    ),  # noqa: E501
    (
        "from asynqueue import ProcessQueue (+ reactor)",
        "import twisted.internet.reactor; from asynqueue import ProcessQueue",
    ),
    ("import mcmandelbrot.main (mcm's parent)", "import mcmandelbrot.main"),
]


# -- in the workers: the kernel, timed ----------------------------------------------


def timedRenderRows(*args: Any) -> bytes:
    """C{renderRows}, its start and end appended to the log C{MCM_END_LOG} names."""
    from mcmandelbrot.kernel import renderRows

    began = time.time()
    rgb: bytes = renderRows(*args)
    ended = time.time()
    with open(os.environ["MCM_END_LOG"], "a") as log:
        log.write(f"{os.getpid()} {began:.6f} {ended:.6f}\n")
    return rgb


# -- in the mcm process: its phases, stamped --------------------------------------


def traced(argv: list[str]) -> None:
    """Run C{mcm argv} with each phase's time (and CPU) appended to the log."""
    stamps = {"interpreter": time.time()}
    import mcmandelbrot.main as mcm
    import mcmandelbrot.render as render

    stamps["imports"] = time.time()
    # The blocks' function, as render() sends it, and mcm's steps, stamped.
    setattr(render, "renderRows", timedRenderRows)  # noqa: B010

    def stamping(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
        async def stamped(*args: Any, **kwargs: Any) -> Any:
            stamps[name + " called"] = time.time()
            stamps[name + " cpu"] = time.process_time()
            result = await f(*args, **kwargs)
            stamps[name + " done"] = time.time()
            return result

        return stamped

    makeQueue, renderOne = mcm.makeQueue, getattr(mcm, "render")  # noqa: B009

    async def makeQueueStamped(options: Any) -> Any:
        queue, concurrency, workers = await stamping("queue", makeQueue)(options)
        queue.shutdown = stamping("shutdown", queue.shutdown)
        return queue, concurrency, workers

    async def renderStamped(*args: Any, **kwargs: Any) -> Any:
        result = await stamping("render", renderOne)(*args, **kwargs)
        stamps["render cpu end"] = time.process_time()
        return result

    setattr(mcm, "makeQueue", makeQueueStamped)  # noqa: B010
    setattr(mcm, "render", renderStamped)  # noqa: B010

    def write() -> None:
        stamps["exit"] = time.time()
        stamps["cpu"] = time.process_time()
        with open(os.environ["MCM_END_PARENT"], "w") as log:
            for name, value in stamps.items():
                log.write(f"{name}\t{value:.6f}\n")

    import atexit

    atexit.register(write)
    mcm.run(argv)


# -- the measuring process -------------------------------------------------------------


def floors(reps: int) -> list[tuple[str, float, float]]:
    import subprocess

    from common import median

    rows = []
    for label, code in FLOORS:
        times = []
        for _ in range(reps):
            began = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True)
            times.append(time.perf_counter() - began)
        rows.append((label, median(times), min(times)))
    return rows


def mcmPhases(workers: int, tmp: str) -> dict[str, float]:
    """One whole C{mcm -w workers} command, timed by phase (seconds)."""
    import subprocess

    parentLog, workerLog = f"{tmp}/parent", f"{tmp}/workers"
    for path in (parentLog, workerLog):
        if os.path.exists(path):
            os.unlink(path)
    env = dict(os.environ, MCM_END_LOG=workerLog, MCM_END_PARENT=parentLog)
    command = [sys.executable, __file__, "--trace", "-q", "-w", str(workers)]
    began = time.time()
    command += ["-o", f"{tmp}/m.png", *VIEW]
    subprocess.run(command, env=env, check=True, capture_output=True)
    ended = time.time()
    s: dict[str, float] = {}
    with open(parentLog) as log:
        for line in log:
            name, value = line.rstrip("\n").split("\t")
            s[name] = float(value)
    tasks: dict[str, list[tuple[float, float]]] = {}
    with open(workerLog) as log:
        for line in log:
            pid, a, b = line.split()
            tasks.setdefault(pid, []).append((float(a), float(b)))
    first = min(a for spans in tasks.values() for a, _ in spans)
    last = max(b for spans in tasks.values() for _, b in spans)
    busy = [sum(b - a for a, b in spans) for spans in tasks.values()]
    finishes = [max(b for _, b in spans) for spans in tasks.values()]
    p = {
        "interpreter start": s["interpreter"] - began,
        "parent's imports": s["imports"] - s["interpreter"],
        "options, reactor": s["queue called"] - s["imports"],
        "queue start (zygote, children, warm-up)": s["queue done"] - s["queue called"],
        "render: to the first block's start": first - s["render called"],
        "render: first block's start to last's end": last - first,
        "render: last block's end to PNG done": s["render done"] - last,
        "queue shutdown": s["shutdown done"] - s["shutdown called"],
        "interpreter exit": ended - s["shutdown done"],
        "TOTAL": ended - began,
    }
    p["fixed costs F (all but the render)"] = p["TOTAL"] - (
        s["render done"] - s["render called"]
    )
    p["render R (mcm's, as it reports)"] = s["render done"] - s["render called"]
    p["workers' kernel time, summed"] = sum(busy)
    p["workers' idle time in the render"] = len(busy) * (last - first) - sum(busy)
    p["last worker's finish after the first's"] = max(finishes) - min(finishes)
    p["blocks"] = sum(len(spans) for spans in tasks.values())
    p["parent CPU before the render"] = s["render cpu"]
    p["parent CPU in the render"] = s["render cpu end"] - s["render cpu"]
    return p


def main() -> None:
    import argparse
    import tempfile

    from common import gitRevision, machineHeader, median, printTable

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    options = parser.parse_args()
    load = os.getloadavg()
    print(machineHeader(asynqueue=gitRevision(ROOT)))
    print(f"load average at the start: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")
    floorRows = floors(options.reps)
    printTable(
        f"Floors: fresh interpreters (ms, {options.reps} runs)",
        ["command", "median", "best"],
        [(label, 1000 * m, 1000 * b) for label, m, b in floorRows],
    )
    runs: dict[int, list[dict[str, float]]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(options.reps):
            for workers in (1, 2):
                runs[workers].append(mcmPhases(workers, tmp))
    names = list(runs[1][0])
    med = {w: {n: median(r[n] for r in runs[w]) for n in names} for w in (1, 2)}

    def show(w: int, n: str) -> str:
        values = [r[n] for r in runs[w]]
        if n == "blocks":
            return f"{med[w][n]:.0f}"
        low, high = 1000 * min(values), 1000 * max(values)
        return f"{1000 * med[w][n]:.0f} [{low:.0f}-{high:.0f}]"

    printTable(
        f"mcm -q -w N {' '.join(VIEW)}: phases (ms, median [range] of "
        f"{options.reps} runs each, taking turns)",
        ["phase", "-w 1", "-w 2"],
        [(n, show(1, n), show(2, n)) for n in names],
    )
    end = os.getloadavg()
    print(f"load average at the end: {end[0]:.2f} {end[1]:.2f} {end[2]:.2f}")
    floor = {label: (m, b) for label, m, b in floorRows}
    best = {w: {n: min(r[n] for r in runs[w]) for n in names} for w in (1, 2)}
    algebra("medians", med[1], med[2], {k: v[0] for k, v in floor.items()})
    # On a shared machine the best of each phase is the nearest to a quiet one.
    algebra(
        "bests of each phase", best[1], best[2], {k: v[1] for k, v in floor.items()}
    )


def algebra(
    title: str, one: dict[str, float], two: dict[str, float], floors: dict[str, float]
) -> None:
    F = one["fixed costs F (all but the render)"]
    R = one["render R (mcm's, as it reports)"]
    R2 = two["render R (mcm's, as it reports)"]
    efficiency = R / (2 * R2)
    print(f"\nThe algebra ({title}):")
    print(f"  end to end, -w 2 against -w 1: {one['TOTAL'] / two['TOTAL']:.2f}x")
    print(
        f"  render alone, -w 2 against -w 1: {R / R2:.2f}x "
        f"(parallel efficiency {100 * efficiency:.0f}%)"
    )
    print(
        f"  F = {F:.3f} s (-w 2: {two['fixed costs F (all but the render)']:.3f} s), "
        f"R = {R:.3f} s: 1.8x needs F <= R/8 = {R / 8:.3f} s"
    )
    print(
        f"  best possible with this F and a perfect render: "
        f"{(F + R) / (F + R / 2):.2f}x; with the render's measured efficiency: "
        f"{(F + R) / (F + R / (2 * efficiency)):.2f}x"
    )
    # The floors: one interpreter that imports numpy and the reactor; or
    # just the reactor, were numpy imported by the workers meanwhile.
    for label in (FLOORS[3][0], FLOORS[2][0]):
        f = floors[label]
        print(
            f"  with F at the floor '{label}' ({f:.3f} s) and nothing else: "
            f"{(f + R) / (f + R / 2):.2f}x (perfect render), "
            f"{(f + R) / (f + R / (2 * efficiency)):.2f}x (measured efficiency)"
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--trace"]:
        traced(sys.argv[2:])
    else:
        main()
