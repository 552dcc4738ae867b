"""
Run AsynQueue 0.9.9 from a virtualenv of its own and read its figures.

0.9.9 has the same import name as this repository's asynqueue, so it runs
in another interpreter: C{aq099.py} beside this module, run isolated in a
virtualenv (default C{/tmp/aq099}, or C{$AQ099_VENV}) that holds
C{AsynQueue==0.9.9}. Each run has a hard time limit; past it the whole
process group (0.9.9's parent and its C{multiprocessing} children) is
killed, since 0.9.9 has hung in earlier measurements.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from typing import Any

VERSION = "0.9.9"
DEFAULT_VENV = os.environ.get("AQ099_VENV", "/tmp/aq099")
SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "aq099.py")


def _python(venv: str) -> str:
    return os.path.join(venv, "bin", "python")


def _works(venv: str) -> str | None:
    """None if the venv imports AsynQueue 0.9.9's ProcessQueue, else why not."""
    python = _python(venv)
    if not os.access(python, os.X_OK):
        return f"no virtualenv at {venv}"
    check = subprocess.run(
        [python, "-I", "-c", "from asynqueue import ProcessQueue; import asynqueue"],
        capture_output=True,
        text=True,
        cwd="/",
        timeout=60,
    )
    if check.returncode:
        return _lastLine(check.stderr) or f"exit status {check.returncode}"
    return None


def ensureVenv(venv: str = DEFAULT_VENV, install: bool = True) -> str | None:
    """
    Make sure C{venv} has AsynQueue 0.9.9; return None, or why it has not.

    With C{install}, a missing virtualenv is made (with C{python3.11} if
    there is one) and 0.9.9 installed into it from the package index.
    """
    reason = _works(venv)
    if reason is None or not install:
        return reason
    base = shutil.which("python3.11") or sys.executable
    steps = [
        [base, "-m", "venv", venv],
        [_python(venv), "-m", "pip", "install", "-q", f"AsynQueue=={VERSION}"],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            return f"{' '.join(step[:3])}: {e}"
        if done.returncode:
            return f"{' '.join(step[:3])}: {_lastLine(done.stderr or done.stdout)}"
    return _works(venv)


def _lastLine(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _bigStack() -> None:
    # 0.9.9 recurses once per waiting task: give its main thread room.
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    resource.setrlimit(resource.RLIMIT_STACK, (hard, hard))


def run(
    mode: str,
    calls: int,
    reps: int = 1,
    size: int = 1 << 20,
    timeout: float = 60.0,
    venv: str = DEFAULT_VENV,
) -> dict[str, Any]:
    """
    Run C{aq099.py MODE} with a hard time limit; return its JSON answer.

    The answer has C{"ok"} and either C{"seconds"} or C{"error"}. The
    recursion limit is raised to several times C{calls} (see C{aq099.py}).
    """
    command = [
        _python(venv),
        "-I",
        SCRIPT,
        mode,
        f"--calls={calls}",
        f"--reps={reps}",
        f"--size={size}",
        f"--recursion-limit={max(10_000, 4 * calls)}",
    ]
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd="/",
        start_new_session=True,
        preexec_fn=_bigStack,
    )
    try:
        out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        return {"ok": False, "error": f"no answer within {timeout:.0f} s (hung)"}
    finally:
        # Its multiprocessing children, if it left any behind.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    for line in reversed(out.splitlines()):
        if line.startswith("{"):
            return dict(json.loads(line))
    return {
        "ok": False,
        "error": _lastLine(err) or f"no answer, exit status {process.returncode}",
    }
