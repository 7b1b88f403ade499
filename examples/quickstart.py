"""Train a small model with `sdk.autolog()` and say where its run went.

Run it with ``python examples/quickstart.py``; it needs scikit-learn
(``pip install -e ".[sklearn]"``). The run lands in the local Trackio
directory (``TRACKIO_DIR``, else Trackio's default), project "quickstart".
"""

from __future__ import annotations

import mlflow
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.model_selection import train_test_split

import sdk

PROJECT = "quickstart"


def main() -> None:
    sdk.autolog(project=PROJECT)

    features, labels = load_iris(return_X_y=True)
    train_x, test_x, train_y, test_y = train_test_split(
        features, labels, test_size=0.3, random_state=0
    )
    model = RandomForestClassifier(n_estimators=20, max_depth=3, random_state=0)
    model.fit(train_x, train_y)
    # Scoring on held-out data after fit is logged to the same run.
    test_accuracy = model.score(test_x, test_y)

    run = mlflow.last_active_run()
    tracking_uri = mlflow.get_tracking_uri()
    sdk.autolog(disable=True)

    print(f"Test accuracy: {test_accuracy:.3f}")
    print(f"Run {run.info.run_name} ({run.info.run_id}) logged to {tracking_uri}")
    print(
        f"Project: {PROJECT}; params: {len(run.data.params)}, metrics: "
        f"{sorted(run.data.metrics)}"
    )
    print(f"Artifacts: {run.info.artifact_uri}")
    print(f"Open the dashboard with:  trackio show --project {PROJECT}")


if __name__ == "__main__":
    main()
