"""A tracking store that keeps everything in memory: the floor of every workload.

What a workload costs on this store is what MLflow's own client code costs
(fluent API, `MlflowClient`, validation in the client, autologging's batching)
with a store that does almost nothing. Each store method does the least that
keeps MLflow's callers working: plain dicts, no validation, no copies.
"""

from __future__ import annotations

import threading
import uuid
from collections import defaultdict
from typing import Any

from mlflow.entities import (
    Experiment,
    LifecycleStage,
    Metric,
    Param,
    Run,
    RunData,
    RunInfo,
    RunInputs,
    RunOutputs,
    RunStatus,
    RunTag,
    ViewType,
)
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking import SEARCH_MAX_RESULTS_DEFAULT
from mlflow.store.tracking.abstract_store import AbstractStore
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME
from mlflow.utils.search_utils import SearchExperimentsUtils, SearchUtils
from mlflow.utils.time import get_current_time_millis

SCHEME = "noop"


class _RunRecord:
    """One run's mutable state; `Run` entities are built from it on read."""

    def __init__(self, info: RunInfo, tags: dict[str, str]) -> None:
        self.info = info
        self.params: dict[str, str] = {}
        self.tags = tags
        self.latest: dict[str, Metric] = {}
        self.history: dict[str, list[Metric]] = defaultdict(list)

    def to_run(self) -> Run:
        data = RunData(
            metrics=list(self.latest.values()),
            params=[Param(k, v) for k, v in self.params.items()],
            tags=[RunTag(k, v) for k, v in self.tags.items()],
        )
        return Run(self.info, data, RunInputs([]), RunOutputs([]))


class NoopStore(AbstractStore):
    """
    An in-memory MLflow tracking store for the `noop://` scheme.

    Args:
        store_uri: Any `noop://...` URI; each distinct URI is its own store,
            since MLflow caches one store per URI.
        artifact_uri: Not used by this store.
    """

    def __init__(
        self, store_uri: str | None = None, artifact_uri: str | None = None
    ) -> None:
        super().__init__()
        self.store_uri = store_uri
        self._lock = threading.Lock()
        self._experiments: dict[str, Experiment] = {}
        self._runs: dict[str, _RunRecord] = {}
        self._artifact_root = f"/tmp/noop-artifacts/{uuid.uuid4().hex}"
        self.create_experiment("Default")

    # Experiments ---------------------------------------------------------

    def create_experiment(self, name, artifact_location=None, tags=None):
        experiment_id = str(len(self._experiments))
        now = get_current_time_millis()
        self._experiments[experiment_id] = Experiment(
            experiment_id=experiment_id,
            name=name,
            artifact_location=artifact_location
            or f"file://{self._artifact_root}/{experiment_id}",
            lifecycle_stage=LifecycleStage.ACTIVE,
            tags=list(tags or []),
            creation_time=now,
            last_update_time=now,
        )
        return experiment_id

    def get_experiment(self, experiment_id):
        try:
            return self._experiments[str(experiment_id)]
        except KeyError:
            raise MlflowException(
                f"No Experiment with id={experiment_id} exists",
                RESOURCE_DOES_NOT_EXIST,
            ) from None

    def get_experiment_by_name(self, experiment_name):
        for experiment in self._experiments.values():
            if experiment.name == experiment_name:
                return experiment
        return None

    def search_experiments(
        self,
        view_type=ViewType.ACTIVE_ONLY,
        max_results=SEARCH_MAX_RESULTS_DEFAULT,
        filter_string=None,
        order_by=None,
        page_token=None,
    ):
        found = SearchExperimentsUtils.filter(
            list(self._experiments.values()), filter_string
        )
        page, token = SearchUtils.paginate(found, page_token, max_results)
        return PagedList(page, token)

    def set_experiment_tag(self, experiment_id, tag):
        return None

    # Runs ----------------------------------------------------------------

    def create_run(self, experiment_id, user_id, start_time, tags, run_name):
        run_id = uuid.uuid4().hex
        experiment = self.get_experiment(experiment_id)
        tag_values = {tag.key: tag.value for tag in tags or []}
        run_name = run_name or tag_values.get(MLFLOW_RUN_NAME) or run_id[:8]
        tag_values[MLFLOW_RUN_NAME] = run_name
        info = RunInfo(
            run_id=run_id,
            experiment_id=str(experiment_id),
            user_id=user_id or "",
            status=RunStatus.to_string(RunStatus.RUNNING),
            start_time=start_time,
            end_time=None,
            lifecycle_stage=LifecycleStage.ACTIVE,
            artifact_uri=f"{experiment.artifact_location}/{run_id}/artifacts",
            run_name=run_name,
        )
        with self._lock:
            self._runs[run_id] = _RunRecord(info, tag_values)
        return self._runs[run_id].to_run()

    def _record(self, run_id: str) -> _RunRecord:
        try:
            return self._runs[run_id]
        except KeyError:
            raise MlflowException(
                f"Run with id={run_id} not found", RESOURCE_DOES_NOT_EXIST
            ) from None

    def get_run(self, run_id):
        return self._record(run_id).to_run()

    def update_run_info(self, run_id, run_status, end_time, run_name):
        record = self._record(run_id)
        info = record.info
        record.info = RunInfo(
            run_id=info.run_id,
            experiment_id=info.experiment_id,
            user_id=info.user_id,
            status=RunStatus.to_string(run_status) if run_status else info.status,
            start_time=info.start_time,
            end_time=end_time if end_time is not None else info.end_time,
            lifecycle_stage=info.lifecycle_stage,
            artifact_uri=info.artifact_uri,
            run_name=run_name or info.run_name,
        )
        return record.info

    def log_batch(self, run_id, metrics, params, tags):
        record = self._record(run_id)
        with self._lock:
            for metric in metrics:
                record.history[metric.key].append(metric)
                record.latest[metric.key] = metric
            record.params.update((p.key, p.value) for p in params)
            record.tags.update((t.key, t.value) for t in tags)

    def delete_tag(self, run_id: str, key: str) -> None:
        self._record(run_id).tags.pop(key, None)

    def log_inputs(self, run_id, datasets=None, models=None):
        return None

    def log_outputs(self, run_id, models):
        return None

    def get_metric_history(self, run_id, metric_key, max_results=None, page_token=None):
        points = self._record(run_id).history.get(metric_key, [])
        return PagedList(list(points), None)

    def _search_runs(
        self,
        experiment_ids,
        filter_string,
        run_view_type,
        max_results,
        order_by,
        page_token,
    ):
        wanted = {str(e) for e in experiment_ids}
        runs = [
            record.to_run()
            for record in self._runs.values()
            if record.info.experiment_id in wanted
        ]
        filtered = SearchUtils.filter(runs, filter_string)
        ordered = SearchUtils.sort(filtered, order_by)
        return SearchUtils.paginate(ordered, page_token, max_results)

    # Traces: autolog of GenAI libraries is off in every workload -----------

    def search_traces(self, *args: Any, **kwargs: Any):
        return [], None


def register() -> None:
    """Register `NoopStore` for `noop://` URIs in this process."""
    from mlflow.tracking._tracking_service.utils import _tracking_store_registry

    _tracking_store_registry.register(SCHEME, NoopStore)
