"""Log several runs from several threads into one experiment, then exit.

Usage: ``writer.py DIRECTORY EXPERIMENT_ID WORKER THREADS RUNS STEPS``

Waits for a line on stdin, so that every writer starts at once. Exit code 0
means every MLflow call returned; otherwise each traceback is on stderr and
the exit code is 1.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback

import mlflow
from mlflow.entities import Metric, Param


def run_name(worker: int, thread: int, index: int) -> str:
    """Return the name of one run, unique across all writers."""
    return f"w{worker}-t{thread}-r{index}"


def params_of(worker: int, thread: int, index: int, steps: int) -> dict[str, str]:
    """Return the params a run ends with (the last one is logged halfway)."""
    return {
        "worker": str(worker),
        "thread": str(thread),
        "index": str(index),
        "halfway": str(steps // 2),
    }


def loss(name: str, step: int) -> float:
    """Return the `loss` logged at `step` of run `name`, distinct per run."""
    return len(name) + step / 1000 + sum(map(ord, name)) / 1e6


def _log_one_run(
    client: mlflow.MlflowClient,
    experiment_id: str,
    worker: int,
    thread: int,
    index: int,
    steps: int,
) -> None:
    name = run_name(worker, thread, index)
    run_id = client.create_run(experiment_id, run_name=name).info.run_id
    params = params_of(worker, thread, index, steps)
    first = [Param(k, v) for k, v in params.items() if k != "halfway"]
    client.log_batch(run_id, params=first)
    for step in range(steps):
        client.log_metric(run_id, "loss", loss(name, step), step=step)
        now = int(time.time() * 1000)
        pair = [Metric("acc", step / steps, now, step), Metric("lr", 0.1, now, step)]
        client.log_batch(run_id, metrics=pair)
        if step == steps // 2:
            client.log_param(run_id, "halfway", params["halfway"])
    client.set_terminated(run_id)


def main() -> int:
    directory, experiment_id = sys.argv[1], sys.argv[2]
    worker, threads, runs, steps = map(int, sys.argv[3:7])
    client = mlflow.MlflowClient(f"trackio://{directory}")
    sys.stdin.readline()
    start = threading.Barrier(threads)
    failures: list[str] = []

    def work(thread: int) -> None:
        try:
            start.wait()
            for index in range(runs):
                _log_one_run(client, experiment_id, worker, thread, index, steps)
        except BaseException:
            failures.append(traceback.format_exc())

    pool = [threading.Thread(target=work, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    for failure in failures:
        print(failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
