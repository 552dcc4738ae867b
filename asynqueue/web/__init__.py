"""
The dashboard: a live view of a running queue in the browser.

C{Dashboard(q, "tcp:8765:interface=127.0.0.1")} serves a page that shows
the queue's counts, its workers, a task stream and its recent failures,
updated by server-sent events (L{asynqueue.web.server}); what it shows is
derived from the queue's events (L{asynqueue.web.state}). See
C{doc/dashboard.rst}.
"""

from asynqueue.web.server import Dashboard, DashboardError, TokenRequired
from asynqueue.web.state import QueueView

__all__ = ["Dashboard", "DashboardError", "QueueView", "TokenRequired"]
