"""What differs between the MLflow lines this package supports: 2.22 and 3.x.

MLflow 3 added logged models (their entities, store calls, and run inputs and
outputs that name models) and `MlflowNotImplementedException`, its metric
histories name each point's run, and its run info dropped ``run_uuid``.
The rest of the package takes those names and builds those entities here, so
that it still imports under MLflow 2 (where MLflow never calls the
logged-model methods) and returns what each line's own stores return.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from mlflow.entities import DatasetInput, Metric, Run, RunData, RunInfo, RunInputs
from mlflow.exceptions import MlflowException
from mlflow.version import VERSION

MLFLOW_MAJOR = int(VERSION.split(".", 1)[0])
# MLflow 3.0 introduced logged models.
HAS_LOGGED_MODELS = MLFLOW_MAJOR >= 3

if TYPE_CHECKING or HAS_LOGGED_MODELS:
    from mlflow.entities import (
        LoggedModel,
        LoggedModelInput,
        LoggedModelOutput,
        LoggedModelParameter,
        LoggedModelStatus,
        LoggedModelTag,
        RunOutputs,
    )
    from mlflow.protos.service_pb2 import LoggedModel as LoggedModelProto
    from mlflow.utils.validation import _validate_logged_model_name
else:
    # MLflow 2 has none of these. Only the logged-model calls use them, and
    # MLflow 2 makes none; the store does not even offer them there.
    LoggedModel = LoggedModelInput = LoggedModelOutput = None
    LoggedModelParameter = LoggedModelStatus = LoggedModelTag = RunOutputs = None
    LoggedModelProto = None
    _validate_logged_model_name = None

if TYPE_CHECKING or MLFLOW_MAJOR >= 3:
    from mlflow.exceptions import MlflowNotImplementedException
else:

    class MlflowNotImplementedException(MlflowException):
        """MLflow 3's exception for an unsupported call, which MLflow 2 lacks."""

        def __init__(self, message: str = "") -> None:
            from mlflow.protos.databricks_pb2 import NOT_IMPLEMENTED

            super().__init__(message, error_code=NOT_IMPLEMENTED)


__all__ = [
    "HAS_LOGGED_MODELS",
    "MLFLOW_MAJOR",
    "LoggedModel",
    "LoggedModelInput",
    "LoggedModelOutput",
    "LoggedModelParameter",
    "LoggedModelProto",
    "LoggedModelStatus",
    "LoggedModelTag",
    "MlflowNotImplementedException",
    "_validate_logged_model_name",
    "history_metric",
    "make_run",
    "run_info",
]


def make_run(
    info: RunInfo,
    data: RunData,
    datasets: Iterable[DatasetInput] = (),
    model_inputs: Iterable[str] = (),
    model_outputs: Iterable[tuple[str, int]] = (),
) -> Run:
    """
    Build a run with its inputs and, under MLflow 3, the models it used and made.

    Args:
        info: The run's info.
        data: The run's metrics, params and tags.
        datasets: The datasets the run used.
        model_inputs: Ids of the logged models the run used (MLflow 3).
        model_outputs: (model id, step) of the models the run made (MLflow 3).

    Returns:
        The run; under MLflow 2, without model inputs and outputs, which that
        line's runs do not have.
    """
    if not HAS_LOGGED_MODELS:
        return Run(info, data, RunInputs(dataset_inputs=list(datasets)))
    inputs = RunInputs(
        dataset_inputs=list(datasets),
        model_inputs=[LoggedModelInput(m) for m in model_inputs],
    )
    outputs = RunOutputs([LoggedModelOutput(m, s) for m, s in model_outputs])
    return Run(info, data, inputs, outputs)


def run_info(**fields: Any) -> RunInfo:
    """Build a run's info from keywords; MLflow 2 also wants the old ``run_uuid``."""
    if MLFLOW_MAJOR < 3:
        fields.setdefault("run_uuid", fields["run_id"])
    return RunInfo(**fields)


if MLFLOW_MAJOR >= 3:

    def history_metric(
        key: str, value: float, timestamp: int, step: int, run_id: str
    ) -> Metric:
        """Return one point of a metric history, naming its run."""
        return Metric(key, value, timestamp, step, run_id=run_id)

else:

    def history_metric(
        key: str, value: float, timestamp: int, step: int, run_id: str
    ) -> Metric:
        """Return one point of a metric history (MLflow 2's points name no run)."""
        return Metric(key, value, timestamp, step)
