"""One long-lived SQLite connection to one Trackio project file.

Trackio opens a new connection and re-runs its schema statements for every
write (about 3.6 ms a call in Trackio 0.43), which is far too slow for a
training loop. This module keeps one connection per project file per process,
runs Trackio's own schema set-up once, and writes Trackio's tables in
Trackio's row format, next to tables of its own (prefixed ``mlflow_``) for
what Trackio has no place for.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, TEMPORARILY_UNAVAILABLE

_logger = logging.getLogger(__name__)

# How long a write waits for another process's lock before it gives up.
BUSY_TIMEOUT_ENV = "MLFLOW_TRACKIO_BUSY_TIMEOUT"
_DEFAULT_BUSY_TIMEOUT_S = 30.0

# Tables for the MLflow view of a project. They live in the project's own
# database file so that a copy of the Trackio directory carries everything and
# Trackio's dashboard, which lists projects by their `*.db` files, sees no
# stray project.
MLFLOW_SCHEMA = """
CREATE TABLE IF NOT EXISTS mlflow_experiment (
    experiment_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    artifact_location TEXT NOT NULL,
    lifecycle_stage TEXT NOT NULL,
    creation_time INTEGER,
    last_update_time INTEGER
);
CREATE TABLE IF NOT EXISTS mlflow_experiment_tags (
    key TEXT PRIMARY KEY,
    value TEXT
);
CREATE TABLE IF NOT EXISTS mlflow_runs (
    run_id TEXT PRIMARY KEY,
    run_name TEXT NOT NULL,
    user_id TEXT NOT NULL,
    status TEXT NOT NULL,
    start_time INTEGER,
    end_time INTEGER,
    lifecycle_stage TEXT NOT NULL,
    deleted_time INTEGER,
    artifact_uri TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mlflow_params (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS mlflow_tags (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS mlflow_latest_metrics (
    run_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value REAL NOT NULL,
    timestamp INTEGER NOT NULL,
    step INTEGER NOT NULL,
    is_nan INTEGER NOT NULL,
    PRIMARY KEY (run_id, key)
);
CREATE TABLE IF NOT EXISTS mlflow_system_metric_steps (
    log_id TEXT PRIMARY KEY,
    step INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS mlflow_run_inputs (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    identity TEXT NOT NULL,
    proto BLOB NOT NULL,
    PRIMARY KEY (run_id, kind, identity)
);
CREATE TABLE IF NOT EXISTS mlflow_run_outputs (
    run_id TEXT NOT NULL,
    model_id TEXT NOT NULL,
    step INTEGER NOT NULL,
    PRIMARY KEY (run_id, model_id)
);
CREATE TABLE IF NOT EXISTS mlflow_logged_models (
    model_id TEXT PRIMARY KEY,
    proto BLOB NOT NULL
);
"""

_schema_lock = threading.Lock()


def busy_timeout_seconds() -> float:
    """Return the configured lock-wait window in seconds."""
    raw = os.environ.get(BUSY_TIMEOUT_ENV)
    if not raw:
        return _DEFAULT_BUSY_TIMEOUT_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise MlflowException(
            f"{BUSY_TIMEOUT_ENV}={raw!r} is not a number of seconds. Set it to, "
            "for example, 30.",
            error_code=INTERNAL_ERROR,
        ) from None


def create_trackio_schema(directory: Path, canonical_project: str) -> None:
    """Create Trackio's own tables in a project file, exactly as Trackio would.

    Trackio reads its directory from a module constant fixed at import, so
    the constant is pointed at `directory` for the duration of the call.
    """
    from trackio import sqlite_storage

    with _schema_lock:
        saved = sqlite_storage.TRACKIO_DIR
        sqlite_storage.TRACKIO_DIR = directory
        try:
            sqlite_storage.SQLiteStorage.init_db(canonical_project)
        finally:
            sqlite_storage.TRACKIO_DIR = saved


class ProjectFile:
    """A Trackio project database with one connection shared by this process.

    Every public method holds `lock`; SQLite's own file locking orders this
    process against others, waiting up to `busy_timeout_seconds()`.
    """

    def __init__(self, path: Path, canonical_project: str) -> None:
        self.path = path
        self.canonical_project = canonical_project
        self.lock = threading.RLock()
        self._connection: sqlite3.Connection | None = None
        self._has_mlflow_tables: bool | None = None

    def exists(self) -> bool:
        """Return whether the project file is on disk."""
        return self.path.exists()

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            timeout = busy_timeout_seconds()
            connection = sqlite3.connect(
                self.path,
                timeout=timeout,
                check_same_thread=False,
                isolation_level=None,
            )
            # WAL with synchronous=NORMAL: a committed transaction is in the
            # OS's hands when commit returns, so it survives the process
            # being killed; only an OS crash can lose the newest commits.
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            connection.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}")
            self._connection = connection
        return self._connection

    def mlflow_tables_exist(self) -> bool:
        """Return whether MLflow's tables are in the file (not for Trackio's)."""
        if self._has_mlflow_tables:
            return True
        if not self.exists():
            return False
        with self.read() as connection:
            found = connection.execute(
                "SELECT 1 FROM sqlite_master WHERE name = 'mlflow_runs'"
            ).fetchone()
        self._has_mlflow_tables = found is not None
        return self._has_mlflow_tables

    def ensure_schema(self) -> None:
        """Create Trackio's and MLflow's tables if the file lacks them."""
        if self._has_mlflow_tables:
            return
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._errors("create the project database"):
                create_trackio_schema(self.path.parent, self.canonical_project)
                self._connect().executescript(MLFLOW_SCHEMA)
            self._has_mlflow_tables = True

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Yield the connection for reads, under this file's lock."""
        with self.lock, self._errors("read"):
            yield self._connect()

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Yield the connection inside one transaction, committed on exit.

        The transaction takes SQLite's write lock at once (BEGIN IMMEDIATE),
        so two writers never deadlock upgrading a read lock.
        """
        self.ensure_schema()
        with self.lock, self._errors("write"):
            connection = self._connect()
            connection.execute("BEGIN IMMEDIATE")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except sqlite3.OperationalError as exc:
            waited = time.monotonic() - started
            if "locked" in str(exc) or "busy" in str(exc):
                raise MlflowException(
                    f"Could not {action} {self.path}: the database stayed locked by "
                    f"another process for {waited:.1f} s ({exc}). Retry later, or "
                    f"raise {BUSY_TIMEOUT_ENV} (seconds).",
                    error_code=TEMPORARILY_UNAVAILABLE,
                ) from exc
            raise self._failure(action, exc) from exc
        except sqlite3.DatabaseError as exc:
            raise self._failure(action, exc) from exc
        except OSError as exc:
            raise self._failure(action, exc) from exc

    def _failure(self, action: str, exc: Exception) -> MlflowException:
        return MlflowException(
            f"Could not {action} {self.path}: {exc}. Check that the directory is "
            "writable, the disk is not full and the file is a Trackio database.",
            error_code=INTERNAL_ERROR,
        )

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        with self.lock:
            if self._connection is not None:
                self._connection.close()
                self._connection = None
