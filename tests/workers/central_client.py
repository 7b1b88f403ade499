"""A remote training job of the central-server topology, then exit.

Usage: ``central_client.py PROJECT CLIENT RUNS STEPS``

Its only set-up is ``MLFLOW_TRACKING_URI=http://host:port`` in the environment:
it calls `sdk.autolog`, fits a tiny scikit-learn model (autologged), then logs
RUNS runs by hand, each with params, tags, STEPS steps of two metrics and one
text artifact. Waits for a line on stdin, so that every client starts at once.
Exit code 0 means every call returned; otherwise the traceback is on stderr.
"""

from __future__ import annotations

import sys

import mlflow

import sdk


def run_name(client: int, index: int) -> str:
    """Return the name of one hand-logged run, unique across all clients."""
    return f"c{client}-r{index}"


def params_of(client: int, index: int) -> dict[str, str]:
    """Return the params of one hand-logged run."""
    return {"client": str(client), "index": str(index), "lr": "0.01", "batch": "32"}


def loss(name: str, step: int) -> float:
    """Return the `loss` logged at `step` of run `name`, distinct per run."""
    return sum(map(ord, name)) / 1000 + 1 / (step + 1)


def note(name: str) -> str:
    """Return the text artifact of run `name`."""
    return f"notes of {name}\n"


def _fit_autologged() -> None:
    from sklearn.linear_model import LogisticRegression

    features = [[0.0, 1.0], [1.0, 0.0], [0.9, 0.1], [0.1, 0.8]]
    LogisticRegression(max_iter=50).fit(features, [0, 1, 1, 0])


def _log_by_hand(client: int, index: int, steps: int) -> None:
    name = run_name(client, index)
    with mlflow.start_run(run_name=name):
        mlflow.log_params(params_of(client, index))
        mlflow.set_tags({"kind": "manual", "client": str(client)})
        for step in range(steps):
            metrics = {"loss": loss(name, step), "acc": step / steps}
            mlflow.log_metrics(metrics, step=step)
        mlflow.log_text(note(name), "notes/run.txt")


def main() -> int:
    project = sys.argv[1]
    client, runs, steps = map(int, sys.argv[2:5])
    sys.stdin.readline()
    sdk.autolog(project=project)
    _fit_autologged()
    for index in range(runs):
        _log_by_hand(client, index, steps)
    sdk.autolog(disable=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
