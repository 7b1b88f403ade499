"""Autolog a LightGBM training run into Trackio, one point per boosting round.

Run it with ``python examples/lightgbm_example.py`` (``pip install -e
".[lightgbm]"``). MLflow's LightGBM autolog records the params and each
validation set's metric per round (``valid-binary_logloss``), in project
"lightgbm".
"""

from __future__ import annotations

import lightgbm
import mlflow
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

import sdk

PROJECT = "lightgbm"


def main() -> None:
    sdk.autolog(project=PROJECT)

    features, labels = load_breast_cancer(return_X_y=True)
    train_x, valid_x, train_y, valid_y = train_test_split(
        features, labels, test_size=0.25, random_state=0
    )
    train = lightgbm.Dataset(train_x, label=train_y)
    valid = lightgbm.Dataset(valid_x, label=valid_y, reference=train)
    lightgbm.train(
        {"objective": "binary", "num_leaves": 7, "learning_rate": 0.1, "verbose": -1},
        train,
        num_boost_round=20,
        valid_sets=[valid],
        valid_names=["valid"],
    )

    run = mlflow.last_active_run()
    sdk.autolog(disable=True)
    history = mlflow.MlflowClient("trackio://").get_metric_history(
        run.info.run_id, "valid-binary_logloss"
    )
    print(f"Run {run.info.run_name} ({run.info.run_id}) in project {PROJECT}:")
    print(f"  num_leaves={run.data.params['num_leaves']}, {len(history)} rounds,")
    print(f"  valid-binary_logloss {history[0].value:.4f} -> {history[-1].value:.4f}")


if __name__ == "__main__":
    main()
