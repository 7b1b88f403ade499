"""Write to a project under a file size limit, then lift it; report as JSON.

Usage: ``limited_writer.py DIRECTORY RUN_ID LIMIT_BYTES PHASE``

Sets ``RLIMIT_FSIZE`` to LIMIT_BYTES (with SIGXFSZ ignored, so that a write
past the limit fails with EFBIG instead of killing the process), which SQLite
sees as a disk I/O error. ``PHASE`` says where it should strike:

- ``connect``: the first read, which must create the 32 KiB ``-shm`` file;
- ``commit``: batches of metrics are logged until one fails, as the WAL grows.

Then the limit is lifted and the same client reads and writes again. Prints
one JSON object: the error (code, message, cause), the batches that returned
before it, and the point counts read back after lifting the limit.
"""

from __future__ import annotations

import json
import resource
import signal
import sys
import time
from typing import Any

import mlflow
from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

_MOST_BATCHES = 2000


def batch(step: int) -> list[Metric]:
    """Return the metrics logged at one step of the `commit` phase."""
    now = int(time.time() * 1000)
    return [Metric(f"m{key}", key + step / 1000, now, step) for key in range(50)]


def _fail(client: mlflow.MlflowClient, run_id: str, phase: str) -> dict[str, Any]:
    returned = 0
    try:
        if phase == "connect":
            client.get_metric_history(run_id, "x")
        else:
            for step in range(_MOST_BATCHES):
                client.log_batch(run_id, metrics=batch(step))
                returned += 1
    except MlflowException as exc:
        return {
            "error_code": exc.error_code,
            "message": exc.message,
            "cause": repr(exc.__cause__),
            "returned": returned,
        }
    return {"error_code": None, "returned": returned}


def main() -> int:
    directory, run_id, limit, phase = sys.argv[1:5]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    client = mlflow.MlflowClient(f"trackio://{directory}")
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(limit), hard))
    report = _fail(client, run_id, phase)
    resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
    report["m0_kept"] = len(client.get_metric_history(run_id, "m0"))
    client.log_batch(run_id, metrics=batch(_MOST_BATCHES))
    report["m0_after"] = len(client.get_metric_history(run_id, "m0"))
    report["x_after"] = len(client.get_metric_history(run_id, "x"))
    print(json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
