"""Tests of asynqueue.settings: queue defaults from the environment."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from asynqueue import MemoryWorker, TaskQueue, ThreadQueue, TimeoutError
from asynqueue.settings import GLOBAL_PREFIX, Settings, envPrefix, settingsTable
from helpers import failureOf, result

DOC = Path(__file__).resolve().parent.parent / "doc" / "settings.rst"


def test_builtInDefaults() -> None:
    s = Settings.resolve("images", environ={})
    assert s == Settings()
    assert (s.workers, s.capacity, s.timeout, s.shutdownTimeout) == (
        None,
        None,
        None,
        None,
    )
    assert (s.lowWater, s.blockSize, s.emptySleep, s.preventRequeueTime) == (
        20,
        10,
        1.0,
        300.0,
    )
    assert set(s.origins().values()) == {"default"}


@pytest.mark.parametrize(
    "name, prefix",
    [
        ("images", "IMAGES_"),
        ("hello_world", "HELLO_WORLD_"),
        ("my-queue.v2", "MY_QUEUE_V2_"),
        ("Acme", "ACME_"),
        ("  spaced out  ", "SPACED_OUT_"),
        ("", ""),
        ("--", ""),
    ],
)
def test_envPrefix(name: str, prefix: str) -> None:
    assert envPrefix(name) == prefix


def test_precedence() -> None:
    environ = {
        "ASYNQUEUE_WORKERS": "2",
        "ASYNQUEUE_BLOCK_SIZE": "3",
        "ASYNQUEUE_LOW_WATER": "4",
        "IMAGES_WORKERS": "5",
        "IMAGES_BLOCK_SIZE": "6",
    }
    s = Settings.resolve("images", environ=environ, workers=7)
    # explicit > named prefix > global prefix > built-in default
    assert (s.workers, s.blockSize, s.lowWater, s.emptySleep) == (7, 6, 4, 1.0)
    assert s.origins() == {
        **dict.fromkeys(s.origins(), "default"),
        "workers": "argument",
        "blockSize": "IMAGES_BLOCK_SIZE",
        "lowWater": "ASYNQUEUE_LOW_WATER",
    }


def test_otherQueuesVariablesIgnored() -> None:
    s = Settings.resolve("images", environ={"THUMBS_WORKERS": "9"})
    assert s.workers is None
    s = Settings.resolve("", environ={"IMAGES_WORKERS": "9", "_WORKERS": "9"})
    assert s.workers is None


def test_explicitNoneMeansNotGiven() -> None:
    s = Settings.resolve("q", environ={"Q_TIMEOUT": "2.5"}, timeout=None)
    assert s.timeout == 2.5


def test_quasiQueueNames() -> None:
    environ = {
        "ACME_NUM_PROCESSES": "3",
        "ACME_MAX_JOBS_PER_PROCESS": "200",
        "ACME_LOOKUP_BLOCK_SIZE": "50",
        "ACME_EMPTY_QUEUE_SLEEP_TIME": "0.25",
        "ACME_PREVENT_REQUEUING_TIME": "60",
        "ACME_GRACEFUL_SHUTDOWN_TIMEOUT": "30",
    }
    s = Settings.resolve("Acme", environ=environ)
    assert (s.workers, s.maxTasksPerWorker, s.blockSize) == (3, 200, 50)
    assert (s.emptySleep, s.preventRequeueTime, s.shutdownTimeout) == (
        0.25,
        60.0,
        30.0,
    )
    assert s.origins()["workers"] == "ACME_NUM_PROCESSES"


def test_asynqueueNameWinsOverQuasiQueueNameAtOnePrefix() -> None:
    environ = {
        "ACME_NUM_PROCESSES": "3",
        "ACME_WORKERS": "4",
        "ASYNQUEUE_NUM_PROCESSES": "5",
    }
    assert Settings.resolve("acme", environ=environ).workers == 4
    # ...and any name at the queue's prefix wins over the global prefix.
    del environ["ACME_WORKERS"]
    assert Settings.resolve("acme", environ=environ).workers == 3


def test_conversion() -> None:
    environ = {
        "Q_WORKERS": " 4 ",
        "Q_TIMEOUT": "1.5",
        "Q_EMPTY_SLEEP": "2",
        "Q_PREVENT_REQUEUE_TIME": "0",
        "Q_CAPACITY": "None",
        "ASYNQUEUE_CAPACITY": "8",
        "Q_BUFFER_SIZE": "",  # empty: unset
        "ASYNQUEUE_BUFFER_SIZE": "1_000",
    }
    s = Settings.resolve("q", environ=environ)
    assert s.workers == 4 and isinstance(s.workers, int)
    assert s.timeout == 1.5
    assert s.emptySleep == 2.0 and isinstance(s.emptySleep, float)
    assert s.preventRequeueTime == 0.0
    assert s.capacity is None  # "none" at the queue's prefix wins
    assert s.bufferSize == 1000


def test_explicitFloatsBecomeFloats() -> None:
    s = Settings.resolve("q", environ={}, emptySleep=2, timeout=3)
    assert isinstance(s.emptySleep, float) and isinstance(s.timeout, float)


@pytest.mark.parametrize(
    "variable, value",
    [
        ("ASYNQUEUE_WORKERS", "x"),
        ("ASYNQUEUE_WORKERS", "2.0"),
        ("ASYNQUEUE_WORKERS", "0"),
        ("IMAGES_CAPACITY", "-1"),
        ("IMAGES_TIMEOUT", "0"),
        ("IMAGES_TIMEOUT", "nan"),
        ("IMAGES_TIMEOUT", "inf"),
        ("ASYNQUEUE_LOW_WATER", "none"),
        ("ASYNQUEUE_EMPTY_SLEEP", "-0.5"),
        ("IMAGES_NUM_PROCESSES", "many"),
    ],
)
def test_badValueNamesTheVariable(variable: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        Settings.resolve("images", environ={variable: value})
    message = str(info.value)
    assert variable in message and repr(value) in message


def test_badValueErrorSaysWhatIsExpected() -> None:
    with pytest.raises(ValueError, match="ASYNQUEUE_WORKERS='x'") as info:
        Settings.resolve("", environ={"ASYNQUEUE_WORKERS": "x"})
    assert "workers must be an integer of at least 1" in str(info.value)


def test_badValueErrorsUseTheProcessEnvironment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("ASYNQUEUE_WORKERS", "x")
    with pytest.raises(ValueError, match="ASYNQUEUE_WORKERS"):
        Settings.resolve("anything")
    monkeypatch.setenv("ASYNQUEUE_WORKERS", "3")
    assert Settings.resolve("anything").workers == 3


@pytest.mark.parametrize(
    "keyword, value",
    [
        ("workers", 0),
        ("workers", 1.5),
        ("workers", True),
        ("workers", "2"),
        ("timeout", 0),
        ("emptySleep", float("nan")),
        ("preventRequeueTime", -1),
    ],
)
def test_badExplicitValueNamesTheKeyword(keyword: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"^{keyword}="):
        Settings.resolve("q", environ={}, **{keyword: value})
    with pytest.raises(ValueError, match=keyword):
        Settings(**{keyword: value})  # type: ignore[arg-type]


def test_unknownKeyword() -> None:
    with pytest.raises(TypeError, match="worker"):
        Settings.resolve("q", environ={}, worker=2)
    with pytest.raises(TypeError, match="bogus"):
        Settings().override(bogus=1)


def test_override() -> None:
    s = Settings.resolve("q", environ={"Q_BLOCK_SIZE": "5", "Q_LOW_WATER": "9"})
    t = s.override(blockSize=2, lowWater=None)
    assert (t.blockSize, t.lowWater) == (2, 9)
    assert t.origins()["blockSize"] == "argument"
    assert t.origins()["lowWater"] == "Q_LOW_WATER"
    with pytest.raises(ValueError, match="blockSize"):
        s.override(blockSize=0)


def test_settingsAreFrozen() -> None:
    with pytest.raises(AttributeError):
        Settings().workers = 3  # type: ignore[misc]


def test_tableHasEverySettingAndVariable() -> None:
    table = settingsTable()
    for name in Settings.__dataclass_fields__:
        assert f"``{name}``" in table
    for variable in ["WORKERS", "MAX_TASKS_PER_WORKER", "SHUTDOWN_TIMEOUT"]:
        assert f"``{{NAME}}_{variable}``" in table
        assert f"``{GLOBAL_PREFIX}{variable}``" in table
    assert "``…_NUM_PROCESSES``" in table


def test_docTableIsTheGeneratedTable() -> None:
    """doc/settings.rst shows settingsTable() verbatim, so they cannot drift."""
    text = DOC.read_text(encoding="utf-8")
    table = settingsTable()
    assert table in text
    assert text.count(".. list-table::") == 1


def test_docTableIsValidRest() -> None:
    docutils = pytest.importorskip("docutils.core")
    html = docutils.publish_string(
        settingsTable(),
        writer="html",
        settings_overrides={"report_level": 2, "halt_level": 2},
    ).decode()
    rows = re.findall(r"<tr", html)
    assert len(rows) == 1 + len(Settings.__dataclass_fields__)


# ----------------------------------------------------------------------
# The queues take their defaults from here (once they are wired in)

wired = pytest.mark.skipif(
    not hasattr(TaskQueue, "feed"), reason="settings are not wired in yet"
)


@wired
def test_queueSettingsFromTheEnvironment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IMAGES_BLOCK_SIZE", "4")
    q = TaskQueue(name="images", shutdownWithReactor=False, taskTimeout=2)
    assert isinstance(q.settings, Settings)
    assert q.settings.blockSize == 4 and q.settings.timeout == 2.0
    assert TaskQueue(shutdownWithReactor=False).settings.blockSize == 10


@wired
def test_threadQueueWorkersFromTheEnvironment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("IMAGES_NUM_PROCESSES", "3")
    monkeypatch.setenv("ASYNQUEUE_CAPACITY", "2")
    queues = [
        ThreadQueue(name="images", shutdownWithReactor=False),
        ThreadQueue(1, name="images", shutdownWithReactor=False),
        ThreadQueue(name="other", shutdownWithReactor=False),
    ]
    try:
        assert [len(q.workers()) for q in queues] == [3, 1, 1]
        assert all(w.capacity == 2 for q in queues for w in q.workers())
    finally:
        for q in queues:
            q.shutdown()
    with pytest.raises(ValueError, match="IMAGES_NUM_PROCESSES"):
        monkeypatch.setenv("IMAGES_NUM_PROCESSES", "lots")
        ThreadQueue(name="images", shutdownWithReactor=False)


@wired
def test_defaultTimeoutFromTheEnvironment(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    monkeypatch.setenv("SLOW_TIMEOUT", "5")
    w = MemoryWorker(capacity=2)
    q = TaskQueue(w, name="slow", clock=clock, shutdownWithReactor=False)
    default = q.call(str, 1)
    own = q.call(str, 2, timeout=50)
    w.startNext()
    w.startNext()
    clock.advance(5)
    assert failureOf(default).check(TimeoutError)
    assert not own.called
    clock.advance(45)
    assert failureOf(own).check(TimeoutError)
    q.shutdown()


@wired
def test_shutdownTimeoutFromTheEnvironment(
    monkeypatch: pytest.MonkeyPatch, clock: Clock
) -> None:
    monkeypatch.setenv("ASYNQUEUE_SHUTDOWN_TIMEOUT", "3")
    w = MemoryWorker()
    q = TaskQueue(w, clock=clock, shutdownWithReactor=False)
    running = q.call(str, 1)
    w.startNext()
    d = q.shutdown()
    clock.advance(2.9)
    assert not d.called
    clock.advance(0.1)
    assert failureOf(running).check(CancelledError)
    assert result(d) is None
