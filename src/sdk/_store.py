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
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

from mlflow.entities import (
    DatasetInput,
    Experiment,
    LifecycleStage,
    Param,
    Run,
    RunInfo,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    BAD_REQUEST,
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    INVALID_STATE,
    RESOURCE_ALREADY_EXISTS,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking import SEARCH_MAX_RESULTS_DEFAULT
from mlflow.store.tracking.abstract_store import AbstractStore
from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID, MLFLOW_RUN_NAME
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.validation import (
    _validate_batch_log_data,
    _validate_batch_log_limits,
    _validate_experiment_name,
    _validate_experiment_tag,
    _validate_metric,
    _validate_param_keys_unique,
    _validate_run_id,
)
from typing_extensions import override

from sdk import _mapping
from sdk._logged_models import ModelsMixin
from sdk._mlflow_compat import MlflowNotImplementedException, run_info

# MLflow imports this module at `import mlflow` (through the entry point), so
# what only a store in use needs, the backends and MLflow's search utilities
# (which load sqlparse), is imported where it is used.
if TYPE_CHECKING:
    from sdk._backends._sqlite import ProjectFile
    from sdk._mlflow_compat import LoggedModelInput, LoggedModelOutput

_logger = logging.getLogger(__name__)


class TrackioStore(ModelsMixin, AbstractStore):
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
        MlflowException: If the URI is not a Trackio URI this store can open:
            a local directory, or a Trackio server's ``trackio+http(s)://``
            address (see ``docs/remote.md``).

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, store_uri: str | None = None, artifact_uri: str | None = None
    ) -> None:
        super().__init__()
        self.store_uri = store_uri or "trackio://"
        if urlparse(self.store_uri).scheme.lower() in ("trackio+http", "trackio+https"):
            from sdk._backends._remote import RemoteBackend

            self.backend = RemoteBackend(self.store_uri, artifact_uri)
        else:
            from sdk._backends._local import LocalBackend

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
            # A renamed experiment keeps its project file, so its old name's
            # file stays taken even when nothing was stripped from the name.
            why = (
                "renamed experiments keep their project file"
                if canonical == name
                else "Trackio keeps only letters, digits, '-' and '_' in project names"
            )
            raise MlflowException(
                f"Experiment name {name!r} would be stored as Trackio project "
                f"{canonical!r}, which already holds experiment {holder!r} ({why}). "
                "Choose another name.",
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
        from mlflow.utils.search_utils import SearchExperimentsUtils, SearchUtils

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

    def _experiment_in_stage(self, experiment_id: str, stage: str) -> Experiment:
        # MLflow's SQL store looks experiments up among those in one stage, so
        # deleting a deleted one (or restoring an active one) is "not found".
        experiment = self.get_experiment(experiment_id)
        if experiment.lifecycle_stage != stage:
            raise MlflowException(
                f"No Experiment with id={experiment_id} exists",
                RESOURCE_DOES_NOT_EXIST,
            )
        return experiment

    @override
    def delete_experiment(self, experiment_id):
        self._experiment_in_stage(experiment_id, LifecycleStage.ACTIVE)
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
        self._experiment_in_stage(experiment_id, LifecycleStage.DELETED)
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
        if self.get_experiment(experiment_id).lifecycle_stage != LifecycleStage.ACTIVE:
            raise MlflowException(
                "Cannot rename a non-active experiment.", INVALID_STATE
            )
        with self._create_lock:
            holder = self.get_experiment_by_name(new_name)
            if holder is not None and holder.experiment_id != str(experiment_id):
                # MLflow's SQL store reports the broken unique constraint
                # of the name column as BAD_REQUEST.
                raise MlflowException(
                    f"Experiment(name={new_name}) already exists.", BAD_REQUEST
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
        info = run_info(
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
        created = self.get_run(run_id)
        # MLflow's SQL store returns a new run without outputs (None).
        return Run(created.info, created.data, created.inputs)

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
        _check_active(run.info)
        return self._run_project(run_id), run

    def _active_run_info(self, run_id: str) -> tuple[ProjectFile, RunInfo]:
        info = self.backend.run_info(run_id)
        if info is None:
            raise MlflowException(
                f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST
            )
        _check_active(info)
        return self._run_project(run_id), info

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
        if run_name:
            # Also for the current name: MLflow's SQL store writes the
            # mlflow.runName tag again, restoring it if it was deleted.
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
        _validate_metrics(metrics)
        _, params, tags = _validate_batch_log_data([], params, tags)
        _validate_batch_log_limits(metrics, params, tags)
        _validate_param_keys_unique(params)
        if tags:
            # MLflow's SQL store takes an empty run name as "keep the current
            # one" and writes no tag for it.
            tags = [t for t in tags if t.key != MLFLOW_RUN_NAME or t.value]
        # A training step logs metrics only: it needs the run's record, not
        # its params, tags and latest metrics, which cost ten reads.
        project, info = self._active_run_info(run_id)
        new_params: list[Param] = []
        config = None
        if params:
            run = self.get_run(run_id)
            new_params = _new_params(run, params)
            config = self._config_after(run, new_params) if new_params else None
        self.backend.save_run_record(project, run_id)
        self.backend.write_batch(project, info, metrics, new_params, tags, config)
        renamed = next((t.value for t in tags if t.key == MLFLOW_RUN_NAME), None)
        if renamed and renamed != info.run_name:
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
        project = self.backend.run_file(run_id)
        # MLflow's SQL store answers an unknown run with an empty history.
        points = (
            []
            if project is None
            else self.backend.metric_history(project, run_id, metric_key)
        )
        from mlflow.utils.search_utils import SearchUtils

        offset = SearchUtils.parse_start_offset_from_page_token(page_token)
        if max_results is None:
            return PagedList(points[offset:], None)
        page = points[offset : offset + max_results]
        more = offset + max_results < len(points)
        token = SearchUtils.create_page_token(offset + max_results) if more else None
        return PagedList(page, token)

    @override
    def get_metric_history_bulk_interval(
        self, run_ids, metric_key, max_results, start_step, end_step
    ):
        # Only MLflow's server calls this, for the UI's charts. AbstractStore's
        # default samples steps and may return more than max_results points;
        # MLflow's SQL store samples rows, which this repeats.
        from mlflow.entities.metric import MetricWithRunId

        if (start_step is None) != (end_step is None):
            raise MlflowException.invalid_parameter_value(
                "Both start_step and end_step must be specified together, "
                "or neither may be specified."
            )
        for run_id in run_ids:
            self.get_run(run_id)
        sampled = []
        for run_id in run_ids:
            points = sorted(
                (
                    m
                    for m in self.get_metric_history(run_id, metric_key)
                    if start_step is None or start_step <= m.step <= end_step
                ),
                key=_sql_metric_order,
            )
            sampled += [
                MetricWithRunId(metric=m, run_id=run_id)
                for m in _ntile_sample(points, max(1, max_results))
            ]
        return sampled

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
        from mlflow.utils.search_utils import SearchUtils

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

    def _search_datasets(self, experiment_ids: Sequence[str]) -> list[Any]:
        """
        Return the distinct datasets (name, digest, context) experiments' runs used.

        Only MLflow's server calls this, for the runs page of its UI; it is not
        part of ``AbstractStore``, and without it the server answers 500.
        """
        from mlflow.entities import _DatasetSummary
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        summaries: dict[tuple[str, str, str, str | None], _DatasetSummary] = {}
        for experiment_id in (str(e) for e in experiment_ids):
            project = self.backend.experiment_file(experiment_id)
            runs = self.backend.runs_in(project) if project is not None else []
            used = [i for r in runs if r.inputs for i in r.inputs.dataset_inputs]
            for dataset_input in used:
                context = next(
                    (
                        tag.value
                        for tag in dataset_input.tags
                        if tag.key == MLFLOW_DATASET_CONTEXT
                    ),
                    None,
                )
                dataset = dataset_input.dataset
                key = (experiment_id, dataset.name, dataset.digest, context)
                summaries[key] = _DatasetSummary(*key)
        # MLflow's own stores stop at 1000 summaries.
        return list(summaries.values())[:1000]

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


def _sql_metric_order(metric: Any) -> tuple[int, int, float, bool]:
    """Sort metric points as MLflow's SQL store does: step, timestamp, value."""
    nan = metric.value != metric.value
    return (metric.step, metric.timestamp, 0.0 if nan else metric.value, nan)


def _ntile_sample(points: list[Any], buckets: int) -> list[Any]:
    """
    Return the first point of each of `buckets` even buckets, and the last point.

    The same choice as MLflow's SQL store (``NTILE`` over the ordered points,
    the global last point replacing the final pick when the sample is full).
    """
    size, extra = divmod(len(points), buckets)
    picked, index = [], 0
    for bucket in range(min(buckets, len(points))):
        picked.append(points[index])
        index += size + (1 if bucket < extra else 0)
    if picked and picked[-1] is not points[-1]:
        if len(picked) >= buckets:
            picked[-1] = points[-1]
        else:
            picked.append(points[-1])
    return picked


def _local_directory(store_uri: str):
    """Return the Trackio directory a ``trackio://`` URI names."""
    from pathlib import Path

    parsed = urlparse(store_uri)
    scheme = parsed.scheme.lower()
    if scheme != "trackio" or parsed.netloc or parsed.query:
        raise MlflowException(
            f"{store_uri!r} is not a Trackio tracking URI. Use 'trackio://' for "
            "TRACKIO_DIR or 'trackio:///absolute/path' for another directory.",
            INVALID_PARAMETER_VALUE,
        )
    if parsed.path in ("", "/"):
        from sdk._backends._local import default_directory

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
    return _mapping.fit_project_name(canonical_name(name))


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
# Metric keys that passed MLflow's validator in this process. A key's validity
# depends on the key alone, so a training loop's few keys are checked once;
# the set stops growing at this size, after which new keys are checked on
# every call.
_VALID_METRIC_KEYS: set[str] = set()
_MOST_VALID_METRIC_KEYS = 100_000


def _validate_metrics(metrics: Sequence[Any]) -> None:
    """Validate metrics as MLflow's SQL store does, and check they can be stored.

    MLflow's validator costs more than writing a point; a point whose key has
    passed it before and whose value, timestamp and step have the types that
    pass it (and fit the columns) needs no second look. Any other point goes
    through MLflow's validator, with the same error as MLflow's own stores.
    """
    for index, metric in enumerate(metrics):
        timestamp, step = metric.timestamp, metric.step
        if (
            metric.key in _VALID_METRIC_KEYS
            and type(metric.value) is float
            and type(timestamp) is int
            and 0 <= timestamp <= _mapping.MAX_TIMESTAMP_MS
            and type(step) is int
            and _INT64_MIN <= step <= _INT64_MAX
        ):
            continue
        path = f"metrics[{index}]"
        _validate_metric(metric.key, metric.value, timestamp, step, path=path)
        _check_metric_fits(metric)
        if len(_VALID_METRIC_KEYS) < _MOST_VALID_METRIC_KEYS:
            _VALID_METRIC_KEYS.add(metric.key)


def _check_metric_fits(metric: Any) -> None:
    """Refuse a metric that MLflow's validators pass but no column can hold."""
    try:
        float(metric.value)
    except OverflowError:
        # MLflow's SQL store fails the same way, as INTERNAL_ERROR.
        raise MlflowException(
            # The value itself is left out: it may have hundreds of digits.
            f"Metric {metric.key!r} has a value too large for a double (64-bit "
            "floating point). Log a smaller number.",
            INTERNAL_ERROR,
        ) from None
    for field in ("step", "timestamp"):
        number = getattr(metric, field)
        if not _INT64_MIN <= number <= _INT64_MAX:
            raise MlflowException(
                f"Metric {metric.key!r} has {field} {number}, which does not fit a "
                "64-bit integer. Log a smaller number.",
                INTERNAL_ERROR,
            )
    if metric.timestamp > _mapping.MAX_TIMESTAMP_MS:
        raise MlflowException(
            f"Metric {metric.key!r} has timestamp {metric.timestamp}, after the "
            "year 9999, which Trackio cannot store. Log times in milliseconds "
            "since the epoch.",
            INVALID_PARAMETER_VALUE,
        )


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


def _check_active(info: RunInfo) -> None:
    if info.lifecycle_stage != LifecycleStage.ACTIVE:
        raise MlflowException(
            f"The run {info.run_id} must be in the 'active' state. "
            f"Current state is {info.lifecycle_stage}.",
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
