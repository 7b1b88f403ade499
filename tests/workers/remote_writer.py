"""Log one run to a Trackio server through MLflow's client.

Usage: ``remote_writer.py URI EXPERIMENT WORKER STEPS [--keep-running]``

Waits for a line on stdin, so that several writers start at once. Logs the
params of `params_of` and, at each step, the metrics of `metrics_at`, one
`log_batch` per step. Then ends the run and exits, or with
``--keep-running`` prints ``logged <run id>`` and sleeps until killed, so a
test can kill it with writes still in its spool. The token comes from
``TRACKIO_WRITE_TOKEN``.
"""

from __future__ import annotations

import sys
import time

import mlflow
from mlflow.entities import Metric, Param


def run_name(worker: int) -> str:
    """Return the name of a writer's run."""
    return f"writer-{worker}"


def params_of(worker: int) -> dict[str, str]:
    """Return the params a writer logs."""
    return {"worker": str(worker), "optimizer": "sgd"}


def metrics_at(worker: int, step: int) -> dict[str, float]:
    """Return the metrics a writer logs at one step, distinct per writer."""
    return {"loss": worker + 1 / (step + 1), "acc": step / 1000 + worker / 10}


def main(uri: str, experiment: str, worker: int, steps: int, keep: bool) -> None:
    from sdk._autolog import register_store

    register_store()
    mlflow.set_tracking_uri(uri)
    # set_experiment copes with another writer creating it at the same time.
    experiment_id = mlflow.set_experiment(experiment).experiment_id
    client = mlflow.MlflowClient(uri)
    sys.stdin.readline()
    run_id = client.create_run(experiment_id, run_name=run_name(worker)).info.run_id
    params = [Param(k, v) for k, v in params_of(worker).items()]
    client.log_batch(run_id, params=params)
    for step in range(steps):
        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in metrics_at(worker, step).items()]
        client.log_batch(run_id, metrics=metrics)
    if keep:
        print(f"logged {run_id}", flush=True)
        time.sleep(3600)
    client.set_terminated(run_id)
    print(f"ended {run_id}", flush=True)


if __name__ == "__main__":
    main(
        sys.argv[1],
        sys.argv[2],
        int(sys.argv[3]),
        int(sys.argv[4]),
        "--keep-running" in sys.argv[5:],
    )
