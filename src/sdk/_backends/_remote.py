"""The remote backend: a running Trackio server, through its HTTP API.

Writes go to the server's ``bulk_log`` and ``bulk_log_system`` calls with the
write token, by way of a spool on local disk (`sdk._backends._spool`), so they
cost no network round trip, survive a killed process and wait while the
server is down. Reads go to its read API, mostly ``query_project`` (read-only
SQL), which hands back stored JSON unchanged where the other read calls turn
NaN and infinities into nulls.

The server keeps metric rows and one config per run. Params are the config's
keys, as locally; everything else MLflow keeps about a run (tags, status,
times, lifecycle, inputs, the latest value of each metric) goes into the same
config under the key ``_mlflow``, which Trackio's dashboard does not show.
What has no place there (MLflow's timestamps of metric rows, the steps of
system metrics, experiment tags and lifecycle, logged models, artifacts) is
listed in ``docs/remote.md``. One warning at a process's first run names it
all; the experiment calls and logged models also raise.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import math
import os
import threading
import time
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

from mlflow.entities import (
    DatasetInput,
    Experiment,
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
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    PERMISSION_DENIED,
    RESOURCE_DOES_NOT_EXIST,
    TEMPORARILY_UNAVAILABLE,
)

from sdk import _mapping
from sdk._backends import _spool
from sdk._mlflow_compat import (
    LoggedModel,
    LoggedModelInput,
    LoggedModelOutput,
    MlflowNotImplementedException,
    history_metric,
    make_run,
    run_info,
)

_logger = logging.getLogger(__name__)

WRITE_TOKEN_ENV = "TRACKIO_WRITE_TOKEN"
DRAIN_TIMEOUT_ENV = "MLFLOW_TRACKIO_DRAIN_TIMEOUT"
ARTIFACT_ROOT_ENV = "MLFLOW_TRACKIO_ARTIFACT_ROOT"
# The config key for what MLflow keeps about a run beyond its params. Trackio's
# dashboard hides config keys starting with "_" (trackio 0.43 frontend).
MLFLOW_CONFIG_KEY = "_mlflow"
_TOKEN_HEADER = "X-Trackio-Write-Token"
_API_VERSION = 1
_DEFAULT_DRAIN_TIMEOUT_S = 10.0
# A run's latest-metric summary rides along with its rows at most this often
# (and always with a change of params, tags or status, and at run end).
_SUMMARY_INTERVAL_S = 2.0
# query_project refuses answers of more than 10 000 rows (trackio 0.43).
_PAGE_ROWS = 5000
_CONFIG_PAGE_ROWS = 500
_KEPT_FINISHED_RUNS = 1000
_TOKEN_REFUSED = "the write token is missing or wrong"
_NOT_TRACKIO = "the address does not answer like a Trackio server"
_CERT_REFUSED = "the server's TLS certificate did not verify"
_CERT_FAILED = "CERTIFICATE_VERIFY_FAILED"

_warned: set[str] = set()
_warned_lock = threading.Lock()
_backends: weakref.WeakSet[RemoteBackend] = weakref.WeakSet()


def _warn_once(kind: str, message: str) -> None:
    with _warned_lock:
        if kind in _warned:
            return
        _warned.add(kind)
    warnings.warn(message, RuntimeWarning, stacklevel=4)


class _ServerError(Exception):
    """The server answered a call with an error."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RemoteProject:
    """A project on the Trackio server: the store's handle for an experiment."""

    def __init__(self, backend: RemoteBackend, canonical: str) -> None:
        self._backend = backend
        self.canonical_project = canonical

    def exists(self) -> bool:
        """Return whether the project is on the server (or created here)."""
        return self._backend.project_exists(self.canonical_project)


@dataclass
class _RunRecord:
    """What this process holds of a run it writes: the server's copy, or newer."""

    project: str
    experiment_id: str
    info: dict[str, Any]
    experiment: dict[str, Any]
    config: dict[str, Any]
    params: dict[str, str]
    tags: dict[str, str]
    latest: dict[str, list[Any]] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    models_in: list[str] = field(default_factory=list)
    models_out: dict[str, int] = field(default_factory=dict)
    summary_dirty: bool = False
    sent_at: float = 0.0

    def to_config(self) -> dict[str, Any]:
        meta = {
            **self.info,
            **self.experiment,
            "tags": self.tags,
            "latest": self.latest,
            "datasets": list(self.datasets.values()),
            "model_inputs": self.models_in,
            "model_outputs": self.models_out,
        }
        return {**self.config, MLFLOW_CONFIG_KEY: meta}

    def take_metrics(self, metrics: Sequence[Metric]) -> None:
        for metric in metrics:
            value, is_nan = _mapping.sanitize_for_summary(metric.value)
            candidate = [value, metric.timestamp, metric.step, is_nan]
            old = self.latest.get(metric.key)
            if old is None or (metric.step, metric.timestamp, value) > (
                old[2],
                old[1],
                old[0],
            ):
                self.latest[metric.key] = candidate
                self.summary_dirty = True

    def to_run(self) -> Run:
        from google.protobuf.json_format import ParseDict
        from mlflow.protos.service_pb2 import DatasetInput as DatasetInputProto

        info = run_info(experiment_id=self.experiment_id, **_run_info_fields(self.info))
        data = RunData(
            metrics=[
                Metric(key, math.nan if nan else value, ts, step)
                for key, (value, ts, step, nan) in self.latest.items()
            ],
            params=[Param(k, v) for k, v in self.params.items()],
            tags=[RunTag(k, v) for k, v in self.tags.items()],
        )
        datasets = [
            DatasetInput.from_proto(ParseDict(d, DatasetInputProto()))
            for d in self.datasets.values()
        ]
        return make_run(info, data, datasets, self.models_in, self.models_out.items())


_INFO_FIELDS = (
    "run_id",
    "run_name",
    "user_id",
    "status",
    "start_time",
    "end_time",
    "lifecycle_stage",
    "artifact_uri",
)


def _run_info_fields(info: dict[str, Any]) -> dict[str, Any]:
    return {name: info.get(name) for name in _INFO_FIELDS}


class RemoteBackend:
    """
    Reads and writes MLflow entities on one Trackio server.

    Args:
        store_uri: ``trackio+http://host:port`` or ``trackio+https://host``,
            optionally with ``?write_token=...``.
        artifact_root: Root for new experiments' artifacts; without it,
            ``MLFLOW_TRACKIO_ARTIFACT_ROOT``, else a directory on this machine.

    Raises:
        MlflowException: If the URI names no host or has unknown parameters.
    """

    def __init__(self, store_uri: str, artifact_root: str | None = None) -> None:
        import httpx

        self.base_url, self.label, self._url_token = _parse_server_uri(store_uri)
        self.key = hashlib.sha256(self.base_url.encode()).hexdigest()[:16]
        self._artifact_root = artifact_root
        self._http = httpx.Client(
            base_url=self.base_url, timeout=httpx.Timeout(30.0, connect=5.0)
        )
        self._lock = threading.RLock()
        self._probe_lock = threading.Lock()
        self._token_ok = False
        self._probed = False
        self._experiments: dict[str, Experiment] = {}
        self._pending: set[str] = set()
        self._offline_listing_warned = False
        self._records: OrderedDict[str, _RunRecord] = OrderedDict()
        self._run_projects: dict[str, str] = {}
        self.spool = _spool.Spool(
            _spool.spool_root() / self.key,
            self.label,
            self._deliver,
            idle=self._flush_summaries,
        )
        if self._token():
            self.spool.claim_orphans()
        _backends.add(self)

    # HTTP ----------------------------------------------------------------

    def _token(self) -> str | None:
        return self._url_token or os.environ.get(WRITE_TOKEN_ENV) or None

    def _call(self, api: str, *, write: bool = False, **kwargs: Any) -> Any:
        import httpx
        import orjson

        headers = {"content-type": "application/json"}
        token = self._token() if write else None
        if token:
            headers[_TOKEN_HEADER] = token
        try:
            response = self._http.post(
                f"api/{api}", content=orjson.dumps({"kwargs": kwargs}), headers=headers
            )
        except httpx.TransportError as exc:
            reason = self._scrub(f"{type(exc).__name__}: {exc}")
            raise _spool.Unreachable(reason) from None
        if response.status_code in (502, 503, 504):
            raise _spool.Unreachable(f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict):
            body = {}
        if response.status_code >= 400 or body.get("error") is not None:
            message = str(body.get("error") or response.reason_phrase)
            raise _ServerError(response.status_code, self._scrub(message))
        return body.get("data")

    def _scrub(self, text: str) -> str:
        token = self._token()
        return text.replace(token, "***") if token else text

    def _read(self, api: str, **kwargs: Any) -> Any:
        try:
            return self._call(api, **kwargs)
        except _spool.Unreachable as exc:
            raise self._unreachable_error(exc) from None
        except _ServerError as exc:
            raise MlflowException(
                f"The Trackio server at {self.label} failed {api}: {exc.message[:100]}",
                INTERNAL_ERROR,
            ) from None

    def _unreachable_error(self, exc: Exception) -> MlflowException:
        return MlflowException(
            f"The Trackio server at {self.label} is unreachable ({exc}). Reads "
            "need the server: start it or check the tracking URI.",
            TEMPORARILY_UNAVAILABLE,
        )

    def _query(self, project: str, sql: str) -> list[dict[str, Any]]:
        try:
            answer = self._call("query_project", project=project, query=sql)
        except _ServerError as exc:
            if exc.message == f"Project '{project}' not found.":
                return []
            raise MlflowException(
                f"The Trackio server at {self.label} failed a query on project "
                f"{project!r}: {exc.message[:80]}",
                INTERNAL_ERROR,
            ) from None
        except _spool.Unreachable as exc:
            raise self._unreachable_error(exc) from None
        return answer["rows"]

    def _query_pages(
        self, project: str, sql: str, page: int = _PAGE_ROWS
    ) -> Iterator[dict[str, Any]]:
        """Yield the rows of `sql`, which must select ``id`` and hold ``{after}``
        and ``{limit}`` placeholders for keyset paging."""
        after = 0
        while True:
            rows = self._query(project, sql.format(after=after, limit=page))
            yield from rows
            if len(rows) < page:
                return
            after = rows[-1]["id"]

    # Write token ---------------------------------------------------------

    def _ensure_writable(self) -> None:
        """Fail at the first write when the token is missing or refused."""
        if self.spool.refused is not None:
            raise self._refused_error()
        if self._token_ok:
            return
        if not self._token():
            raise MlflowException(
                f"No write token for the Trackio server at {self.label}. Set "
                f"{WRITE_TOKEN_ENV} to the token the server was started with (or "
                "add ?write_token=... to the tracking URI).",
                PERMISSION_DENIED,
            )
        with self._probe_lock:
            if self._probed:
                # The server was unreachable at the first write; the spool's
                # thread checks the token before it sends anything.
                return
            self._probed = True
            try:
                self._probe_token()
            except _spool.Unreachable:
                return
            except _spool.Refused as exc:
                self.spool.refused = str(exc)
                raise self._refused_error() from None

    def _refused_error(self) -> MlflowException:
        if self.spool.refused == _NOT_TRACKIO:
            return MlflowException(
                f"{self.label} does not answer like a Trackio server (GET /version). "
                "Check the tracking URI.",
                INVALID_PARAMETER_VALUE,
            )
        if self.spool.refused == _CERT_REFUSED:
            return MlflowException(
                f"The TLS certificate of {self.label} did not verify. Point "
                "SSL_CERT_FILE at the CA bundle that signed it.",
                PERMISSION_DENIED,
            )
        return MlflowException(
            f"The Trackio server at {self.label} refused the write token. Set "
            f"{WRITE_TOKEN_ENV} (or ?write_token=... in the tracking URI) to the "
            "token the server was started with.",
            PERMISSION_DENIED,
        )

    def _probe_token(self) -> None:
        """Check the token with an empty ``bulk_log``, which writes nothing."""
        if not self._token():
            raise _spool.Refused(_TOKEN_REFUSED)
        if self._server_version() != _API_VERSION:
            raise _spool.Refused(_NOT_TRACKIO)
        try:
            self._call("bulk_log", write=True, logs=[], hf_token=None)
        except _ServerError:
            raise _spool.Refused(_TOKEN_REFUSED) from None
        self._token_ok = True

    def _server_version(self) -> Any:
        """Return the API version of ``GET /version``; None if not Trackio's."""
        import httpx

        try:
            response = self._http.get("version")
        except httpx.TransportError as exc:
            if _CERT_FAILED in str(exc):
                raise _spool.Refused(_CERT_REFUSED) from None
            raise _spool.Unreachable(type(exc).__name__) from None
        # A proxy in front of a server that is restarting answers like this.
        if response.status_code in (502, 503, 504):
            raise _spool.Unreachable(f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError:
            return None
        return body.get("api_version") if isinstance(body, dict) else None

    def _deliver(self, ops: list[dict[str, Any]]) -> None:
        """Send spooled lines to the server, in order (the spool's callback)."""
        if not self._token_ok:
            self._probe_token()
        for api, kwargs in _server_calls(ops):
            try:
                self._call(api, write=True, **kwargs)
            except _ServerError as exc:
                if api == "rename_run":
                    _logger.warning(
                        "The Trackio server at %s did not rename run %s: %s",
                        self.label,
                        kwargs.get("run_id"),
                        exc.message[:100],
                    )
                    continue
                if exc.status in (400, 401, 403):
                    self._token_ok = False
                    self._probe_token()
                raise _spool.Rejected(exc.message) from None

    # Project handles -----------------------------------------------------

    def project_file(self, canonical: str) -> RemoteProject:
        """Return the handle of one project on the server."""
        return RemoteProject(self, canonical)

    def project_exists(self, canonical: str) -> bool:
        """Return whether a project is on the server or was created here."""
        with self._lock:
            if canonical in self._experiments:
                return True
        self._refresh_projects()
        with self._lock:
            return canonical in self._experiments

    def close(self) -> None:
        """Send held-back summaries, stop the spool's thread and release its files."""
        self._flush_summaries(force=True)
        self.spool.wait_drained(self._drain_timeout(), give_up_offline=True)
        self.spool.close()
        self._http.close()

    # Experiments ---------------------------------------------------------

    def default_artifact_location(self, experiment_id: str) -> str:
        """Return where a new experiment's artifacts go (on this machine)."""
        root = self._artifact_root or os.environ.get(ARTIFACT_ROOT_ENV)
        if root:
            return f"{root.rstrip('/')}/{experiment_id}"
        data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
        base = Path(data).expanduser().resolve() / "mlflow-trackio" / "artifacts"
        return (base / self.key / experiment_id).as_uri()

    def list_experiments(self) -> list[Experiment]:
        """Return the server's projects as experiments, plus those made here."""
        self._refresh_projects()
        with self._lock:
            found = list(self._experiments.values())
        if not any(e.experiment_id == _mapping.DEFAULT_EXPERIMENT_ID for e in found):
            found.append(self._default_experiment())
        return found

    def _refresh_projects(self) -> None:
        try:
            projects = self._read("get_all_projects")
        except MlflowException as exc:
            if exc.error_code != "TEMPORARILY_UNAVAILABLE":
                raise
            # Offline: go on with the experiments known here, so that training
            # can start (and spool) while the server is down. An experiment
            # made here with an existing project's name gets that project's id.
            if not self._offline_listing_warned:
                self._offline_listing_warned = True
                _logger.warning(
                    "The Trackio server at %s is unreachable, so experiments are "
                    "looked up among those this process knows.",
                    self.label,
                )
            return
        with self._lock:
            unknown = [
                p for p in projects if p not in self._experiments or p in self._pending
            ]
        fetched = {p: self._read_experiment(p) for p in unknown}
        with self._lock:
            for canonical, experiment in fetched.items():
                self._experiments[canonical] = experiment
                self._pending.discard(canonical)
            for canonical in list(self._experiments):
                if canonical not in projects and canonical not in self._pending:
                    del self._experiments[canonical]

    def _read_experiment(self, canonical: str) -> Experiment:
        import orjson

        rows = self._query(
            canonical,
            "SELECT (SELECT json_extract(CAST(config AS TEXT), '$._mlflow') FROM"
            " configs WHERE json_type(CAST(config AS TEXT), '$._mlflow') = 'object'"
            " ORDER BY id LIMIT 1) AS meta, (SELECT MIN(timestamp) FROM metrics)"
            " AS first",
        )
        row = rows[0] if rows else {}
        meta = orjson.loads(row["meta"]) if row.get("meta") else {}
        experiment_id = _mapping.experiment_id_for(canonical)
        created = _mapping.iso_to_ms(row["first"]) if row.get("first") else None
        return Experiment(
            experiment_id=experiment_id,
            name=meta.get("experiment") or canonical,
            artifact_location=meta.get("experiment_artifact_location")
            or self.default_artifact_location(experiment_id),
            lifecycle_stage=LifecycleStage.ACTIVE,
            tags=[],
            creation_time=created,
            last_update_time=created,
        )

    def _default_experiment(self) -> Experiment:
        location = self.default_artifact_location(_mapping.DEFAULT_EXPERIMENT_ID)
        return _mapping.default_experiment(location, None)

    def _canonical_of(self, experiment_id: str) -> str | None:
        for refresh in (False, True):
            if refresh:
                self._refresh_projects()
            with self._lock:
                for canonical, experiment in self._experiments.items():
                    if experiment.experiment_id == experiment_id:
                        return canonical
        return None

    def experiment_file(self, experiment_id: str) -> RemoteProject | None:
        """Return the project of an experiment id, or None."""
        canonical = self._canonical_of(experiment_id)
        return None if canonical is None else RemoteProject(self, canonical)

    def get_experiment(self, experiment_id: str) -> Experiment | None:
        """Return an experiment by id, or None."""
        canonical = self._canonical_of(experiment_id)
        if canonical is not None:
            with self._lock:
                return self._experiments[canonical]
        if experiment_id == _mapping.DEFAULT_EXPERIMENT_ID:
            return self._default_experiment()
        return None

    def create_experiment(self, project: RemoteProject, experiment: Experiment) -> None:
        """Hold a new experiment here; the server gets it with its first run.

        Raises:
            MlflowNotImplementedException: If the experiment has tags.
        """
        if experiment.tags:
            raise MlflowNotImplementedException(
                "A Trackio server keeps no experiment tags. Create the experiment "
                "without tags, or tag its runs instead."
            )
        self._ensure_writable()
        with self._lock:
            self._experiments[project.canonical_project] = experiment
            self._pending.add(project.canonical_project)

    def save_experiment_record(self, project: RemoteProject) -> None:
        """Hold the default experiment here before its first run goes out."""
        with self._lock:
            if project.canonical_project not in self._experiments:
                self._experiments[project.canonical_project] = (
                    self._default_experiment()
                    if project.canonical_project == _mapping.DEFAULT_EXPERIMENT_NAME
                    else self._read_experiment(project.canonical_project)
                )
                self._pending.add(project.canonical_project)

    def update_experiment(self, project: RemoteProject, **columns: Any) -> None:
        """Raise: a server keeps no experiment lifecycle or name of its own."""
        raise MlflowNotImplementedException(
            "A Trackio server keeps no experiment record, so experiments cannot be "
            "deleted, restored or renamed through it. Use Trackio on the server."
        )

    def set_experiment_tag(self, project: RemoteProject, key: str, value: str) -> None:
        """Raise: a server keeps no experiment tags."""
        raise MlflowNotImplementedException(
            "A Trackio server keeps no experiment tags. Tag the experiment's runs "
            "instead."
        )

    def delete_experiment_tag(self, project: RemoteProject, key: str) -> bool:
        """Raise: a server keeps no experiment tags."""
        raise MlflowNotImplementedException(
            "A Trackio server keeps no experiment tags, so there is none to delete."
        )

    # Runs ----------------------------------------------------------------

    def run_file(self, run_id: str) -> RemoteProject | None:
        """Return the project holding a run, or None."""
        with self._lock:
            record = self._records.get(run_id)
            if record is not None:
                return RemoteProject(self, record.project)
        canonical = self._find_run(run_id)
        return None if canonical is None else RemoteProject(self, canonical)

    def _find_run(self, run_id: str) -> str | None:
        found = self._run_projects.get(run_id)
        if found is not None:
            return found
        self._refresh_projects()
        with self._lock:
            projects = [p for p in self._experiments if p not in self._pending]
        for canonical in projects:
            sql = f"SELECT 1 AS hit FROM metrics WHERE run_id = {_text(run_id)} LIMIT 1"
            if self._query(canonical, sql):
                self._run_projects[run_id] = canonical
                return canonical
        return None

    def create_run(
        self,
        project: RemoteProject,
        info: RunInfo,
        tags: Sequence[RunTag],
        config: dict[str, Any],
    ) -> None:
        """Send a new run: its config (with MLflow's record of it) and one empty row."""
        self._ensure_writable()
        _warn_once(
            "cannot-carry",
            f"The Trackio server at {self.label} keeps no MLflow metric timestamps "
            "(rows get their arrival time), no steps of system metrics, no "
            "experiment tags and no logged models; artifacts stay on this "
            "machine. See docs/remote.md.",
        )
        with self._lock:
            experiment = self._experiments.get(project.canonical_project)
            record = _RunRecord(
                project=project.canonical_project,
                experiment_id=info.experiment_id,
                info={name: getattr(info, name) for name in _INFO_FIELDS}
                | {"deleted_time": None},
                experiment={
                    "experiment": experiment.name
                    if experiment
                    else project.canonical_project,
                    "experiment_artifact_location": experiment.artifact_location
                    if experiment
                    else None,
                },
                config=dict(config),
                params={},
                tags={tag.key: tag.value for tag in tags},
            )
            self._records[info.run_id] = record
            self._send(record, [], [], with_config=True)

    def get_run(self, run_id: str) -> Run | None:
        """Return a run with its data, inputs and outputs, or None."""
        with self._lock:
            record = self._records.get(run_id)
            if record is not None:
                return record.to_run()
        canonical = self._find_run(run_id)
        if canonical is None:
            return None
        found = self._read_run(canonical, run_id)
        return None if found is None else found.to_run()

    def run_info(self, run_id: str) -> RunInfo | None:
        """Return a run's info alone, or None."""
        run = self.get_run(run_id)
        return None if run is None else run.info

    def _read_run(self, canonical: str, run_id: str) -> _RunRecord | None:
        where = f"WHERE run_id = {_text(run_id)}"
        facts = self._query(
            canonical,
            "SELECT MIN(run_name) AS name, MIN(timestamp) AS first,"
            f" MAX(timestamp) AS last FROM metrics {where}",
        )
        if not facts or facts[0]["first"] is None:
            return None
        configs = self._query(
            canonical, f"SELECT CAST(config AS TEXT) AS config FROM configs {where}"
        )
        fact = facts[0]
        return self._record_from_server(
            canonical,
            run_id,
            fact["name"],
            configs[0]["config"] if configs else None,
            fact["first"],
        )

    def _record_from_server(
        self,
        canonical: str,
        run_id: str,
        name: str,
        config_text: str | None,
        first: str,
    ) -> _RunRecord:
        import orjson

        config = orjson.loads(config_text) if config_text else {}
        meta = config.pop(MLFLOW_CONFIG_KEY, None)
        experiment_id = _mapping.experiment_id_for(canonical)
        params = _mapping.params_from_config(config)
        if not isinstance(meta, dict):
            return self._trackio_run(canonical, run_id, name, config, params, first)
        info = {name: meta.get(name) for name in (*_INFO_FIELDS, "deleted_time")}
        info["run_id"], info["run_name"] = run_id, name
        return _RunRecord(
            project=canonical,
            experiment_id=experiment_id,
            info=info,
            experiment={
                "experiment": meta.get("experiment"),
                "experiment_artifact_location": meta.get(
                    "experiment_artifact_location"
                ),
            },
            config=config,
            params=params,
            tags=dict(meta.get("tags") or {}),
            latest={k: list(v) for k, v in (meta.get("latest") or {}).items()},
            datasets={_dataset_identity_of(d): d for d in meta.get("datasets") or []},
            models_in=list(meta.get("model_inputs") or []),
            models_out=dict(meta.get("model_outputs") or {}),
        )

    def _trackio_run(
        self,
        canonical: str,
        run_id: str,
        name: str,
        config: dict[str, Any],
        params: dict[str, str],
        first: str,
    ) -> _RunRecord:
        """Present a run that Trackio's own client logged as an MLflow run."""
        experiment_id = _mapping.experiment_id_for(canonical)
        latest, last = self._latest_from_rows(canonical, run_id)
        record = _RunRecord(
            project=canonical,
            experiment_id=experiment_id,
            info={
                "run_id": run_id,
                "run_name": name,
                "user_id": str(config.get(_mapping.CONFIG_USER) or ""),
                "status": RunStatus.to_string(RunStatus.FINISHED),
                "start_time": _mapping.iso_to_ms(first),
                "end_time": last,
                "lifecycle_stage": LifecycleStage.ACTIVE,
                "artifact_uri": f"{self.default_artifact_location(experiment_id)}"
                f"/{run_id}/artifacts",
                "deleted_time": None,
            },
            experiment={"experiment": canonical, "experiment_artifact_location": None},
            config=config,
            params=params,
            tags={"mlflow.runName": name},
        )
        record.latest = latest
        return record

    def _latest_from_rows(
        self, canonical: str, run_id: str
    ) -> tuple[dict[str, list[Any]], int | None]:
        import orjson

        record = _RunRecord(canonical, "", {}, {}, {}, {}, {})
        last = None
        rows = self._query_pages(
            canonical,
            "SELECT id, step, timestamp, CAST(metrics AS TEXT) AS metrics FROM"
            f" metrics WHERE run_id = {_text(run_id)} AND id > {{after}}"
            " ORDER BY id LIMIT {limit}",
        )
        for row in rows:
            timestamp = _mapping.iso_to_ms(row["timestamp"])
            last = timestamp if last is None else max(last, timestamp)
            points = []
            for raw_key, raw in orjson.loads(row["metrics"]).items():
                value = _mapping.from_trackio_value(raw)
                if value is not None:
                    key = _mapping.from_trackio_key(raw_key)
                    points.append(Metric(key, value, timestamp, row["step"]))
            record.take_metrics(points)
        return record.latest, last

    def runs_in(
        self, project: RemoteProject, run_ids: Sequence[str] | None = None
    ) -> list[Run]:
        """Return the runs of one project (all, or those in `run_ids`)."""
        canonical = project.canonical_project
        if run_ids is not None:
            runs = [self.get_run(run_id) for run_id in run_ids]
            return [r for r in runs if r is not None and self._in(r, canonical)]
        with self._lock:
            own = {
                run_id: record.to_run()
                for run_id, record in self._records.items()
                if record.project == canonical
            }
        found = self._server_runs(canonical, set(own))
        return list({**found, **own}.values())

    def _in(self, run: Run, canonical: str) -> bool:
        return run.info.experiment_id == _mapping.experiment_id_for(canonical)

    def _server_runs(self, canonical: str, skip: set[str]) -> dict[str, Run]:
        listed = self._read("get_runs_for_project", project=canonical) or []
        configs = {
            row["run_id"]: row["config"]
            for row in self._query_pages(
                canonical,
                "SELECT id, run_id, CAST(config AS TEXT) AS config FROM configs"
                " WHERE id > {after} ORDER BY id LIMIT {limit}",
                _CONFIG_PAGE_ROWS,
            )
        }
        runs = {}
        for entry in listed:
            run_id = entry["id"]
            if run_id in skip or run_id in runs:
                continue
            record = self._record_from_server(
                canonical,
                run_id,
                entry["name"],
                configs.get(run_id),
                entry["created_at"],
            )
            runs[run_id] = record.to_run()
        return runs

    def save_run_record(self, project: RemoteProject, run_id: str) -> None:
        """Load a run this process has not written yet, to change it."""
        with self._lock:
            self._live(project, run_id)

    def _live(self, project: RemoteProject, run_id: str) -> _RunRecord:
        record = self._records.get(run_id)
        if record is None:
            record = self._read_run(project.canonical_project, run_id)
            if record is None:
                raise MlflowException(
                    f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST
                )
            self._records[run_id] = record
            self._evict_finished()
        return record

    def _evict_finished(self) -> None:
        if len(self._records) <= _KEPT_FINISHED_RUNS or self.spool.pending()[1]:
            return
        for run_id, record in list(self._records.items()):
            status = RunStatus.from_string(record.info["status"])
            if RunStatus.is_terminated(status) and not record.summary_dirty:
                del self._records[run_id]
                if len(self._records) <= _KEPT_FINISHED_RUNS:
                    return

    def update_run(self, project: RemoteProject, run_id: str, **columns: Any) -> None:
        """Set fields of a run's record; a terminal status waits for the spool."""
        self._ensure_writable()
        with self._lock:
            record = self._live(project, run_id)
            new_name = columns.get("run_name")
            if new_name and new_name != record.info["run_name"]:
                rename = {
                    "project": record.project,
                    "old_name": record.info["run_name"],
                    "new_name": new_name,
                    "run_id": run_id,
                }
                self.spool.append({"n": 0, "rename": rename})
            record.info.update(columns)
            self._send(record, [], [], with_config=True)
        status = columns.get("status")
        if status and RunStatus.is_terminated(RunStatus.from_string(status)):
            self._drain_after_run()
            with self._lock:
                self._evict_finished()

    def _drain_after_run(self) -> None:
        timeout = self._drain_timeout()
        if self.spool.wait_drained(timeout) or self.spool.refused is not None:
            return
        _logger.warning(
            "The Trackio server at %s did not take a run's last writes within %.0f "
            "s; %s and are sent later by this process or the next one logging there.",
            self.label,
            timeout,
            self.spool.describe_pending(),
        )

    @staticmethod
    def _drain_timeout() -> float:
        raw = os.environ.get(DRAIN_TIMEOUT_ENV)
        if not raw:
            return _DEFAULT_DRAIN_TIMEOUT_S
        try:
            return max(0.0, float(raw))
        except ValueError:
            raise MlflowException(
                f"{DRAIN_TIMEOUT_ENV}={raw!r} is not a number of seconds. Set it "
                "to, for example, 10.",
                INVALID_PARAMETER_VALUE,
            ) from None

    def write_batch(
        self,
        project: RemoteProject,
        run: RunInfo,
        metrics: Sequence[Metric],
        new_params: Sequence[Param],
        tags: Sequence[RunTag],
        config_update: dict[str, Any] | None,
    ) -> None:
        """Spool one `log_batch`: its rows, and the config when it changed."""
        if any(p.key == MLFLOW_CONFIG_KEY for p in new_params):
            raise MlflowException(
                f"The param name {MLFLOW_CONFIG_KEY!r} is reserved on a Trackio "
                "server, which keeps MLflow's own record of the run under it.",
                INVALID_PARAMETER_VALUE,
            )
        self._ensure_writable()
        training = [m for m in metrics if not _is_system(m.key)]
        system = [m for m in metrics if _is_system(m.key)]
        with self._lock:
            record = self._live(project, run.run_id)
            record.params.update((p.key, p.value) for p in new_params)
            if config_update is not None:
                record.config = dict(config_update)
            record.tags.update((t.key, t.value) for t in tags)
            record.take_metrics(metrics)
            changed = bool(new_params or tags or config_update is not None)
            due = time.monotonic() - record.sent_at >= _SUMMARY_INTERVAL_S
            self._send(
                record,
                _metric_rows(record, training),
                _system_rows(record, system),
                with_config=changed or (record.summary_dirty and due),
            )

    def _send(
        self,
        record: _RunRecord,
        rows: list[dict[str, Any]],
        system: list[dict[str, Any]],
        *,
        with_config: bool,
    ) -> None:
        if with_config:
            if not rows:
                rows = [_entry(record, {}, 0, f"{record.info['run_id']}-created")]
            rows[0]["config"] = record.to_config()
            record.summary_dirty = False
            record.sent_at = time.monotonic()
        if rows or system:
            self.spool.append(
                {"n": len(rows) + len(system), "logs": rows, "system": system}
            )

    def _flush_summaries(self, force: bool = False) -> None:
        """Send the summaries held back by the rate limit (the spool's idle hook)."""
        now = time.monotonic()
        with self._lock:
            for record in self._records.values():
                if record.summary_dirty and (
                    force or now - record.sent_at >= _SUMMARY_INTERVAL_S
                ):
                    self._send(record, [], [], with_config=True)

    def params_of(self, project: RemoteProject, run_id: str) -> dict[str, str]:
        """Return the params stored for a run."""
        with self._lock:
            return dict(self._live(project, run_id).params)

    def delete_tag(self, project: RemoteProject, run_id: str, key: str) -> bool:
        """Delete one run tag; return whether it existed."""
        self._ensure_writable()
        with self._lock:
            record = self._live(project, run_id)
            if record.tags.pop(key, None) is None:
                return False
            self._send(record, [], [], with_config=True)
        return True

    def metric_history(self, project: RemoteProject, run_id: str, key: str) -> list:
        """Return every point of one metric of a run, in MLflow's order."""
        self.spool.wait_drained(self._drain_timeout(), give_up_offline=True)
        if _is_system(key):
            table, step = "system_metrics", "0"
            stored = key[len(_mapping.SYSTEM_METRIC_PREFIX) :]
        else:
            table, step = "metrics", "step"
            stored = _mapping.to_trackio_key(key)
        path = _text(f'$."{stored}"')
        rows = self._query_pages(
            project.canonical_project,
            f"SELECT id, {step} AS step, timestamp, json_extract(CAST(metrics AS"
            f" TEXT), {path}) AS value FROM {table} WHERE run_id = {_text(run_id)}"
            f" AND json_type(CAST(metrics AS TEXT), {path}) IS NOT NULL"
            " AND id > {after} ORDER BY id LIMIT {limit}",
        )
        points = []
        for row in rows:
            value = _mapping.from_trackio_value(row["value"])
            if value is not None:
                timestamp = _mapping.iso_to_ms(row["timestamp"])
                points.append(
                    history_metric(key, value, timestamp, row["step"], run_id)
                )
        points.sort(key=lambda m: (m.timestamp, m.step, m.value))
        return points

    def log_inputs(
        self,
        project: RemoteProject,
        run_id: str,
        datasets: Sequence[DatasetInput],
        models: Sequence[LoggedModelInput],
    ) -> None:
        """Record a run's dataset and model inputs (each once) in its config."""
        from google.protobuf.json_format import MessageToDict

        self._ensure_writable()
        with self._lock:
            record = self._live(project, run_id)
            for dataset in datasets:
                as_dict = MessageToDict(dataset.to_proto())
                record.datasets[_dataset_identity_of(as_dict)] = as_dict
            for model in models:
                if model.model_id not in record.models_in:
                    record.models_in.append(model.model_id)
            self._send(record, [], [], with_config=True)

    def log_outputs(
        self, project: RemoteProject, run_id: str, models: Sequence[LoggedModelOutput]
    ) -> None:
        """Record the models a run produced in its config."""
        self._ensure_writable()
        with self._lock:
            record = self._live(project, run_id)
            record.models_out.update((m.model_id, m.step) for m in models)
            self._send(record, [], [], with_config=True)

    # Logged models -------------------------------------------------------

    def save_logged_model(self, project: RemoteProject, model: LoggedModel) -> None:
        """Raise: a Trackio server has no place for logged models."""
        raise MlflowNotImplementedException(
            "A Trackio server has no place for MLflow logged models. Pass "
            "log_models=False to autolog, or log models to a local trackio:// store."
        )

    def get_logged_model(
        self, model_id: str
    ) -> tuple[RemoteProject, LoggedModel] | None:
        """Return None: no logged model can be stored on a Trackio server."""
        return None

    def logged_models_in(self, project: RemoteProject) -> list[LoggedModel]:
        """Return no models: none can be stored on a Trackio server."""
        return []

    def delete_logged_model(self, project: RemoteProject, model_id: str) -> None:
        """Raise: a Trackio server has no place for logged models."""
        raise MlflowNotImplementedException(
            "A Trackio server has no place for MLflow logged models, so there is "
            "none to delete."
        )


# Helpers -----------------------------------------------------------------


def _parse_server_uri(store_uri: str) -> tuple[str, str, str | None]:
    """Return the base URL, its label without credentials, and a URL token."""
    parsed = urlparse(store_uri)
    scheme = parsed.scheme.lower().removeprefix("trackio+")
    query = parse_qs(parsed.query)
    unknown = sorted(set(query) - {"write_token"})
    if not parsed.hostname or scheme not in ("http", "https") or unknown:
        raise MlflowException(
            f"{scheme}://{parsed.hostname or ''}{parsed.path} is not a Trackio server "
            "address. Use trackio+http://host:port or trackio+https://host, "
            "optionally with ?write_token=....",
            INVALID_PARAMETER_VALUE,
        )
    path = parsed.path.rstrip("/") + "/"
    base = f"{scheme}://{parsed.netloc}{path}"
    port = f":{parsed.port}" if parsed.port else ""
    label = f"{scheme}://{parsed.hostname}{port}{path.rstrip('/')}"
    token = query.get("write_token", [None])[0]
    return base, label, token


def _text(value: str) -> str:
    """Quote a value as an SQLite string literal."""
    return "'" + value.replace("'", "''") + "'"


def _is_system(key: str) -> bool:
    return key.startswith(_mapping.SYSTEM_METRIC_PREFIX)


def _entry(
    record: _RunRecord, values: dict[str, Any], step: int, log_id: str
) -> dict[str, Any]:
    return {
        "project": record.project,
        "run": record.info["run_name"],
        "run_id": record.info["run_id"],
        "metrics": values,
        "step": step,
        "log_id": log_id,
    }


def _log_id(kind: str, run_id: str, step: int, timestamp: int, values: Any) -> str:
    import orjson

    # Deterministic, so a replayed line inserts nothing twice.
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{kind}|{run_id}|{step}|{timestamp}|".encode())
    digest.update(orjson.dumps(values, option=orjson.OPT_SORT_KEYS))
    return digest.hexdigest()


def _metric_rows(record: _RunRecord, metrics: Sequence[Metric]) -> list[dict[str, Any]]:
    run_id = record.info["run_id"]
    return [
        _entry(record, values, step, _log_id("m", run_id, step, timestamp, values))
        for (step, timestamp, *_), values in _mapping.group_metric_rows(metrics).items()
    ]


def _system_rows(record: _RunRecord, metrics: Sequence[Metric]) -> list[dict[str, Any]]:
    prefix = len(_mapping.SYSTEM_METRIC_PREFIX)
    stripped = [Metric(m.key[prefix:], m.value, m.timestamp, m.step) for m in metrics]
    run_id = record.info["run_id"]
    return [
        {
            "project": record.project,
            "run": record.info["run_name"],
            "run_id": run_id,
            "metrics": values,
            "timestamp": _mapping.ms_to_iso(timestamp),
            "log_id": _log_id("s", run_id, step, timestamp, values),
        }
        for (step, timestamp, *_), values in _mapping.group_metric_rows(
            stripped
        ).items()
    ]


def _dataset_identity_of(proto: dict[str, Any]) -> str:
    dataset = proto.get("dataset", {})
    context = sorted((t.get("key"), t.get("value")) for t in proto.get("tags", []))
    return f"{dataset.get('name')}|{dataset.get('digest')}|{context}"


def _server_calls(ops: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Turn spooled lines into as few server calls as keep their order."""
    logs: list[dict[str, Any]] = []
    system: list[dict[str, Any]] = []
    for op in ops:
        if "rename" in op:
            yield from _bulk_calls(logs, system)
            logs, system = [], []
            yield "rename_run", op["rename"]
            continue
        logs += op.get("logs", [])
        system += op.get("system", [])
    yield from _bulk_calls(logs, system)


def _bulk_calls(
    logs: list[dict[str, Any]], system: list[dict[str, Any]]
) -> Iterator[tuple[str, dict[str, Any]]]:
    if logs:
        yield "bulk_log", {"logs": _latest_config_only(logs), "hf_token": None}
    if system:
        yield "bulk_log_system", {"logs": system, "hf_token": None}


def _latest_config_only(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep each run's newest config, on its first row of the call.

    The server takes the first config it meets per run and replaces the
    stored one with it, so an older one must not come first.
    """
    newest = {}
    for entry in logs:
        if entry.get("config") is not None:
            newest[(entry["project"], entry["run"], entry["run_id"])] = entry["config"]
    merged = []
    for entry in logs:
        key = (entry["project"], entry["run"], entry["run_id"])
        entry = {k: v for k, v in entry.items() if k != "config"}
        if key in newest:
            entry["config"] = newest.pop(key)
        merged.append(entry)
    return merged


def close_all_backends() -> None:
    """Close every remote backend of this process (tests, and exit)."""
    for backend in list(_backends):
        backend.close()


def _at_exit() -> None:
    for backend in list(_backends):
        backend._flush_summaries(force=True)
        if backend.spool.pending()[1] and not backend.spool.wait_drained(
            backend._drain_timeout(), give_up_offline=True
        ):
            _logger.warning(
                "The Trackio server at %s is unreachable at exit; %s and are sent "
                "by the next process that logs there.",
                backend.label,
                backend.spool.describe_pending(),
            )


atexit.register(_at_exit)
