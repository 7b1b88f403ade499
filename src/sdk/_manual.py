"""Vertex-style manual calls: thin wrappers over MLflow's fluent API.

They send data where `sdk.init` said (the configured Trackio URI and project),
so a script can log by hand with or without `sdk.autolog()`.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST
from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

from sdk import _config

if TYPE_CHECKING:
    import pandas


def _use_trackio() -> None:
    """Point MLflow's fluent API at the configured Trackio URI and project."""
    from sdk._autolog import register_store

    register_store()
    uri = _config.tracking_uri_for(mlflow.get_tracking_uri())
    if mlflow.get_tracking_uri() != uri:
        mlflow.set_tracking_uri(uri)
    project = _config.project()
    if project is not None:
        mlflow.set_experiment(project)


def start_run(name: str | None = None, *, resume: bool = False) -> mlflow.ActiveRun:
    """
    Start (or resume) a run in the configured Trackio project.

    Like `sdk.autolog`, this points MLflow's tracking URI at Trackio; it is not
    put back when the run ends.

    Args:
        name: The run's name; MLflow picks a random one when None.
        resume: Continue the newest run of that name instead of starting a
            new one.

    Returns:
        MLflow's active run, usable as a context manager that ends the run.

    Raises:
        MlflowException: If `resume` is set and no run has that name, or
            `resume` is set without a name.

    .. versionadded:: 0.1.0
    """
    _use_trackio()
    if not resume:
        return mlflow.start_run(run_name=name)
    if name is None:
        raise MlflowException.invalid_parameter_value(
            "sdk.start_run(resume=True) needs the name of the run to resume."
        )
    return mlflow.start_run(run_id=_newest_run_id(name))


def _newest_run_id(name: str) -> str:
    experiment_id = mlflow.tracking.fluent._get_experiment_id()
    escaped = name.replace("'", "\\'")
    runs = mlflow.MlflowClient().search_runs(
        [experiment_id],
        filter_string=f"tags.`{MLFLOW_RUN_NAME}` = '{escaped}'",
        order_by=["attributes.start_time DESC"],
        max_results=1,
    )
    if not runs:
        raise MlflowException(
            f"No run named {name!r} to resume in experiment {experiment_id}. "
            "Start it with sdk.start_run(name) first.",
            RESOURCE_DOES_NOT_EXIST,
        )
    return runs[0].info.run_id


def end_run() -> None:
    """
    End the active run as FINISHED (a no-op when no run is active).

    .. versionadded:: 0.1.0
    """
    mlflow.end_run()


def log_params(params: dict[str, Any]) -> None:
    """
    Log params to the active run (one is started if none is active).

    Args:
        params: Names and values; values are stored as strings, as MLflow does.

    Raises:
        MlflowException: If a param was already logged with another value.

    .. versionadded:: 0.1.0
    """
    _ensure_run()
    mlflow.log_params(params)


def log_metrics(metrics: dict[str, float], step: int | None = None) -> None:
    """
    Log metrics to the active run (one is started if none is active).

    Args:
        metrics: Names and numeric values.
        step: The training step; MLflow uses 0 when None.

    Raises:
        MlflowException: If a value is not a number or a name is invalid.

    .. versionadded:: 0.1.0
    """
    _ensure_run()
    mlflow.log_metrics(metrics, step=step)


def _ensure_run() -> None:
    if mlflow.active_run() is None:
        _use_trackio()


def get_experiment_df(project: str | None = None) -> pandas.DataFrame:
    """
    Return a project's runs as a DataFrame: one row per run, with its params
    (``params.<name>``) and latest metrics (``metrics.<name>``).

    Args:
        project: The project (MLflow experiment) to read; the one given to
            `sdk.init` when None.

    Raises:
        MlflowException: If no project is given or configured, or it does
            not exist.

    .. versionadded:: 0.1.0
    """
    import pandas

    project = project or _config.project()
    if project is None:
        raise MlflowException.invalid_parameter_value(
            "sdk.get_experiment_df() needs a project: pass one, or call "
            "sdk.init(project=...) first."
        )
    uri = _config.tracking_uri_for(mlflow.get_tracking_uri())
    client = mlflow.MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name(project)
    if experiment is None:
        raise MlflowException(
            f"Project {project!r} does not exist in {uri}.",
            RESOURCE_DOES_NOT_EXIST,
        )
    rows = [_run_row(run) for run in _all_runs(client, experiment.experiment_id)]
    return pandas.DataFrame(rows)


def _all_runs(client: mlflow.MlflowClient, experiment_id: str) -> list[Any]:
    runs: list[Any] = []
    token = None
    while True:
        page = client.search_runs([experiment_id], page_token=token)
        runs += page
        token = page.token
        if not token:
            return runs


def _run_row(run: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": run.info.status,
        "start_time": run.info.start_time,
        "end_time": run.info.end_time,
    }
    row.update({f"params.{k}": v for k, v in run.data.params.items()})
    row.update({f"metrics.{k}": v for k, v in run.data.metrics.items()})
    return row


def show(project: str | None = None, **kwargs: Any) -> Any:
    """
    Open Trackio's dashboard over the configured Trackio directory.

    Args:
        project: The project to open; the one given to `sdk.init` when None.
        **kwargs: Passed to ``trackio.show`` (for example ``open_browser``,
            ``block_thread``, ``server_port``, ``host``).

    Returns:
        What ``trackio.show`` returns (the app and its URLs).

    Raises:
        MlflowException: If `sdk.init` configured a Trackio server, which
            serves its own dashboard.

    .. versionadded:: 0.1.0
    """
    if _config.tracking_uri().startswith("trackio+"):
        raise MlflowException.invalid_parameter_value(
            "sdk.show() opens a local Trackio directory; the configured Trackio "
            "server already serves its dashboard at its own address."
        )
    directory = _config.directory()
    if directory is not None:
        point_trackio_at(directory)
    import trackio

    return trackio.show(project=project or _config.project(), **kwargs)


def point_trackio_at(directory: Path) -> None:
    """Make Trackio, already imported or not, use `directory` in this process.

    Trackio copies its directory into module constants at import, so each
    copy is replaced.
    """
    import os

    os.environ["TRACKIO_DIR"] = str(directory)
    from trackio import sqlite_storage, utils

    for module in (utils, sqlite_storage, sys.modules.get("trackio")):
        if module is not None and hasattr(module, "TRACKIO_DIR"):
            module.TRACKIO_DIR = directory
    utils.MEDIA_DIR = directory / "media"
