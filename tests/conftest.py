"""Shared fixtures: a fresh Trackio directory and clean MLflow state per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
from mlflow.tracking._tracking_service import utils as tracking_utils

from tests.workers.children import Children

os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")


def _clear_store_cache() -> None:
    registry = tracking_utils._tracking_store_registry
    registry._get_store_with_resolved_uri.cache_clear()


@pytest.fixture(autouse=True)
def trackio_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point Trackio at a temporary directory and leave MLflow as found."""
    directory = tmp_path / "trackio"
    directory.mkdir()
    monkeypatch.setenv("TRACKIO_DIR", str(directory))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_RUN_ID", raising=False)
    _clear_store_cache()
    yield directory
    while mlflow.active_run() is not None:
        mlflow.end_run()
    _forget_mlflow_state()
    _clear_store_cache()


def _forget_mlflow_state() -> None:
    import sdk
    from sdk import _config

    if hasattr(sdk, "autolog"):
        sdk.autolog(disable=True)
    _config.reset()
    tracking_utils._tracking_uri = None
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    mlflow.tracking.fluent._active_experiment_id = None
    tracking_utils._artifact_repos_cache.clear()


@pytest.fixture
def children() -> Iterator[Children]:
    """Child processes, all stopped when the test ends, passed or not."""
    started = Children()
    yield started
    started.stop_all()


@pytest.fixture
def store(trackio_dir: Path):
    """A TrackioStore over the test's directory."""
    from sdk import TrackioStore

    built = TrackioStore(f"trackio://{trackio_dir.as_posix()}")
    yield built
    built.backend.close()


@pytest.fixture
def client(trackio_dir: Path) -> mlflow.MlflowClient:
    """An MlflowClient on trackio:// (TRACKIO_DIR is the test's directory)."""
    mlflow.set_tracking_uri("trackio://")
    return mlflow.MlflowClient()
