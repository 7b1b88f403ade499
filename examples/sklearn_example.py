"""Autolog a scikit-learn grid search: one parent run, one child run per candidate.

Run it with ``python examples/sklearn_example.py`` (``pip install -e
".[sklearn]"``). MLflow's scikit-learn autolog logs the search itself (best
params, best score) in a parent run and each candidate in a child run; in
Trackio every run is its own run, and the children are grouped under the
parent's name. Project "sklearn".
"""

from __future__ import annotations

import mlflow
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import sdk

PROJECT = "sklearn"


def main() -> None:
    sdk.autolog(project=PROJECT)

    features, labels = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=200))
    search = GridSearchCV(pipeline, {"logisticregression__C": [0.01, 0.1, 1.0]}, cv=3)
    search.fit(features, labels)

    parent = mlflow.last_active_run()
    children = mlflow.search_runs(
        experiment_names=[PROJECT],
        filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'",
    )
    sdk.autolog(disable=True)
    print(f"Search run {parent.info.run_name} in project {PROJECT}:")
    print(f"  best C: {parent.data.params['best_logisticregression__C']}")
    print(f"  best cross-validation score: {parent.data.metrics['best_cv_score']:.3f}")
    print(f"  {len(children)} child runs, one per candidate")


if __name__ == "__main__":
    main()
