"""
Text about calls and what happened to them (AsynQueue's C{asynqueue.legacy.info}).

L{Info} describes a function call (L{Info.aboutCall}), an exception it
raised (L{Info.aboutException}) or a Twisted failure (L{Info.aboutFailure}),
and splits a call into a namespace and a name that can travel
(L{Info.nn}). L{showResult} is a decorator that prints each call of a
method with its (possibly deferred) result; L{whichThread} adds the
thread's name. The queue itself keeps records instead (C{records()}).
"""

from __future__ import annotations

import functools
import inspect
import pickle
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from twisted.internet.defer import Deferred
from twisted.python import reflect
from twisted.python.failure import Failure

__all__ = [
    "Converter",
    "Info",
    "InfoHolder",
    "hashIt",
    "showResult",
    "whichThread",
]


def hashIt(*args: Any) -> int:
    """A hash of pretty much any objects, containers and unhashables too."""
    total = 0
    for x in args:
        if isinstance(x, dict):
            for k, key in enumerate(sorted(x.keys(), key=repr)):
                total += hashIt(k, key, x[key])
        elif isinstance(x, (list, tuple)):
            for k, value in enumerate(x):
                total += hashIt(k, value)
        else:
            try:
                thisHash = hash(x)
            except Exception:
                try:
                    thisHash = hash(pickle.dumps(x))
                except Exception:
                    thisHash = 0
            total += thisHash
    return hash(total)


# The call counter, the Info of the decorated function, and whether to
# name the thread: shared by every use of showResult, as in AsynQueue.
_SR_STUFF: list[Any] = [0, None, False]


def showResult(f: Callable[..., Any]) -> Callable[..., Any]:
    """
    Decorate a method to print each call of it with its result.

    A Deferred result is followed: the line is printed when it fires, and
    the result passes on unchanged.
    """

    @functools.wraps(f)
    def substitute(self: Any, *args: Any, **kw: Any) -> Any:
        def msg(result: Any, callInfo: str) -> Any:
            resultInfo = str(result)
            if len(callInfo) + len(resultInfo) > 70:
                callInfo += "\n"
            print(f"\n{callInfo} -> {resultInfo}")
            return result

        _SR_STUFF[0] += 1
        about = info.setCall(f).setCall(instance=self, args=args, kw=kw).aboutCall()
        callInfo = f"{_SR_STUFF[0]:03d}: {about}"
        result = f(self, *args, **kw)
        if isinstance(result, Deferred):
            return result.addBoth(msg, callInfo)
        return msg(result, callInfo)

    info = _SR_STUFF[1] = Info(whichThread=_SR_STUFF[2])
    return substitute


def whichThread(f: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate (beneath L{showResult}) to name the thread in its lines."""
    _SR_STUFF[2] = True
    return f


class Converter:
    """Turn objects into pickles or fully qualified names that work both ways."""

    def strToFQN(self, x: str) -> str | None:
        """The fully qualified name of what C{x} names, if it imports; else C{None}."""
        try:
            obj = reflect.namedObject(x)
            fqn: str = reflect.fullyQualifiedName(obj)
        except Exception:
            return None
        return fqn

    def objToPickle(self, x: object) -> bytes | None:
        """C{x} pickled, if it pickles and unpickles again; else C{None}."""
        try:
            xp = pickle.dumps(x)
            pickle.loads(xp)
        except Exception:
            return None
        return xp

    def objToFQN(self, x: object) -> str | None:
        """The fully qualified name of C{x}, if it leads back to it; else C{None}."""
        try:
            fqn: str = reflect.fullyQualifiedName(x)
            reflect.namedObject(fqn)
        except Exception:
            return None
        return fqn

    def processObject(self, x: object) -> bytes | str | None:
        """C{x} as a pickle or, failing that, a fully qualified name."""
        pickled = self.objToPickle(x)
        if pickled:
            return pickled
        return self.objToFQN(x)


class InfoHolder:
    """What L{Info.context} yields: the info about one saved call."""

    def __init__(self, info: Info, ID: int | None) -> None:
        self.info = info
        self.ID = ID

    def getInfo(self, name: str) -> Any:
        """The named info about my call."""
        return self.info.getInfo(self.ID, name)

    def nn(self, raw: bool = False) -> tuple[Any, Any]:
        """L{Info.nn} of my call."""
        return self.info.nn(self.ID, raw)

    def aboutCall(self) -> str:
        """L{Info.aboutCall} of my call."""
        return self.info.aboutCall(self.ID)

    def aboutException(self, exception: BaseException | None = None) -> str:
        """L{Info.aboutException} of my call."""
        return self.info.aboutException(self.ID, exception)

    def aboutFailure(self, failureObj: Failure) -> str:
        """L{Info.aboutFailure} of my call."""
        return self.info.aboutFailure(failureObj, self.ID)


class Info:
    """
    Text about function calls: C{Info(remember=False, whichThread=False)}.

    Set the call with L{setCall} (or L{context}); with C{remember}, the
    info about past calls is kept by their L{ID} until L{forgetID}.
    """

    currentID: int | None
    callDict: dict[str, Any]

    def __init__(self, remember: bool = False, whichThread: bool = False) -> None:
        self.cv = Converter()
        self.lastMetaArgs: tuple[Any, ...] | None = None
        if remember:
            self.pastInfo: dict[int | None, dict[str, Any]] = {}
        self.whichThread = whichThread

    def setCall(self, *metaArgs: Any, **kw: Any) -> Info:
        """
        Set my current call; return me, for chaining.

        C{setCall(f)}, C{setCall(f, args)} (a sequence, or one argument) or
        C{setCall(f, args, kw)}; C{f} may be a string naming a callable.
        With no positional arguments, the keywords C{args}, C{kw} and
        C{instance} change the call set before.
        """
        if metaArgs:
            if self._sameAsLast(metaArgs) and not hasattr(self, "pastInfo"):
                return self
            args = metaArgs[1] if len(metaArgs) > 1 else []
            if not isinstance(args, (tuple, list)):
                args = [args]
            callDict: dict[str, Any] = {
                "f": metaArgs[0],
                "fs": self._funcText(metaArgs[0]),
                "args": args,
                "kw": metaArgs[2] if len(metaArgs) > 2 else {},
                "instance": None,
            }
            if self.whichThread:
                callDict["thread"] = threading.current_thread().name
            self.callDict = callDict
        elif hasattr(self, "callDict"):
            for name in ("args", "kw", "instance"):
                if name in kw:
                    self.callDict[name] = kw[name]
        else:
            raise ValueError(
                "You must supply at least a new function/string "
                "or keywords adding args, kw to a previously set one"
            )
        if hasattr(self, "currentID"):
            del self.currentID
        # Computes (and, remembering, files) the new call's ID.
        _ = self.ID
        if metaArgs:
            self.lastMetaArgs = metaArgs
        return self

    def _sameAsLast(self, metaArgs: tuple[Any, ...]) -> bool:
        last = self.lastMetaArgs
        if last is None or len(metaArgs) != len(last):
            return False
        for arg, lastArg in zip(metaArgs, last, strict=True):
            try:
                if not bool(arg == lastArg):
                    return False
            except Exception:
                return False
        return True

    @property
    def ID(self) -> int | None:
        """A unique ID of my current call (C{None} if none is set)."""
        if hasattr(self, "currentID"):
            return self.currentID
        thisID: int | None = None
        if hasattr(self, "callDict"):
            thisID = hashIt(self.callDict)
            if hasattr(self, "pastInfo"):
                self.pastInfo[thisID] = {"callDict": self.callDict}
        self.currentID = thisID
        return thisID

    def forgetID(self, ID: int | None) -> None:
        """Drop what I remember of call C{ID}."""
        getattr(self, "pastInfo", {}).pop(ID, None)

    @contextmanager
    def context(self, *metaArgs: Any, **kw: Any) -> Iterator[InfoHolder]:
        """Set a call (as L{setCall}), yield an L{InfoHolder} of it; then forget it."""
        if not hasattr(self, "pastInfo"):
            raise ValueError(
                "Can't use a context manager without saving call info "
                "(make the Info with remember=True)"
            )
        ID = self.setCall(*metaArgs, **kw).ID
        try:
            yield InfoHolder(self, ID)
        finally:
            self.forgetID(ID)

    def getInfo(self, ID: int | None, name: str, nowForget: bool = False) -> Any:
        """
        The info C{name} about past call C{ID}; for C{"callDict"}, the
        f-args-kw-instance dict of my current call.
        """

        def getCallDict() -> Any:
            result = getattr(self, "callDict", None)
            if result is not None and nowForget:
                del self.callDict
            return result

        if hasattr(self, "pastInfo"):
            if ID is None and name == "callDict":
                return getCallDict()
            if ID in self.pastInfo:
                x = self.pastInfo[ID]
                if nowForget:
                    del self.pastInfo[ID]
                return x.get(name, None)
            return None
        if name == "callDict":
            return getCallDict()
        return None

    def saveInfo(self, name: str, x: Any, ID: int | None = None) -> Any:
        """Remember C{x} as info C{name} of call C{ID} (my current one); return it."""
        if ID is None:
            ID = self.ID
        if hasattr(self, "pastInfo"):
            self.pastInfo.setdefault(ID, {})[name] = x
        return x

    def nn(self, ID: int | None = None, raw: bool = False) -> tuple[Any, Any]:
        """
        Split the call into C{(namespace, name)} that can travel.

        A method gives its instance (pickled, or its fully qualified name)
        and the method's name; a function gives C{None} and the function
        (pickled or by name). C{(None, None)} if nothing works. With
        C{raw}, the objects themselves instead of pickles or names.
        """
        if ID:
            pastInfo = self.getInfo(ID, "wireVersion")
            if pastInfo:
                return tuple(pastInfo)
        result: tuple[Any, Any] = (None, None)
        callDict = self.getInfo(ID, "callDict")
        if not callDict:
            return result
        func = callDict["f"]
        if isinstance(func, str):
            result = None, self.cv.strToFQN(func)
        elif inspect.ismethod(func):
            parent = getattr(func, "__self__", None)
            if parent:
                processed: Any = self.cv.processObject(parent)
                if processed:
                    if raw:
                        processed = parent
                    result = processed, func.__name__
        if result == (None, None):
            processed = self.cv.processObject(func)
            if processed:
                if raw:
                    processed = func
                result = None, processed
        saved: tuple[Any, Any] = self.saveInfo("wireVersion", result, ID)
        return saved

    def aboutCall(self, ID: int | None = None, nowForget: bool = False) -> str:
        """A string describing my current call, or past call C{ID}."""
        if ID:
            pastInfo = self.getInfo(ID, "aboutCall", nowForget)
            if pastInfo:
                return str(pastInfo)
        callDict = self.getInfo(ID, "callDict")
        if not callDict:
            return ""
        func, args, kw = (callDict[x] for x in ("f", "args", "kw"))
        instance = callDict.get("instance", None)
        text = repr(instance) + "." if instance else ""
        text += self._funcText(func) + "("
        parts = [str(x) for x in args]
        parts += [f"{name}={value}" for name, value in kw.items()]
        text += ", ".join(parts) + ")"
        if "thread" in callDict:
            text += " <Thread: {}>".format(callDict["thread"])
        return str(self.saveInfo("aboutCall", text, ID))

    def aboutException(
        self,
        ID: int | None = None,
        exception: BaseException | None = None,
        nowForget: bool = False,
    ) -> str:
        """
        A string describing an exception of my call (or of past call
        C{ID}): the one given, else the one being handled, with its
        traceback.
        """
        if ID:
            pastInfo = self.getInfo(ID, "aboutException", nowForget)
            if pastInfo:
                return str(pastInfo)
        stuff = sys.exc_info()
        if exception is not None:
            lineList = [f"Exception '{exception!r}'"]
        else:
            lineList = [f"Exception '{stuff[1]}'"]
        callInfo = self.aboutCall()
        if callInfo:
            lineList.append(f" doing call '{callInfo}':")
        self._divider(lineList)
        if exception is None:
            lineList.append("".join(traceback.format_tb(stuff[2])))
        del stuff
        text = self._formatList(lineList)
        return str(self.saveInfo("aboutException", text, ID))

    def aboutFailure(
        self, failureObj: Failure, ID: int | None = None, nowForget: bool = False
    ) -> str:
        """A string describing a failure of my call (usable as an errback)."""
        if ID:
            pastInfo = self.getInfo(ID, "aboutFailure", nowForget)
            if pastInfo:
                return str(pastInfo)
        lineList = [f"Failure '{failureObj.getErrorMessage()}'"]
        callInfo = self.aboutCall()
        if callInfo:
            lineList.append(f" doing call '{callInfo}':")
        self._divider(lineList)
        lineList.append(failureObj.getTraceback(detail="verbose"))
        text = self._formatList(lineList)
        return str(self.saveInfo("aboutFailure", text, ID))

    def _divider(self, lineList: list[str]) -> None:
        lineList.append("-" * min(79, max(len(x) for x in lineList) + 1))

    def _formatList(self, lineList: list[str]) -> str:
        lines = []
        for line in lineList:
            for newLine in line.split(":"):
                lines.extend(newLine.split("\\n"))
        return "\n".join(lines)

    def _funcText(self, func: object) -> str:
        if isinstance(func, str):
            return func
        if callable(func):
            text = getattr(func, "__name__", None)
            if text:
                return str(text)
            return repr(func)
        return f"{func!r}[Not Callable!]"
