"""Hold a lock on a file for as long as the parent says.

Usage: ``lock_holder.py PATH KIND``

``KIND`` is ``sqlite`` (an SQLite ``BEGIN EXCLUSIVE`` transaction on the
database at PATH) or ``flock`` (an exclusive ``flock`` on PATH, the way
Trackio locks its ``<project>.lock`` file). Reads commands from stdin, one a
line: ``lock`` takes the lock and prints ``locked``; ``release`` lets it go
and prints ``released``. Exits at end of input, which releases any lock.
"""

from __future__ import annotations

import fcntl
import sqlite3
import sys
from collections.abc import Callable


def _sqlite_lock(path: str) -> tuple[Callable[[], None], Callable[[], None]]:
    connection = sqlite3.connect(path, isolation_level=None)
    return (
        lambda: connection.execute("BEGIN EXCLUSIVE"),
        lambda: connection.execute("ROLLBACK"),
    )


def _file_lock(path: str) -> tuple[Callable[[], None], Callable[[], None]]:
    held = open(path, "a")  # noqa: SIM115 - open until the process ends
    return (
        lambda: fcntl.flock(held, fcntl.LOCK_EX),
        lambda: fcntl.flock(held, fcntl.LOCK_UN),
    )


def main() -> int:
    path, kind = sys.argv[1], sys.argv[2]
    lock, release = (_sqlite_lock if kind == "sqlite" else _file_lock)(path)
    actions = {"lock": (lock, "locked"), "release": (release, "released")}
    for command in sys.stdin:
        action, answer = actions[command.strip()]
        action()
        print(answer, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
