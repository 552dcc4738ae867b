"""
ampoule's side of the benchmark: AMP commands and the child that answers them.

ampoule starts each child as a new interpreter that imports the child
class by its qualified name, so it lives in an importable module
(C{peers.ampoulechild}); the benchmark puts the C{benchmarks} folder on
the children's C{PYTHONPATH}.
"""

from __future__ import annotations

from ampoule.child import AMPChild
from twisted.protocols import amp

from peers import work


class Trivial(amp.Command):
    arguments = [(b"x", amp.Integer())]
    response = [(b"x", amp.Integer())]


class Spin(amp.Command):
    arguments = [(b"n", amp.Integer())]
    response = [(b"total", amp.Integer())]


class Payload(amp.Command):
    """Returns C{size} bytes: fails past AMP's 65,535-byte limit on one value."""

    arguments = [(b"size", amp.Integer())]
    response = [(b"data", amp.String())]


class BenchChild(AMPChild):
    """An ampoule child that runs the benchmark's calls."""

    @Trivial.responder
    def trivial(self, x: int) -> dict[str, int]:
        return {"x": work.trivial(x)}

    @Spin.responder
    def spin(self, n: int) -> dict[str, int]:
        return {"total": work.spin(n)}

    @Payload.responder
    def payload(self, size: int) -> dict[str, bytes]:
        return {"data": work.payload(size)}
