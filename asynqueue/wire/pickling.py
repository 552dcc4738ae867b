"""
Pickling for the wire: calls (cloudpickle where plain pickle would name
C{__main__}), values, a plain-data-only unpickler for what must run no
code, and errors encoded with their type, message and traceback text.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable

from asynqueue.wire.framing import Value
from asynqueue.wire.functions import (
    MAGIC,
    cloudpickler,
    definitionOf,
    dumpArguments,
    plainKeywords,
    referenceCall,
    referencePayload,
)

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


PROTOCOL = 5


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        from asynqueue.errors import UnpicklableError

        raise UnpicklableError(f"only plain data may travel here, not {module}.{name}")


def loadsPlain(data: bytes | memoryview) -> Any:
    """Unpickle data that may hold no class or function at all (so no code)."""
    import io

    return _PlainUnpickler(io.BytesIO(data)).load()


def dumps(value: object) -> bytes:
    """Pickle a value (an argument, result or item) with protocol 5."""
    try:
        return pickle.dumps(value, PROTOCOL)
    except Exception:
        # Values made at a prompt or in a closure need cloudpickle.
        result: bytes = cloudpickler().dumps(value, PROTOCOL)
        return result


loads: Callable[[bytes | memoryview], Any] = pickle.loads


def dumpCall(
    f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
) -> bytes:
    """
    Pickle a call; raise L{UnpicklableError} naming what cannot be pickled.

    A function pickled by value (defined in C{__main__}, a closure, a
    lambda) is pickled once and named by key in its calls, as long as the
    rule of L{asynqueue.wire.functions.definitionOf} allows; the node is
    sent it once (see L{asynqueue.wire.functions}). Such a call finds its
    function's pickle while the function lives: keep the function (as a
    queued task does) or L{asynqueue.wire.functions.pinned} the call.
    """
    definition = definitionOf(f)
    if definition is not None:
        try:
            return referenceCall(definition, dumpArguments(args, kwargs))
        except Exception:
            # The whole call again, which names the culprit.
            pass
    if type(kwargs) is not dict:
        kwargs = plainKeywords(kwargs)
    call = (f, args, kwargs)
    try:
        data = pickle.dumps(call, PROTOCOL)
        # What plain pickle refers to by name in __main__ (a function typed
        # at a prompt, a script's class) does not exist in the worker:
        # cloudpickle sends such things by value.
        if b"__main__" not in data:
            return data
    except Exception:
        pass
    try:
        result: bytes = cloudpickler().dumps(call, PROTOCOL)
        return result
    except Exception as e:
        try:
            why = _culprit(f, args, kwargs, e)
        except Exception:
            # Naming the culprit must never be what fails the call.
            why = f"the call cannot be pickled: {describeError(e)}"
        from asynqueue.errors import UnpicklableError

        raise UnpicklableError(why) from e


def callArguments(call: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """
    The arguments of a call L{dumpCall} pickled, as C{(args, kwargs)}: equal
    copies of those it was given (for a queue that let the originals go).
    """
    if call[:4] == MAGIC:
        args, kwargs = loads(referencePayload(call))
    else:
        _, args, kwargs = loads(call)
    return args, kwargs


class CallPickler:
    """
    How the workers here pickle calls and read their arguments back (the
    methods of L{asynqueue.interfaces.ICallPickling}), for them to inherit.
    """

    def prepareCall(
        self, f: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> bytes:
        """Pickle a call as I send it (L{ICallPickling})."""
        return dumpCall(f, args, kwargs)

    def argumentsOf(self, call: bytes) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The arguments of a call pickled (L{ICallPickling})."""
        return callArguments(call)


def pickledCall(task: Any) -> bytes:
    """
    A task's call, pickled: as the queue pickled it when it was queued, or
    now; raise L{UnpicklableError} naming what cannot be pickled.
    """
    if task.pickled is not None:
        result: bytes = task.pickled
        return result
    return dumpCall(task.f, task.args, task.kwargs)


def _culprit(
    f: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: Exception,
) -> str:
    parts: list[tuple[str, object]] = [("the callable", f)]
    parts += [(f"argument {i}", a) for i, a in enumerate(args)]
    parts += [(f"keyword argument {k!r}", v) for k, v in kwargs.items()]
    for what, obj in parts:
        try:
            cloudpickler().dumps(obj, PROTOCOL)
        except Exception as e:
            return f"{what} ({_short(obj)}) cannot be pickled: {describeError(e)}"
    return f"the call cannot be pickled: {describeError(error)}"


def _short(obj: object) -> str:
    """A short repr of C{obj}, or its type's name if its repr fails (or recurses)."""
    try:
        text = repr(obj)
    except Exception:
        return f"a {type(obj).__qualname__} whose repr() failed"
    return text if len(text) <= 80 else text[:77] + "..."


def describeError(error: BaseException) -> str:
    """C{Type: message} on one line, even for an exception whose C{str()} fails."""
    try:
        message = str(error)
    except Exception:
        message = "(its str() failed)"
    name = type(error).__name__
    first = message.strip().splitlines()[0] if message.strip() else ""
    return f"{name}: {first}" if first else name


def encodeError(error: BaseException) -> bytes:
    """
    Encode an exception for the trip back: the exception itself if it
    pickles (and unpickles), and always its type name, message and
    traceback text.
    """
    # Imported here: a child starts without it, and most calls never fail.
    import traceback

    try:
        text = "".join(traceback.format_exception(error))
    except Exception:
        text = f"{type(error).__qualname__} (its traceback could not be formatted)\n"
    try:
        message = str(error)
    except Exception:
        message = f"<{type(error).__qualname__} whose str() failed>"
    try:
        pickled: bytes | None = dumps(error)
        loads(pickled)  # type: ignore[arg-type]
    except Exception:
        pickled = None
    return dumps((pickled, type(error).__qualname__, message, text))


def decodeError(payload: Value, where: str) -> BaseException:
    """
    The exception an encoded error stands for, with the remote traceback as a note.

    If the original exception cannot be rebuilt here, a L{RemoteError}
    carrying its type name, message and traceback stands in for it.
    """
    pickled, typeName, message, text = loadsPlain(payload)
    error: BaseException | None = None
    if pickled is not None:
        try:
            error = loads(pickled)
        except Exception:
            error = None
    if not isinstance(error, BaseException):
        from asynqueue.errors import RemoteError

        error = RemoteError(typeName, message, text)
    error.add_note(f"Traceback from {where}:\n{text.rstrip()}")
    error.remoteTraceback = text  # type: ignore[attr-defined]
    return error
