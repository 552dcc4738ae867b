"""
AsynQueue's universes: L{WireWorkerUniverse}, a class whose public
methods are all a universe node runs, called by name with plain data.
"""

from __future__ import annotations

from typing import Any


class WireWorkerUniverse:
    """
    AsynQueue's way to expose a fixed set of methods on a node.

    Subclass me with the methods clients may call. A node started with my
    subclass (C{--universe module.Class}, or L{asynqueue.node.service.WireServer})
    runs only calls of those methods, by name, with arguments of plain data
    (numbers, strings, bytes, lists, tuples, dicts, sets, None): no code
    travels, so a client can run nothing else there. Methods whose names
    start with C{_} are not exposed. Clients use
    L{asynqueue.workers.remote.WireWorker} and call C{queue.call("method", ...,
    series=...)}.
    """

    def __init__(self, wireServer: Any = None) -> None:
        # AsynQueue's signature: the server the universe serves, if any.
        self.ws = wireServer

    @classmethod
    def check(cls, instance: object) -> bool:
        """AsynQueue's check: C{True}, or C{TypeError} if not a universe."""
        if isinstance(instance, WireWorkerUniverse):
            return True
        raise TypeError("You must provide a WireWorkerUniverse subclass instance")


def callUniverse(name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run a universe method in a node's child (the universe is its context)."""
    from asynqueue.node.child import context

    return getattr(context(), name)(*args, **kwargs)


def makeUniverse(path: str) -> WireWorkerUniverse:
    """Import C{module.Class} and make the universe (in a node's child)."""
    import importlib

    module, _, name = path.rpartition(".")
    universe = getattr(importlib.import_module(module), name)()
    if not isinstance(universe, WireWorkerUniverse):
        raise TypeError(f"{path} is not a WireWorkerUniverse subclass")
    return universe
