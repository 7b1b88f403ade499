"""Many machines, one Trackio: a central MLflow server over one Trackio directory.

The topology of docs/deployment.md, on one machine: `mlflow-trackio ui` with
several server workers, and four client processes that set only
``MLFLOW_TRACKING_URI=http://127.0.0.1:PORT`` and call `sdk.autolog()`. They
log at once; afterwards every count is exact through MLflow's REST API and
through Trackio's own reader, the artifacts are where the server put them, and
MLflow's semantics hold through the server.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.test_concurrency import _post, _start_dashboard
from tests.test_server import (
    _stop,
    _wait_until_healthy,
    cli_command,
    free_port,
)
from tests.trackio_reader import TrackioReader
from tests.workers.central_client import loss, note, params_of, run_name
from tests.workers.children import Children

pytest.importorskip("flask", reason="needs MLflow's server: mlflow-trackio[server]")
pytest.importorskip("sklearn", reason="the clients autolog scikit-learn")

PROJECT = "central"
SERVER_WORKERS = 3
CLIENTS = 4
RUNS = 2
STEPS = 50
CLIENT_SECONDS = 120
API = "/api/2.0/mlflow"


@dataclass
class Central:
    """The running server, its directory, and what the clients logged."""

    url: str
    directory: Path
    elsewhere: Path
    server_pid: int
    runs: list[dict[str, Any]] = field(default_factory=list)

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        return requests.request(method, self.url + API + path, timeout=30, **kwargs)

    @property
    def experiment_id(self) -> str:
        return self.runs[0]["info"]["experiment_id"]

    def manual_runs(self) -> dict[str, dict[str, Any]]:
        """Return the hand-logged runs by name."""
        return {
            run["info"]["run_name"]: run
            for run in self.runs
            if _tags(run).get("kind") == "manual"
        }


def _tags(run: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}


def _params(run: dict[str, Any]) -> dict[str, str]:
    return {param["key"]: param["value"] for param in run["data"].get("params", [])}


def _expected_names() -> list[str]:
    return sorted(
        run_name(client, index) for client in range(CLIENTS) for index in range(RUNS)
    )


def _run_clients(children: Children, url: str, elsewhere: Path) -> float:
    """Start every client at once and return how long they took to finish."""
    # TRACKIO_DIR points elsewhere so that data written locally by mistake,
    # rather than through the server, is found there.
    env = {"MLFLOW_TRACKING_URI": url, "TRACKIO_DIR": str(elsewhere)}
    env["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    clients = [
        children.start("central_client.py", PROJECT, client, RUNS, STEPS, env=env)
        for client in range(CLIENTS)
    ]
    started = time.monotonic()
    for client in clients:
        client.stdin.write("go\n")
        client.stdin.flush()
    for number, client in enumerate(clients):
        try:
            _, stderr = client.communicate(timeout=CLIENT_SECONDS)
        except subprocess.TimeoutExpired:
            pytest.fail(f"client {number} did not finish in {CLIENT_SECONDS} s")
        assert client.returncode == 0, f"client {number} failed:\n{stderr}"
    return time.monotonic() - started


def _search_all_runs(url: str) -> list[dict[str, Any]]:
    experiments = requests.post(
        url + API + "/experiments/search",
        json={"max_results": 100, "filter": f"name = '{PROJECT}'"},
        timeout=30,
    ).json()["experiments"]
    reply = requests.post(
        url + API + "/runs/search",
        json={
            "experiment_ids": [e["experiment_id"] for e in experiments],
            "max_results": 1000,
        },
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()["runs"]


@pytest.fixture(scope="module")
def central(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Central]:
    """The server with several workers, after four clients logged through it."""
    directory = tmp_path_factory.mktemp("central")
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    log = directory.parent / "central-server.log"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [*cli_command(), "ui", "--dir", str(directory), "--port", str(port)]
    command += ["--workers", str(SERVER_WORKERS)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    with log.open("wb") as output:
        server = subprocess.Popen(command, stdout=output, stderr=output, env=env)
    children = Children()
    try:
        _wait_until_healthy(url, server, log)
        seconds = _run_clients(children, url, elsewhere)
        print(
            f"central: {CLIENTS} clients x {RUNS + 1} runs through "
            f"{SERVER_WORKERS} server workers in {seconds:.1f} s"
        )
        central = Central(url, directory, elsewhere, server.pid)
        central.runs = _search_all_runs(url)
        yield central
    finally:
        children.stop_all()
        _stop(server, port)


class TestThroughMlflow:
    """MLflow's REST API returns exactly what the four clients logged."""

    def test_one_experiment(self, central: Central) -> None:
        """Four clients selecting the project at once made one experiment."""
        reply = central.call("POST", "/experiments/search", json={"max_results": 100})
        names = sorted(e["name"] for e in reply.json()["experiments"])
        assert names.count(PROJECT) == 1
        assert {r["info"]["experiment_id"] for r in central.runs} == {
            central.experiment_id
        }

    def test_runs(self, central: Central) -> None:
        """Every hand-logged and autologged run is there once, finished."""
        manual = central.manual_runs()
        autologged = [r for r in central.runs if r not in manual.values()]
        assert len(central.runs) == CLIENTS * (RUNS + 1)
        assert sorted(manual) == _expected_names()
        assert len(autologged) == CLIENTS
        assert {r["info"]["status"] for r in central.runs} == {"FINISHED"}

    def test_params_and_tags(self, central: Central) -> None:
        """Each hand-logged run has exactly its params and its tags."""
        for client in range(CLIENTS):
            for index in range(RUNS):
                run = central.manual_runs()[run_name(client, index)]
                assert _params(run) == params_of(client, index)
                assert _tags(run)["client"] == str(client)

    def test_metric_history(self, central: Central) -> None:
        """get-history returns every step of both metrics, with its value."""
        for name, run in central.manual_runs().items():
            for key in ("loss", "acc"):
                reply = central.call(
                    "GET",
                    "/metrics/get-history",
                    params={"run_id": run["info"]["run_id"], "metric_key": key},
                )
                assert reply.status_code == 200, reply.text
                points = sorted(
                    (m["step"], m["value"]) for m in reply.json()["metrics"]
                )
                expected = [
                    (s, loss(name, s) if key == "loss" else s / STEPS)
                    for s in range(STEPS)
                ]
                assert points == expected

    def test_autologged_runs(self, central: Central) -> None:
        """scikit-learn's autolog logged the estimator's params and its score."""
        from sklearn.linear_model import LogisticRegression

        expected = {
            key: str(v)
            for key, v in LogisticRegression(max_iter=50).get_params().items()
        }
        for run in central.runs:
            if _tags(run).get("kind") == "manual":
                continue
            assert _tags(run)["estimator_name"] == "LogisticRegression"
            assert _params(run) == expected
            metrics = {m["key"] for m in run["data"]["metrics"]}
            assert "training_accuracy_score" in metrics


class TestArtifacts:
    """Artifacts logged by the clients went through the server to its root."""

    def test_listed(self, central: Central) -> None:
        """artifacts/list shows each run's note with its size."""
        for name, run in central.manual_runs().items():
            reply = central.call(
                "GET",
                "/artifacts/list",
                params={"run_id": run["info"]["run_id"], "path": "notes"},
            )
            assert reply.json()["files"] == [
                {
                    "path": "notes/run.txt",
                    "is_dir": False,
                    "file_size": len(note(name).encode()),
                }
            ]

    def test_stored_under_destination(self, central: Central) -> None:
        """Each note is a file under <dir>/mlflow-artifacts, as logged."""
        root = central.directory / "mlflow-artifacts" / central.experiment_id
        for name, run in central.manual_runs().items():
            stored = root / run["info"]["run_id"] / "artifacts" / "notes" / "run.txt"
            assert stored.read_text() == note(name)


class TestThroughTrackio:
    """Trackio's own reader sees the same runs, params and points."""

    def test_only_the_project(self, central: Central) -> None:
        """The directory holds one project; nothing was written client-side."""
        assert TrackioReader(central.directory).projects() == [PROJECT]
        assert list(central.elsewhere.glob("*.db")) == []

    def test_runs_configs_and_metrics(self, central: Central) -> None:
        """Run records, configs and every metric point match what was logged."""
        reader = TrackioReader(central.directory)
        records = reader.run_records(PROJECT)
        configs = reader.run_configs(PROJECT)
        assert len(records) == CLIENTS * (RUNS + 1)
        for name, run in central.manual_runs().items():
            run_id = run["info"]["run_id"]
            config = {k: configs[run_id][k] for k in params_of(0, 0)}
            values = reader.metric_values(PROJECT, run_id, "loss")
            assert config == _params(run)
            assert [(v["step"], v["value"]) for v in values] == [
                (s, loss(name, s)) for s in range(STEPS)
            ]

    def test_integrity(self, central: Central) -> None:
        """SQLite finds the project file intact."""
        path = central.directory / f"{PROJECT}.db"
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as connection:
            assert connection.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


class TestMlflowSemantics:
    """The server answers bad writes as MLflow's own stores do."""

    def test_param_with_another_value(self, central: Central) -> None:
        """Re-logging a param with another value is INVALID_PARAMETER_VALUE."""
        run = central.manual_runs()[run_name(0, 0)]
        reply = central.call(
            "POST",
            "/runs/log-parameter",
            json={"run_id": run["info"]["run_id"], "key": "lr", "value": "0.5"},
        )
        assert reply.status_code == 400
        assert reply.json()["error_code"] == "INVALID_PARAMETER_VALUE"
        assert "Changing param values is not allowed" in reply.json()["message"]

    def test_param_with_the_same_value(self, central: Central) -> None:
        """Re-logging a param with its value is accepted and changes nothing."""
        run = central.manual_runs()[run_name(1, 0)]
        run_id = run["info"]["run_id"]
        body = {"run_id": run_id, "key": "lr", "value": "0.01"}
        reply = central.call("POST", "/runs/log-parameter", json=body)
        after = central.call("GET", "/runs/get", params={"run_id": run_id})
        assert reply.status_code == 200
        assert _params(after.json()["run"]) == params_of(1, 0)

    def test_unknown_run(self, central: Central) -> None:
        """A run id nobody created is RESOURCE_DOES_NOT_EXIST."""
        reply = central.call("GET", "/runs/get", params={"run_id": "0" * 32})
        assert reply.status_code == 404
        assert reply.json()["error_code"] == "RESOURCE_DOES_NOT_EXIST"


def _descendants(pid: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, queue = [], [pid]
    while queue:
        for child in parents.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _opened(pid: int, path: Path) -> bool:
    try:
        links = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
    except OSError:
        return False
    return str(path) in links


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
class TestWorkers:
    """Several server processes wrote to the project file at once."""

    def test_several_processes_hold_the_project(self, central: Central) -> None:
        """More than one server process has its own connection to the file."""
        path = (central.directory / f"{PROJECT}.db").resolve()
        holders = [p for p in _descendants(central.server_pid) if _opened(p, path)]
        assert len(holders) >= 2


class TestDashboard:
    """`trackio show` on the server's directory lists the project."""

    def test_lists_the_project(self, central: Central) -> None:
        """The dashboard's project list and summary include every run."""
        children = Children()
        try:
            port = _start_dashboard(children, central.directory)
            summary = _post(port, "get_project_summary", PROJECT)
            assert PROJECT in _post(port, "get_all_projects")
            assert summary["num_runs"] == CLIENTS * (RUNS + 1)
        finally:
            children.stop_all()
