"""The store on a real Trackio server (``trackio+http://``), started by the tests.

Each server is ``trackio show`` in a child process, bound to 127.0.0.1 on a
free port, with its own directory and a write token from
``TRACKIO_WRITE_TOKEN``. What the clients wrote is read back twice: through
MLflow on the ``trackio+http`` URI (the server's read API) and through
Trackio's own reader on the server's directory.
"""

from __future__ import annotations

import http.server
import logging
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import mlflow
import pytest
import requests
from mlflow import MlflowClient
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from tests.test_server import free_port
from tests.trackio_reader import TrackioReader
from tests.workers import remote_writer
from tests.workers.children import Children

TOKEN = "tok-" + secrets.token_hex(16)
START_SECONDS = 60
WORKER_SECONDS = 90
# The run-start warning about what a Trackio server cannot keep.
CANNOT_KEEP = "keeps no MLflow metric timestamps"


class TrackioServer:
    """``trackio show`` on 127.0.0.1, which can be killed and started again."""

    def __init__(self, directory: Path, token: str = TOKEN) -> None:
        self.directory = directory
        self.token = token
        self.port = free_port()
        self.log = directory.parent / f"{directory.name}-server.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def uri(self) -> str:
        return f"trackio+{self.url}"

    def start(self) -> None:
        """Start the server and return once it answers ``GET /version``."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update(
            TRACKIO_DIR=str(self.directory),
            TRACKIO_WRITE_TOKEN=self.token,
            GRADIO_SERVER_PORT=str(self.port),
            # Only the one port: a busy port must fail, not move the server.
            GRADIO_NUM_PORTS="1",
            # `trackio show` opens a browser; `true` is one that does nothing.
            BROWSER="true",
        )
        command = [str(Path(sys.executable).with_name("trackio")), "show"]
        with self.log.open("ab") as output:
            self.process = subprocess.Popen(
                [*command, "--host", "127.0.0.1"], stdout=output, stderr=output, env=env
            )
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"trackio show exited:\n{self.log.read_text()}")
            try:
                requests.get(f"{self.url}/version", timeout=2).raise_for_status()
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        pytest.fail(f"trackio show did not answer within {START_SECONDS} s.")

    def kill(self) -> None:
        """Kill the server at once (SIGKILL), as a crash or an outage would."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=30)

    def stop(self) -> None:
        """Stop the server, politely first."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()

    def reader(self) -> TrackioReader:
        return TrackioReader(self.directory)


def _started(directory: Path) -> Iterator[TrackioServer]:
    directory.mkdir()
    server = TrackioServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrackioServer]:
    """One server for the tests that do not stop it; each uses its own project."""
    yield from _started(tmp_path_factory.mktemp("shared") / "server")


@pytest.fixture
def lone_server(tmp_path: Path) -> Iterator[TrackioServer]:
    """A server of the test's own, for tests that kill it."""
    yield from _started(tmp_path / "server")


@pytest.fixture(autouse=True)
def client_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Token, spool and artifact root of this test; backends closed afterwards."""
    from sdk._autolog import register_store
    from sdk._backends import _remote

    monkeypatch.setenv("TRACKIO_WRITE_TOKEN", TOKEN)
    monkeypatch.setenv("MLFLOW_TRACKIO_SPOOL_DIR", str(tmp_path / "spool"))
    monkeypatch.setenv("MLFLOW_TRACKIO_ARTIFACT_ROOT", (tmp_path / "art").as_uri())
    monkeypatch.setenv("MLFLOW_TRACKIO_DRAIN_TIMEOUT", "30")
    _remote._warned.clear()
    register_store()
    yield
    _remote.close_all_backends()


def _writer_env(tmp_path: Path) -> dict[str, str]:
    return {
        "TRACKIO_WRITE_TOKEN": TOKEN,
        "MLFLOW_TRACKIO_SPOOL_DIR": str(tmp_path / "spool"),
        "MLFLOW_TRACKIO_ARTIFACT_ROOT": (tmp_path / "art").as_uri(),
        "PYTHONPATH": os.pathsep.join(
            p
            for p in (
                str(Path(__file__).parents[1] / "src"),
                os.environ.get("PYTHONPATH"),
            )
            if p
        ),
    }


def _start_writer(
    children: Children,
    tmp_path: Path,
    server: TrackioServer,
    experiment: str,
    worker: int,
    steps: int,
    *extra: str,
) -> subprocess.Popen[str]:
    return children.start(
        "remote_writer.py",
        server.uri,
        experiment,
        worker,
        steps,
        *extra,
        env=_writer_env(tmp_path),
    )


def _finish(writer: subprocess.Popen[str]) -> str:
    out, err = writer.communicate(timeout=WORKER_SECONDS)
    assert writer.returncode == 0, err
    return out


def _history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    points = client.get_metric_history(run_id, key)
    return sorted((m.step, m.value) for m in points)


def _expected(worker: int, key: str, steps: range) -> list[tuple[int, float]]:
    return [(s, remote_writer.metrics_at(worker, s)[key]) for s in steps]


class TestConcurrentClients:
    """Four processes logging into one project at once lose and double nothing."""

    WORKERS = 4
    STEPS = 150

    @pytest.fixture(scope="class")
    def logged(
        self, server: TrackioServer, tmp_path_factory: pytest.TempPathFactory
    ) -> dict[int, str]:
        """Run the four writers to the end; return each worker's run id."""
        tmp_path = tmp_path_factory.mktemp("writers")
        children = Children()
        try:
            writers = [
                _start_writer(children, tmp_path, server, "fan-in", w, self.STEPS)
                for w in range(self.WORKERS)
            ]
            for writer in writers:
                writer.stdin.write("go\n")
                writer.stdin.flush()
            outputs = [_finish(writer) for writer in writers]
        finally:
            children.stop_all()
        return {w: out.split()[-1] for w, out in enumerate(outputs)}

    def test_mlflow_reads_every_run_exactly(
        self, server: TrackioServer, logged: dict[int, str]
    ) -> None:
        """search_runs, get_run and metric history on the URI give exact counts."""
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("fan-in")
        runs = client.search_runs([experiment.experiment_id])
        assert sorted(r.info.run_id for r in runs) == sorted(logged.values())
        for worker, run_id in logged.items():
            run = client.get_run(run_id)
            assert run.info.status == "FINISHED"
            assert run.info.run_name == remote_writer.run_name(worker)
            assert run.data.params == remote_writer.params_of(worker)
            last = remote_writer.metrics_at(worker, self.STEPS - 1)
            assert run.data.metrics == last
            for key in ("loss", "acc"):
                assert _history(client, run_id, key) == _expected(
                    worker, key, range(self.STEPS)
                )

    def test_search_filters_on_the_server_data(
        self, server: TrackioServer, logged: dict[int, str]
    ) -> None:
        """A filter and an order over params and metrics pick the right runs."""
        client = MlflowClient(server.uri)
        experiment = client.get_experiment_by_name("fan-in")
        runs = client.search_runs(
            [experiment.experiment_id],
            filter_string="metrics.loss >= 2 and params.optimizer = 'sgd'",
            order_by=["metrics.loss DESC"],
        )
        assert [r.info.run_id for r in runs] == [logged[3], logged[2]]

    def test_trackio_reads_every_row_exactly(
        self, server: TrackioServer, logged: dict[int, str]
    ) -> None:
        """Trackio's reader on the server's directory sees the same runs and rows."""
        reader = server.reader()
        records = reader.run_records("fan-in")
        assert sorted(r["id"] for r in records) == sorted(logged.values())
        configs = reader.run_configs("fan-in")
        for worker, run_id in logged.items():
            values = reader.metric_values("fan-in", run_id, "loss")
            expected = _expected(worker, "loss", range(self.STEPS))
            assert sorted((v["step"], v["value"]) for v in values) == expected
            assert configs[run_id]["worker"] == str(worker)
            # One row per step, plus the empty row that makes the run visible.
            assert len(reader.logs("fan-in", run_id)) == self.STEPS + 1

    def test_no_token_in_stored_data(
        self, server: TrackioServer, logged: dict[int, str]
    ) -> None:
        """The write token is in no tag, param or config on the server."""
        client = MlflowClient(server.uri)
        for run_id in logged.values():
            run = client.get_run(run_id)
            assert TOKEN not in repr(run.data.tags)
            assert TOKEN not in repr(run.data.params)
        assert TOKEN not in repr(server.reader().run_configs("fan-in"))


def _log_steps(client: MlflowClient, run_id: str, steps: range) -> None:
    for step in steps:
        now = int(time.time() * 1000)
        metrics = [
            Metric(k, v, now, step)
            for k, v in remote_writer.metrics_at(0, step).items()
        ]
        client.log_batch(run_id, metrics=metrics)


def _spool_files(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "spool").rglob("*.jsonl"))


class TestServerOutage:
    """A server that goes away and comes back loses and doubles nothing."""

    def test_stopped_mid_run(
        self,
        lone_server: TrackioServer,
        caplog: pytest.LogCaptureFixture,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """Writes spool while it is down, a warning says how many, then all arrive."""
        client = MlflowClient(lone_server.uri)
        experiment_id = client.create_experiment("outage")
        with pytest.warns(RuntimeWarning, match=CANNOT_KEEP):
            run_id = client.create_run(experiment_id, run_name="through").info.run_id
        client.log_param(run_id, "lr", "0.1")
        _log_steps(client, run_id, range(0, 20))
        lone_server.kill()
        with caplog.at_level(logging.WARNING, logger="sdk"):
            _log_steps(client, run_id, range(20, 40))
            client.set_tag(run_id, "phase", "offline")
            monkeypatch.setenv("MLFLOW_TRACKIO_DRAIN_TIMEOUT", "1")
            client.set_terminated(run_id)
        assert "is unreachable" in caplog.text
        assert "rows (" in caplog.text
        assert "did not take a run's last writes within 1 s" in caplog.text

        lone_server.start()
        monkeypatch.setenv("MLFLOW_TRACKIO_DRAIN_TIMEOUT", "30")
        assert _history(client, run_id, "loss") == _expected(0, "loss", range(40))
        _remote_close()
        fresh = MlflowClient(lone_server.uri)
        run = fresh.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["phase"] == "offline"
        assert run.data.params == {"lr": "0.1"}
        assert _history(fresh, run_id, "acc") == _expected(0, "acc", range(40))
        rows = lone_server.reader().metric_values("outage", run_id, "loss")
        assert len(rows) == 40

    def test_later_process_replays(
        self,
        lone_server: TrackioServer,
        children: Children,
        tmp_path: Path,
    ) -> None:
        """A killed writer's spool goes out with the next process, each row once."""
        lone_server.kill()
        writer = _start_writer(
            children, tmp_path, lone_server, "replayed", 1, 30, "--keep-running"
        )
        writer.stdin.write("go\n")
        writer.stdin.flush()
        line = writer.stdout.readline()
        assert line.startswith("logged "), writer.stderr.read()
        run_id = line.split()[1]
        writer.kill()
        writer.wait(timeout=30)
        # A copy of the orphan stands for lines sent but not acknowledged
        # before a crash: the server gets every row twice.
        (orphan,) = _spool_files(tmp_path)
        twin = orphan.with_name("z" + orphan.name)
        shutil.copy(orphan, twin)

        lone_server.start()
        from sdk import TrackioStore

        store = TrackioStore(lone_server.uri)
        assert store.backend.spool.wait_drained(30)
        client = MlflowClient(lone_server.uri)
        run = client.get_run(run_id)
        assert run.info.status == "RUNNING"
        assert run.data.params == remote_writer.params_of(1)
        assert _history(client, run_id, "loss") == _expected(1, "loss", range(30))
        rows = lone_server.reader().metric_values("replayed", run_id, "loss")
        assert len(rows) == 30
        assert _spool_files(tmp_path) == []


def _remote_close() -> None:
    from sdk._backends import _remote

    _remote.close_all_backends()
    from mlflow.tracking._tracking_service import utils

    utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()


class TestWriteToken:
    """A missing or wrong token fails the first write, naming no token."""

    @pytest.mark.parametrize(
        ("token", "in_uri"),
        [
            (None, False),
            ("wrong-" + secrets.token_hex(8), False),
            ("wrong-" + secrets.token_hex(8), True),
        ],
        ids=["missing", "wrong", "wrong-in-uri"],
    )
    def test_first_write_fails(
        self,
        server: TrackioServer,
        token: str | None,
        in_uri: bool,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """create_experiment raises a clear MlflowException; nothing is stored."""
        monkeypatch.delenv("TRACKIO_WRITE_TOKEN")
        uri = server.uri
        if token and in_uri:
            uri += f"?write_token={token}"
        elif token:
            monkeypatch.setenv("TRACKIO_WRITE_TOKEN", token)
        client = MlflowClient(uri)
        with (
            caplog.at_level(logging.DEBUG),
            pytest.raises(MlflowException, match="write token") as raised,
        ):
            client.create_experiment(f"refused-{token is None}")
        assert raised.value.error_code == "PERMISSION_DENIED"
        for secret in (token, TOKEN):
            if secret:
                assert secret not in str(raised.value)
                assert secret not in caplog.text
        assert f"refused-{token is None}" not in server.reader().projects()

    def test_token_in_uri_stays_secret(
        self,
        server: TrackioServer,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A token given in the URI works and shows in no log, tag or param."""
        monkeypatch.delenv("TRACKIO_WRITE_TOKEN")
        client = MlflowClient(f"{server.uri}?write_token={TOKEN}")
        with caplog.at_level(logging.DEBUG):
            experiment_id = client.create_experiment("token-in-uri")
            with pytest.warns(RuntimeWarning, match=CANNOT_KEEP):
                run_id = client.create_run(experiment_id).info.run_id
            client.log_param(run_id, "lr", "0.1")
            client.set_terminated(run_id)
            run = client.get_run(run_id)
        assert run.data.params == {"lr": "0.1"}
        assert TOKEN not in caplog.text
        assert TOKEN not in repr(run)


class TestAutolog:
    """sdk.autolog() with sdk.init(server_url=...) trains into the server."""

    def test_sklearn_fit(
        self,
        server: TrackioServer,
        monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A tiny scikit-learn fit lands on the server with params and metrics."""
        sklearn = pytest.importorskip("sklearn.linear_model")
        import numpy

        import sdk

        monkeypatch.setenv("MLFLOW_AUTOLOGGING_TESTING", "true")
        sdk.init(project="autologged", server_url=server.url)
        sdk.autolog()
        features = numpy.array([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1], [0.1, 0.8]] * 5)
        labels = numpy.array([0, 1, 1, 0] * 5)
        with caplog.at_level(logging.WARNING):
            sklearn.LogisticRegression(C=0.5).fit(features, labels)
        # Inside autolog, MLflow turns warnings into log lines.
        assert CANNOT_KEEP in caplog.text
        run_id = mlflow.last_active_run().info.run_id
        sdk.autolog(disable=True)

        client = MlflowClient(server.uri)
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["C"] == "0.5"
        assert run.data.metrics["training_accuracy_score"] == 1.0
        (dataset,) = run.inputs.dataset_inputs
        assert dataset.tags[0].value == "train"
        experiment = client.get_experiment(run.info.experiment_id)
        assert experiment.name == "autologged"
        config = server.reader().run_configs("autologged")[run_id]
        assert config["C"] == "0.5"


class _Unavailable(http.server.BaseHTTPRequestHandler):
    """A proxy whose Trackio server is restarting: 503 to everything."""

    def _answer(self) -> None:
        self.send_response(503)
        self.send_header("content-length", "0")
        self.end_headers()

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake_server(tmp_path: Path) -> Iterator[http.server.HTTPServer]:
    """An HTTP server on 127.0.0.1 answering 503, in a thread of the test."""
    served = http.server.HTTPServer(("127.0.0.1", 0), _Unavailable)
    thread = threading.Thread(target=served.serve_forever, daemon=True)
    thread.start()
    yield served
    served.shutdown()
    served.server_close()


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )
    return key, cert


class TestFaultsThatNeedAFake:
    """Answers a real Trackio server does not give, from a small server here."""

    def test_gateway_error_spools(
        self, fake_server: http.server.HTTPServer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A 503 at the first write means "down, try later", not "not Trackio"."""
        uri = f"trackio+http://127.0.0.1:{fake_server.server_port}"
        client = MlflowClient(uri)
        with caplog.at_level(logging.WARNING, logger="sdk"):
            experiment_id = client.create_experiment("behind-a-proxy")
            with pytest.warns(RuntimeWarning, match=CANNOT_KEEP):
                client.create_run(experiment_id)
            spool = client._tracking_client.store.backend.spool
            assert not spool.wait_drained(1)
        assert spool.refused is None
        assert spool.pending()[0] == 1
        assert "is unreachable (HTTP 503)" in caplog.text

    def test_https_verifies_certificates(
        self, tmp_path: Path, fake_server: http.server.HTTPServer
    ) -> None:
        """A self-signed certificate is a clear error at the first write."""
        if shutil.which("openssl") is None:
            pytest.skip("needs the openssl command to make a certificate")
        key, cert = _self_signed(tmp_path)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        fake_server.socket = context.wrap_socket(fake_server.socket, server_side=True)
        uri = f"trackio+https://127.0.0.1:{fake_server.server_port}"
        with pytest.raises(MlflowException, match="certificate .* did not verify"):
            MlflowClient(uri).create_experiment("untrusted")
