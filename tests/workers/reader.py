"""Read an experiment through MLflow in a loop while others write it.

Usage: ``reader.py DIRECTORY EXPERIMENT_ID``

Reads until stdin closes, then prints one JSON line: how many passes it made
and the most runs it saw. Each pass runs `search_runs` and, for every run,
`get_metric_history("loss")`, and checks what a reader may rely on while
writers commit: a run's `loss` steps are always 0..n-1 (each step is its own
transaction, logged in order), and neither the runs nor a run's points ever
decrease. Exit code 1, with the reason on stderr, when a check fails or a
call raises.
"""

from __future__ import annotations

import json
import sys
import threading

import mlflow


def _one_pass(
    client: mlflow.MlflowClient, experiment_id: str, seen: dict[str, int]
) -> int:
    runs = client.search_runs([experiment_id], max_results=1000)
    if len(runs) < len(seen):
        raise AssertionError(f"runs went from {len(seen)} to {len(runs)}")
    for run in runs:
        run_id = run.info.run_id
        steps = sorted(m.step for m in client.get_metric_history(run_id, "loss"))
        if steps != list(range(len(steps))):
            raise AssertionError(f"run {run_id} has loss steps {steps}")
        if len(steps) < seen.get(run_id, 0):
            raise AssertionError(f"run {run_id} lost points: {steps}")
        seen[run_id] = len(steps)
    return len(runs)


def main() -> int:
    directory, experiment_id = sys.argv[1], sys.argv[2]
    client = mlflow.MlflowClient(f"trackio://{directory}")
    stop = threading.Event()

    def wait_for_eof() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=wait_for_eof, daemon=True).start()
    seen: dict[str, int] = {}
    passes = most = 0
    while not stop.is_set():
        most = max(most, _one_pass(client, experiment_id, seen))
        passes += 1
    print(json.dumps({"passes": passes, "most_runs": most}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
