"""
What runs on the far side of the wire: the child runtime, the node
protocol, the pool of children a network node runs calls on, the network
service with its command line and connection guard, and certificates.
"""

from asynqueue._lazy import lazyExports

_EXPORTS = {
    "context": "asynqueue.node.child",
    "LocalRunner": "asynqueue.node.child",
    "childMain": "asynqueue.node.child",
    "NodeProtocol": "asynqueue.node.protocol",
    "NodePool": "asynqueue.node.pool",
    "PoolRunner": "asynqueue.node.pool",
    "PipeReader": "asynqueue.wire.pipes",
    "PipeWriter": "asynqueue.wire.pipes",
    "NodeFactory": "asynqueue.node.service",
    "NodeService": "asynqueue.node.service",
    "NodeOptions": "asynqueue.node.service",
    "WireServer": "asynqueue.node.service",
    "nodeEndpoint": "asynqueue.node.service",
    "makeNodeService": "asynqueue.node.service",
    "main": "asynqueue.node.service",
    "ConnectionGuard": "asynqueue.node.guard",
}

__all__ = sorted(_EXPORTS)
__getattr__ = lazyExports(__name__, _EXPORTS)
