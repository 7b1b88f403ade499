"""A real `mlflow server` over a Trackio directory, started by `mlflow-trackio ui`.

One server serves the whole module: the data is logged once through
``MlflowClient("http://...")``, then each test checks one of the REST calls
that MLflow's UI makes, and what Trackio's own reader sees on disk.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunTag

from tests.trackio_reader import TrackioReader

pytest.importorskip("flask", reason="needs MLflow's server: mlflow-trackio[server]")

EXPERIMENT = "served-demo"
STEPS = [0, 1, 2, 3, 4]
START_SECONDS = 60
STOP_SECONDS = 30


def cli_command() -> list[str]:
    """The installed console script, or the module when it is not installed."""
    script = Path(sys.executable).with_name("mlflow-trackio")
    return [str(script)] if script.exists() else [sys.executable, "-m", "sdk._cli"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def port_is_open(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Served:
    """A running server, its directory, and the ids of what was logged."""

    url: str
    directory: Path
    ids: dict[str, str] = field(default_factory=dict)

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + path, timeout=30, **kwargs)


def _wait_until_healthy(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(
                f"The server exited with {process.returncode}:\n{log.read_text()}"
            )
        try:
            if requests.get(url + "/health", timeout=2).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.25)
    pytest.fail(f"The server did not answer /health in {START_SECONDS} s.")


def _stop(process: subprocess.Popen, port: int) -> None:
    """Stop the CLI as a service manager would (SIGTERM) and check it cleaned up."""
    process.send_signal(signal.SIGTERM)
    try:
        code = process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        pytest.fail(f"mlflow-trackio ui ignored SIGTERM for {STOP_SECONDS} s.")
    assert code == 0
    assert not port_is_open(port), "the server outlived mlflow-trackio ui"


def _log_everything(served: Served) -> None:
    client = MlflowClient(served.url)
    experiment_id = client.create_experiment(EXPERIMENT, tags={"team": "vision"})
    parent = client.create_run(experiment_id, run_name="parent")
    parent_id = parent.info.run_id
    child = client.create_run(
        experiment_id, run_name="child", tags={"mlflow.parentRunId": parent_id}
    )
    for run_id, scale in ((parent_id, 1.0), (child.info.run_id, 2.0)):
        client.log_batch(
            run_id,
            metrics=[Metric("loss", scale / (s + 1), 1_000 + s, s) for s in STEPS],
            params=[Param("lr", "0.1" if scale == 1.0 else "0.2")],
            tags=[RunTag("stage", "train")],
        )
    dataset = Dataset("digits", "abc123", "local", source="digits.csv")
    context = InputTag("mlflow.data.context", "training")
    client.log_inputs(parent_id, [DatasetInput(dataset, [context])])
    client.log_text(parent_id, "hello", "notes/readme.txt")
    client.set_terminated(child.info.run_id)
    client.set_terminated(parent_id)
    served.ids.update(
        experiment=experiment_id, parent=parent_id, child=child.info.run_id
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    """`mlflow-trackio ui` on a free port, always stopped at the end."""
    directory = tmp_path_factory.mktemp("served")
    log = directory.parent / "server.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    command = [*cli_command(), "ui", "--dir", str(directory), "--port", str(port)]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--workers", "1"], stdout=output, stderr=output, env=env
        )
    served = Served(f"http://127.0.0.1:{port}", directory)
    try:
        _wait_until_healthy(served.url, process, log)
        with pytest.MonkeyPatch.context() as patch:
            # A dead server should fail the test, not wait out MLflow's retries.
            patch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            _log_everything(served)
        yield served
    finally:
        _stop(process, port)


class TestExperimentPages:
    """The experiment list and experiment page find the logged experiment."""

    def test_search(self, served: Served) -> None:
        """POST experiments/search lists it with its tags."""
        reply = served.call(
            "POST",
            "/ajax-api/2.0/mlflow/experiments/search",
            json={"max_results": 25, "order_by": ["last_update_time DESC"]},
        )
        assert reply.status_code == 200
        found = {e["name"]: e for e in reply.json()["experiments"]}
        assert {"key": "team", "value": "vision"} in found[EXPERIMENT]["tags"]

    def test_get_by_name(self, served: Served) -> None:
        """GET experiments/get-by-name returns its id and served artifact root."""
        reply = served.call(
            "GET",
            "/ajax-api/2.0/mlflow/experiments/get-by-name",
            params={"experiment_name": EXPERIMENT},
        )
        assert reply.status_code == 200
        experiment = reply.json()["experiment"]
        assert experiment["experiment_id"] == served.ids["experiment"]
        assert experiment["artifact_location"].startswith("mlflow-artifacts:/")

    def test_datasets(self, served: Served) -> None:
        """POST experiments/search-datasets returns the parent's training set."""
        reply = served.call(
            "POST",
            "/ajax-api/2.0/mlflow/experiments/search-datasets",
            json={"experiment_ids": [served.ids["experiment"]]},
        )
        assert reply.status_code == 200
        assert reply.json()["dataset_summaries"] == [
            {
                "experiment_id": served.ids["experiment"],
                "name": "digits",
                "digest": "abc123",
                "context": "training",
            }
        ]


class TestRunPages:
    """The runs table, a run's page and its charts read what was logged."""

    @pytest.mark.parametrize(
        ("filter_string", "expected"),
        [
            ("params.lr = '0.1'", ["parent"]),
            ("metrics.loss < 0.3", ["parent"]),
            ("tags.stage = 'train'", ["child", "parent"]),
            ("attributes.run_name = 'child'", ["child"]),
        ],
    )
    def test_search_with_filter(
        self, served: Served, filter_string: str, expected: list[str]
    ) -> None:
        """POST runs/search filters as MLflow's SQL store does."""
        reply = served.call(
            "POST",
            "/ajax-api/2.0/mlflow/runs/search",
            json={
                "experiment_ids": [served.ids["experiment"]],
                "filter": filter_string,
                "run_view_type": "ACTIVE_ONLY",
                "order_by": ["attributes.start_time DESC"],
                "max_results": 100,
            },
        )
        assert reply.status_code == 200
        names = sorted(r["info"]["run_name"] for r in reply.json()["runs"])
        assert names == expected

    def test_get_run(self, served: Served) -> None:
        """GET runs/get returns status, params, tags, latest metric and inputs."""
        reply = served.call(
            "GET",
            "/ajax-api/2.0/mlflow/runs/get",
            params={"run_id": served.ids["child"]},
        )
        assert reply.status_code == 200
        run = reply.json()["run"]
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert run["info"]["status"] == "FINISHED"
        assert run["data"]["params"] == [{"key": "lr", "value": "0.2"}]
        assert tags["mlflow.parentRunId"] == served.ids["parent"]
        assert tags["stage"] == "train"
        assert run["data"]["metrics"][0]["step"] == STEPS[-1]

    def test_metric_history(self, served: Served) -> None:
        """GET metrics/get-history returns every step with its timestamp."""
        reply = served.call(
            "GET",
            "/ajax-api/2.0/mlflow/metrics/get-history",
            params={"run_id": served.ids["parent"], "metric_key": "loss"},
        )
        assert reply.status_code == 200
        points = [
            (m["step"], m["timestamp"], m["value"]) for m in reply.json()["metrics"]
        ]
        assert points == [(s, 1_000 + s, 1.0 / (s + 1)) for s in STEPS]

    def test_bulk_interval(self, served: Served) -> None:
        """GET get-history-bulk-interval samples both runs, keeping first and last."""
        reply = served.call(
            "GET",
            "/ajax-api/2.0/mlflow/metrics/get-history-bulk-interval",
            params={
                "run_ids": [served.ids["parent"], served.ids["child"]],
                "metric_key": "loss",
                "max_results": 3,
            },
        )
        assert reply.status_code == 200
        steps: dict[str, list[int]] = {}
        for metric in reply.json()["metrics"]:
            steps.setdefault(metric["run_id"], []).append(metric["step"])
        assert steps == {
            served.ids["parent"]: [0, 2, 4],
            served.ids["child"]: [0, 2, 4],
        }


class TestArtifacts:
    """Artifacts uploaded through the server land in the Trackio directory."""

    def test_list(self, served: Served) -> None:
        """GET artifacts/list shows the folder, then the file in it."""
        run_id = served.ids["parent"]
        top = served.call(
            "GET", "/ajax-api/2.0/mlflow/artifacts/list", params={"run_id": run_id}
        )
        inside = served.call(
            "GET",
            "/ajax-api/2.0/mlflow/artifacts/list",
            params={"run_id": run_id, "path": "notes"},
        )
        assert top.json()["files"] == [{"path": "notes", "is_dir": True}]
        assert inside.json()["files"] == [
            {"path": "notes/readme.txt", "is_dir": False, "file_size": 5}
        ]

    def test_download_and_location(self, served: Served) -> None:
        """GET get-artifact serves the file stored under <dir>/mlflow-artifacts."""
        run_id = served.ids["parent"]
        reply = served.call(
            "GET",
            "/get-artifact",
            params={"run_uuid": run_id, "path": "notes/readme.txt"},
        )
        stored = (
            served.directory
            / "mlflow-artifacts"
            / served.ids["experiment"]
            / run_id
            / "artifacts"
            / "notes"
            / "readme.txt"
        )
        assert reply.status_code == 200
        assert reply.text == "hello"
        assert stored.read_text() == "hello"


class TestOtherPages:
    """The UI's other pages answer, empty where Trackio keeps nothing."""

    def test_ui_root(self, served: Served) -> None:
        """GET / serves MLflow's single-page app."""
        reply = served.call("GET", "/")
        assert reply.status_code == 200
        assert reply.headers["Content-Type"].startswith("text/html")
        assert "<html" in reply.text.lower()

    def test_logged_models(self, served: Served) -> None:
        """POST logged-models/search answers with no models."""
        reply = served.call(
            "POST",
            "/ajax-api/2.0/mlflow/logged-models/search",
            json={"experiment_ids": [served.ids["experiment"]]},
        )
        assert reply.status_code == 200
        assert reply.json().get("models", []) == []

    @pytest.mark.parametrize(
        ("method", "path", "body"),
        [
            (
                "POST",
                "/ajax-api/3.0/mlflow/traces/search",
                {
                    "locations": [
                        {"type": "MLFLOW_EXPERIMENT", "mlflow_experiment": {}}
                    ],
                    "max_results": 100,
                },
            ),
            ("GET", "/ajax-api/2.0/mlflow/traces", None),
        ],
    )
    def test_traces(
        self, served: Served, method: str, path: str, body: dict | None
    ) -> None:
        """The v3 and v2 trace searches answer with no traces."""
        experiment_id = served.ids["experiment"]
        if body is None:
            reply = served.call(method, path, params={"experiment_ids": experiment_id})
        else:
            location = body["locations"][0]["mlflow_experiment"]
            location["experiment_id"] = experiment_id
            reply = served.call(method, path, json=body)
        assert reply.status_code == 200
        assert reply.json().get("traces", []) == []

    def test_registered_models(self, served: Served) -> None:
        """GET registered-models/search works through the sqlite registry store."""
        reply = served.call(
            "GET", "/ajax-api/2.0/mlflow/registered-models/search", params={}
        )
        assert reply.status_code == 200
        assert reply.json().get("registered_models", []) == []


class TestTrackioSide:
    """What the server wrote reads back through Trackio's own reader."""

    def test_only_the_experiment_is_a_project(self, served: Served) -> None:
        """The registry database is not mistaken for a Trackio project."""
        assert TrackioReader(served.directory).projects() == [EXPERIMENT]
        assert (served.directory / "mlflow-registry.sqlite").exists()

    def test_runs_config_and_metrics(self, served: Served) -> None:
        """Runs, params, the nested run's group and metric steps are Trackio's."""
        reader = TrackioReader(served.directory)
        configs = reader.run_configs(EXPERIMENT)
        names = sorted(r["name"] for r in reader.run_records(EXPERIMENT))
        values = reader.metric_values(EXPERIMENT, served.ids["parent"], "loss")
        assert names == ["child", "parent"]
        assert configs[served.ids["parent"]]["lr"] == "0.1"
        assert configs[served.ids["child"]]["_Group"] == "parent"
        assert [v["step"] for v in values] == STEPS


class TestBulkIntervalSampling:
    """The charts' sampling picks the same points as MLflow's sqlite store."""

    @pytest.mark.parametrize(
        ("steps", "max_results", "step_range"),
        [
            (list(range(5)), 3, (None, None)),
            (list(range(10)), 4, (None, None)),
            (list(range(10)), 20, (None, None)),
            (list(range(12)), 3, (2, 9)),
            ([0, 0, 0, 1, 1, 5, 5, 5, 9], 4, (None, None)),
            ([3, 3, 3, 3], 1, (None, None)),
        ],
    )
    def test_same_points_as_sqlite(
        self,
        tmp_path: Path,
        trackio_dir: Path,
        steps: list[int],
        max_results: int,
        step_range: tuple[int | None, int | None],
    ) -> None:
        """Both stores return the same (step, timestamp, value) points."""
        metrics = [Metric("m", i / 7, 1_000 + i, s) for i, s in enumerate(steps)]
        sampled = []
        for uri in (f"sqlite:///{tmp_path / 'm.db'}", f"trackio://{trackio_dir}"):
            client = MlflowClient(uri)
            run_id = client.create_run(client.create_experiment("e")).info.run_id
            client.log_batch(run_id, metrics=metrics)
            store = client._tracking_client.store
            points = store.get_metric_history_bulk_interval(
                [run_id], "m", max_results, *step_range
            )
            sampled.append([(p.step, p.timestamp, p.value) for p in points])
        assert sampled[0] == sampled[1]
