"""The first layout's path of C{asynqueue-certs} (L{asynqueue.node.certs})."""

from asynqueue.node.certs import main, makeCluster

__all__ = ["makeCluster", "main"]
