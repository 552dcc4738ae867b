"""The C{twist asynqueue-node} plugin: an asynqueue worker node as a service."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IServiceMaker
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IServiceMaker, IPlugin)
class _NodeServiceMaker:
    tapname = "asynqueue-node"
    description = "An asynqueue worker node: runs queued calls on this machine's cores."

    @property
    def options(self) -> Any:
        from asynqueue.node.service import NodeOptions

        return NodeOptions

    def makeService(self, options: Any) -> Any:
        from asynqueue.node.service import makeNodeService

        return makeNodeService(options)


serviceMaker = _NodeServiceMaker()
