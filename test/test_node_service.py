"""Tests of the C{asynqueue-node} command, run as a real process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

#: Far more than a node takes to fail at start; only a hang comes near it.
PATIENCE = 60


def runNode(
    *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "asynqueue.node", *args],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
        env=env,
    )


def processesMarked(marker: str) -> list[int]:
    """The processes (of this user) whose environment holds C{marker}."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.fixture
def takenPort() -> Iterator[int]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
def test_portInUseFailsAtStartInOneLineWithNoChildLeft(takenPort: int) -> None:
    marker = f"ASYNQUEUE_TEST_NODE={uuid.uuid4().hex}"
    name, _, value = marker.partition("=")
    env = dict(os.environ, **{name: value})
    done = runNode("--insecure-plaintext", "-l", f"tcp:{takenPort}", "-p", "2", env=env)
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        f"asynqueue-node: cannot listen on 127.0.0.1:{takenPort}: "
        "Address already in use"
    ], done.stderr
    assert processesMarked(marker) == []


@pytest.mark.parametrize("processes", ["0", "-1", "two"])
def test_badProcessCountIsOneLine(processes: str) -> None:
    done = runNode("--insecure-plaintext", "-l", "tcp:0", "-p", processes)
    assert done.returncode != 0
    assert done.stderr.splitlines() == [
        f"asynqueue-node: --processes must be a whole number over 0, not {processes!r}"
    ], done.stderr


@pytest.mark.parametrize("processes", [0, -1])
def test_nodeServiceRefusesNoProcesses(processes: int) -> None:
    from asynqueue.node.service import NodeService

    with pytest.raises(ValueError, match=f"1 process or more .*, not {processes}$"):
        NodeService("tcp:port=0", insecurePlaintext=True, processes=processes)
