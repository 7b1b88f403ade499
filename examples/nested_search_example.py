"""A small hyperparameter search as nested MLflow runs: a parent and its children.

Run it with ``python examples/nested_search_example.py``. Each candidate is a
child run (``mlflow.start_run(nested=True)``) under one parent run. In Trackio
every child is a run of its own, and its group is the parent's run name, so
the dashboard's "Group by" puts the candidates together. Project
"nested-search".
"""

from __future__ import annotations

import mlflow
import numpy as np
import trackio

PROJECT = "nested-search"


def train(learning_rate: float, steps: int = 15) -> float:
    """Fit y = 3x by gradient descent, logging the loss at each step."""
    data = np.random.default_rng(0).normal(size=64)
    weight = 0.0
    for step in range(steps):
        error = weight * data - 3 * data
        mlflow.log_metric("loss", float(np.mean(error**2)), step=step)
        weight -= learning_rate * float(np.mean(2 * error * data))
    return float(np.mean((weight * data - 3 * data) ** 2))


def main() -> None:
    mlflow.set_tracking_uri("trackio://")
    mlflow.set_experiment(PROJECT)

    with mlflow.start_run(run_name="lr-search") as parent:
        results = {}
        for learning_rate in (0.01, 0.05, 0.2):
            with mlflow.start_run(run_name=f"lr-{learning_rate}", nested=True):
                mlflow.log_param("learning_rate", learning_rate)
                results[learning_rate] = train(learning_rate)
                mlflow.log_metric("final_loss", results[learning_rate])
        best = min(results, key=results.get)
        mlflow.log_params({"best_learning_rate": best, "candidates": len(results)})

    print(f"Parent run {parent.info.run_name}; best learning_rate {best}")
    # Trackio's own API reads the same directory (TRACKIO_DIR).
    print(f"What Trackio sees in project {PROJECT}:")
    for run in trackio.Api().runs(PROJECT):
        group = run.config.get("_Group", "-")
        print(f"  run {run.name:<12} group {group}")


if __name__ == "__main__":
    main()
