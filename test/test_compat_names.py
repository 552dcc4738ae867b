"""
The table of doc/migrating.rst stays true: every AsynQueue 0.9.9 name it
lists imports from the module it names.
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest

GUIDE = Path(__file__).parent.parent / "doc" / "migrating.rst"


def tableRows() -> list[tuple[str, str]]:
    """(module, name) for each name in the guide's first table."""
    text = GUIDE.read_text()
    table = text.split("These names import from where they did:")[1]
    table = table.split("And so do these")[0]
    cells: dict[str, str] = {}
    module = ""
    for line in table.splitlines():
        if not line.strip() or line.startswith("="):
            continue
        left, right = line[:32].strip(), line[32:]
        if left:
            module = left.strip("`")
        cells[module] = cells.get(module, "") + " " + right
    rows: list[tuple[str, str]] = []
    for module, cell in cells.items():
        # Only the names themselves: a parenthesis names attributes (checked
        # below).
        cell = re.sub(r"\(.*?\)", "", cell, flags=re.S)
        rows.extend((module, name) for name in re.findall(r"``(\w+)``", cell))
    return rows


ROWS = tableRows()


def test_theTableIsRead() -> None:
    modules = {module for module, _ in ROWS}
    assert "asynqueue.threads" in modules and "asynqueue.iteration" in modules
    assert len(ROWS) > 50


@pytest.mark.parametrize("module, name", ROWS)
def test_nameImports(module: str, name: str) -> None:
    assert getattr(importlib.import_module(module), name) is not None


def test_iWorkerQualifications() -> None:
    from asynqueue.interfaces import IWorker

    assert "iQualified" in IWorker.names()
    assert "cQualified" in (IWorker.__doc__ or "")
