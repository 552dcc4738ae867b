"""
Contenders each in a process of their own, their rounds taken in turns.

Raced in one process, each contender's round pays for what the other left
on the heap: Twisted's coroutine machinery keeps the last awaited
C{gatherResults} (20,000 fired Deferreds, their callback lists and their
instance dicts: some 57,000 objects) alive until the next await, so every
full collection of the next contender's round walks them too; the faster
contender, whose own rounds collect less, loses the most by it. A program
uses one of them, not both. Here the parent starts one process per
contender and tells each in turn to run a round, so the rounds still
alternate within the same minutes, and reads back its wall seconds.

The parent: C{with Lockstep({name: argv, ...}) as race: race.round()}.
A contender: C{await serveRounds(oneRound)}, with nothing else on stdout.
"""

from __future__ import annotations

import select
import subprocess
from collections.abc import Awaitable, Callable
from types import TracebackType

#: Seconds a contender may take to start or to run one round.
ROUND_TIMEOUT = 120.0


class Lockstep:
    """One process per contender; L{round} runs a round of each, in turn."""

    def __init__(self, commands: dict[str, list[str]]) -> None:
        self.processes = {
            name: subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
            )
            for name, command in commands.items()
        }
        for name in self.processes:
            if self._answer(name) != "ready":
                raise RuntimeError(f"{name} did not start")

    def round(self) -> dict[str, float]:
        """Wall seconds of one round of each contender, run one after another."""
        walls: dict[str, float] = {}
        for name, process in self.processes.items():
            assert process.stdin is not None
            process.stdin.write("go\n")
            process.stdin.flush()
            walls[name] = float(self._answer(name))
        return walls

    def _answer(self, name: str) -> str:
        process = self.processes[name]
        assert process.stdout is not None
        readable, _, _ = select.select([process.stdout], [], [], ROUND_TIMEOUT)
        line = process.stdout.readline() if readable else ""
        if not line:
            process.kill()
            raise RuntimeError(f"{name} gave no answer (exit status {process.wait()})")
        return line.strip()

    def close(self) -> None:
        """End every contender: its stdin closes, it shuts down and exits."""
        for process in self.processes.values():
            if process.stdin is not None:
                process.stdin.close()
        for process in self.processes.values():
            try:
                process.wait(ROUND_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> Lockstep:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.close()


async def serveRounds(oneRound: Callable[[], Awaitable[float]]) -> None:
    """
    A contender's side: say it is ready, then run a round for each C{go}
    the parent sends and answer with its wall seconds, until stdin ends.

    Reading stdin blocks the reactor, but only between rounds, when
    nothing of the contender's is running.
    """
    import sys

    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "go":
            break
        print(repr(await oneRound()), flush=True)
