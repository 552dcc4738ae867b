"""AsynQueue's import path C{asynqueue.info}: see L{asynqueue.legacy.info}."""

from asynqueue.legacy.info import *  # noqa: F403
from asynqueue.legacy.info import __all__  # noqa: F401
