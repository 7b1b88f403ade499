"""Start the worker programs as child processes, and stop any still running.

Each test gets its own `Children`; its fixture calls `stop_all` even when the
test fails, so no child outlives the test that started it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

WORKERS = Path(__file__).resolve().parent
_REPOSITORY = WORKERS.parent.parent


class Children:
    """The child processes one test started."""

    def __init__(self) -> None:
        self._started: list[subprocess.Popen[str]] = []

    def start(
        self, program: str, *args: object, env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start `tests/workers/<program>` with this interpreter."""
        command = [sys.executable, str(WORKERS / program), *map(str, args)]
        return self.start_command(command, env=env)

    def start_command(
        self, command: list[str], env: dict[str, str] | None = None
    ) -> subprocess.Popen[str]:
        """Start a command with text pipes on stdin, stdout and stderr."""
        environment = {**os.environ, **(env or {})}
        # The workers import `tests.workers`; the repository root makes it
        # importable whatever directory pytest was started from.
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(_REPOSITORY), environment.get("PYTHONPATH")) if p
        )
        child = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
        )
        self._started.append(child)
        return child

    def stop_all(self) -> None:
        """Kill every child still running and reap them all."""
        for child in self._started:
            if child.poll() is None:
                child.kill()
        for child in self._started:
            child.wait(timeout=30)
            for stream in (child.stdin, child.stdout, child.stderr):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
