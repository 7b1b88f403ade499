"""Log by hand with MLflow's own fluent API; only the tracking URI says Trackio.

Run it with ``python examples/fluent_example.py``. Nothing here imports
`sdk`: the installed package registers the ``trackio`` URI scheme with MLflow,
so ``mlflow.set_tracking_uri("trackio://")`` (or ``MLFLOW_TRACKING_URI``) is
all a script needs. Project "fluent".
"""

from __future__ import annotations

import math

import mlflow

PROJECT = "fluent"


def main() -> None:
    mlflow.set_tracking_uri("trackio://")
    mlflow.set_experiment(PROJECT)

    with mlflow.start_run(run_name="by-hand") as run:
        mlflow.log_params({"learning_rate": 0.05, "optimizer": "sgd"})
        mlflow.set_tag("purpose", "example")
        for step in range(10):
            loss = math.exp(-0.3 * step)
            mlflow.log_metrics({"loss": loss, "accuracy": 1 - loss / 2}, step=step)

    # Reads come from the same Trackio directory, through MLflow's client.
    finished = mlflow.get_run(run.info.run_id)
    history = mlflow.MlflowClient().get_metric_history(run.info.run_id, "loss")
    print(f"Run {finished.info.run_name} ({finished.info.status}) in {PROJECT}:")
    print(f"  params: {finished.data.params}")
    print(f"  {len(history)} loss points, last {finished.data.metrics['loss']:.4f}")


if __name__ == "__main__":
    main()
