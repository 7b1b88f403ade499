"""Trackio's own reading API, pointed at a test's directory.

Trackio fixes its directory in a module constant at import; tests run many
directories in one process, so each read points the constant at the test's.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class TrackioReader:
    """Reads a Trackio directory only through `trackio.SQLiteStorage`."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    @contextlib.contextmanager
    def _pointed(self) -> Iterator[Any]:
        from trackio import sqlite_storage

        saved = sqlite_storage.TRACKIO_DIR
        sqlite_storage.TRACKIO_DIR = self.directory
        try:
            yield sqlite_storage.SQLiteStorage
        finally:
            sqlite_storage.TRACKIO_DIR = saved

    def projects(self) -> list[str]:
        with self._pointed() as storage:
            return storage.get_projects()

    def run_records(self, project: str) -> list[dict[str, Any]]:
        with self._pointed() as storage:
            return storage.get_run_records(project)

    def run_configs(self, project: str) -> dict[str, dict[str, Any]]:
        with self._pointed() as storage:
            return storage.get_all_run_configs(project)

    def metric_values(self, project: str, run_id: str, key: str) -> list[dict]:
        with self._pointed() as storage:
            return storage.get_metric_values(project, None, key, run_id=run_id)

    def logs(self, project: str, run_id: str) -> list[dict[str, Any]]:
        with self._pointed() as storage:
            return storage.get_logs(project, None, run_id=run_id)

    def system_logs(self, project: str, run_id: str) -> list[dict[str, Any]]:
        with self._pointed() as storage:
            return storage.get_system_logs(project, None, run_id=run_id)
