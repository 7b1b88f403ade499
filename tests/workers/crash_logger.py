"""Log metrics in a loop, reporting each write that returned, until killed.

Usage: ``crash_logger.py DIRECTORY EXPERIMENT_ID RUN_ID FIRST_STEP``

``RUN_ID`` is ``-`` to start a new run, else the run to resume with
``mlflow.start_run(run_id=...)``. Prints ``run <id>`` once the run is active,
then for each step ``loss <step>`` after ``mlflow.log_metric`` returned and
``pair <step>`` after ``mlflow.log_metrics`` (two keys, one batch) returned,
flushing each line. The parent kills it; it gives up by itself after 60 s so
that it cannot outlive a parent that died.
"""

from __future__ import annotations

import sys
import time

import mlflow

_GIVE_UP_S = 60


def loss(step: int) -> float:
    """Return the `loss` logged at `step`."""
    return 1.0 / (1 + step)


def pair(step: int) -> dict[str, float]:
    """Return the two metrics logged in one batch at `step`."""
    return {"acc": step / (step + 1), "lr": 0.5**step}


def main() -> int:
    directory, experiment_id, run_id = sys.argv[1:4]
    step = int(sys.argv[4])
    mlflow.set_tracking_uri(f"trackio://{directory}")
    if run_id == "-":
        run = mlflow.start_run(experiment_id=experiment_id, run_name="killed")
    else:
        run = mlflow.start_run(run_id=run_id)
    print(f"run {run.info.run_id}", flush=True)
    deadline = time.monotonic() + _GIVE_UP_S
    while time.monotonic() < deadline:
        mlflow.log_metric("loss", loss(step), step=step)
        print(f"loss {step}", flush=True)
        mlflow.log_metrics(pair(step), step=step)
        print(f"pair {step}", flush=True)
        step += 1
    return 1


if __name__ == "__main__":
    sys.exit(main())
