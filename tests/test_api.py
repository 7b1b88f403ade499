"""The public face of `sdk`: its names, `init` and the Vertex-style calls."""

from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

import mlflow
import pytest
from mlflow.exceptions import MlflowException

import sdk
from tests.trackio_reader import TrackioReader

PUBLIC_NAMES = [
    "TrackioStore",
    "__version__",
    "autolog",
    "end_run",
    "get_experiment_df",
    "init",
    "is_autolog_enabled",
    "log_metrics",
    "log_params",
    "show",
    "start_run",
]


class TestPublicNames:
    def test_all_is_pinned(self) -> None:
        """`sdk.__all__` lists exactly the public API, each name importable."""
        assert sorted(sdk.__all__) == sorted(PUBLIC_NAMES)
        for name in PUBLIC_NAMES:
            assert getattr(sdk, name) is not None

    def test_public_callables_are_documented(self) -> None:
        """Every public function and class has a docstring with versionadded."""
        for name in PUBLIC_NAMES:
            if name == "__version__":
                continue
            assert "versionadded" in (getattr(sdk, name).__doc__ or ""), name


class TestInit:
    def test_dir_sets_the_tracking_uri(self, tmp_path: Path) -> None:
        """init(dir=...) sends later calls to that directory."""
        sdk.init(project="p", dir=tmp_path / "elsewhere")
        with sdk.start_run("r"):
            sdk.log_metrics({"x": 1.0})
        assert TrackioReader(tmp_path / "elsewhere").projects() == ["p"]

    @pytest.mark.parametrize(
        ("kwargs", "message"),
        [
            ({"dir": "/tmp/x", "server_url": "http://h:1"}, "not both"),
            ({"server_url": "ftp://h"}, "is not an http"),
        ],
    )
    def test_bad_arguments(self, kwargs: dict, message: str) -> None:
        """Contradictory or malformed settings raise INVALID_PARAMETER_VALUE."""
        with pytest.raises(MlflowException, match=message) as info:
            sdk.init(**kwargs)
        assert info.value.error_code == "INVALID_PARAMETER_VALUE"


class TestManualLogging:
    def test_start_log_end(self, trackio_dir: Path) -> None:
        """start_run, log_params, log_metrics and end_run write one run."""
        sdk.init(project="manual")
        run = sdk.start_run("first")
        sdk.log_params({"lr": 0.1, "layers": 2})
        for step in range(3):
            sdk.log_metrics({"loss": 1.0 / (step + 1)}, step=step)
        sdk.end_run()
        client = mlflow.MlflowClient()
        stored = client.get_run(run.info.run_id)
        assert stored.info.status == "FINISHED"
        assert stored.data.params == {"lr": "0.1", "layers": "2"}
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.step for m in history] == [0, 1, 2]
        assert TrackioReader(trackio_dir).run_records("manual")[0]["name"] == "first"

    def test_resume_continues_the_named_run(self) -> None:
        """start_run(name, resume=True) logs into the newest run of that name."""
        sdk.init(project="manual")
        with sdk.start_run("again") as first:
            sdk.log_metrics({"x": 1.0}, step=0)
        with sdk.start_run("again", resume=True) as resumed:
            sdk.log_metrics({"x": 2.0}, step=1)
        assert resumed.info.run_id == first.info.run_id
        history = mlflow.MlflowClient().get_metric_history(first.info.run_id, "x")
        assert [m.value for m in history] == [1.0, 2.0]

    @pytest.mark.parametrize(
        ("name", "message"), [("missing", "No run named"), (None, "needs the name")]
    )
    def test_resume_without_a_run(self, name, message: str) -> None:
        """Resuming a name that does not exist is a clear error."""
        sdk.init(project="manual")
        with pytest.raises(MlflowException, match=message):
            sdk.start_run(name, resume=True)

    def test_experiment_df(self) -> None:
        """get_experiment_df has one row per run with params and latest metrics."""
        sdk.init(project="frame")
        for lr in (0.1, 0.2):
            with sdk.start_run(f"lr-{lr}"):
                sdk.log_params({"lr": lr})
                sdk.log_metrics({"loss": lr * 10}, step=0)
                sdk.log_metrics({"loss": lr}, step=1)
        frame = sdk.get_experiment_df()
        by_name = frame.set_index("run_name")
        assert sorted(by_name.index) == ["lr-0.1", "lr-0.2"]
        assert by_name.loc["lr-0.2", "params.lr"] == "0.2"
        assert by_name.loc["lr-0.2", "metrics.loss"] == 0.2

    def test_experiment_df_needs_a_known_project(self) -> None:
        """Without a project, or with an unknown one, it says what is missing."""
        with pytest.raises(MlflowException, match="needs a project"):
            sdk.get_experiment_df()
        with pytest.raises(MlflowException, match="does not exist"):
            sdk.get_experiment_df("nowhere")

    def test_an_mlflow_server_the_user_set_is_kept(
        self, trackio_dir: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With MLFLOW_TRACKING_URI=http://..., manual calls go to that server."""
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed_port = probe.getsockname()[1]
        server = f"http://127.0.0.1:{closed_port}"
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server)
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
        monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")

        with pytest.raises(MlflowException, match=f"127.0.0.1:{closed_port}"):
            sdk.start_run("r")

        assert mlflow.get_tracking_uri() == server
        assert list(trackio_dir.iterdir()) == []


class TestAsyncLogging:
    def test_async_writes_arrive(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """With MLflow's async logging on, every point is stored by end_run."""
        monkeypatch.setenv("MLFLOW_ENABLE_ASYNC_LOGGING", "true")
        sdk.init(project="async")
        with sdk.start_run("a") as run:
            for step in range(200):
                mlflow.log_metrics({"a": step, "b": -step}, step=step)
            mlflow.log_params({"p": 1})
        client = mlflow.MlflowClient()
        assert len(client.get_metric_history(run.info.run_id, "b")) == 200
        assert client.get_run(run.info.run_id).data.params == {"p": "1"}


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TestShow:
    def test_dashboard_serves_the_configured_directory(self, tmp_path: Path) -> None:
        """sdk.show() starts Trackio's dashboard, which lists the project."""
        sdk.init(project="shown", dir=tmp_path / "shown-dir")
        with sdk.start_run("r"):
            sdk.log_metrics({"x": 1.0})
        port = _free_port()
        app, local_url, *_ = sdk.show(
            open_browser=False, block_thread=False, server_port=port
        )
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/", timeout=30
            ) as page:
                assert page.status == 200
            from trackio.sqlite_storage import SQLiteStorage

            assert SQLiteStorage.get_projects() == ["shown"]
        finally:
            app.close()
