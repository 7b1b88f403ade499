"""`TrackioStore`: MLflow's tracking-store interface over a Trackio directory.

MLflow loads this module at ``import mlflow`` (through the
``mlflow.tracking_store`` entry point), so it imports neither Trackio nor
pandas nor any framework at import time; the backend imports Trackio on first
use. Every call validates with MLflow's own validators and searches with
MLflow's own search utilities, so results and errors match MLflow's SQL store.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import (
    DatasetInput,
    Experiment,
    LifecycleStage,
    LoggedModelInput,
    LoggedModelOutput,
    Param,
    Run,
    RunInfo,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException, MlflowNotImplementedException
from mlflow.protos.databricks_pb2 import (
    INVALID_PARAMETER_VALUE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking import SEARCH_MAX_RESULTS_DEFAULT
from mlflow.store.tracking.abstract_store import AbstractStore
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.search_utils import SearchExperimentsUtils, SearchUtils
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.validation import (
    _validate_batch_log_data,
    _validate_batch_log_limits,
    _validate_experiment_name,
    _validate_experiment_tag,
    _validate_param_keys_unique,
    _validate_run_id,
)
from typing_extensions import override

from sdk import _mapping
from sdk._backends._local import LocalBackend, default_directory
from sdk._backends._sqlite import ProjectFile
from sdk._logged_models import LoggedModelsMixin

_logger = logging.getLogger(__name__)


class TrackioStore(LoggedModelsMixin, AbstractStore):
    """
    An MLflow tracking store that keeps everything in a Trackio directory.

    MLflow builds it for tracking URIs with the schemes ``trackio``,
    ``trackio+http`` and ``trackio+https``. Experiments are Trackio projects,
    runs are Trackio runs with the same id and name, params are the run's
    config, and metrics are Trackio metric rows; everything else MLflow keeps
    (tags, status, lifecycle, inputs, logged models) lives in the project's
    own database file.

    Args:
        store_uri: ``trackio://`` (``TRACKIO_DIR``, else Trackio's default
            directory) or ``trackio:///absolute/path``.
        artifact_uri: Root for new experiments' artifacts; MLflow's server
            passes its ``--default-artifact-root``. Without it, artifacts go
            to ``<trackio dir>/mlflow-artifacts``.

    Raises:
        MlflowException: If the URI is not a Trackio URI this store can open.
        MlflowNotImplementedException: For ``trackio+http(s)`` URIs, which
            need a Trackio server backend this version does not have.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, store_uri: str | None = None, artifact_uri: str | None = None
    ) -> None:
        super().__init__()
        self.store_uri = store_uri or "trackio://"
        self.backend = LocalBackend(_local_directory(self.store_uri), artifact_uri)
        # Serialises creating experiments and runs, so that two threads cannot
        # both pass the "does it exist yet?" check.
        self._create_lock = threading.Lock()

    # Experiments ---------------------------------------------------------

    @override
    def create_experiment(self, name, artifact_location=None, tags=None):
        _validate_experiment_name(name)
        for tag in tags or []:
            _validate_experiment_tag(tag.key, tag.value)
        canonical = _checked_canonical(name)
        experiment_id = _mapping.experiment_id_for(canonical)
        with self._create_lock:
            self._check_name_is_free(name, canonical)
            now = get_current_time_millis()
            experiment = Experiment(
                experiment_id=experiment_id,
                name=name,
                artifact_location=artifact_location
                or self.backend.default_artifact_location(experiment_id),
                lifecycle_stage=LifecycleStage.ACTIVE,
                tags=list(tags or []),
                creation_time=now,
                last_update_time=now,
            )
            self.backend.create_experiment(
                self.backend.project_file(canonical), experiment
            )
        return experiment_id

    def _check_name_is_free(self, name: str, canonical: str) -> None:
        for experiment in self.backend.list_experiments():
            if experiment.name == name:
                raise MlflowException(
                    f"Experiment(name={name}) already exists.",
                    RESOURCE_ALREADY_EXISTS,
                )
        project = self.backend.project_file(canonical)
        if project.exists():
            other = self.backend.get_experiment(_mapping.experiment_id_for(canonical))
            holder = other.name if other else canonical
            raise MlflowException(
                f"Experiment name {name!r} would be stored as Trackio project "
                f"{canonical!r}, which already holds experiment {holder!r}: "
                "Trackio keeps only letters, digits, '-' and '_' in project names. "
                "Choose a name that differs in those characters.",
                INVALID_PARAMETER_VALUE,
            )

    @override
    def get_experiment(self, experiment_id):
        experiment = self.backend.get_experiment(str(experiment_id))
        if experiment is None:
            raise MlflowException(
                f"No Experiment with id={experiment_id} exists",
                RESOURCE_DOES_NOT_EXIST,
            )
        return experiment

    @override
    def get_experiment_by_name(self, experiment_name):
        for experiment in self.backend.list_experiments():
            if experiment.name == experiment_name:
                return experiment
        return None

    @override
    def search_experiments(
        self,
        view_type=ViewType.ACTIVE_ONLY,
        max_results=SEARCH_MAX_RESULTS_DEFAULT,
        filter_string=None,
        order_by=None,
        page_token=None,
    ):
        _check_max_results(max_results)
        stages = set(LifecycleStage.view_type_to_stages(view_type))
        experiments = [
            e for e in self.backend.list_experiments() if e.lifecycle_stage in stages
        ]
        filtered = SearchExperimentsUtils.filter(experiments, filter_string)
        ordered = SearchExperimentsUtils.sort(
            filtered, order_by or ["creation_time DESC", "experiment_id ASC"]
        )
        page, token = SearchUtils.paginate(ordered, page_token, max_results)
        return PagedList(page, token)

    def _experiment_project(self, experiment_id: str) -> ProjectFile:
        experiment_id = str(experiment_id)
        project = self.backend.experiment_file(experiment_id)
        if project is not None:
            return project
        if experiment_id == _mapping.DEFAULT_EXPERIMENT_ID:
            return self.backend.project_file(_mapping.DEFAULT_EXPERIMENT_NAME)
        raise MlflowException(
            f"No Experiment with id={experiment_id} exists", RESOURCE_DOES_NOT_EXIST
        )

    def _active_experiment(self, experiment_id: str) -> Experiment:
        experiment = self.get_experiment(experiment_id)
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            raise MlflowException(
                f"The experiment {experiment_id} must be in the 'active' state. "
                f"Current state is {experiment.lifecycle_stage}.",
                INVALID_PARAMETER_VALUE,
            )
        return experiment

    @override
    def delete_experiment(self, experiment_id):
        self._active_experiment(experiment_id)
        project = self._experiment_project(experiment_id)
        now = get_current_time_millis()
        self.backend.update_experiment(
            project, lifecycle_stage=LifecycleStage.DELETED, last_update_time=now
        )
        for run in self.backend.runs_in(project):
            if run.info.lifecycle_stage == LifecycleStage.ACTIVE:
                self._set_run_lifecycle(run.info.run_id, LifecycleStage.DELETED, now)

    @override
    def restore_experiment(self, experiment_id):
        experiment = self.get_experiment(experiment_id)
        if experiment.lifecycle_stage != LifecycleStage.DELETED:
            raise MlflowException(
                f"Cannot restore an active experiment. Experiment {experiment_id} "
                "is already active.",
                INVALID_PARAMETER_VALUE,
            )
        project = self._experiment_project(experiment_id)
        self.backend.update_experiment(
            project,
            lifecycle_stage=LifecycleStage.ACTIVE,
            last_update_time=get_current_time_millis(),
        )
        for run in self.backend.runs_in(project):
            if run.info.lifecycle_stage == LifecycleStage.DELETED:
                self._set_run_lifecycle(run.info.run_id, LifecycleStage.ACTIVE, None)

    @override
    def rename_experiment(self, experiment_id, new_name):
        _validate_experiment_name(new_name)
        self._active_experiment(experiment_id)
        with self._create_lock:
            if self.get_experiment_by_name(new_name) is not None:
                raise MlflowException(
                    f"Experiment(name={new_name}) already exists.",
                    RESOURCE_ALREADY_EXISTS,
                )
            # The project file keeps its name (its file and the experiment id
            # derive from it); Trackio's dashboard lists it under the old name.
            self.backend.update_experiment(
                self._experiment_project(experiment_id),
                name=new_name,
                last_update_time=get_current_time_millis(),
            )

    @override
    def set_experiment_tag(self, experiment_id, tag):
        _validate_experiment_tag(tag.key, tag.value)
        self._active_experiment(experiment_id)
        self.backend.set_experiment_tag(
            self._experiment_project(experiment_id), tag.key, tag.value
        )

    @override
    def delete_experiment_tag(self, experiment_id, key):
        self._active_experiment(experiment_id)
        project = self._experiment_project(experiment_id)
        if not self.backend.delete_experiment_tag(project, key):
            raise MlflowException(
                f"No tag with name: {key} in experiment with id {experiment_id}",
                RESOURCE_DOES_NOT_EXIST,
            )

    # Runs ----------------------------------------------------------------

    @override
    def create_run(self, experiment_id, user_id, start_time, tags, run_name):
        experiment_id = str(experiment_id)
        experiment = self._active_experiment(experiment_id)
        tags = list(tags or [])
        name_tag = next((t.value for t in tags if t.key == MLFLOW_RUN_NAME), None)
        if run_name and name_tag and run_name != name_tag:
            raise MlflowException(
                "Both 'run_name' argument and 'mlflow.runName' tag are specified, "
                f"but with different values (run_name='{run_name}', "
                f"mlflow.runName='{name_tag}').",
                INVALID_PARAMETER_VALUE,
            )
        run_name = run_name or name_tag or _generate_random_name()
        if not name_tag:
            tags.append(RunTag(MLFLOW_RUN_NAME, run_name))
        run_id = uuid.uuid4().hex
        info = RunInfo(
            run_id=run_id,
            experiment_id=experiment_id,
            user_id=user_id or "",
            status=RunStatus.to_string(RunStatus.RUNNING),
            start_time=start_time,
            end_time=None,
            lifecycle_stage=LifecycleStage.ACTIVE,
            artifact_uri=f"{experiment.artifact_location}/{run_id}/artifacts",
            run_name=run_name,
        )
        config = _mapping.config_for_run(
            {},
            user=info.user_id,
            created_iso=_mapping.ms_to_iso(start_time or 0),
            group=self._group_of(tags),
        )
        project = self._experiment_project(experiment_id)
        self.backend.save_experiment_record(project)
        self.backend.create_run(project, info, tags, config)
        return self.get_run(run_id)

    def _group_of(self, tags: Sequence[RunTag]) -> str | None:
        """Return the Trackio group of a nested run: its parent's run name."""
        parent_id = next((t.value for t in tags if t.key == MLFLOW_PARENT_RUN_ID), None)
        if parent_id is None:
            return None
        parent = self.backend.get_run(parent_id)
        return parent.info.run_name if parent else parent_id

    @override
    def get_run(self, run_id):
        _validate_run_id(run_id)
        run = self.backend.get_run(run_id)
        if run is None:
            raise MlflowException(
                f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST
            )
        return run

    def _active_run(self, run_id: str) -> tuple[ProjectFile, Run]:
        run = self.get_run(run_id)
        if run.info.lifecycle_stage != LifecycleStage.ACTIVE:
            raise MlflowException(
                f"The run {run_id} must be in the 'active' state. "
                f"Current state is {run.info.lifecycle_stage}.",
                INVALID_PARAMETER_VALUE,
            )
        return self._run_project(run_id), run

    def _run_project(self, run_id: str) -> ProjectFile:
        project = self.backend.run_file(run_id)
        if project is None:
            raise MlflowException(
                f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST
            )
        return project

    @override
    def update_run_info(self, run_id, run_status, end_time, run_name):
        project, run = self._active_run(run_id)
        columns: dict[str, Any] = {}
        if run_status is not None:
            columns["status"] = RunStatus.to_string(run_status)
        if end_time is not None:
            columns["end_time"] = end_time
        if columns:
            self.backend.update_run(project, run_id, **columns)
        if run_name and run_name != run.info.run_name:
            self._rename_run(project, run, run_name)
        return self.get_run(run_id).info

    def _rename_run(self, project: ProjectFile, run: Run, new_name: str) -> None:
        self.backend.update_run(project, run.info.run_id, run_name=new_name)
        self.backend.write_batch(
            project, run.info, [], [], [RunTag(MLFLOW_RUN_NAME, new_name)], None
        )

    @override
    def delete_run(self, run_id):
        self.get_run(run_id)
        self._set_run_lifecycle(
            run_id, LifecycleStage.DELETED, get_current_time_millis()
        )

    @override
    def restore_run(self, run_id):
        self.get_run(run_id)
        self._set_run_lifecycle(run_id, LifecycleStage.ACTIVE, None)

    def _set_run_lifecycle(self, run_id: str, stage: str, when: int | None) -> None:
        self.backend.update_run(
            self._run_project(run_id), run_id, lifecycle_stage=stage, deleted_time=when
        )

    @override
    def log_batch(self, run_id, metrics, params, tags):
        _validate_run_id(run_id)
        metrics, params, tags = _validate_batch_log_data(metrics, params, tags)
        _validate_batch_log_limits(metrics, params, tags)
        _validate_param_keys_unique(params)
        project, run = self._active_run(run_id)
        new_params = _new_params(run, params)
        config = self._config_after(run, new_params) if new_params else None
        self.backend.save_run_record(project, run_id)
        self.backend.write_batch(project, run.info, metrics, new_params, tags, config)
        renamed = next((t.value for t in tags if t.key == MLFLOW_RUN_NAME), None)
        if renamed and renamed != run.info.run_name:
            self.backend.update_run(project, run_id, run_name=renamed)
        self._log_model_metrics(metrics)

    def _config_after(self, run: Run, new_params: Sequence[Param]) -> dict[str, Any]:
        params = dict(run.data.params)
        params.update((p.key, p.value) for p in new_params)
        return _mapping.config_for_run(
            params,
            user=run.info.user_id,
            created_iso=_mapping.ms_to_iso(run.info.start_time or 0),
            group=self._group_of([RunTag(k, v) for k, v in run.data.tags.items()]),
        )

    def delete_tag(self, run_id: str, key: str) -> None:
        """
        Delete a tag from a run.

        Args:
            run_id: The run's id.
            key: The tag's name.

        Raises:
            MlflowException: If the run or the tag does not exist, or the run
                is deleted.
        """
        project, _ = self._active_run(run_id)
        if not self.backend.delete_tag(project, run_id, key):
            raise MlflowException(
                f"No tag with name: {key} in run with id {run_id}",
                RESOURCE_DOES_NOT_EXIST,
            )

    @override
    def get_metric_history(self, run_id, metric_key, max_results=None, page_token=None):
        self.get_run(run_id)
        points = self.backend.metric_history(
            self._run_project(run_id), run_id, metric_key
        )
        offset = SearchUtils.parse_start_offset_from_page_token(page_token)
        if max_results is None:
            return PagedList(points[offset:], None)
        page = points[offset : offset + max_results]
        more = offset + max_results < len(points)
        token = SearchUtils.create_page_token(offset + max_results) if more else None
        return PagedList(page, token)

    @override
    def _search_runs(
        self,
        experiment_ids,
        filter_string,
        run_view_type,
        max_results,
        order_by,
        page_token,
    ):
        _check_max_results(max_results)
        stages = set(LifecycleStage.view_type_to_stages(run_view_type))
        runs = []
        for experiment_id in {str(e) for e in experiment_ids}:
            project = self.backend.experiment_file(experiment_id)
            if project is None:
                continue
            runs += [
                run
                for run in self.backend.runs_in(project)
                if run.info.lifecycle_stage in stages
            ]
        filtered = SearchUtils.filter(runs, filter_string)
        ordered = SearchUtils.sort(filtered, order_by)
        if max_results is None:
            start = SearchUtils.parse_start_offset_from_page_token(page_token)
            return ordered[start:], None
        return SearchUtils.paginate(ordered, page_token, max_results)

    @override
    def log_inputs(
        self,
        run_id: str,
        datasets: list[DatasetInput] | None = None,
        models: list[LoggedModelInput] | None = None,
    ) -> None:
        project, _ = self._active_run(run_id)
        self.backend.log_inputs(project, run_id, datasets or [], models or [])

    @override
    def log_outputs(self, run_id: str, models: list[LoggedModelOutput]) -> None:
        project, _ = self._active_run(run_id)
        self.backend.log_outputs(project, run_id, models)

    # Traces --------------------------------------------------------------

    @override
    def search_traces(self, *args: Any, **kwargs: Any):
        # MLflow's UI opens the Traces tab on every experiment page; an empty
        # answer keeps it working, since this store keeps no traces.
        return [], None

    @override
    def start_trace(self, trace_info):
        raise MlflowNotImplementedException(
            "TrackioStore does not store traces. Pass log_traces=False to "
            "autolog, or send traces to another tracking URI."
        )

    @override
    def log_spans(self, location, spans, tracking_uri=None):
        raise MlflowNotImplementedException(
            "TrackioStore does not store trace spans. Pass log_traces=False to "
            "autolog, or send traces to another tracking URI."
        )


def _local_directory(store_uri: str):
    """Return the Trackio directory a ``trackio://`` URI names."""
    from pathlib import Path

    parsed = urlparse(store_uri)
    scheme = parsed.scheme.lower()
    if scheme in ("trackio+http", "trackio+https"):
        raise MlflowNotImplementedException(
            f"Logging to a Trackio server ({store_uri}) is not supported yet. Log "
            "to a local directory with trackio:// or trackio:///path instead."
        )
    if scheme != "trackio" or parsed.netloc or parsed.query:
        raise MlflowException(
            f"{store_uri!r} is not a Trackio tracking URI. Use 'trackio://' for "
            "TRACKIO_DIR or 'trackio:///absolute/path' for another directory.",
            INVALID_PARAMETER_VALUE,
        )
    if parsed.path in ("", "/"):
        return default_directory()
    return Path(parsed.path).expanduser().resolve()


def _checked_canonical(name: str) -> str:
    from sdk._backends._local import canonical_name, check_project_name

    try:
        check_project_name(name)
    except ValueError as exc:
        raise MlflowException(str(exc), INVALID_PARAMETER_VALUE) from None
    if not any(ch.isalnum() for ch in name):
        # Trackio would store every such name as project "default"; a name of
        # its own keeps them apart, at the price of a less readable file name.
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        return f"experiment-{digest}"
    return canonical_name(name)


def _check_max_results(max_results: int | None) -> None:
    from mlflow.store.tracking import SEARCH_MAX_RESULTS_THRESHOLD

    if max_results is None:
        return
    if not isinstance(max_results, int) or max_results < 1:
        raise MlflowException(
            f"Invalid value {max_results} for parameter 'max_results' supplied. "
            "It must be a positive integer",
            INVALID_PARAMETER_VALUE,
        )
    if max_results > SEARCH_MAX_RESULTS_THRESHOLD:
        raise MlflowException(
            f"Invalid value {max_results} for parameter 'max_results' supplied. "
            f"It must be at most {SEARCH_MAX_RESULTS_THRESHOLD}",
            INVALID_PARAMETER_VALUE,
        )


def _new_params(run: Run, params: Sequence[Param]) -> list[Param]:
    """Return the params not yet logged; re-logging another value is an error."""
    existing = run.data.params
    changed = [
        {"key": p.key, "old_value": existing[p.key], "new_value": p.value}
        for p in params
        if p.key in existing and existing[p.key] != p.value
    ]
    if changed:
        raise MlflowException(
            "Changing param values is not allowed. Params were already logged="
            f"'{changed}' for run ID='{run.info.run_id}'.",
            INVALID_PARAMETER_VALUE,
        )
    return [p for p in params if p.key not in existing]
