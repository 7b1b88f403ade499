"""The model calls of `TrackioStore`: MLflow 2's model history, MLflow 3's models.

Autolog with MLflow's default settings creates a logged model before
training, logs metrics against it and finalises it afterwards; without these
calls every such run ends FAILED. Trackio has no notion of a model, so the
models are kept beside the project's runs, in its database file.
"""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING, Any

from mlflow.entities import LifecycleStage
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INVALID_STATE,
    RESOURCE_DOES_NOT_EXIST,
)
from mlflow.store.entities.paged_list import PagedList
from mlflow.store.tracking import SEARCH_MAX_RESULTS_DEFAULT
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_MODELS
from mlflow.utils.name_utils import _generate_random_name
from mlflow.utils.time import get_current_time_millis
from mlflow.utils.validation import _validate_param, _validate_tag
from typing_extensions import override

from sdk._mlflow_compat import (
    HAS_LOGGED_MODELS,
    LoggedModel,
    LoggedModelParameter,
    LoggedModelStatus,
    LoggedModelTag,
    _validate_logged_model_name,
)

if TYPE_CHECKING:
    from mlflow.entities import Experiment, Run

    from sdk._backends._local import LocalBackend
    from sdk._backends._sqlite import ProjectFile


class ModelHistoryMixin:
    """The model calls of every MLflow line; expects `backend` and runs."""

    backend: LocalBackend

    if TYPE_CHECKING:
        # Provided by TrackioStore, which this mixin is part of.
        def get_experiment(self, experiment_id: str) -> Experiment: ...
        def get_run(self, run_id: str) -> Run: ...
        def _experiment_project(self, experiment_id: str) -> ProjectFile: ...
        def log_batch(
            self, run_id: str, metrics: list, params: list, tags: list
        ) -> None: ...

    def record_logged_model(self, run_id: str, mlflow_model: Any) -> None:
        """
        Append a model to the run's ``mlflow.log-model.history`` tag (MLflow 2).

        Raises:
            TypeError: If `mlflow_model` is not an ``mlflow.models.Model``.
            MlflowException: If the run does not exist or is deleted.
        """
        from mlflow.entities import RunTag
        from mlflow.models import Model

        if not isinstance(mlflow_model, Model):
            raise TypeError(
                "Argument 'mlflow_model' should be mlflow.models.Model, got "
                f"'{type(mlflow_model)}'"
            )
        run = self.get_run(run_id)
        history = json.loads(run.data.tags.get(MLFLOW_LOGGED_MODELS, "[]"))
        value = json.dumps([*history, mlflow_model.get_tags_dict()])
        _validate_tag(MLFLOW_LOGGED_MODELS, value)
        self.log_batch(run_id, [], [], [RunTag(MLFLOW_LOGGED_MODELS, value)])

    def _log_model_metrics(self, metrics: list[Any]) -> None:
        """Do nothing: before MLflow 3, metrics name no model."""


class LoggedModelsMixin(ModelHistoryMixin):
    """MLflow 3's logged-model calls, and metrics that name a logged model."""

    def create_logged_model(
        self,
        experiment_id: str = "0",
        name: str | None = None,
        source_run_id: str | None = None,
        tags: list[LoggedModelTag] | None = None,
        params: list[LoggedModelParameter] | None = None,
        model_type: str | None = None,
    ) -> LoggedModel:
        """
        Create a logged model in PENDING state with a resolvable artifact URI.

        Args:
            experiment_id: The experiment that owns the model.
            name: The model's name; a random one when None.
            source_run_id: The run that produced the model.
            tags: Tags to set on the model.
            params: Params to set on the model.
            model_type: A free-form model type.

        Returns:
            The new model.

        Raises:
            MlflowException: If the experiment does not exist or is deleted,
                or a name or param is invalid.
        """
        _validate_logged_model_name(name)
        for param in params or []:
            _validate_param(param.key, param.value)
        experiment = self.get_experiment(experiment_id)
        if experiment.lifecycle_stage != LifecycleStage.ACTIVE:
            raise MlflowException(
                "Could not create model under non-active experiment with ID "
                f"{experiment_id}.",
                INVALID_STATE,
            )
        model_id = f"m-{uuid.uuid4().hex}"
        now = get_current_time_millis()
        model = LoggedModel(
            experiment_id=str(experiment_id),
            model_id=model_id,
            name=name or _generate_random_name(),
            artifact_location=(
                f"{experiment.artifact_location}/models/{model_id}/artifacts"
            ),
            creation_timestamp=now,
            last_updated_timestamp=now,
            model_type=model_type,
            source_run_id=source_run_id,
            status=LoggedModelStatus.PENDING,
            tags=tags,
            params=params,
        )
        project = self._experiment_project(str(experiment_id))
        self.backend.save_logged_model(project, model)
        return model

    def get_logged_model(
        self, model_id: str, allow_deleted: bool = False
    ) -> LoggedModel:
        """
        Return a logged model.

        Args:
            model_id: The model's id.
            allow_deleted: Accepted for MLflow's signature; deleted models are
                removed, so there is nothing more to return.

        Raises:
            MlflowException: If no model has that id.
        """
        return self._find_model(model_id)[1]

    def _find_model(self, model_id: str) -> tuple[ProjectFile, LoggedModel]:
        found = self.backend.get_logged_model(model_id)
        if found is None:
            raise MlflowException(
                f"Model '{model_id}' not found", RESOURCE_DOES_NOT_EXIST
            )
        return found

    def _update_model(self, model_id: str, **changes: Any) -> LoggedModel:
        project, model = self._find_model(model_id)
        fields = {
            "experiment_id": model.experiment_id,
            "model_id": model.model_id,
            "name": model.name,
            "artifact_location": model.artifact_location,
            "creation_timestamp": model.creation_timestamp,
            "last_updated_timestamp": get_current_time_millis(),
            "model_type": model.model_type,
            "source_run_id": model.source_run_id,
            "status": model.status,
            "status_message": model.status_message,
            "tags": dict(model.tags),
            "params": dict(model.params),
            "metrics": list(model.metrics or []),
        }
        for key, change in changes.items():
            fields[key] = change(fields[key]) if callable(change) else change
        updated = LoggedModel(**fields)
        self.backend.save_logged_model(project, updated)
        return updated

    def finalize_logged_model(
        self, model_id: str, status: LoggedModelStatus
    ) -> LoggedModel:
        """
        Set a logged model's final status (READY or FAILED).

        Raises:
            MlflowException: If no model has that id.
        """
        return self._update_model(model_id, status=status)

    def set_logged_model_tags(self, model_id: str, tags: list[LoggedModelTag]) -> None:
        """
        Set tags on a logged model.

        Raises:
            MlflowException: If no model has that id or a tag is invalid.
        """
        for tag in tags:
            _validate_tag(tag.key, tag.value)
        self._update_model(
            model_id, tags=lambda old: {**old, **{t.key: t.value for t in tags}}
        )

    def delete_logged_model_tag(self, model_id: str, key: str) -> None:
        """
        Delete a tag from a logged model.

        Raises:
            MlflowException: If no model has that id or that tag.
        """
        model = self.get_logged_model(model_id)
        if key not in model.tags:
            raise MlflowException(
                f"No tag with key {key!r} found for model with ID {model_id!r}.",
                RESOURCE_DOES_NOT_EXIST,
            )
        self._update_model(
            model_id, tags=lambda old: {k: v for k, v in old.items() if k != key}
        )

    def log_logged_model_params(
        self, model_id: str, params: list[LoggedModelParameter]
    ) -> None:
        """
        Set params on a logged model.

        Raises:
            MlflowException: If no model has that id or a param is invalid.
        """
        for param in params:
            _validate_param(param.key, param.value)
        self._update_model(
            model_id, params=lambda old: {**old, **{p.key: p.value for p in params}}
        )

    def delete_logged_model(self, model_id: str) -> None:
        """
        Delete a logged model's record (its artifacts stay where they are).

        Raises:
            MlflowException: If no model has that id.
        """
        project, _ = self._find_model(model_id)
        self.backend.delete_logged_model(project, model_id)

    def search_logged_models(
        self,
        experiment_ids: list[str],
        filter_string: str | None = None,
        datasets: list[dict[str, Any]] | None = None,
        max_results: int | None = None,
        order_by: list[dict[str, Any]] | None = None,
        page_token: str | None = None,
    ) -> PagedList[LoggedModel]:
        """
        Search the logged models of some experiments with MLflow's own rules.

        Returns:
            One page of models and the token of the next page.
        """
        models: list[LoggedModel] = []
        for experiment_id in experiment_ids:
            project = self.backend.experiment_file(str(experiment_id))
            if project is not None:
                models += self.backend.logged_models_in(project)
        # MLflow's search utilities load sqlparse; MLflow loads this module
        # at `import mlflow`, so they are imported on first use.
        from mlflow.utils.search_utils import SearchLoggedModelsUtils

        filtered = SearchLoggedModelsUtils.filter_logged_models(
            models, filter_string, datasets
        )
        ordered = SearchLoggedModelsUtils.sort(filtered, order_by)
        page, token = SearchLoggedModelsUtils.paginate(
            ordered, page_token, max_results or SEARCH_MAX_RESULTS_DEFAULT
        )
        return PagedList(page, token)

    @override
    def _log_model_metrics(self, metrics: list[Any]) -> None:
        """Attach metrics that name a model id to that model, as MLflow does."""
        by_model: dict[str, list[Any]] = {}
        for metric in metrics:
            if metric.model_id:
                by_model.setdefault(metric.model_id, []).append(metric)
        for model_id, model_metrics in by_model.items():
            if self.backend.get_logged_model(model_id) is None:
                # MLflow's SQL store accepts metrics naming an unknown model
                # too; they stay in the run's history, linked to no model.
                continue
            self._update_model(
                model_id, metrics=lambda old, new=model_metrics: _merge(old, new)
            )


if TYPE_CHECKING or HAS_LOGGED_MODELS:
    ModelsMixin = LoggedModelsMixin
else:
    # MLflow 2's stores have no logged-model calls, and neither has this one.
    ModelsMixin = ModelHistoryMixin


def _merge(old: list[Any], new: list[Any]) -> list[Any]:
    seen = {(m.key, m.step, m.timestamp, m.value) for m in old}
    return old + [m for m in new if (m.key, m.step, m.timestamp, m.value) not in seen]
