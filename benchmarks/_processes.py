"""Workloads measured in fresh child processes: `import mlflow` and peak memory.

A child process starts with nothing imported and nothing allocated, which is
the only way to see what the entry point adds to `import mlflow` and how far
the resident set grows while a million points are logged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks._backends import (
    ENTRY_POINT,
    ENTRY_POINT_LOAD,
    HIDDEN_ENTRY_POINT,
    TRACKIO,
    TRACKIO_API,
    Backend,
    Session,
)
from benchmarks._workloads import Sizes, Workload

REPOSITORY = Path(__file__).resolve().parents[1]
_CHILD_TIMEOUT_S = 300

# The child times `import mlflow` itself, so that interpreter start-up (the
# same either way) adds no noise. With `sys.modules["sdk"] = None` the entry
# point fails to load; MLflow warns (silenced by -W ignore) and carries on.
# It also times each entry point's `load()` alone, a figure without the noise
# of subtracting two imports of about a second each.
_IMPORT_CHILD = """\
import json, sys, time
from importlib import metadata
{hide}
loading = []
original_load = metadata.EntryPoint.load
def timed_load(self):
    started = time.perf_counter()
    try:
        return original_load(self)
    finally:
        if self.value.startswith("sdk."):
            loading.append(time.perf_counter() - started)
metadata.EntryPoint.load = timed_load
started = time.perf_counter()
import mlflow
elapsed = time.perf_counter() - started
print(json.dumps({{
    "seconds": elapsed,
    "entry_point_load_seconds": sum(loading),
    "trackio_imported": "trackio" in sys.modules,
    "store_module_loaded": sys.modules.get("sdk._store") is not None,
}}))
"""


def _run_child(arguments: list[str], cwd: Path) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, "-W", "ignore", *arguments],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=_CHILD_TIMEOUT_S,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(
            f"Child process {arguments[:3]} failed with exit code "
            f"{completed.returncode}:\n{completed.stderr[-2000:]}"
        )
    return json.loads(completed.stdout.strip().splitlines()[-1])


class ImportMlflow(Workload):
    """What the installed entry point adds to `import mlflow`."""

    def __init__(self, sizes: Sizes) -> None:
        super().__init__(
            key="import",
            title="import mlflow in a fresh process",
            unit="ms",
            backends=(ENTRY_POINT, HIDDEN_ENTRY_POINT),
            repetitions=sizes.import_runs,
            notes=[
                "Timed inside the child around 'import mlflow'. Hidden: the "
                "child sets sys.modules['sdk'] = None first, so MLflow cannot "
                "load the entry point. 'entry point load alone': the time of "
                "the entry points' load() calls inside 'import mlflow'."
            ],
            observations={"trackio_imported": False},
        )

    def measure(self, backend: Backend, session: Session, prepared: Any) -> float:
        hide = 'sys.modules["sdk"] = None' if backend is HIDDEN_ENTRY_POINT else ""
        result = _run_child(["-c", _IMPORT_CHILD.format(hide=hide)], session.root)
        if backend is ENTRY_POINT:
            if not result["store_module_loaded"]:
                raise RuntimeError(
                    "import mlflow did not load sdk._store: install the package "
                    "(pip install -e .) so that its entry point is registered."
                )
            self.side_samples.setdefault(ENTRY_POINT_LOAD, []).append(
                result["entry_point_load_seconds"] * 1000
            )
        if result["trackio_imported"]:
            self.observations["trackio_imported"] = True
        return result["seconds"] * 1000


class MemoryWhileLogging(Workload):
    """How far the peak resident set grows while logging many points."""

    def __init__(self, sizes: Sizes) -> None:
        self.points = sizes.memory_points
        super().__init__(
            key="memory",
            title=f"peak memory growth while logging {self.points:,} points",
            unit="MB",
            backends=(TRACKIO, TRACKIO_API),
            notes=[
                "A child process; growth of ru_maxrss from after the first "
                "batch (imports, connection, schema) to the end. trackio:// "
                "logs with MlflowClient.log_batch, 1,000 points a call; "
                "trackio.log one call a step of 5 metrics, finish() included."
            ],
            observations={"seconds": {}},
        )

    def measure(self, backend: Backend, session: Session, prepared: Any) -> float:
        directory = session.fresh_directory(f"memory-{backend.key}")
        result = _run_child(
            [
                "-m",
                "benchmarks._child",
                "memory",
                backend.key,
                str(self.points),
                str(directory),
            ],
            REPOSITORY,
        )
        self.observations["seconds"].setdefault(backend.key, []).append(
            result["seconds"]
        )
        return result["growth_mb"]
