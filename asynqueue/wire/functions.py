"""
Functions pickled by value, sent to each node once: a function defined in
the user's script (C{__main__}), a closure or a lambda travels as a
L{Definition} the first time a node needs it, and every call of it after
that names it by a key.

The parent pickles such a function once, not per call: L{definitionOf}
keeps its pickle, weakly, for as long as the function lives and nothing it
captured has changed (see L{definitionOf} for the rule). The call's own
bytes begin with the function's key; whoever sends the call on (a worker to
a fresh child) finds the L{Definition} by that key (L{definitionFor}) and
sends the function first. The parent's calls are plain C{bytes}, which the
cyclic garbage collector never walks: a queue holds thousands of them.
A call read off a wire is a L{FunctionCall} instead, which carries its
definition along (a network node passes it on to its children).

Each side of a wire keeps one ledger: the sender a L{FunctionLedger} of
what the peer holds (bounded; it tells the peer what to forget), the
receiver a L{FunctionStore} of what it was sent (bounded by what the sender
says, and by a cap of its own against a sender that never says). A new
child or a new connection starts both afresh, so a replaced child or a
remade connection is sent its functions again.
"""

from __future__ import annotations

import pickle
import types
import weakref
from collections import OrderedDict
from collections.abc import Callable, Mapping

from asynqueue.plain import loadsByValue
from asynqueue.wire.boxes import KEY_BYTES, Pairs, defineFunctionBox
from asynqueue.wire.captured import EMPTY_CELL, MISSING, listCaptured, sameCaptured
from asynqueue.wire.framing import Value

try:
    # hashlib's own, without the OpenSSL that importing hashlib loads first
    # (a fifth of a child's start).
    from _blake2 import blake2b
except ImportError:  # pragma: no cover
    from hashlib import blake2b

# typing for annotations only: importing it takes a good part of a child's start.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any

__all__ = [
    "Definition",
    "FunctionCall",
    "FunctionLedger",
    "FunctionStore",
    "definitionFor",
    "definitionOf",
    "cloudpickler",
    "loadCall",
    "referenceCall",
]

PROTOCOL = 5

#: How a call that names its function by key begins (a pickle never does:
#: it begins with the PROTO opcode); then the key, then C{(args, kwargs)}.
MAGIC = b"AQf1"
_HEAD = len(MAGIC) + KEY_BYTES

#: How many functions a sender lets a peer keep; the oldest unused go first.
PEER_FUNCTIONS = 256

#: And at most this many bytes of them.
PEER_BYTES = 64 << 20

#: A receiver keeps at most this many, and bytes of them, whatever its
#: sender says (a network node's clients are not all to be trusted).
STORE_FUNCTIONS = 4 * PEER_FUNCTIONS
STORE_BYTES = 4 * PEER_BYTES

#: Unpickled functions this process keeps ready to call.
LOADED_FUNCTIONS = 256


def keyOf(data: bytes) -> bytes:
    """The key of a pickled function: a digest of its bytes."""
    return blake2b(data, digest_size=KEY_BYTES).digest()


def cloudpickler() -> ModuleType:
    """cloudpickle's inner module, imported when the parent first needs it."""
    from cloudpickle import cloudpickle

    module: ModuleType = cloudpickle
    return module


class Definition:
    """A function pickled by value, and its key (the digest of the pickle)."""

    __slots__ = ("key", "data", "__weakref__")

    def __init__(self, key: bytes, data: bytes) -> None:
        self.key = key
        self.data = data

    def __repr__(self) -> str:
        return f"<Definition {self.key.hex()[:12]} ({len(self.data)} bytes)>"


class FunctionCall(bytes):
    """
    A pickled call read off a wire that names its function by key, with the
    function's L{Definition} at hand for whoever must send it on (see
    L{FunctionStore.link}).

    Its bytes are what travels (a plain C{bytes} copy: see
    L{FunctionLedger.prepare}); the definition travels only the first time.
    """

    definition: Definition

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled on its own (a kept call, say), it is its bytes.
        return (bytes, (bytes(self),))


def referenceCall(definition: Definition, payload: bytes) -> bytes:
    """
    The call of C{definition}'s function; C{payload}: its pickled arguments.
    Its definition is found by key (L{definitionFor}) while the function lives.
    """
    return b"".join((MAGIC, definition.key, payload))


def referencePayload(call: bytes) -> memoryview:
    """The pickled arguments of a call L{referenceCall} made."""
    return memoryview(call)[_HEAD:]


#: The definitions this process made, by key, while something keeps them:
#: their function's L{_Kept}.
_defined: weakref.WeakValueDictionary[bytes, Definition] = weakref.WeakValueDictionary()


def definitionFor(call: Value) -> Definition | None:
    """The L{Definition} C{call} carries, or this process made for its key."""
    definition: Definition | None = getattr(call, "definition", None)
    if definition is None and call[:4] == MAGIC:
        definition = _defined.get(bytes(call[4:_HEAD]))
    return definition


def pinned(call: bytes) -> bytes:
    """C{call} carrying its definition, to outlive its function (a setup call)."""
    definition = definitionFor(call)
    if definition is None or isinstance(call, FunctionCall):
        return call
    kept = FunctionCall(call)
    kept.definition = definition
    return kept


def callKey(call: Value) -> bytes | None:
    """The key of the function a call names, or C{None} for a whole pickled call."""
    if call[:4] == MAGIC:
        return bytes(call[4:_HEAD])
    return None


# -- the parent: a function's pickle, kept while it holds ---------------------


#: Values a function may capture and still be pickled only once: they
#: cannot change without a new object (which the snapshot notices).
_IMMUTABLE = frozenset(
    {
        type(None),
        bool,
        int,
        float,
        complex,
        str,
        bytes,
        range,
        type(Ellipsis),
        type(NotImplemented),
        types.CodeType,
        types.ModuleType,
    }
)
_BUILTIN = (
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.ClassMethodDescriptorType,
)


#: How many pickles of one function, made as what it captured changed, are
#: kept while it lives (calls queued earlier name them); after that many, it
#: is pickled with each call.
KEPT_DEFINITIONS = 8


class _Kept:
    """
    What L{definitionOf} keeps of one function: the functions pickled with
    it (itself first), each with the global names its code reads, the
    snapshot of what they captured, and the pickle; and its earlier
    pickles, which calls still queued may name.

    It holds functions weakly (those pickled, and those among what they
    captured: a recursive closure captures itself), so that it never keeps
    alive the function it is kept for, a weak key of L{_kept}.
    """

    __slots__ = ("functions", "snapshot", "weakAt", "definition", "earlier")

    def __init__(
        self,
        functions: tuple[types.FunctionType, ...],
        definition: Definition | None,
        earlier: tuple[Definition, ...] = (),
    ) -> None:
        pairs = tuple((g, _names(g)) for g in functions)
        self.functions = tuple((weakref.ref(g), names) for g, names in pairs)
        # Names read from a code object since replaced do not matter: the
        # code itself comes first, and differs.
        snapshot: list[object] = []
        for g, names in pairs:
            listCaptured(g, names, snapshot)
        self.weakAt = tuple(
            i for i, value in enumerate(snapshot) if type(value) is types.FunctionType
        )
        for i in self.weakAt:
            snapshot[i] = weakref.ref(snapshot[i])
        self.snapshot = snapshot
        self.definition = definition
        self.earlier = earlier
        if definition is not None:
            _defined[definition.key] = definition

    def holds(self) -> bool:
        """Whether everything pickled then is the very same object still."""
        # Compared in place: this runs for every call, and each object it
        # made would be one more for the collector to count.
        at = 0
        for ref, names in self.functions:
            g = ref()
            if g is None:
                return False
            at = sameCaptured(g, names, self.snapshot, at, self.weakAt)
            if at < 0:
                return False
        return at == len(self.snapshot)


_kept: weakref.WeakKeyDictionary[types.FunctionType, _Kept] = (
    weakref.WeakKeyDictionary()
)
#: Functions pickled by reference (a module's): nothing to keep.
_byReference: weakref.WeakSet[types.FunctionType] = weakref.WeakSet()


def _byValue(f: types.FunctionType) -> bool:
    """Whether cloudpickle pickles C{f} by value (C{__main__}, a closure, ...)."""
    if f in _byReference:
        return False
    try:
        byReference = bool(cloudpickler()._should_pickle_by_reference(f))
    except Exception:
        byReference = False
    if byReference:
        _byReference.add(f)
    return not byReference


def _names(f: types.FunctionType) -> tuple[str, ...]:
    """The global names C{f}'s code (nested code included) reads or writes."""
    return tuple(cloudpickler()._extract_code_globals(f.__code__))


def _safe(value: object, nested: list[types.FunctionType], depth: int = 0) -> bool:
    """
    Whether C{value}, captured by a function, cannot change without being
    replaced (immutable, or a module, a class or a function pickled by
    reference, a builtin); by-value functions it captures go to C{nested}.
    """
    kind = type(value)
    if kind in _IMMUTABLE or value is MISSING or value is EMPTY_CELL:
        return True
    if depth > 8:
        return False
    if isinstance(value, (tuple, frozenset)) and kind in (tuple, frozenset):
        return len(value) <= 256 and all(_safe(v, nested, depth + 1) for v in value)
    if isinstance(value, _BUILTIN):
        owner = getattr(value, "__self__", None)
        return owner is None or isinstance(owner, types.ModuleType)
    if kind is types.FunctionType:
        f: types.FunctionType = value  # type: ignore[assignment]
        if not _byValue(f):
            return True
        if f not in nested:
            nested.append(f)
        return True
    if isinstance(value, type):
        # A module's class travels by name; a class made in the script is
        # pickled by value, and its attributes can change unseen.
        try:
            return bool(cloudpickler()._should_pickle_by_reference(value))
        except Exception:
            return False
    return False


def _examine(f: types.FunctionType) -> tuple[bool, tuple[types.FunctionType, ...]]:
    """Whether all that C{f} (and its by-value functions) capture is safe."""
    nested: list[types.FunctionType] = []
    done = 0
    functions = [f]
    while functions:
        g = functions.pop()
        values: list[object] = []
        listCaptured(g, _names(g), values)
        # values[0] is the code: a code object is immutable anyway.
        if not all(_safe(value, nested) for value in values[1:]):
            return False, ()
        functions.extend(nested[done:])
        done = len(nested)
    return True, tuple(n for n in nested if n is not f)


def definitionOf(f: Callable[..., Any]) -> Definition | None:
    """
    The L{Definition} of C{f} if it is a function pickled by value whose
    pickle may be sent once and reused; C{None} if it is pickled by
    reference or must be pickled anew with every call.

    The rule: the pickle is reused while everything pickled with the
    function is the very same object as when it was pickled: its code,
    defaults, names and attributes, its closure's contents, the module
    globals its code names, and the same for every function of the script
    among them. Those must moreover be unable to change in place: numbers,
    strings, bytes, tuples and frozensets of such, modules, builtins, and
    classes and functions of importable modules (by-value functions are
    checked in turn). A function that captures anything else (a list, a
    dict, an instance, a class of the script) is pickled with each call,
    as before, so that a change made to it in place always reaches the
    child; so is one whose captured values were replaced
    L{KEPT_DEFINITIONS} times (each pickle is kept while the function
    lives, for the calls queued that name it).
    """
    if type(f) is not types.FunctionType:
        return None
    kept = _kept.get(f)
    earlier: tuple[Definition, ...] = ()
    if kept is not None:
        if kept.holds():
            return kept.definition
        earlier = kept.earlier
        if kept.definition is not None:
            earlier += (kept.definition,)
    elif not _byValue(f):
        return None
    safe, nested = _examine(f)
    definition = None
    if safe and len(earlier) < KEPT_DEFINITIONS:
        try:
            data: bytes = cloudpickler().dumps(f, PROTOCOL)
        except Exception:
            # Pickled with each call, as before, which names the culprit.
            data = b""
        if data:
            definition = Definition(keyOf(data), data)
    _kept[f] = _Kept((f, *nested), definition, earlier)
    return definition


#: The empty keywords as they travel: only ever pickled, never handed out.
_PLAIN_EMPTY: dict[str, Any] = {}


def plainKeywords(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """
    Keywords as the plain dict they travel as (the callee gets one anyway):
    those given as another mapping (a queue's shared, frozen empty dict,
    say) copied, a plain dict as it is. Hot paths test C{type(kwargs) is
    dict} first, to save the call.
    """
    if type(kwargs) is dict:
        return kwargs
    return dict(kwargs) if kwargs else _PLAIN_EMPTY


def dumpArguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> bytes:
    """Pickle a call's arguments, by value where plain pickle would name C{__main__}."""
    if type(kwargs) is not dict:
        kwargs = plainKeywords(kwargs)
    try:
        data = pickle.dumps((args, kwargs), PROTOCOL)
        if b"__main__" not in data:
            return data
    except Exception:
        pass
    result: bytes = cloudpickler().dumps((args, kwargs), PROTOCOL)
    return result


# -- the sender: what a peer holds -------------------------------------------


class FunctionLedger:
    """
    The functions a peer holds, as its sender knows them (one per
    connection or child): L{prepare} sends what a batch of calls needs.
    """

    def __init__(
        self, capacity: int = PEER_FUNCTIONS, maxBytes: int = PEER_BYTES
    ) -> None:
        self.capacity = capacity
        self.maxBytes = maxBytes
        #: The size of each function the peer holds, by key, oldest used first.
        self.held: OrderedDict[bytes, int] = OrderedDict()
        self.heldBytes = 0

    def prepare(
        self,
        batch: list[tuple[int, bytes]],
        send: Callable[[Pairs], object],
    ) -> list[tuple[int, bytes]]:
        """
        Send (through C{send}) the definitions the peer lacks for C{batch},
        and return the batch ready to pickle: each call pickles as plain bytes.
        """
        out = batch
        used: set[bytes] = set()
        held = self.held
        for i, (taskID, call) in enumerate(batch):
            if type(call) is bytes:
                if call[:4] != MAGIC:
                    continue
                # Most calls of a batch name a function the peer holds.
                key = call[4:_HEAD]
                if key in used:
                    continue
                if key in held:
                    used.add(key)
                    held.move_to_end(key)
                    continue
            else:
                if out is batch:
                    out = list(batch)
                # Pickled as plain bytes (a read-only buffer in-band is),
                # without a copy of a large call first.
                out[i] = (taskID, pickle.PickleBuffer(call))  # type: ignore[assignment]
            definition = definitionFor(call)
            if definition is None:
                # A key nobody here knows: the peer says so, failing the call.
                continue
            key = definition.key
            used.add(key)
            if key in held:
                held.move_to_end(key)
                continue
            size = len(definition.data)
            forget = []
            for old in list(held):
                if len(held) < self.capacity and self.heldBytes + size <= self.maxBytes:
                    break
                # Never one this batch still names: the peer links a batch's
                # calls to their functions once the whole batch is read.
                if old not in used:
                    self.heldBytes -= held.pop(old)
                    forget.append(old)
            send(defineFunctionBox(definition, forget))
            held[key] = size
            self.heldBytes += size
        return out


# -- the receiver: what it was sent ------------------------------------------


class FunctionStore:
    """
    The functions one connection (or a child's parent) sent, by key: calls
    read off the wire are L{link}ed to them as they arrive.
    """

    def __init__(
        self,
        capacity: int = STORE_FUNCTIONS,
        verify: bool = True,
        maxBytes: int = STORE_BYTES,
    ) -> None:
        self.capacity = capacity
        self.verify = verify
        self.maxBytes = maxBytes
        self.definitions: OrderedDict[bytes, Definition] = OrderedDict()
        self.size = 0

    def define(self, key: bytes, data: bytes, forget: list[bytes]) -> None:
        """Keep a function sent; forget those the sender says."""
        if self.verify and keyOf(data) != key:
            # A peer may not pass one function off as another (whose key it
            # knows): the children a network node shares run what is stored.
            raise ValueError("a function whose key is not the digest of its bytes")
        definitions = self.definitions
        for old in (*forget, key):
            gone = definitions.pop(old, None)
            if gone is not None:
                self.size -= len(gone.data)
        definitions[key] = Definition(key, data)
        self.size += len(data)
        while len(definitions) > self.capacity or (
            self.size > self.maxBytes and len(definitions) > 1
        ):
            self.size -= len(definitions.popitem(last=False)[1].data)

    def link(self, tasks: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
        """
        C{tasks} with each call that names a function carrying its
        L{Definition}, so that it can run (or be sent on) whatever this
        store forgets later. A call naming a function never sent is left as
        it is: it fails where it runs, saying so.
        """
        out = tasks
        definitions = self.definitions
        for i, (taskID, call) in enumerate(tasks):
            if call[:4] != MAGIC:
                continue
            definition = definitions.get(bytes(call[4:_HEAD]))
            if definition is None:
                continue
            if out is tasks:
                out = list(tasks)
            linked = FunctionCall(call)
            linked.definition = definition
            out[i] = (taskID, linked)
        return out


# -- where a call runs -------------------------------------------------------

_loaded: OrderedDict[bytes, Callable[..., Any]] = OrderedDict()


def loadFunction(definition: Definition) -> Callable[..., Any]:
    """The function of C{definition}, unpickled once per process (a bounded cache)."""
    key = definition.key
    f = _loaded.get(key)
    if f is None:
        f = loadsByValue(definition.data)
        _loaded[key] = f
        if len(_loaded) > LOADED_FUNCTIONS:
            _loaded.popitem(last=False)
    else:
        _loaded.move_to_end(key)
    return f


def loadCall(call: bytes) -> tuple[Callable[..., Any], tuple[Any, ...], dict[str, Any]]:
    """C{(f, args, kwargs)} of a pickled call, whole or naming its function."""
    if call[:4] != MAGIC:
        f, args, kwargs = pickle.loads(call)
        return f, args, kwargs
    definition = definitionFor(call)
    if definition is None:
        from asynqueue.errors import UnpicklableError

        raise UnpicklableError(
            f"the call names function {call[4:_HEAD].hex()[:12]}, which was "
            "never sent here (or was forgotten)"
        )
    args, kwargs = pickle.loads(memoryview(call)[_HEAD:])
    return loadFunction(definition), args, kwargs
