"""
What a queue logs of its tasks as they end: AsynQueue's C{warn},
C{verbose} and C{spew}, as queue defaults and per call.

Logging never changes an outcome: a failed task fails its Deferred
whatever is logged of it.
"""

from __future__ import annotations

import reprlib

from twisted.logger import Logger
from twisted.python.failure import Failure

from asynqueue.tasks import Task

__all__ = ["Talk", "describeCall"]

#: What is logged of tasks goes under this namespace.
_log = Logger(namespace="asynqueue")

_short = reprlib.Repr()
_short.maxstring = 60
_short.maxother = 60
_short.maxlist = _short.maxtuple = _short.maxdict = _short.maxset = 6


def describeCall(task: Task) -> str:
    """C{name(arguments...)}, each argument shortened."""
    parts = [_short.repr(a) for a in task.args]
    parts.extend(f"{k}={_short.repr(v)}" for k, v in task.kwargs.items())
    return f"{task.name}({', '.join(parts)})"


class Talk:
    """
    A queue's defaults for what is logged of a task as it ends; a call's
    own C{warn}, C{verbose} and C{spew} options override them.

      - C{warn}: a failure is logged, in one line (type and message);
      - C{verbose}: what is logged names the call with its arguments, and a
        failure comes with its traceback (a failure is logged even without
        C{warn});
      - C{spew}: every task is logged as it ends, with its result
        (implies C{verbose}).
    """

    __slots__ = ("warn", "verbose", "spew", "on")

    def __init__(self, warn: bool = False, verbose: bool = False, spew: bool = False):
        self.warn = warn
        self.verbose = verbose or spew
        self.spew = spew
        #: Whether anything at all is logged by default (read per task).
        self.on = warn or verbose or spew

    def tell(self, task: Task, result: object) -> None:
        """Log what the options say of C{task}, which ended with C{result}."""
        options = task.options
        spew = self.spew if options.spew is None else options.spew
        verbose = spew or (self.verbose if options.verbose is None else options.verbose)
        warn = self.warn if options.warn is None else options.warn
        failed = isinstance(result, Failure)
        if not (spew or (failed and (warn or verbose))):
            return
        what = describeCall(task) if verbose else task.name
        if isinstance(result, Failure):
            if verbose:
                _log.failure("Task {what} failed", result, what=what)
            else:
                _log.error(
                    "Task {what} failed: {error}",
                    what=what,
                    error=f"{result.value.__class__.__name__}: "
                    f"{result.getErrorMessage()}",
                )
        else:
            _log.info("Task {what} -> {result}", what=what, result=_short.repr(result))
