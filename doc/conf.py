"""Sphinx configuration for the asynqueue manual."""

from __future__ import annotations

import os
import re
import sys
from typing import Any

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

project = "asynqueue"
author = "The asynqueue developers"
copyright = "2006-2007, 2015, 2018-19 Edwin A. Suominen; the asynqueue developers"
try:
    from asynqueue import __version__ as release
except Exception:  # the manual still builds while the package is broken
    release = "1.0.0.dev0"
version = ".".join(release.split(".")[:2])

extensions = ["sphinx.ext.autodoc"]
exclude_patterns = ["_build", "examples"]
templates_path: list[str] = []
html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {
    "description": "Prioritized Deferred task queues for Twisted",
    "fixed_sidebar": True,
}

# `x` links to the Python object x where it can; unresolved names are plain
# text, because nitpicky is off.
default_role = "py:obj"
nitpicky = False

autodoc_default_options = {
    "members": True,
    "member-order": "bysource",
    "show-inheritance": True,
}
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_typehints_description_target = "documented"
autoclass_content = "both"


# ---------------------------------------------------------------------------
# The docstrings use epytext markup (C{}, L{}, @param); turn it into reST.

_INLINE = {"C": "``{}``", "L": "`{}`", "I": "*{}*", "B": "**{}**", "U": "{}", "M": "{}"}
_FIELD = re.compile(
    r"^(\s*)@(param|keyword|kwarg|ivar|cvar|var|type|return|returns|rtype|raise|raises"
    r"|see|note|since|deprecated|todo)\b\s*([^:]*):(.*)$"
)
_FIELD_NAMES = {"kwarg": "keyword", "returns": "return", "raise": "raises"}


def _inline(text: str) -> str:
    """Replace X{...} epytext markup, matching nested braces."""
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        if (
            ch in _INLINE
            and text.startswith("{", i + 1)
            and (i == 0 or not text[i - 1].isalnum())
        ):
            depth, j = 0, i + 1
            while j < len(text):
                if text[j] == "{":
                    depth += 1
                elif text[j] == "}":
                    depth -= 1
                    if depth == 0:
                        break
                j += 1
            if j < len(text):
                inner = text[i + 2 : j]
                if ch != "C":
                    inner = _inline(inner)
                inner = " ".join(inner.split())
                if ch == "L" and inner.endswith("()"):
                    inner = inner[:-2]
                out.append(_INLINE[ch].format(inner))
                i = j + 1
                if i < len(text) and (text[i].isalnum() or text[i] == "_"):
                    # C{Task}s: reST markup must end before a letter.
                    out.append("\\ ")
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def _fields(lines: list[str]) -> list[str]:
    """Turn @field lines into reST field lists, with a blank line before a list."""
    out: list[str] = []
    inFields = False
    for line in lines:
        m = _FIELD.match(line)
        if m:
            indent, name, arg, rest = m.groups()
            name = _FIELD_NAMES.get(name, name)
            arg = arg.strip()
            if out and out[-1].strip() and not inFields:
                out.append("")
            out.append(f"{indent}:{name}{' ' + arg if arg else ''}:{rest}")
            inFields = True
            continue
        if inFields and line.strip() and not line[:1].isspace():
            if out and out[-1].strip():
                out.append("")
            inFields = False
        out.append(line)
    return out


def _processDocstring(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    if not lines:
        return
    # Join first so that markup split over two lines is still matched.
    text = _inline("\n".join(lines))
    lines[:] = _fields(text.split("\n"))


def setup(app: Any) -> dict[str, Any]:
    app.connect("autodoc-process-docstring", _processDocstring)
    return {"parallel_read_safe": True}
