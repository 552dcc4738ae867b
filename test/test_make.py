"""Tests of what the Makefile promises: the commands the docs name do what they say."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_demoExampleRunsWithTheCommandItNames() -> None:
    if shutil.which("make") is None:
        pytest.skip("no make")
    demo = ROOT / "doc" / "examples" / "demo.py"
    found = re.search(r"``make (\w+)``", demo.read_text())
    assert found is not None, "demo.py names no make target"
    dryRun = subprocess.run(
        ["make", "--no-print-directory", "-n", "-W", "pyproject.toml", found.group(1)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    commands = dryRun.splitlines()
    assert commands[-1].split()[-1] == "doc/examples/demo.py", commands


def test_editableInstallWithoutTheCompatMode() -> None:
    """
    setuptools warns, in a block of stars, that the compat editable mode is
    transitional; a package-dir of the project's root gets the same plain
    .pth file (the twisted plugin is found on sys.path) without a warning.
    """
    makefile = (ROOT / "Makefile").read_text()
    assert "editable_mode" not in makefile
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert config["tool"]["setuptools"]["package-dir"] == {"": "."}


def test_theInstalledProjectIsItsCheckout() -> None:
    import asynqueue

    assert Path(asynqueue.__file__).resolve().parent == ROOT / "asynqueue"
