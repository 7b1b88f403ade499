"""One long-lived SQLite connection to one Trackio project file.

Trackio opens a new connection and re-runs its schema statements for every
write (about 3.6 ms a call in Trackio 0.43), which is far too slow for a
training loop. This module keeps one connection per project file per process,
runs Trackio's own schema set-up once, and writes Trackio's tables in
Trackio's row format, next to tables of its own (prefixed ``mlflow_``) for
what Trackio has no place for.

It also owns what happens when the file misbehaves: a lock held by another
process is waited for up to ``MLFLOW_TRACKIO_BUSY_TIMEOUT`` seconds, and every
SQLite or OS error becomes an `MlflowException` that names the file, the cause
and the fix, with a rolled-back transaction and a usable connection behind it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    DATA_LOSS,
    INTERNAL_ERROR,
    IO_ERROR,
    PERMISSION_DENIED,
    RESOURCE_EXHAUSTED,
    TEMPORARILY_UNAVAILABLE,
)

_logger = logging.getLogger(__name__)

# How long a write waits for another process's lock before it gives up.
BUSY_TIMEOUT_ENV = "MLFLOW_TRACKIO_BUSY_TIMEOUT"
_DEFAULT_BUSY_TIMEOUT_S = 30.0
# Pauses between the retries of a statement that SQLite answered SQLITE_BUSY
# before the window was over.
_FIRST_PAUSE_S = 0.005
_LONGEST_PAUSE_S = 0.25

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
    Trackio waits for its own locks here (its lock file up to 10 s, SQLite's
    lock up to 30 s), whatever `busy_timeout_seconds()` says.
    """
    from trackio import sqlite_storage

    with _schema_lock:
        saved = sqlite_storage.TRACKIO_DIR
        sqlite_storage.TRACKIO_DIR = directory
        try:
            sqlite_storage.SQLiteStorage.init_db(canonical_project)
        finally:
            sqlite_storage.TRACKIO_DIR = saved


@dataclass(frozen=True)
class _Fault:
    """One kind of failure: its MLflow error code, and what to tell the user."""

    error_code: int
    keeps_connection: bool
    cause: str
    fix: str


_LOCKED = _Fault(
    TEMPORARILY_UNAVAILABLE,
    True,
    "locked by another process for {waited:.1f} s",
    f"Retry later or raise {BUSY_TIMEOUT_ENV}",
)
# Trackio's own lock file, which only Trackio's schema set-up waits for.
_LOCK_FILE = _Fault(
    TEMPORARILY_UNAVAILABLE,
    True,
    "Trackio's lock file stayed held by another process for {waited:.0f} s",
    "Retry later",
)
_FULL = _Fault(
    RESOURCE_EXHAUSTED,
    False,
    "the disk is full",
    "Free some space and retry; earlier writes are kept",
)
_READ_ONLY = _Fault(
    PERMISSION_DENIED,
    False,
    "the file or its folder is read-only",
    "Make both writable for this user",
)
_MOVED = _Fault(
    INTERNAL_ERROR,
    False,
    "the file was deleted or moved while in use",
    "Put it back, or log to a new run",
)
_DAMAGED = _Fault(
    DATA_LOSS,
    False,
    "it is damaged or not an SQLite database",
    "Move it away or restore a backup",
)
_DISK_IO = _Fault(
    IO_ERROR,
    False,
    "disk I/O error",
    "Check free space, file size limits and the disk",
)
_CANT_OPEN = _Fault(
    IO_ERROR,
    False,
    "SQLite cannot open it",
    "Check that its folder exists and can be read and written",
)
_OTHER = _Fault(
    INTERNAL_ERROR,
    False,
    "{detail}",
    "Check that it is a Trackio database on a local disk",
)

# SQLite's primary result codes (https://www.sqlite.org/rescode.html).
_FAULT_BY_CODE = {
    3: _READ_ONLY,  # SQLITE_PERM
    5: _LOCKED,  # SQLITE_BUSY
    6: _LOCKED,  # SQLITE_LOCKED
    8: _READ_ONLY,  # SQLITE_READONLY
    10: _DISK_IO,  # SQLITE_IOERR
    11: _DAMAGED,  # SQLITE_CORRUPT
    13: _FULL,  # SQLITE_FULL
    14: _CANT_OPEN,  # SQLITE_CANTOPEN
    26: _DAMAGED,  # SQLITE_NOTADB
}
_SQLITE_READONLY_DBMOVED = 1032
# Python 3.10's sqlite3 errors carry no result code, only SQLite's message.
_FAULT_BY_MESSAGE = (
    ("locked", _LOCKED),
    ("busy", _LOCKED),
    ("disk is full", _FULL),
    ("readonly", _READ_ONLY),
    ("not a database", _DAMAGED),
    ("malformed", _DAMAGED),
    ("disk i/o", _DISK_IO),
    ("unable to open", _CANT_OPEN),
)
_FAULT_BY_ERRNO = {
    errno.ENOSPC: _FULL,
    errno.EDQUOT: _FULL,
    errno.EROFS: _READ_ONLY,
    errno.EACCES: _READ_ONLY,
    errno.EPERM: _READ_ONLY,
}


def _sqlite_fault(exc: sqlite3.Error) -> _Fault:
    code = getattr(exc, "sqlite_errorcode", None)
    if code == _SQLITE_READONLY_DBMOVED:
        return _MOVED
    if code is not None:
        return _FAULT_BY_CODE.get(code & 0xFF, _OTHER)
    text = str(exc).lower()
    return next((f for part, f in _FAULT_BY_MESSAGE if part in text), _OTHER)


def _os_fault(exc: OSError) -> _Fault:
    # Trackio raises a bare IOError when its lock file stays held.
    if exc.errno is None and "lock" in str(exc):
        return _LOCK_FILE
    return _FAULT_BY_ERRNO.get(exc.errno, _DISK_IO)


def _is_busy(exc: sqlite3.Error) -> bool:
    return _sqlite_fault(exc) is _LOCKED


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
        self._busy_timeout = _DEFAULT_BUSY_TIMEOUT_S
        self._opened_read_only = False
        self._connections_opened = 0
        self._has_mlflow_tables: bool | None = None

    def exists(self) -> bool:
        """Return whether the project file is on disk and holds a database.

        A file of 0 bytes holds none yet: SQLite writes its header on the
        first change, so such a file is what a creation that failed (a full
        disk) or was killed leaves behind, and it counts as absent.
        """
        try:
            return self.path.stat().st_size > 0
        except OSError:
            return False

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            timeout = busy_timeout_seconds()
            # `timeout` is SQLite's busy handler: each statement waits up to
            # that long for another process's lock.
            connection = sqlite3.connect(
                self.path,
                timeout=timeout,
                check_same_thread=False,
                isolation_level=None,
            )
            try:
                # WAL with synchronous=NORMAL: a committed transaction is in
                # the OS's hands when commit returns, so it survives the
                # process being killed; only an OS crash can lose the newest
                # commits.
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
            except BaseException:
                connection.close()
                raise
            self._busy_timeout = timeout
            # SQLite quietly opens a file it may not write read-only, and the
            # connection stays so after the file becomes writable again.
            self._opened_read_only = not self._writable()
            self._connection = connection
            self._connections_opened += 1
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
            # A file this store made needs no Trackio set-up, which would wait
            # on Trackio's own lock timeouts rather than the configured one.
            if self.mlflow_tables_exist():
                return
            with self._errors("create"):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                create_trackio_schema(self.path.parent, self.canonical_project)
                self._connect().executescript(MLFLOW_SCHEMA)
            self._has_mlflow_tables = True

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """Yield the connection for reads, under this file's lock."""
        with self.lock, self._errors("read"):
            yield self._connect()

    def change_marker(self) -> tuple[int, int, int]:
        """Return a value that changes whenever anything commits to the file.

        SQLite's data_version moves with other connections' commits and
        total_changes with this one's; the connection count covers a
        connection replaced in between.
        """
        with self.read() as connection:
            (data_version,) = connection.execute("PRAGMA data_version").fetchone()
            return self._connections_opened, data_version, connection.total_changes

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """Yield the connection inside one transaction, committed on exit.

        The transaction takes SQLite's write lock at once (BEGIN IMMEDIATE),
        so two writers never deadlock upgrading a read lock. If anything
        fails, the transaction is rolled back and nothing of it is kept.
        """
        self.ensure_schema()
        with self.lock, self._errors("write"):
            if self._opened_read_only:
                self._discard_connection()
            connection = self._connect()
            self._execute_waiting(connection, "BEGIN IMMEDIATE")
            try:
                yield connection
                self._execute_waiting(connection, "COMMIT")
            except BaseException:
                self._roll_back(connection)
                raise

    def _execute_waiting(self, connection: sqlite3.Connection, sql: str) -> None:
        """Run a statement that needs the write lock, within the busy window.

        SQLite's busy handler waits inside one call, but SQLite does not call
        it on every path that can return SQLITE_BUSY (it skips it where
        waiting could deadlock), so an early SQLITE_BUSY is retried with
        backoff until the same deadline. A COMMIT that fails this way keeps
        its transaction open, so retrying it is safe.
        """
        deadline = time.monotonic() + self._busy_timeout
        pause = _FIRST_PAUSE_S
        while True:
            try:
                connection.execute(sql)
                return
            except sqlite3.OperationalError as exc:
                left = deadline - time.monotonic()
                if not _is_busy(exc) or left <= 0:
                    raise
            _logger.debug("%s on %s was busy; retrying", sql, self.path)
            time.sleep(min(pause, left))
            pause = min(pause * 2, _LONGEST_PAUSE_S)

    def _roll_back(self, connection: sqlite3.Connection) -> None:
        # SQLite rolls back by itself after some errors (a full disk, an I/O
        # error); a second ROLLBACK would then fail and hide the real cause.
        if not connection.in_transaction:
            return
        try:
            connection.execute("ROLLBACK")
        except sqlite3.Error:
            _logger.debug("ROLLBACK failed on %s", self.path, exc_info=True)
            # Closing a connection rolls back whatever it left open.
            self._discard_connection()

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        except sqlite3.Error as exc:
            fault = self._refined(_sqlite_fault(exc))
            raise self._failure(action, fault, exc, started) from exc
        except OSError as exc:
            raise self._failure(action, _os_fault(exc), exc, started) from exc

    def _refined(self, fault: _Fault) -> _Fault:
        # SQLite reports a file it may not write as "cannot open" (it must
        # create -wal and -shm files) or as a failed write() (an I/O error).
        if fault in (_CANT_OPEN, _DISK_IO) and not self._writable():
            return _READ_ONLY
        return fault

    def _writable(self) -> bool:
        folder = self.path.parent
        if not folder.is_dir():
            return True
        if self.path.exists() and not os.access(self.path, os.R_OK | os.W_OK):
            return False
        return os.access(folder, os.W_OK)

    def _failure(
        self, action: str, fault: _Fault, exc: BaseException, started: float
    ) -> MlflowException:
        if not fault.keeps_connection:
            # The connection may point at a damaged, replaced or vanished
            # file; the next call opens a new one.
            self._discard_connection()
        detail = (str(exc) or type(exc).__name__)[:80]
        cause = fault.cause.format(waited=time.monotonic() - started, detail=detail)
        _logger.debug("%s of %s failed", action, self.path, exc_info=True)
        return MlflowException(
            f"Could not {action} {self.path}: {cause}. {fault.fix}.",
            error_code=fault.error_code,
        )

    def _discard_connection(self) -> None:
        connection, self._connection = self._connection, None
        self._has_mlflow_tables = None
        if connection is not None:
            with contextlib.suppress(sqlite3.Error):
                connection.close()

    def close(self) -> None:
        """Close the connection (the next call opens a new one)."""
        with self.lock:
            self._discard_connection()
