"""The backends compared side by side, and the temporary places they write to.

Every MLflow backend runs in its default configuration, the one users get:
MLflow's `sqlite:///` and `file://` stores as MLflow builds them, `trackio://`
as this package builds it, and Trackio's own `trackio.init/log/finish`.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from benchmarks import _noop_store

# A fresh temporary directory for Trackio's own API must be chosen before
# `import trackio`, which reads TRACKIO_DIR into a module constant.
TRACKIO_DIR_ENV = "TRACKIO_DIR"

# Variables that would change what MLflow does; the benchmark measures the
# defaults, so they are cleared for its process and its children.
_MLFLOW_VARIABLES_CLEARED = (
    "MLFLOW_TRACKING_URI",
    "MLFLOW_EXPERIMENT_ID",
    "MLFLOW_EXPERIMENT_NAME",
    "MLFLOW_RUN_ID",
    "MLFLOW_ENABLE_ASYNC_LOGGING",
)


@dataclass(frozen=True)
class Backend:
    """One column of the comparison: a tracking URI scheme or a bare baseline."""

    key: str
    label: str
    is_mlflow_store: bool = True


NOOP = Backend("noop", "noop://")
TRACKIO = Backend("trackio", "trackio://")
SQLITE = Backend("sqlite", "sqlite:///")
FILE = Backend("file", "file://")
TRACKIO_API = Backend("trackio_api", "trackio.log", is_mlflow_store=False)
BARE_SQLITE = Backend("bare_sqlite", "sqlite3 (bare)", is_mlflow_store=False)
NO_TRACKING = Backend("no_tracking", "no autolog", is_mlflow_store=False)
ENTRY_POINT = Backend("entry_point", "with entry point", is_mlflow_store=False)
HIDDEN_ENTRY_POINT = Backend(
    "entry_point_hidden", "entry point hidden", is_mlflow_store=False
)
ENTRY_POINT_LOAD = Backend(
    "entry_point_load", "entry point load alone", is_mlflow_store=False
)
# Servers started by the benchmark: MLflow's REST API over a Trackio directory
# (`mlflow-trackio ui`), and `trackio show` written to with `trackio+http://`,
# whose figure counts the points delivered and its side figure those returned.
MLFLOW_SERVER = Backend("mlflow_server", "http:// (mlflow-trackio ui)")
TRACKIO_SERVER = Backend("trackio_http", "trackio+http:// delivered")
TRACKIO_SERVER_RETURNED = Backend(
    "trackio_http_returned", "trackio+http:// returned", is_mlflow_store=False
)

MLFLOW_STORES = (NOOP, TRACKIO, SQLITE, FILE)


def rotated(backends: tuple[Backend, ...], repetition: int) -> list[Backend]:
    """Return the backends starting at a different one each repetition.

    Alternating the order spreads slow drifts of the machine (other jobs, page
    cache, thermal state) over every backend instead of one.
    """
    shift = repetition % len(backends)
    return list(backends[shift:] + backends[:shift])


class Session:
    """Temporary directories and MLflow state for one benchmark run."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mlflow-trackio-bench-", dir=root))
        self._counter = itertools.count()
        self._sqlite_template: Path | None = None
        self._store_directories: dict[str, Path] = {}
        for name in _MLFLOW_VARIABLES_CLEARED:
            os.environ.pop(name, None)
        os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
        os.environ[TRACKIO_DIR_ENV] = str(self.root / "trackio-api")
        _noop_store.register()

    def close(self) -> None:
        """Remove every directory the session made."""
        shutil.rmtree(self.root, ignore_errors=True)

    def fresh_directory(self, label: str) -> Path:
        """Return a new empty directory."""
        directory = self.root / f"{label}-{next(self._counter)}"
        directory.mkdir(parents=True)
        return directory

    def unique_name(self, prefix: str) -> str:
        """Return a name used nowhere else in this session."""
        return f"{prefix}-{next(self._counter)}"

    def new_store_uri(self, backend: Backend) -> str:
        """Return the tracking URI of a new, empty store of one backend."""
        directory = self.fresh_directory(backend.key)
        uri = self._store_uri(backend, directory)
        self._store_directories[uri] = directory
        return uri

    def _store_uri(self, backend: Backend, directory: Path) -> str:
        if backend is NOOP:
            return f"noop://{directory.name}"
        if backend is TRACKIO:
            return f"trackio://{directory.as_posix()}"
        if backend is SQLITE:
            database = directory / "mlflow.db"
            shutil.copyfile(self._sqlite_database_template(), database)
            return f"sqlite:///{database.as_posix()}"
        if backend is FILE:
            return (directory / "mlruns").as_uri()
        raise ValueError(f"{backend.label} is not an MLflow tracking store.")

    def _sqlite_database_template(self) -> Path:
        # MLflow creates its schema (about 40 Alembic migrations, seconds) on a
        # store's first use; copying a database it made once keeps that out of
        # every repetition without changing the database users get.
        if self._sqlite_template is None:
            from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

            template = self.root / "sqlite-template" / "mlflow.db"
            template.parent.mkdir()
            store = SqlAlchemyStore(
                f"sqlite:///{template.as_posix()}", (self.root / "unused").as_uri()
            )
            store.engine.dispose()
            self._sqlite_template = template
        return self._sqlite_template

    def release_store(self, uri: str) -> None:
        """Close a store, forget it and delete its files."""
        from mlflow.tracking._tracking_service import utils

        store = utils._get_store(uri)
        backend = getattr(store, "backend", None)
        if backend is not None and hasattr(backend, "close"):
            backend.close()
        engine = getattr(store, "engine", None)
        if engine is not None:
            engine.dispose()
        utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()
        directory = self._store_directories.pop(uri, None)
        if directory is not None:
            shutil.rmtree(directory, ignore_errors=True)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Swallow what Trackio prints on `init` and `finish`."""
    with contextlib.redirect_stdout(io.StringIO()):
        yield


def trackio_storage():
    """Return Trackio's storage class (imported only when first needed)."""
    from trackio.sqlite_storage import SQLiteStorage

    return SQLiteStorage
