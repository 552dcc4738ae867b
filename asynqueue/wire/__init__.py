"""
What travels between a queue and the processes or nodes that run its
calls: framing, the commands and statuses, pickling and errors, results,
the result ring and start note, pipes, and the parent's side of the
conversation with a node (L{NodeClient}).

The names of AsynQueue's C{asynqueue.wire} (C{WireWorker}, C{WireServer},
C{WireWorkerUniverse}, C{ServerManager}) and of this package's first layout
are here too.
"""

from asynqueue._lazy import lazyExports

_EXPORTS = {
    "BigBytes": "asynqueue.wire.commands",
    "BoxReader": "asynqueue.wire.framing",
    "boxPieces": "asynqueue.wire.framing",
    "bigValue": "asynqueue.wire.framing",
    "writeBox": "asynqueue.wire.framing",
    "NodeClient": "asynqueue.wire.client",
    "Status": "asynqueue.wire.commands",
    "LOOPBACK": "asynqueue.wire.endpoints",
    "RunTasks": "asynqueue.wire.commands",
    "TaskResult": "asynqueue.wire.commands",
    "TaskResults": "asynqueue.wire.commands",
    "RESULT_WINDOW": "asynqueue.wire.commands",
    "RESULT_DELAY": "asynqueue.wire.commands",
    "NextItems": "asynqueue.wire.commands",
    "CloseIterator": "asynqueue.wire.commands",
    "CancelTask": "asynqueue.wire.commands",
    "Stop": "asynqueue.wire.commands",
    "NodeInfo": "asynqueue.wire.commands",
    "PROTOCOL": "asynqueue.wire.pickling",
    "dumpCall": "asynqueue.wire.pickling",
    "pickledCall": "asynqueue.wire.pickling",
    "dumps": "asynqueue.wire.pickling",
    "loads": "asynqueue.wire.pickling",
    "loadsPlain": "asynqueue.wire.pickling",
    "encodeError": "asynqueue.wire.pickling",
    "decodeError": "asynqueue.wire.pickling",
    "describeError": "asynqueue.wire.pickling",
    "decodeResult": "asynqueue.wire.results",
    "deliverResult": "asynqueue.wire.results",
    "reportResult": "asynqueue.wire.results",
    "WireIterationSource": "asynqueue.wire.results",
    "WireWorkerUniverse": "asynqueue.wire.universe",
    "WireWorker": "asynqueue.workers.remote",
    "WireServer": "asynqueue.node.service",
    "ServerManager": "asynqueue.wire.manager",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazyExports(__name__, _EXPORTS)
