"""
The mcmandelbrot demo: the Mandelbrot set rendered with asynqueue.

L{run} is the C{mcm} command. Its numerics need numpy and pypng, which come
with C{pip install 'asynqueue[mcm]'}; without them C{mcm} says so in one
line.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence

__all__ = ["missingModules", "run"]

#: The modules C{mcm} needs beyond asynqueue's own, and their packages.
NEEDS = {"numpy": "numpy", "png": "pypng"}


def missingModules() -> list[str]:
    """The packages of L{NEEDS} that cannot be imported here."""
    missing = []
    for module, package in NEEDS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except ValueError:
            # A module set to None in sys.modules (blocked) has no spec.
            found = False
        if not found:
            missing.append(package)
    return missing


def run(argv: Sequence[str] | None = None) -> None:
    """The C{mcm} console script: L{mcmandelbrot.main.run}, once it can run."""
    missing = missingModules()
    if missing:
        sys.exit(f"mcm needs {' and '.join(missing)}: pip install 'asynqueue[mcm]'")
    from mcmandelbrot.main import run as runMain

    runMain(argv)
