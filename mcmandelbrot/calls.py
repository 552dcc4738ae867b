"""
The kernel's functions as the parent sends them: by name, without importing
the kernel (and numpy, some 60 ms of a run's start) in the parent, which
only sends calls and writes what comes back.

A L{KernelFunction} is pickled as a lookup of the kernel's function of its
name, so the worker that unpickles it gets the function itself; called
here, it imports the kernel and runs the function in this process.
"""

from __future__ import annotations

from typing import Any

__all__ = ["KERNEL", "KernelFunction", "renderRows", "renderTile", "warmUp"]

#: The module of the functions.
KERNEL = "mcmandelbrot.kernel"


def kernelFunction(name: str) -> Any:
    """The function C{name} of the kernel (imported here if it was not)."""
    import mcmandelbrot.kernel

    return getattr(mcmandelbrot.kernel, name)


class KernelFunction:
    """A function of L{mcmandelbrot.kernel}, named; the function itself in a worker."""

    def __init__(self, name: str) -> None:
        self.__name__ = self.__qualname__ = name
        # A ProcessQueue's zygote imports its initializer's module for the
        # children it forks: so the kernel and numpy are imported once there.
        self.__module__ = KERNEL

    def __call__(self, *args: Any) -> Any:
        return kernelFunction(self.__name__)(*args)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return kernelFunction, (self.__name__,)

    def __repr__(self) -> str:
        return f"<{KERNEL}.{self.__name__}, by name>"


renderRows = KernelFunction("renderRows")
renderTile = KernelFunction("renderTile")
warmUp = KernelFunction("warmUp")
