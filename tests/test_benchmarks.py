"""The benchmark suite runs end to end at tiny sizes, so that it cannot rot.

No timing is judged here (a loaded CI machine says nothing about speed):
the smoke run checks that every workload ran on every backend it names and
reported a positive figure, and that the raw figures were written.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKLOADS = {
    "import": {"entry_point", "entry_point_hidden", "entry_point_load"},
    "fluent": {"noop", "trackio", "sqlite", "file", "trackio_api"},
    "log_batch": {"noop", "trackio", "sqlite", "file", "trackio_api", "bare_sqlite"},
    "history": {"noop", "trackio", "sqlite", "file", "trackio_api"},
    "search": {"noop", "trackio", "sqlite", "file"},
    "autolog": {"no_tracking", "noop", "trackio", "sqlite", "file"},
    "memory": {"trackio", "trackio_api"},
    "remote": {"trackio", "mlflow_server", "trackio_http", "trackio_http_returned"},
}


class TestQuickRun:
    def test_every_workload_reports_every_backend(self, tmp_path: Path) -> None:
        """`python -m benchmarks --quick` prints its tables and writes its JSON."""
        done = subprocess.run(
            [sys.executable, "-m", "benchmarks", "--quick", "--output", str(tmp_path)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )

        assert done.returncode == 0, done.stderr[-3000:]
        assert "### Targets for trackio://" in done.stdout
        [path] = tmp_path.glob("*.json")
        figures = json.loads(path.read_text())
        assert figures["run"]["quick"] is True
        assert set(figures["workloads"]) == set(WORKLOADS)
        for key, backends in WORKLOADS.items():
            reported = figures["workloads"][key]["backends"]
            assert backends <= set(reported), (key, sorted(reported))
            for backend in backends:
                assert reported[backend]["samples"], (key, backend)
        for backend in ("noop", "trackio", "sqlite"):
            assert figures["workloads"]["fluent"]["backends"][backend]["median"] > 0
        assert {row["result"] for row in figures["targets"]} == {"not judged"}
