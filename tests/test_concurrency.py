"""Several processes and threads write one project while others read it.

Three writer processes with three threads each log different runs of one
experiment through MLflow's client, a reader process searches runs and reads
metric histories in a loop, and Trackio's own dashboard (``trackio show``, a
real server) serves the same directory and is polled over HTTP throughout.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlflow

from tests.trackio_reader import TrackioReader
from tests.workers.children import Children
from tests.workers.writer import loss, params_of, run_name

PROCESSES = 3
THREADS = 3
RUNS_PER_THREAD = 2
STEPS = 30
PROJECT = "shared"
_WAIT_S = 120


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _post(port: int, api: str, *args: Any) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/{api}",
        data=json.dumps({"args": list(args)}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    if "error" in answer:
        raise AssertionError(f"dashboard {api} failed: {answer['error']}")
    return answer["data"]


def _start_dashboard(children: Children, trackio_dir: Path) -> int:
    """Start ``trackio show`` on a free port and return once it answers."""
    port = _free_port()
    trackio = Path(sys.executable).with_name("trackio")
    dashboard = children.start_command(
        [str(trackio), "show", "--project", PROJECT],
        # `trackio show` opens a browser; `true` is one that does nothing.
        env={
            "TRACKIO_DIR": str(trackio_dir),
            "GRADIO_SERVER_PORT": str(port),
            "BROWSER": "true",
        },
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if dashboard.poll() is not None:
            raise AssertionError(f"trackio show exited: {dashboard.stderr.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=5):
                return port
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.2)
    raise AssertionError("trackio show did not answer within 60 s")


@dataclass
class _Poller:
    """Polls the dashboard's project summary and metric rows until stopped."""

    port: int
    polls: int = 0
    runs_seen: list[int] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                summary = _post(self.port, "get_project_summary", PROJECT)
                self.runs_seen.append(summary["num_runs"])
                wanted = [{"run_id": r["id"]} for r in summary["runs"][:3]]
                if wanted:
                    _post(self.port, "get_logs_batch", PROJECT, wanted)
                self.polls += 1
            except Exception as exc:
                self.failures.append(repr(exc))
            time.sleep(0.05)


def _finish(child: Any, name: str) -> str:
    try:
        out, err = child.communicate(timeout=_WAIT_S)
    except Exception:
        child.kill()
        raise
    assert child.returncode == 0, f"{name} exited {child.returncode}:\n{err}"
    return out


def _integrity(path: Path) -> str:
    connection = sqlite3.connect(path)
    try:
        return connection.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        connection.close()


def _expected_names() -> set[str]:
    return {
        run_name(w, t, r)
        for w in range(PROCESSES)
        for t in range(THREADS)
        for r in range(RUNS_PER_THREAD)
    }


class TestManyWritersOneProject:
    def test_nothing_is_lost_and_nobody_fails(
        self, children: Children, trackio_dir: Path
    ) -> None:
        """Every run, param and point written at once reads back exactly."""
        client = mlflow.MlflowClient(f"trackio://{trackio_dir}")
        experiment_id = client.create_experiment(PROJECT)
        port = _start_dashboard(children, trackio_dir)
        writers = [
            children.start(
                "writer.py",
                trackio_dir,
                experiment_id,
                worker,
                THREADS,
                RUNS_PER_THREAD,
                STEPS,
            )
            for worker in range(PROCESSES)
        ]
        reader = children.start("reader.py", trackio_dir, experiment_id)
        poller = _Poller(port)
        polling = threading.Thread(target=poller.run, daemon=True)
        polling.start()
        started = time.monotonic()
        for writer in writers:
            writer.stdin.write("go\n")
            writer.stdin.flush()
        for number, writer in enumerate(writers):
            _finish(writer, f"writer {number}")
        writing_s = time.monotonic() - started
        # Closing its stdin (which `communicate` does) tells the reader to stop.
        reading = json.loads(_finish(reader, "reader"))
        poller.stop.set()
        polling.join(timeout=60)
        print(
            f"concurrency: {PROCESSES} processes x {THREADS} threads wrote "
            f"{len(_expected_names())} runs in {writing_s:.1f} s; reader passes "
            f"{reading['passes']}, dashboard polls {poller.polls}"
        )

        runs = client.search_runs([experiment_id], max_results=1000)
        assert sorted(r.info.run_name for r in runs) == sorted(_expected_names())
        for run in runs:
            self._check_run(client, run)
        assert _integrity(trackio_dir / f"{PROJECT}.db") == "ok"
        assert reading["passes"] > 0
        assert poller.failures == []
        assert poller.polls > 0
        assert poller.runs_seen == sorted(poller.runs_seen)
        summary = _post(port, "get_project_summary", PROJECT)
        assert summary["num_runs"] == len(_expected_names())
        self._check_trackio_view(trackio_dir, runs)

    @staticmethod
    def _check_run(client: mlflow.MlflowClient, run: Any) -> None:
        worker, thread, index = (int(part[1:]) for part in run.info.run_name.split("-"))
        assert run.info.status == "FINISHED"
        assert run.data.params == params_of(worker, thread, index, STEPS)
        name = run.info.run_name
        history = client.get_metric_history(run.info.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [
            (step, loss(name, step)) for step in range(STEPS)
        ]
        for key in ("acc", "lr"):
            points = client.get_metric_history(run.info.run_id, key)
            assert sorted(m.step for m in points) == list(range(STEPS))
        assert run.data.metrics["loss"] == loss(name, STEPS - 1)

    @staticmethod
    def _check_trackio_view(trackio_dir: Path, runs: list[Any]) -> None:
        reader = TrackioReader(trackio_dir)
        records = reader.run_records(PROJECT)
        assert {r["id"] for r in records} == {r.info.run_id for r in runs}
        for run in runs[:3]:
            values = reader.metric_values(PROJECT, run.info.run_id, "loss")
            assert [v["step"] for v in values] == list(range(STEPS))
