"""Logging over the network: the central MLflow server and a Trackio server.

Both servers start once per workload (in `prepare`) and stop in `release`;
each repetition logs into a new experiment and run. `trackio+http://` returns
once a batch is in its spool on local disk and sends it from a thread, so its
timed region ends when the spool is drained: the points are on the server.
"""

from __future__ import annotations

import gc
import os
import secrets
import time
from typing import Any

from mlflow.tracking import MlflowClient

from benchmarks._backends import (
    MLFLOW_SERVER,
    TRACKIO,
    TRACKIO_SERVER,
    TRACKIO_SERVER_RETURNED,
    Backend,
    Session,
)
from benchmarks._servers import Server, start_mlflow_server, start_trackio_server
from benchmarks._workloads import (
    POINTS_PER_BATCH,
    STEPS_PER_BATCH,
    Sizes,
    Workload,
    check_count,
    metric_batch,
)

SERVER_WORKERS = 2
# The longest wait for the spool to reach the server; a figure needs all of it.
_DRAIN_TIMEOUT_S = 300.0


class RemoteLogBatch(Workload):
    """`MlflowClient.log_batch` of 1,000 metrics a call to a server."""

    def __init__(self, sizes: Sizes) -> None:
        self.calls = sizes.remote_calls
        self.points = self.calls * POINTS_PER_BATCH
        super().__init__(
            key="remote",
            title=f"MlflowClient.log_batch over the network, 1,000 metrics a "
            f"call, {self.calls:,} calls ({self.points:,} points)",
            unit="points/s",
            higher_is_better=True,
            backends=(TRACKIO, MLFLOW_SERVER, TRACKIO_SERVER),
            notes=[
                "Informational, no target. http://: MlflowClient on "
                f"`mlflow-trackio ui --workers {SERVER_WORKERS}` (MLflow's REST "
                "API, each call answered once stored). trackio+http://: "
                "`trackio show` with a write token; 'returned' stops the clock "
                "when the last log_batch returns (points in the local spool), "
                "'delivered' once the spool is drained to the server. "
                "trackio://: the local store, for reference. Servers on "
                "127.0.0.1, started once (untimed)."
            ],
        )
        self._saved_environment: dict[str, str | None] = {}

    def prepare(self, backend: Backend, session: Session) -> Any:
        if backend is MLFLOW_SERVER:
            directory = session.fresh_directory("mlflow-server")
            return start_mlflow_server(directory, SERVER_WORKERS)
        if backend is TRACKIO_SERVER:
            token = "bench-" + secrets.token_hex(16)
            directory = session.fresh_directory("trackio-server")
            server = start_trackio_server(directory, token)
            self._set_client_environment(session, token)
            return server
        return None

    def _set_client_environment(self, session: Session, token: str) -> None:
        spool = session.fresh_directory("spool")
        artifacts = session.fresh_directory("remote-artifacts")
        variables = {
            "TRACKIO_WRITE_TOKEN": token,
            "MLFLOW_TRACKIO_SPOOL_DIR": str(spool),
            "MLFLOW_TRACKIO_ARTIFACT_ROOT": artifacts.as_uri(),
        }
        for name, value in variables.items():
            self._saved_environment[name] = os.environ.get(name)
            os.environ[name] = value

    def measure(self, backend: Backend, session: Session, prepared: Any) -> float:
        name = session.unique_name("remote")
        if backend is TRACKIO:
            uri = session.new_store_uri(backend)
            rate = self._log(backend, uri, name)
            session.release_store(uri)
            return rate
        server: Server = prepared
        if backend is MLFLOW_SERVER:
            return self._log(backend, server.url, name)
        return self._log(backend, f"trackio+{server.url}", name)

    def _log(self, backend: Backend, uri: str, experiment: str) -> float:
        client = MlflowClient(uri)
        run_id = client.create_run(client.create_experiment(experiment)).info.run_id
        batches = [
            metric_batch(call * STEPS_PER_BATCH, STEPS_PER_BATCH)
            for call in range(self.calls)
        ]
        gc.collect()
        started = time.perf_counter()
        for batch in batches:
            client.log_batch(run_id, metrics=batch)
        elapsed = time.perf_counter() - started
        if backend is TRACKIO_SERVER:
            self.side_samples.setdefault(TRACKIO_SERVER_RETURNED, []).append(
                self.points / elapsed
            )
            _wait_for_spool(uri)
            elapsed = time.perf_counter() - started
        history = client.get_metric_history(run_id, "loss")
        check_count(backend.label, len(history), self.calls * STEPS_PER_BATCH)
        return self.points / elapsed

    def release(self, backend: Backend, session: Session, prepared: Any) -> None:
        if prepared is None:
            return
        try:
            if backend is TRACKIO_SERVER:
                _close_remote_stores()
        finally:
            prepared.stop()
            self._restore_client_environment()

    def _restore_client_environment(self) -> None:
        for name, value in self._saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        self._saved_environment.clear()


def _wait_for_spool(uri: str) -> None:
    """Return once the store's spool has sent every line to the server."""
    from mlflow.tracking._tracking_service import utils

    spool = utils._get_store(uri).backend.spool
    if not spool.wait_drained(_DRAIN_TIMEOUT_S):
        raise RuntimeError(
            f"The spool of {uri} was not drained within {_DRAIN_TIMEOUT_S:.0f} s: "
            f"{spool.describe_pending()}."
        )


def _close_remote_stores() -> None:
    """Send what the remote stores hold back, stop their threads, forget them."""
    from mlflow.tracking._tracking_service import utils

    from sdk._backends import _remote

    # Every backend, not only the cached one: releasing a trackio:// store
    # clears MLflow's whole store cache, so a repetition may have made a new
    # one. Closing waits for the spool while the server still answers.
    _remote.close_all_backends()
    utils._tracking_store_registry._get_store_with_resolved_uri.cache_clear()
