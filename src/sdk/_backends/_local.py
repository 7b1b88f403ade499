"""The local backend: a Trackio directory on this machine.

Each MLflow experiment is one Trackio project file ``<dir>/<canonical>.db``.
Metrics go to Trackio's ``metrics`` table (one row per step and timestamp),
params to Trackio's ``configs`` table, and MLflow's own bookkeeping (run info,
tags, latest metrics, inputs, logged models) to ``mlflow_*`` tables of the same
file, written in the same transaction.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from mlflow.entities import (
    DatasetInput,
    Experiment,
    ExperimentTag,
    LifecycleStage,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunStatus,
    RunTag,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_ALREADY_EXISTS, ErrorCode
from mlflow.protos.service_pb2 import DatasetInput as DatasetInputProto
from mlflow.utils.time import get_current_time_millis

from sdk import _mapping
from sdk._backends._sqlite import ProjectFile
from sdk._mlflow_compat import (
    LoggedModel,
    LoggedModelInput,
    LoggedModelOutput,
    LoggedModelProto,
    history_metric,
    make_run,
    run_info,
)

_logger = logging.getLogger(__name__)

ARTIFACTS_FOLDER = "mlflow-artifacts"
_DB_SUFFIX = ".db"


def default_directory() -> Path:
    """Return `TRACKIO_DIR`, else the directory Trackio itself would use."""
    configured = os.environ.get("TRACKIO_DIR")
    if configured:
        return Path(configured).expanduser().resolve()
    from trackio import utils

    return Path(utils.TRACKIO_DIR).expanduser().resolve()


def canonical_name(name: str) -> str:
    """Return Trackio's on-disk name for a project."""
    from trackio.utils import canonical_project_name

    return canonical_project_name(name)


def check_project_name(name: str) -> None:
    """Raise ValueError for names Trackio reserves (for example ``registry-x``)."""
    from trackio.sqlite_storage import SQLiteStorage

    SQLiteStorage.validate_project_name(name)


class LocalBackend:
    """Reads and writes MLflow entities in one local Trackio directory."""

    def __init__(self, directory: Path, artifact_root: str | None = None) -> None:
        self.directory = directory
        self._artifact_root = artifact_root
        self._files: dict[str, ProjectFile] = {}
        self._files_lock = threading.Lock()
        # Which project file holds a run or a logged model; ids never move.
        self._run_files: dict[str, ProjectFile] = {}
        # Runs known to have a row in mlflow_runs.
        self._recorded_runs: set[str] = set()
        # (where, run, key and change marker of the file) and its points.
        self._last_history: tuple[tuple[Any, ...], list[Metric]] | None = None
        self._history_lock = threading.Lock()
        self._model_files: dict[str, ProjectFile] = {}
        self._experiment_files: dict[str, ProjectFile] = {}

    # Project files -------------------------------------------------------

    def project_file(self, canonical: str) -> ProjectFile:
        """Return the (cached) handle of one project's database file."""
        with self._files_lock:
            found = self._files.get(canonical)
            if found is None:
                path = self.directory / f"{canonical}{_DB_SUFFIX}"
                found = self._files[canonical] = ProjectFile(path, canonical)
            return found

    def _all_project_files(self) -> list[ProjectFile]:
        if not self.directory.is_dir():
            return []
        stems = sorted(path.stem for path in self.directory.glob(f"*{_DB_SUFFIX}"))
        projects = [self.project_file(stem) for stem in stems]
        # Opening an empty file left by a failed creation would make it a
        # project without tables; `exists()` is False for such files.
        return [project for project in projects if project.exists()]

    def close(self) -> None:
        """Close every open connection."""
        with self._files_lock:
            for project in self._files.values():
                project.close()

    # Experiments ---------------------------------------------------------

    def default_artifact_location(self, experiment_id: str) -> str:
        """Return where a new experiment's artifacts go."""
        if self._artifact_root:
            return f"{self._artifact_root.rstrip('/')}/{experiment_id}"
        return (self.directory / ARTIFACTS_FOLDER / experiment_id).as_uri()

    def list_experiments(self) -> list[Experiment]:
        """Return every experiment in the directory, MLflow's and Trackio's."""
        experiments = [self._read_experiment(p) for p in self._all_project_files()]
        found = [e for e in experiments if e is not None]
        if not any(e.experiment_id == _mapping.DEFAULT_EXPERIMENT_ID for e in found):
            found.append(self._unsaved_default_experiment(found))
        return found

    def experiment_file(self, experiment_id: str) -> ProjectFile | None:
        """Return the project file of an experiment id, or None."""
        cached = self._experiment_files.get(experiment_id)
        if cached is not None and cached.exists():
            return cached
        for project in self._candidate_files(experiment_id):
            experiment = self._read_experiment(project)
            if experiment is not None and experiment.experiment_id == experiment_id:
                self._experiment_files[experiment_id] = project
                return project
        return None

    def _candidate_files(self, experiment_id: str) -> list[ProjectFile]:
        if experiment_id == _mapping.DEFAULT_EXPERIMENT_ID:
            default = self.project_file(_mapping.DEFAULT_EXPERIMENT_NAME)
            return [default, *self._all_project_files()]
        return self._all_project_files()

    def get_experiment(self, experiment_id: str) -> Experiment | None:
        """Return an experiment by id, or None."""
        project = self.experiment_file(experiment_id)
        if project is not None:
            return self._read_experiment(project)
        if experiment_id == _mapping.DEFAULT_EXPERIMENT_ID:
            return self._unsaved_default_experiment()
        return None

    def _unsaved_default_experiment(
        self, others: Sequence[Experiment] | None = None
    ) -> Experiment:
        # MLflow always has experiment "0"; it gets a file on its first write
        # so that Trackio's dashboard shows no empty "Default" project.
        created = self._default_creation_time(others)
        location = self.default_artifact_location(_mapping.DEFAULT_EXPERIMENT_ID)
        return _mapping.default_experiment(location, created)

    def _default_creation_time(self, others: Sequence[Experiment] | None) -> int:
        """Date experiment "0" just before the oldest other experiment.

        MLflow creates the default experiment with its store, before any
        other, so it sorts last by "creation_time DESC"; this store writes it
        only on its first use, and backdates it to keep that order.
        """
        if others is None:
            read = (self._read_experiment(p) for p in self._all_project_files())
            others = [e for e in read if e is not None]
        times = [
            e.creation_time
            for e in others
            if e.creation_time is not None
            and e.experiment_id != _mapping.DEFAULT_EXPERIMENT_ID
        ]
        return min(times) - 1 if times else get_current_time_millis()

    def _read_experiment(self, project: ProjectFile) -> Experiment | None:
        if not project.exists():
            return None
        if not project.mlflow_tables_exist():
            return self._trackio_experiment(project)
        with project.read() as connection:
            row = connection.execute(
                "SELECT experiment_id, name, artifact_location, lifecycle_stage,"
                " creation_time, last_update_time FROM mlflow_experiment"
            ).fetchone()
            tags = connection.execute(
                "SELECT key, value FROM mlflow_experiment_tags"
            ).fetchall()
        if row is None:
            return self._trackio_experiment(project)
        return Experiment(
            experiment_id=row[0],
            name=row[1],
            artifact_location=row[2],
            lifecycle_stage=row[3],
            tags=[ExperimentTag(key, value) for key, value in tags],
            creation_time=row[4],
            last_update_time=row[5],
        )

    def _trackio_experiment(self, project: ProjectFile) -> Experiment:
        """Present a project that only Trackio wrote as an MLflow experiment."""
        experiment_id = _mapping.experiment_id_for(project.canonical_project)
        created = int(project.path.stat().st_mtime * 1000)
        return Experiment(
            experiment_id=experiment_id,
            name=project.canonical_project,
            artifact_location=self.default_artifact_location(experiment_id),
            lifecycle_stage=LifecycleStage.ACTIVE,
            tags=[],
            creation_time=created,
            last_update_time=created,
        )

    def create_experiment(
        self,
        project: ProjectFile,
        experiment: Experiment,
    ) -> None:
        """Write a new experiment's record into its project file.

        Raises:
            MlflowException: RESOURCE_ALREADY_EXISTS if the file already holds
                one, which another process wrote after the caller checked.
        """
        with project.write() as connection:
            held = connection.execute("SELECT name FROM mlflow_experiment").fetchone()
            if held is not None:
                raise MlflowException(
                    f"Experiment(name={held[0]}) already exists.",
                    RESOURCE_ALREADY_EXISTS,
                )
            connection.execute(
                "INSERT INTO mlflow_experiment VALUES (?, ?, ?, ?, ?, ?)",
                (
                    experiment.experiment_id,
                    experiment.name,
                    experiment.artifact_location,
                    experiment.lifecycle_stage,
                    experiment.creation_time,
                    experiment.last_update_time,
                ),
            )
            connection.executemany(
                "INSERT OR REPLACE INTO mlflow_experiment_tags VALUES (?, ?)",
                list(experiment.tags.items()),
            )

    def save_experiment_record(self, project: ProjectFile) -> None:
        """Give a Trackio-only project (or the default) its MLflow record."""
        with project.write() as connection:
            if connection.execute("SELECT 1 FROM mlflow_experiment").fetchone():
                return
        experiment = (
            self._unsaved_default_experiment()
            if project.canonical_project == _mapping.DEFAULT_EXPERIMENT_NAME
            else self._trackio_experiment(project)
        )
        try:
            self.create_experiment(project, experiment)
        except MlflowException as exc:
            # Another process saved the record between the check and here.
            if exc.error_code != ErrorCode.Name(RESOURCE_ALREADY_EXISTS):
                raise

    def update_experiment(self, project: ProjectFile, **columns: Any) -> None:
        """Set columns of an experiment's record (name, lifecycle, times)."""
        self.save_experiment_record(project)
        assignments = ", ".join(f"{column} = ?" for column in columns)
        with project.write() as connection:
            connection.execute(
                f"UPDATE mlflow_experiment SET {assignments}", tuple(columns.values())
            )

    def set_experiment_tag(self, project: ProjectFile, key: str, value: str) -> None:
        """Set one experiment tag."""
        self.save_experiment_record(project)
        with project.write() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO mlflow_experiment_tags VALUES (?, ?)",
                (key, value),
            )

    def delete_experiment_tag(self, project: ProjectFile, key: str) -> bool:
        """Delete one experiment tag; return whether it existed."""
        if not project.mlflow_tables_exist():
            return False
        with project.write() as connection:
            cursor = connection.execute(
                "DELETE FROM mlflow_experiment_tags WHERE key = ?", (key,)
            )
        return cursor.rowcount > 0

    # Runs ----------------------------------------------------------------

    def run_file(self, run_id: str) -> ProjectFile | None:
        """Return the project file holding a run, MLflow's or Trackio's."""
        found = self._run_files.get(run_id)
        if found is not None:
            return found
        for project in self._all_project_files():
            if self._file_has_run(project, run_id):
                self._run_files[run_id] = project
                return project
        return None

    def _file_has_run(self, project: ProjectFile, run_id: str) -> bool:
        with project.read() as connection:
            if (
                project.mlflow_tables_exist()
                and connection.execute(
                    "SELECT 1 FROM mlflow_runs WHERE run_id = ?", (run_id,)
                ).fetchone()
            ):
                return True
            return _has_trackio_run(connection, run_id)

    def create_run(
        self,
        project: ProjectFile,
        info: RunInfo,
        tags: Sequence[RunTag],
        config: dict[str, Any],
    ) -> None:
        """Write a new run: its record, tags, config and one empty metrics row.

        Trackio lists a run only once it has a metrics row, so the empty row
        makes a run that logs only params visible on the dashboard.
        """
        import orjson

        created_iso = _mapping.ms_to_iso(info.start_time or 0)
        with project.write() as connection:
            connection.execute(
                "INSERT INTO mlflow_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.run_id,
                    info.run_name,
                    info.user_id,
                    info.status,
                    info.start_time,
                    info.end_time,
                    info.lifecycle_stage,
                    None,
                    info.artifact_uri,
                ),
            )
            connection.executemany(
                "INSERT OR REPLACE INTO mlflow_tags VALUES (?, ?, ?)",
                [(info.run_id, tag.key, tag.value) for tag in tags],
            )
            _write_config(connection, info.run_id, info.run_name, config, created_iso)
            connection.execute(
                "INSERT INTO metrics (timestamp, run_id, run_name, step, metrics,"
                " log_id) VALUES (?, ?, ?, 0, ?, ?)",
                (
                    created_iso,
                    info.run_id,
                    info.run_name,
                    orjson.dumps({}),
                    f"{info.run_id}-created",
                ),
            )
        self._run_files[info.run_id] = project

    def get_run(self, run_id: str) -> Run | None:
        """Return a run with its data, inputs and outputs, or None."""
        project = self.run_file(run_id)
        if project is None:
            return None
        runs = self.runs_in(project, run_ids=[run_id])
        return runs[0] if runs else None

    def run_info(self, run_id: str) -> RunInfo | None:
        """Return a run's info alone, or None: one read where `get_run` takes ten."""
        project = self.run_file(run_id)
        if project is None:
            return None
        if project.mlflow_tables_exist():
            with project.read() as connection:
                row = connection.execute(
                    "SELECT r.*, (SELECT experiment_id FROM mlflow_experiment)"
                    " FROM mlflow_runs r WHERE r.run_id = ?",
                    (run_id,),
                ).fetchone()
            if row is not None:
                self._recorded_runs.add(run_id)
                experiment_id = row[-1] or _mapping.experiment_id_for(
                    project.canonical_project
                )
                return _run_info_of_row(row[:-1], experiment_id)
        run = self.get_run(run_id)
        return run.info if run is not None else None

    def runs_in(
        self, project: ProjectFile, run_ids: Sequence[str] | None = None
    ) -> list[Run]:
        """Return the runs of one project file (all, or those in `run_ids`)."""
        experiment = self._read_experiment(project)
        if experiment is None:
            return []
        with project.read() as connection:
            runs: dict[str, Run] = {}
            if project.mlflow_tables_exist():
                runs = _read_mlflow_runs(connection, experiment.experiment_id, run_ids)
            for run in _read_trackio_runs(connection, experiment, run_ids, runs):
                runs[run.info.run_id] = run
        return list(runs.values())

    def save_run_record(self, project: ProjectFile, run_id: str) -> None:
        """Give a run that only Trackio wrote an MLflow record, to change it."""
        # Records are never removed, so one seen stays there.
        if run_id in self._recorded_runs:
            return
        if project.mlflow_tables_exist():
            with project.read() as connection:
                if connection.execute(
                    "SELECT 1 FROM mlflow_runs WHERE run_id = ?", (run_id,)
                ).fetchone():
                    self._recorded_runs.add(run_id)
                    return
        run = self.get_run(run_id)
        if run is None:
            return
        self.save_experiment_record(project)
        with project.write() as connection:
            info = run.info
            connection.execute(
                "INSERT OR IGNORE INTO mlflow_runs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    info.run_id,
                    info.run_name,
                    info.user_id,
                    info.status,
                    info.start_time,
                    info.end_time,
                    info.lifecycle_stage,
                    None,
                    info.artifact_uri,
                ),
            )
            connection.executemany(
                "INSERT OR IGNORE INTO mlflow_params VALUES (?, ?, ?)",
                [(run_id, key, value) for key, value in run.data.params.items()],
            )

    def update_run(self, project: ProjectFile, run_id: str, **columns: Any) -> None:
        """Set columns of a run's record; a new name is copied to Trackio's rows."""
        self.save_run_record(project, run_id)
        assignments = ", ".join(f"{column} = ?" for column in columns)
        with project.write() as connection:
            connection.execute(
                f"UPDATE mlflow_runs SET {assignments} WHERE run_id = ?",
                (*columns.values(), run_id),
            )
            if "run_name" in columns:
                _rename_trackio_run(connection, run_id, columns["run_name"])

    def write_batch(
        self,
        project: ProjectFile,
        run: RunInfo,
        metrics: Sequence[Metric],
        new_params: Sequence[Param],
        tags: Sequence[RunTag],
        config_update: dict[str, Any] | None,
    ) -> None:
        """Write one `log_batch` in one transaction."""
        with project.write() as connection:
            if new_params:
                connection.executemany(
                    "INSERT OR IGNORE INTO mlflow_params VALUES (?, ?, ?)",
                    [(run.run_id, p.key, p.value) for p in new_params],
                )
            if config_update is not None:
                _write_config(
                    connection,
                    run.run_id,
                    run.run_name,
                    config_update,
                    _mapping.ms_to_iso(run.start_time or 0),
                )
            if tags:
                connection.executemany(
                    "INSERT OR REPLACE INTO mlflow_tags VALUES (?, ?, ?)",
                    [(run.run_id, tag.key, tag.value) for tag in tags],
                )
            if metrics:
                _write_metrics(connection, run.run_id, run.run_name, metrics)

    def params_of(self, project: ProjectFile, run_id: str) -> dict[str, str]:
        """Return the params stored for a run."""
        with project.read() as connection:
            rows = connection.execute(
                "SELECT key, value FROM mlflow_params WHERE run_id = ?", (run_id,)
            ).fetchall()
        return dict(rows)

    def delete_tag(self, project: ProjectFile, run_id: str, key: str) -> bool:
        """Delete one run tag; return whether it existed."""
        self.save_run_record(project, run_id)
        with project.write() as connection:
            cursor = connection.execute(
                "DELETE FROM mlflow_tags WHERE run_id = ? AND key = ?", (run_id, key)
            )
        return cursor.rowcount > 0

    def metric_history(self, project: ProjectFile, run_id: str, key: str) -> list:
        """Return every point of one metric of a run, in MLflow's order.

        MLflow's client reads a long history page by page, one call each; the
        last history read is kept until its file changes, so that a history
        is read from disk once rather than once a page.
        """
        marker = (project.path, run_id, key, project.change_marker())
        with self._history_lock:
            if self._last_history is not None and self._last_history[0] == marker:
                return self._last_history[1]
        with project.read() as connection:
            points = _read_metric_points(connection, run_id, key)
        with self._history_lock:
            self._last_history = (marker, points)
        return points

    def log_inputs(
        self,
        project: ProjectFile,
        run_id: str,
        datasets: Sequence[DatasetInput],
        models: Sequence[LoggedModelInput],
    ) -> None:
        """Record a run's dataset and model inputs (each once)."""
        rows = [
            (run_id, "dataset", _dataset_identity(d), d.to_proto().SerializeToString())
            for d in datasets
        ]
        rows += [(run_id, "model", m.model_id, m.model_id.encode()) for m in models]
        self.save_run_record(project, run_id)
        with project.write() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO mlflow_run_inputs VALUES (?, ?, ?, ?)", rows
            )

    def log_outputs(
        self, project: ProjectFile, run_id: str, models: Sequence[LoggedModelOutput]
    ) -> None:
        """Record the models a run produced."""
        self.save_run_record(project, run_id)
        with project.write() as connection:
            connection.executemany(
                "INSERT OR REPLACE INTO mlflow_run_outputs VALUES (?, ?, ?)",
                [(run_id, m.model_id, m.step) for m in models],
            )

    # Logged models -------------------------------------------------------

    def save_logged_model(self, project: ProjectFile, model: LoggedModel) -> None:
        """Write (or overwrite) a logged model."""
        blob = model.to_proto().SerializeToString()
        self.save_experiment_record(project)
        with project.write() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO mlflow_logged_models VALUES (?, ?)",
                (model.model_id, blob),
            )
        self._model_files[model.model_id] = project

    def get_logged_model(self, model_id: str) -> tuple[ProjectFile, LoggedModel] | None:
        """Return a logged model and the project file holding it, or None."""
        cached = self._model_files.get(model_id)
        candidates = [cached] if cached else self._all_project_files()
        for project in candidates:
            model = self._read_logged_model(project, model_id)
            if model is not None:
                self._model_files[model_id] = project
                return project, model
        return None

    def _read_logged_model(
        self, project: ProjectFile, model_id: str
    ) -> LoggedModel | None:
        if not project.mlflow_tables_exist():
            return None
        with project.read() as connection:
            row = connection.execute(
                "SELECT proto FROM mlflow_logged_models WHERE model_id = ?",
                (model_id,),
            ).fetchone()
        if row is None:
            return None
        proto = LoggedModelProto()
        proto.ParseFromString(row[0])
        return LoggedModel.from_proto(proto)

    def logged_models_in(self, project: ProjectFile) -> list[LoggedModel]:
        """Return every logged model of one project file."""
        if not project.mlflow_tables_exist():
            return []
        with project.read() as connection:
            rows = connection.execute("SELECT proto FROM mlflow_logged_models")
            protos = [LoggedModelProto.FromString(row[0]) for row in rows]
        return [LoggedModel.from_proto(proto) for proto in protos]

    def delete_logged_model(self, project: ProjectFile, model_id: str) -> None:
        """Remove a logged model's record."""
        with project.write() as connection:
            connection.execute(
                "DELETE FROM mlflow_logged_models WHERE model_id = ?", (model_id,)
            )


# Row-level helpers -------------------------------------------------------


def _has_trackio_run(connection: sqlite3.Connection, run_id: str) -> bool:
    return (
        connection.execute(
            "SELECT 1 FROM metrics WHERE run_id = ? LIMIT 1", (run_id,)
        ).fetchone()
        is not None
        or connection.execute(
            "SELECT 1 FROM configs WHERE run_id = ?", (run_id,)
        ).fetchone()
        is not None
    )


def _write_config(
    connection: sqlite3.Connection,
    run_id: str,
    run_name: str,
    config: dict[str, Any],
    created_iso: str,
) -> None:
    import orjson

    connection.execute(
        "INSERT OR REPLACE INTO configs (run_id, run_name, config, created_at)"
        " VALUES (?, ?, ?, ?)",
        (run_id, run_name, orjson.dumps(config), created_iso),
    )


def _rename_trackio_run(connection: sqlite3.Connection, run_id: str, name: str) -> None:
    for table in ("metrics", "configs", "system_metrics"):
        connection.execute(
            f"UPDATE {table} SET run_name = ? WHERE run_id = ?", (name, run_id)
        )


def _write_metrics(
    connection: sqlite3.Connection,
    run_id: str,
    run_name: str,
    metrics: Sequence[Metric],
) -> None:
    import orjson

    training: list[Metric] = []
    system: list[Metric] = []
    for metric in metrics:
        is_system = metric.key.startswith(_mapping.SYSTEM_METRIC_PREFIX)
        (system if is_system else training).append(metric)
    training, system = _drop_stored_duplicates(connection, run_id, training, system)
    fresh = training + system
    if not fresh:
        return
    rows = []
    for (step, timestamp, *_), values in _mapping.group_metric_rows(training).items():
        payload = orjson.dumps(values)
        rows.append(
            (
                _mapping.ms_to_iso(timestamp),
                run_id,
                run_name,
                step,
                payload,
                _log_id(run_id, step, timestamp, payload),
            )
        )
    connection.executemany(
        "INSERT OR IGNORE INTO metrics (timestamp, run_id, run_name, step, metrics,"
        " log_id) VALUES (?, ?, ?, ?, ?, ?)",
        rows,
    )
    if system:
        _write_system_metrics(connection, run_id, run_name, system)
    connection.executemany(
        "INSERT INTO mlflow_latest_metrics VALUES (?, ?, ?, ?, ?, ?)"
        " ON CONFLICT (run_id, key) DO UPDATE SET value = excluded.value,"
        " timestamp = excluded.timestamp, step = excluded.step,"
        " is_nan = excluded.is_nan"
        " WHERE (excluded.step, excluded.timestamp, excluded.value)"
        " > (step, timestamp, value)",
        _latest_rows(run_id, fresh),
    )


def _latest_rows(run_id: str, metrics: Sequence[Metric]) -> list[tuple[Any, ...]]:
    """Return each key's latest point of a batch, as mlflow_latest_metrics rows.

    A batch holds many steps of few keys; upserting only each key's latest
    point, by the same rule as the upsert, spares SQLite most of the rows.
    """
    latest: dict[str, Metric] = {}
    for metric in metrics:
        held = latest.setdefault(metric.key, metric)
        if held is not metric and _latest_order(metric) > _latest_order(held):
            latest[metric.key] = metric
    rows = []
    for key, metric in latest.items():
        value, is_nan = _mapping.sanitize_for_summary(metric.value)
        rows.append((run_id, key, value, metric.timestamp, metric.step, int(is_nan)))
    return rows


def _latest_order(metric: Metric) -> tuple[int, int, float]:
    # The upsert's order, on the value as stored: NaN counts as 0.0.
    value = metric.value
    return metric.step, metric.timestamp, value if value == value else 0.0


def _write_system_metrics(
    connection: sqlite3.Connection,
    run_id: str,
    run_name: str,
    metrics: Sequence[Metric],
) -> None:
    import orjson

    prefix = len(_mapping.SYSTEM_METRIC_PREFIX)
    stripped = [Metric(m.key[prefix:], m.value, m.timestamp, m.step) for m in metrics]
    rows, steps = [], []
    for (step, timestamp, *_), values in _mapping.group_metric_rows(stripped).items():
        payload = orjson.dumps(values)
        log_id = _log_id(run_id, step, timestamp, payload)
        rows.append((_mapping.ms_to_iso(timestamp), run_id, run_name, payload, log_id))
        steps.append((log_id, step))
    connection.executemany(
        "INSERT OR IGNORE INTO system_metrics (timestamp, run_id, run_name, metrics,"
        " log_id) VALUES (?, ?, ?, ?, ?)",
        rows,
    )
    connection.executemany(
        "INSERT OR IGNORE INTO mlflow_system_metric_steps VALUES (?, ?)", steps
    )


def _log_id(run_id: str, step: int, timestamp: int, payload: bytes) -> str:
    # Deterministic, so a retried batch inserts nothing twice.
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{run_id}|{step}|{timestamp}|".encode())
    digest.update(payload)
    return digest.hexdigest()


def _drop_stored_duplicates(
    connection: sqlite3.Connection,
    run_id: str,
    training: list[Metric],
    system: list[Metric],
) -> tuple[list[Metric], list[Metric]]:
    """Drop points already stored with the same key, step, timestamp and value.

    MLflow's SQL store keeps each such point once; MLflow's `Model.log` re-logs
    a run's metrics with a model id, which must not double the history.
    """
    steps = sorted({m.step for m in training} | {m.step for m in system})
    existing = set(_points_at_steps(connection, run_id, steps, bool(system)))
    if not existing:
        return training, system
    return _not_in(training, existing), _not_in(system, existing)


def _not_in(
    metrics: list[Metric], existing: set[tuple[str, int, int, Any]]
) -> list[Metric]:
    """Return the metrics not in `existing`, adding each one kept to it."""
    fresh = []
    for metric in metrics:
        value = _mapping.to_trackio_value(metric.value)
        identity = (metric.key, metric.step, metric.timestamp, value)
        if identity not in existing:
            existing.add(identity)
            fresh.append(metric)
    return fresh


# SQLite allows at least 999 parameters in one statement.
_STEPS_PER_QUERY = 900


def _points_at_steps(
    connection: sqlite3.Connection,
    run_id: str,
    steps: Sequence[int],
    with_system: bool,
) -> Iterable[tuple[str, int, int, Any]]:
    """Yield (key, step, timestamp, value) of the points stored at `steps`.

    One indexed query per chunk of steps: a batch covers many steps, and
    in training they are new, so the queries find nothing, quickly.
    """
    for first in range(0, len(steps), _STEPS_PER_QUERY):
        chunk = steps[first : first + _STEPS_PER_QUERY]
        marks = ",".join("?" * len(chunk))
        rows = connection.execute(
            "SELECT step, timestamp, metrics FROM metrics"
            f" WHERE run_id = ? AND step IN ({marks})",
            (run_id, *chunk),
        )
        yield from _points_of_rows(rows, _mapping.from_trackio_key)
        if with_system:
            rows = connection.execute(
                "SELECT p.step, s.timestamp, s.metrics FROM system_metrics s"
                " JOIN mlflow_system_metric_steps p ON p.log_id = s.log_id"
                f" WHERE s.run_id = ? AND p.step IN ({marks})",
                (run_id, *chunk),
            )
            yield from _points_of_rows(
                rows, lambda key: _mapping.SYSTEM_METRIC_PREFIX + key
            )


def _points_of_rows(
    rows: Iterable[tuple[int, str, bytes]], mlflow_key: Callable[[str], str]
) -> Iterable[tuple[str, int, int, Any]]:
    import orjson

    for step, timestamp, payload in rows:
        timestamp_ms = _mapping.iso_to_ms(timestamp)
        for key, value in orjson.loads(payload).items():
            yield mlflow_key(key), step, timestamp_ms, value


def _read_metric_points(
    connection: sqlite3.Connection, run_id: str, key: str
) -> list[Metric]:
    """Return one metric's points in MLflow's order: timestamp, step, value."""
    if key.startswith(_mapping.SYSTEM_METRIC_PREFIX):
        rows = connection.execute(
            "SELECT s.timestamp, COALESCE(p.step, 0), j.value FROM system_metrics s"
            " LEFT JOIN mlflow_system_metric_steps p ON p.log_id = s.log_id,"
            " json_each(CAST(s.metrics AS TEXT)) j WHERE s.run_id = ? AND j.key = ?",
            (run_id, key[len(_mapping.SYSTEM_METRIC_PREFIX) :]),
        ).fetchall()
    else:
        rows = connection.execute(
            "SELECT m.timestamp, m.step, j.value FROM metrics m,"
            " json_each(CAST(m.metrics AS TEXT)) j WHERE m.run_id = ? AND j.key = ?",
            (run_id, _mapping.to_trackio_key(key)),
        ).fetchall()
    # Sorted as plain tuples before any Metric is built: several times faster.
    decoded = []
    for timestamp, step, raw in rows:
        value = _mapping.from_trackio_value(raw)
        if value is not None:
            decoded.append((_mapping.iso_to_ms(timestamp), step, value))
    decoded.sort()
    return [
        history_metric(key, value, timestamp, step, run_id)
        for timestamp, step, value in decoded
    ]


def _dataset_identity(dataset_input: DatasetInput) -> str:
    dataset = dataset_input.dataset
    context = sorted((tag.key, tag.value) for tag in dataset_input.tags)
    return f"{dataset.name}|{dataset.digest}|{context}"


def _read_mlflow_runs(
    connection: sqlite3.Connection,
    experiment_id: str,
    run_ids: Sequence[str] | None,
) -> dict[str, Run]:
    where, args = _run_filter(run_ids)
    infos = {
        row[0]: _run_info_of_row(row, experiment_id)
        for row in connection.execute(f"SELECT * FROM mlflow_runs{where}", args)
    }
    if not infos:
        return {}
    params = _grouped(
        connection, "SELECT run_id, key, value FROM mlflow_params", where, args
    )
    tags = _grouped(
        connection, "SELECT run_id, key, value FROM mlflow_tags", where, args
    )
    latest = _grouped(
        connection,
        "SELECT run_id, key, value, timestamp, step, is_nan FROM mlflow_latest_metrics",
        where,
        args,
    )
    inputs = _grouped(
        connection, "SELECT run_id, kind, proto FROM mlflow_run_inputs", where, args
    )
    outputs = _grouped(
        connection, "SELECT run_id, model_id, step FROM mlflow_run_outputs", where, args
    )
    runs = {}
    for run_id, info in infos.items():
        data = RunData(
            metrics=[
                Metric(key, float("nan") if is_nan else value, ts, step)
                for key, value, ts, step, is_nan in latest.get(run_id, [])
            ],
            params=[Param(key, value) for key, value in params.get(run_id, [])],
            tags=[RunTag(key, value) for key, value in tags.get(run_id, [])],
        )
        datasets, models = _run_inputs(inputs.get(run_id, []))
        runs[run_id] = make_run(info, data, datasets, models, outputs.get(run_id, []))
    return runs


def _run_info_of_row(row: Sequence[Any], experiment_id: str) -> RunInfo:
    """Build a RunInfo from a row of ``SELECT * FROM mlflow_runs``."""
    return run_info(
        run_id=row[0],
        experiment_id=experiment_id,
        user_id=row[2],
        status=row[3],
        start_time=row[4],
        end_time=row[5],
        lifecycle_stage=row[6],
        artifact_uri=row[8],
        run_name=row[1],
    )


def _run_filter(run_ids: Sequence[str] | None) -> tuple[str, tuple[str, ...]]:
    if run_ids is None:
        return "", ()
    marks = ", ".join("?" for _ in run_ids)
    return f" WHERE run_id IN ({marks})", tuple(run_ids)


def _grouped(
    connection: sqlite3.Connection, select: str, where: str, args: tuple[str, ...]
) -> dict[str, list[tuple[Any, ...]]]:
    grouped: dict[str, list[tuple[Any, ...]]] = {}
    for run_id, *rest in connection.execute(select + where, args):
        grouped.setdefault(run_id, []).append(tuple(rest))
    return grouped


def _run_inputs(rows: list[tuple[Any, ...]]) -> tuple[list[DatasetInput], list[str]]:
    """Split a run's input rows into datasets and the ids of logged models."""
    datasets = []
    models = []
    for kind, blob in rows:
        if kind == "dataset":
            datasets.append(DatasetInput.from_proto(DatasetInputProto.FromString(blob)))
        else:
            models.append(blob.decode())
    return datasets, models


def _read_trackio_runs(
    connection: sqlite3.Connection,
    experiment: Experiment,
    run_ids: Sequence[str] | None,
    known: dict[str, Run],
) -> list[Run]:
    """Present runs that Trackio's own `trackio.init/log` wrote as MLflow runs."""
    import orjson

    where, args = _run_filter(run_ids)
    firsts = connection.execute(
        "SELECT run_id, MIN(run_name), MIN(timestamp), MAX(timestamp) FROM metrics"
        f"{where} GROUP BY run_id",
        args,
    ).fetchall()
    configs = dict(
        connection.execute(f"SELECT run_id, config FROM configs{where}", args)
    )
    runs = []
    for run_id, run_name, first, last in firsts:
        if run_id in known:
            continue
        config = orjson.loads(configs.get(run_id) or b"{}")
        info = run_info(
            run_id=run_id,
            experiment_id=experiment.experiment_id,
            user_id=str(config.get(_mapping.CONFIG_USER) or ""),
            status=RunStatus.to_string(RunStatus.FINISHED),
            start_time=_mapping.iso_to_ms(first),
            end_time=_mapping.iso_to_ms(last),
            lifecycle_stage=LifecycleStage.ACTIVE,
            artifact_uri=f"{experiment.artifact_location}/{run_id}/artifacts",
            run_name=run_name,
        )
        data = RunData(
            metrics=_latest_trackio_metrics(connection, run_id),
            params=[
                Param(k, v) for k, v in _mapping.params_from_config(config).items()
            ],
            tags=[RunTag("mlflow.runName", run_name)],
        )
        runs.append(make_run(info, data))
    return runs


def _latest_trackio_metrics(connection: sqlite3.Connection, run_id: str) -> list:
    import orjson

    latest: dict[str, tuple[int, int, float]] = {}
    rows = connection.execute(
        "SELECT step, timestamp, metrics FROM metrics WHERE run_id = ?", (run_id,)
    )
    for step, timestamp, payload in rows:
        timestamp_ms = _mapping.iso_to_ms(timestamp)
        for raw_key, raw in orjson.loads(payload).items():
            value = _mapping.from_trackio_value(raw)
            if value is None:
                continue
            key = _mapping.from_trackio_key(raw_key)
            candidate = (step, timestamp_ms, value)
            if key not in latest or candidate > latest[key]:
                latest[key] = candidate
    return [Metric(k, v, ts, step) for k, (step, ts, v) in latest.items()]
