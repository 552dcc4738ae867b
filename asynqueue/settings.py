"""
Queue defaults from the environment, as QuasiQueue takes them.

L{Settings} holds the knobs a queue, its feeders and its ordering adapter
have. L{Settings.resolve} fills each one from, in order of precedence:

 1. an explicit argument (one that is not C{None});
 2. C{{NAME}_{VARIABLE}}, where C{NAME} is the queue's name upper-cased
    with every run of characters other than letters and digits turned
    into C{_} (name C{"images"}: C{IMAGES_WORKERS});
 3. C{ASYNQUEUE_{VARIABLE}};
 4. the built-in default.

Each variable also answers to its QuasiQueue name where QuasiQueue had one
(C{IMAGES_NUM_PROCESSES} for C{IMAGES_WORKERS}); at the same prefix the
asynqueue name wins. An empty variable counts as unset; C{none} sets an
optional knob to C{None}. L{settingsTable} renders the table of the manual.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["GLOBAL_PREFIX", "Settings", "envPrefix", "settingsTable"]

#: The prefix of the variables that apply to every queue.
GLOBAL_PREFIX = "ASYNQUEUE_"


@dataclass(frozen=True)
class _Knob:
    """How one setting is read, checked and documented."""

    variable: str
    kind: type[int] | type[float]
    optional: bool
    minimum: float
    #: True when the minimum itself is not allowed (a timeout of 0).
    strict: bool
    #: The default as the table shows it.
    shown: str
    meaning: str
    alias: str | None = None

    def describeKind(self) -> str:
        kind = "int" if self.kind is int else "float"
        bound = (">" if self.strict else ">=") + f" {self.minimum:g}"
        return f"{kind} {bound}" + (", or none" if self.optional else "")


def _knob(value: Any, **kwargs: Any) -> Any:
    return field(default=value, metadata={"knob": _Knob(**kwargs)})


@dataclass(frozen=True)
class Settings:
    """
    The defaults a queue takes from the environment, typed and checked.

    Make one with L{resolve}; C{Settings()} is the built-in defaults. A
    field left C{None} means the queue decides (see each field).

    @ivar workers: Workers of a C{ThreadQueue} or C{ProcessQueue}; C{None}:
        one thread, or one process per core.
    @ivar capacity: Tasks each worker may hold at once; C{None} adapts it
        to the tasks' run times.
    @ivar maxTasksPerWorker: Replace a worker process after this many tasks;
        C{None}: never.
    @ivar timeout: Seconds a call may run unless its call says otherwise;
        C{None}: no limit.
    @ivar bufferSize: Results the ordering adapter holds behind a slow task;
        C{None}: 10 per worker.
    @ivar lowWater: A feeder asks its writer for more while fewer tasks
        than this are waiting.
    @ivar blockSize: How many items a feeder asks its writer for at a time.
    @ivar emptySleep: Seconds a feeder waits after its writer said
        "nothing now" (C{None}).
    @ivar preventRequeueTime: Seconds during which a feeder drops an item
        it has already queued.
    @ivar shutdownTimeout: Seconds C{shutdown()} lets tasks finish before it
        cancels them; C{None}: no limit.
    """

    workers: int | None = _knob(
        None,
        variable="WORKERS",
        kind=int,
        optional=True,
        minimum=1,
        strict=False,
        shown="1 thread, one process per core",
        meaning="Worker threads or processes of a ThreadQueue or ProcessQueue.",
        alias="NUM_PROCESSES",
    )
    capacity: int | None = _knob(
        None,
        variable="CAPACITY",
        kind=int,
        optional=True,
        minimum=1,
        strict=False,
        shown="adaptive",
        meaning="Tasks a thread or process worker may hold at once.",
    )
    maxTasksPerWorker: int | None = _knob(
        None,
        variable="MAX_TASKS_PER_WORKER",
        kind=int,
        optional=True,
        minimum=1,
        strict=False,
        shown="none (never)",
        meaning="Replace a worker process after this many tasks.",
        alias="MAX_JOBS_PER_PROCESS",
    )
    timeout: float | None = _knob(
        None,
        variable="TIMEOUT",
        kind=float,
        optional=True,
        minimum=0,
        strict=True,
        shown="none",
        meaning=(
            "Seconds a call may run, unless the call gives its own timeout "
            "(a queue's taskTimeout=)."
        ),
    )
    bufferSize: int | None = _knob(
        None,
        variable="BUFFER_SIZE",
        kind=int,
        optional=True,
        minimum=1,
        strict=False,
        shown="10 per worker",
        meaning="Results the ordering adapter holds behind a slow task.",
    )
    lowWater: int = _knob(
        20,
        variable="LOW_WATER",
        kind=int,
        optional=False,
        minimum=1,
        strict=False,
        shown="20",
        meaning="A feeder asks its writer for items while fewer tasks wait.",
    )
    blockSize: int = _knob(
        10,
        variable="BLOCK_SIZE",
        kind=int,
        optional=False,
        minimum=1,
        strict=False,
        shown="10",
        meaning="How many items a feeder asks its writer for at a time.",
        alias="LOOKUP_BLOCK_SIZE",
    )
    emptySleep: float = _knob(
        1.0,
        variable="EMPTY_SLEEP",
        kind=float,
        optional=False,
        minimum=0,
        strict=False,
        shown="1.0",
        meaning="Seconds a feeder waits after its writer returned None.",
        alias="EMPTY_QUEUE_SLEEP_TIME",
    )
    preventRequeueTime: float = _knob(
        300.0,
        variable="PREVENT_REQUEUE_TIME",
        kind=float,
        optional=False,
        minimum=0,
        strict=False,
        shown="300.0",
        meaning="Seconds during which a feeder drops an item it already queued.",
        alias="PREVENT_REQUEUING_TIME",
    )
    shutdownTimeout: float | None = _knob(
        None,
        variable="SHUTDOWN_TIMEOUT",
        kind=float,
        optional=True,
        minimum=0,
        strict=False,
        shown="none",
        meaning="Seconds shutdown() lets tasks finish before cancelling them.",
        alias="GRACEFUL_SHUTDOWN_TIMEOUT",
    )

    def __post_init__(self) -> None:
        for name, knob in _KNOBS.items():
            _check(knob, name, getattr(self, name), name)

    @classmethod
    def resolve(
        cls,
        name: str = "",
        *,
        environ: Mapping[str, str] | None = None,
        **explicit: Any,
    ) -> Settings:
        """
        The settings of the queue called C{name}, from arguments and environment.

        C{explicit} takes field names; a value of C{None} counts as not
        given, so a constructor can pass its own arguments straight through.
        C{environ} defaults to C{os.environ}.

        @raise TypeError: For a keyword that is not a field.
        @raise ValueError: For a bad value, naming the variable or keyword.
        """
        unknown = sorted(set(explicit) - set(_KNOBS))
        if unknown:
            raise TypeError(
                f"unknown setting(s) {', '.join(unknown)}; "
                f"the settings are {', '.join(_KNOBS)}"
            )
        env = os.environ if environ is None else environ
        prefixes = [p for p in (envPrefix(name), GLOBAL_PREFIX) if p]
        values: dict[str, Any] = {}
        origins: dict[str, str] = {}
        for fieldName, knob in _KNOBS.items():
            given = explicit.get(fieldName)
            if given is not None:
                values[fieldName] = _check(knob, fieldName, given, fieldName)
                origins[fieldName] = "argument"
                continue
            for variable in _variables(knob, prefixes):
                raw = env.get(variable, "").strip()
                if raw:
                    values[fieldName] = _parse(knob, fieldName, variable, raw)
                    origins[fieldName] = variable
                    break
            else:
                origins[fieldName] = "default"
        settings = cls(**values)
        object.__setattr__(settings, "_origins", origins)
        return settings

    def override(self, **explicit: Any) -> Settings:
        """These settings with the C{explicit} ones (not C{None}) put over them."""
        unknown = sorted(set(explicit) - set(_KNOBS))
        if unknown:
            raise TypeError(f"unknown setting(s) {', '.join(unknown)}")
        given = {k: v for k, v in explicit.items() if v is not None}
        for k, v in given.items():
            _check(_KNOBS[k], k, v, k)
        result = replace(self, **given)
        origins = dict(self.origins())
        origins.update(dict.fromkeys(given, "argument"))
        object.__setattr__(result, "_origins", origins)
        return result

    def origins(self) -> dict[str, str]:
        """
        Where each value came from: C{"argument"}, the name of the
        environment variable, or C{"default"}.
        """
        found = getattr(self, "_origins", None)
        if found is None:
            return dict.fromkeys(_KNOBS, "default")
        return dict(found)


_KNOBS: dict[str, _Knob] = {f.name: f.metadata["knob"] for f in fields(Settings)}


def envPrefix(name: str) -> str:
    """
    The variable prefix of the queue called C{name}: C{"images"} gives
    C{"IMAGES_"}, C{"my-queue.v2"} C{"MY_QUEUE_V2_"}, and C{""} gives C{""}.
    """
    stem = re.sub(r"[^A-Za-z0-9]+", "_", name).strip("_").upper()
    return f"{stem}_" if stem else ""


def _variables(knob: _Knob, prefixes: list[str]) -> list[str]:
    names: list[str] = []
    for prefix in prefixes:
        names.append(prefix + knob.variable)
        if knob.alias is not None:
            names.append(prefix + knob.alias)
    return names


def _parse(knob: _Knob, fieldName: str, variable: str, raw: str) -> Any:
    """Convert a variable's text to the knob's type, or say what is wrong."""
    if knob.optional and raw.lower() == "none":
        return None
    try:
        value: Any = knob.kind(raw)
    except ValueError:
        raise ValueError(
            f"{variable}={raw!r}: {fieldName} must be {_expected(knob)}"
        ) from None
    return _check(knob, fieldName, value, f"{variable}={raw!r}")


def _check(knob: _Knob, fieldName: str, value: Any, where: str) -> Any:
    """Check a value's type and range; C{where} names its source in errors."""
    if value is None and knob.optional:
        return None
    if knob.kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        ok = ok and math.isfinite(value)
    if ok:
        ok = value > knob.minimum if knob.strict else value >= knob.minimum
    if not ok:
        shown = where if where != fieldName else f"{fieldName}={value!r}"
        raise ValueError(f"{shown}: {fieldName} must be {_expected(knob)}")
    return float(value) if knob.kind is float else value


def _expected(knob: _Knob) -> str:
    kind = "an integer" if knob.kind is int else "a finite number"
    bound = "greater than" if knob.strict else "of at least"
    text = f"{kind} {bound} {knob.minimum:g}"
    return text + " (or none)" if knob.optional else text


def settingsTable() -> str:
    """The reST table of the settings, as C{doc/settings.rst} shows it."""
    lines = [
        ".. list-table::",
        "   :header-rows: 1",
        "   :widths: 18 30 14 14 24",
        "",
        "   * - Keyword",
        "     - Variables",
        "     - Type",
        "     - Default",
        "     - Meaning",
    ]
    for fieldName, knob in _KNOBS.items():
        variables = f"``{{NAME}}_{knob.variable}``, ``{GLOBAL_PREFIX}{knob.variable}``"
        if knob.alias is not None:
            variables += f"; QuasiQueue's ``…_{knob.alias}`` too"
        lines += [
            f"   * - ``{fieldName}``",
            f"     - {variables}",
            f"     - {knob.describeKind()}",
            f"     - {knob.shown}",
            f"     - {knob.meaning}",
        ]
    return "\n".join(lines) + "\n"


def settingsForQueue(queueKeywords: dict[str, Any], **explicit: Any) -> Settings:
    """
    The settings of a queue of workers made by its constructor.

    Takes C{settings}, C{taskTimeout}, C{timeout} and C{shutdownTimeout}
    out of the L{TaskQueue} keywords in C{queueKeywords} (the queue's
    C{name} stays there and picks the environment prefix); C{explicit} are
    the constructor's own arguments (workers, capacity, ...).
    """
    given: Settings | None = queueKeywords.pop("settings", None)
    taskTimeout = queueKeywords.pop("taskTimeout", None)
    shutdownTimeout = shutdownTimeoutOf(
        queueKeywords.pop("timeout", None), queueKeywords.pop("shutdownTimeout", None)
    )
    if given is not None:
        return given
    return Settings.resolve(
        queueKeywords.get("name", ""),
        timeout=taskTimeout,
        shutdownTimeout=shutdownTimeout,
        **explicit,
    )


def shutdownTimeoutOf(
    timeout: float | None, shutdownTimeout: float | None
) -> float | None:
    """
    A queue's C{shutdownTimeout}, which AsynQueue's users give as
    C{timeout}: seconds C{shutdown()} lets running tasks finish.
    """
    if timeout is None:
        return shutdownTimeout
    if shutdownTimeout is not None and shutdownTimeout != timeout:
        raise ValueError(
            f"timeout={timeout!r} and shutdownTimeout={shutdownTimeout!r} name "
            "the same thing (how long shutdown waits): give one"
        )
    return timeout
