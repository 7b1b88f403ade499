"""Autolog an XGBoost training run into Trackio, one point per boosting round.

Run it with ``python examples/xgboost_example.py`` (``pip install -e
".[xgboost]"``). MLflow's XGBoost autolog records the booster's params and
each evaluation set's metric per round (``train-logloss``,
``valid-logloss``), in project "xgboost".
"""

from __future__ import annotations

import mlflow
import xgboost
from sklearn.datasets import load_breast_cancer
from sklearn.model_selection import train_test_split

import sdk

PROJECT = "xgboost"


def main() -> None:
    sdk.autolog(project=PROJECT)

    features, labels = load_breast_cancer(return_X_y=True)
    train_x, valid_x, train_y, valid_y = train_test_split(
        features, labels, test_size=0.25, random_state=0
    )
    train = xgboost.DMatrix(train_x, label=train_y)
    valid = xgboost.DMatrix(valid_x, label=valid_y)
    xgboost.train(
        {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3},
        train,
        num_boost_round=20,
        evals=[(train, "train"), (valid, "valid")],
        verbose_eval=False,
    )

    run = mlflow.last_active_run()
    sdk.autolog(disable=True)
    history = mlflow.MlflowClient("trackio://").get_metric_history(
        run.info.run_id, "valid-logloss"
    )
    print(f"Run {run.info.run_name} ({run.info.run_id}) in project {PROJECT}:")
    print(f"  valid-logloss over {len(history)} rounds:")
    print(f"  {history[0].value:.4f} at round 0, {history[-1].value:.4f} at the end")


if __name__ == "__main__":
    main()
