"""
Run the Python examples of README.rst, and check what they print.

Every C{.. code-block:: python} block is executed, in order, in one namespace
(so a later block may use what an earlier one defined). A block that defines
C{async def example()} is a runnable example: the test runs it on the
reactor and compares what it prints with the C{.. code-block:: text} block
that follows it, if any. Queues an example leaves running fail its test.

C{.. code-block:: console} blocks are not run, but the C{asynqueue-certs}
and C{asynqueue-node} commands in them are checked: the certificates are
made in a temporary directory, and the node's options must parse and make a
node service (which reads those certificates) without starting it.
"""

from __future__ import annotations

import contextlib
import io
import re
import shlex
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred

from asynqueue import TaskQueue
from asynqueue.node.certs import main as certsMain
from asynqueue.node.service import NodeOptions, makeNodeService

README = Path(__file__).resolve().parent.parent / "README.rst"

_BLOCK = re.compile(r"^\.\. code-block:: *(\w+)\n((?:\n|[ \t]+.*\n)+)", re.MULTILINE)


def readmeBlocks(text: str) -> list[tuple[str, str]]:
    """The C{(language, code)} of every code block, in order."""
    return [
        (m.group(1), textwrap.dedent(m.group(2)).strip("\n") + "\n")
        for m in _BLOCK.finditer(text)
    ]


def readmeExamples(text: str) -> list[tuple[list[str], str | None]]:
    """
    For each runnable example: the Python blocks up to and including it, and
    the text block that shows its output (if one follows it).
    """
    blocks = readmeBlocks(text)
    examples: list[tuple[list[str], str | None]] = []
    python: list[str] = []
    for i, (language, code) in enumerate(blocks):
        if language != "python":
            continue
        python.append(code)
        if re.search(r"^async def example\(\)", code, re.MULTILINE):
            following = blocks[i + 1] if i + 1 < len(blocks) else None
            output = following[1] if following and following[0] == "text" else None
            examples.append((list(python), output))
    return examples


EXAMPLES = readmeExamples(README.read_text(encoding="utf-8"))


@pytest.fixture
def madeQueues(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[TaskQueue]]:
    """Every TaskQueue (ThreadQueues included) made while the test runs."""
    made: list[TaskQueue] = []
    original = TaskQueue.__init__

    def init(self: TaskQueue, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(TaskQueue, "__init__", init)
    yield made


def test_readmeStartsWithTheTwoCommands() -> None:
    blocks = readmeBlocks(README.read_text(encoding="utf-8"))
    language, first = blocks[0]
    commands = [line.split("#")[0].strip() for line in first.splitlines()]
    assert commands == ["make demo", "make test"]
    assert "make check" in blocks[1][1] and "make docs" in blocks[1][1]


def test_readmeHasExamplesWithOutput() -> None:
    assert len(EXAMPLES) >= 5
    assert all(output is not None for _, output in EXAMPLES)


@pytest.mark.parametrize(
    "blocks, expected",
    EXAMPLES,
    ids=[f"example{i + 1}" for i in range(len(EXAMPLES))],
)
@pytest_twisted.ensureDeferred
async def test_readmeExample(
    blocks: list[str], expected: str | None, madeQueues: list[TaskQueue]
) -> None:
    namespace: dict[str, Any] = {"__name__": "readme"}
    for code in blocks:
        exec(compile(code, str(README), "exec"), namespace)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            d = Deferred.fromCoroutine(namespace["example"]())
            await d.addTimeout(30, reactor)
    finally:
        leftRunning = [q.name for q in madeQueues if q.isRunning()]
        for q in madeQueues:
            await q.shutdown(timeout=5, cancelPending=True)
    assert leftRunning == [], "the example did not shut its queues down"
    if expected is not None:
        assert out.getvalue() == expected


def readmeCommandLines(text: str) -> list[list[str]]:
    """The words of every command line in the README's console blocks."""
    return [
        shlex.split(line)
        for language, code in readmeBlocks(text)
        if language == "console"
        for line in code.splitlines()
        if line.strip()
    ]


def test_readmeNodeCommandsWork(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    lines = readmeCommandLines(README.read_text(encoding="utf-8"))
    certs = [words[1:] for words in lines if words[0] == "asynqueue-certs"]
    nodes = [
        words[words.index("asynqueue-node") + 1 :]
        for words in lines
        if "asynqueue-node" in words
    ]
    assert certs and nodes
    monkeypatch.chdir(tmp_path)
    for args in certs:
        certsMain(args)
    for args in nodes:
        options = NodeOptions()
        options.parseOptions(args)
        service = makeNodeService(options)
        assert service.endpoint is not None
        assert not service.running
