"""
Run an asynqueue child process under cProfile.

A C{ProcessWorker} starts its child as C{EXECUTABLE -c CODE}; the benchmark's
C{--profile-children} gives it, as C{EXECUTABLE}, a small script that runs

    python -m peers.childprofile PREFIX CODE

which runs C{CODE} under cProfile (counting this process's CPU time, so
that waiting for work costs nothing) and writes the statistics to
C{PREFIX.PID} when the child ends normally, as it does when its queue
shuts down.
"""

from __future__ import annotations

import cProfile
import os
import sys
import time


def main() -> None:
    prefix, code = sys.argv[1], sys.argv[2]
    profile = cProfile.Profile(time.process_time)
    try:
        profile.runctx(code, {"__name__": "__main__"}, {})
    finally:
        profile.dump_stats(f"{prefix}.{os.getpid()}")


if __name__ == "__main__":
    main()
